"""Benchmark: our core against transformers' ``BarkModel.generate`` on the same weights.

    python -m wyoming_bark.bench --arch full --device cuda --seconds 10 --reference --json

Speed depends on the architecture, not on weight values, so the model is built with Bark's real
dimensions and random weights (no download). Early stopping is disabled in our core, so every run
generates exactly ``--seconds`` of speech; the reference gets the same token budget (random
weights make its end-of-speech token improbable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import precision as precisions
from ..contract import TtsEngine
from ..fast import FastBark, SamplingSettings
from ..fast.batch import switch_threads_quickly
from ..fast.stages import coarse_tokens, fine_tokens, semantic_tokens
from ..loader import compiles
from ..settings import COMPILE_MODES, SELF_CHECK_MODES
from .fairness import SCENARIOS
from .precision import at_precision, compare_precisions
from .random_bark import ARCHS, SEMANTIC_HZ, build_random_bark, random_inputs
from .server import on_own_thread, serve_and_measure

SAMPLE_RATE = TtsEngine.sample_rate


def _timed(device: torch.device, fn: Callable):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - started


@dataclass
class Run:
    wall: float
    audio_s: float
    semantic_tokens: int = 0
    coarse_tokens: int = 0
    semantic_s: float = 0.0
    coarse_s: float = 0.0
    fine_s: float = 0.0
    codec_s: float = 0.0


def run_ours(fast: FastBark, device, inputs, settings: SamplingSettings) -> Run:
    ids, mask, history = inputs
    semantic, t_sem = _timed(device, lambda: semantic_tokens(fast, ids, mask, history, settings))
    coarse, t_coarse = _timed(device, lambda: coarse_tokens(fast, semantic, history, settings))
    fine, t_fine = _timed(device, lambda: fine_tokens(fast, coarse, history, settings))
    audio, t_codec = _timed(device, lambda: fast.decode(fine))
    return Run(
        wall=t_sem + t_coarse + t_fine + t_codec,
        audio_s=len(audio) / SAMPLE_RATE,
        semantic_tokens=len(semantic),
        coarse_tokens=coarse.numel(),
        semantic_s=t_sem,
        coarse_s=t_coarse,
        fine_s=t_fine,
        codec_s=t_codec,
    )


def _figures(runs: list[Run]) -> dict[str, float]:
    """Medians of timed runs of one sentence: real-time factor and milliseconds per decode step."""

    def per_step(field: str, tokens: int) -> float:
        return round(1000 * statistics.median(getattr(run, field) for run in runs) / max(tokens, 1), 3)

    return {
        "rtf": round(statistics.median(run.wall for run in runs) / runs[0].audio_s, 4),
        "semantic_ms_per_step": per_step("semantic_s", runs[0].semantic_tokens),
        "coarse_ms_per_step": per_step("coarse_s", runs[0].coarse_tokens),
    }


def run_reference(model, device, inputs, n_semantic: int) -> Run:
    ids, mask, history = inputs

    def generate():
        with torch.inference_mode():
            return model.generate(
                input_ids=ids,
                attention_mask=mask,
                history_prompt=history,
                do_sample=True,
                semantic_max_new_tokens=n_semantic,
                semantic_temperature=0.7,
                coarse_temperature=0.7,
                fine_temperature=0.5,
                min_eos_p=None,
            )

    audio, wall = _timed(device, generate)
    return Run(wall=wall, audio_s=audio.shape[-1] / SAMPLE_RATE)


def benchmark(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else args.device)
    if device.type == "cpu":
        precisions.use_threads(args.threads or None)  # as the server: one per physical core
    switch_threads_quickly(device)  # as the server
    result, served = on_own_thread(lambda: _measure_core(args, device))  # before the server runs
    if args.first_audio or args.clients or args.stream_sentences or args.contention or args.fairness:
        # The server as shipped (audio inside sentences on a GPU, sentences batched) next to the
        # server with both turned off: whole sentences, one at a time (contention: as shipped only).
        result["server"] = asyncio.run(serve_and_measure(served, device, args, "auto", args.max_batch))
        serial = argparse.Namespace(**{**vars(args), "contention": 0, "fairness": []})
        if serial.first_audio or serial.clients or serial.stream_sentences:
            result["server_serial"] = asyncio.run(serve_and_measure(served, device, serial, "off", 1))
        if device.type == "cuda" and args.clients:  # as shipped, but with Python's default GIL switching
            shipped = sys.getswitchinterval()
            sys.setswitchinterval(0.005)
            try:
                variant = argparse.Namespace(**{**vars(args), "first_audio": False, "stream_sentences": 0})
                result["server_gil_5ms"] = asyncio.run(
                    serve_and_measure(served, device, variant, "auto", args.max_batch)
                )
            finally:
                sys.setswitchinterval(shipped)
    return result


def _measure_core(args: argparse.Namespace, device: torch.device) -> tuple[dict, tuple]:
    """Ours (and transformers', --reference; other precisions, --precision) on one sentence:
    the result so far, and the model and precision the server runs use."""
    model, load_s = _timed(device, lambda: build_random_bark(args.arch, device))
    names = [name.strip() for name in args.precision.split(",") if name.strip()] or ["auto"]
    ours_model, precision = at_precision(model, names[0], device)  # ours and the server's
    inputs = random_inputs(device)
    n_semantic = round(args.seconds * SEMANTIC_HZ)
    settings = SamplingSettings(max_semantic_tokens=n_semantic, allow_early_stop=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    compiles = compile_variants(args.compile, device)

    def load_core(compile: bool) -> FastBark:
        import tempfile

        from ..self_check import prepare

        with tempfile.TemporaryDirectory() as markers:
            outcome = prepare(
                FastBark(ours_model), args.self_check, Path(markers), f"random {args.arch}", compile=compile
            )
        if outcome.fast is None:
            raise SystemExit(f"the self-check turned our core off: {outcome.summary}")
        checked.append(outcome.summary)
        return outcome.fast

    checked: list[str] = []
    fast, warmup_s = _timed(device, lambda: load_core(compiles[0]))
    first = run_ours(fast, device, inputs, settings)
    runs = [run_ours(fast, device, inputs, settings) for _ in range(args.reps)]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None

    wall, audio_s = statistics.median(run.wall for run in runs), runs[0].audio_s
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)",
        "arch": args.arch,
        "precision": precision,
        "reference_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "audio_seconds": round(audio_s, 3),
        "reps": args.reps,
        "ours": {
            "wall_s": round(wall, 4),
            **_figures(runs),
            "fine_ms": round(1000 * statistics.median(run.fine_s for run in runs), 2),
            "codec_ms": round(1000 * statistics.median(run.codec_s for run in runs), 2),
            "first_call_s": round(first.wall, 4),
            "warmup_s": round(warmup_s, 3),
            "self_check": checked[0],
            "peak_gpu_mib": round(peak, 1) if peak is not None else None,
            "compiled": compiles[0],
        },
        "model_build_s": round(load_s, 2),
    }
    for compile in compiles[1:]:  # the other variant, same weights, same run
        other, other_warmup = _timed(device, lambda compile=compile: load_core(compile))
        run_ours(other, device, inputs, settings)
        timed = [run_ours(other, device, inputs, settings) for _ in range(args.reps)]
        result.setdefault("compile", {})["on" if compile else "off"] = {
            **_figures(timed),
            "warmup_s": round(other_warmup, 2),  # with compiling: the first start's extra time
            "self_check": checked[-1],
        }
        del other
    if len(names) > 1:
        result["precisions"] = compare_precisions(
            model, device, lambda core: run_ours(core, device, inputs, settings), names, args.reps
        )
    if args.reference:
        reference_first = run_reference(model, device, inputs, n_semantic)
        reference = [run_reference(model, device, inputs, n_semantic) for _ in range(args.reps)]
        ref_wall = statistics.median(run.wall for run in reference)
        result["reference"] = {
            "impl": "transformers BarkModel.generate",
            "wall_s": round(ref_wall, 4),
            "rtf": round(ref_wall / max(reference[0].audio_s, 1e-9), 4),
            "audio_seconds": round(reference[0].audio_s, 3),
            "first_call_s": round(reference_first.wall, 4),
        }
        result["speedup"] = round(ref_wall / wall, 2)
    return result, (ours_model, precision, compiles[0])


def compile_variants(spec: str, device: torch.device) -> list[bool]:
    """``--compile off,on`` -> [False, True]; ``auto``: on with CUDA, as the server."""
    names = [name.strip() for name in spec.split(",") if name.strip()] or ["auto"]
    unknown = set(names) - set(COMPILE_MODES)
    if unknown:
        raise SystemExit(f"--compile: unknown {', '.join(sorted(unknown))} (auto, on, off)")
    return [compiles(name, device) for name in names]


def print_table(result: dict) -> None:
    ours, ref = result["ours"], result.get("reference", {})
    print(
        f"{result['device']}, {result['arch']} architecture, ours in {result['precision']}, transformers in "
        f"{result['reference_dtype']}, {result['audio_seconds']} s of speech"
    )
    rows = [
        ("wall (s)", ours["wall_s"], ref.get("wall_s")),
        ("RTF", ours["rtf"], ref.get("rtf")),
        ("first call (s)", ours["first_call_s"], ref.get("first_call_s")),
        ("semantic ms/step", ours["semantic_ms_per_step"], None),
        ("coarse ms/step", ours["coarse_ms_per_step"], None),
        ("fine (ms)", ours["fine_ms"], None),
        ("codec (ms)", ours["codec_ms"], None),
        ("warm-up at load (s)", ours["warmup_s"], None),
        ("peak GPU (MiB)", ours["peak_gpu_mib"], None),
    ]
    print(f"{'':22}{'ours':>12}{'transformers':>14}")
    for name, mine, theirs in rows:
        print(f"{name:22}{'-' if mine is None else mine:>12}{'-' if theirs is None else theirs:>14}")
    if "speedup" in result:
        print(f"speed-up over transformers: {result['speedup']}x")
    print(f"self-check: {ours['self_check']}")
    for name, row in result.get("compile", {}).items():
        print(
            f"compile {name} (vs {'on' if ours['compiled'] else 'off'} above): RTF {row['rtf']}, semantic "
            f"{row['semantic_ms_per_step']} ms/step, coarse {row['coarse_ms_per_step']} ms/step, "
            f"warm-up at load {row['warmup_s']} s; self-check: {row['self_check']}"
        )
    for name, row in result.get("precisions", {}).items():
        quality = row.get(next((key for key in row if key.startswith("quality_vs_")), ""), {})
        gate = ", ".join(
            f"{part} top-1 {q['top1_agreement']:.0%}" for part, q in quality.items() if "top1_agreement" in q
        )
        if "audio" in quality:
            gate += f", fine codes {quality['fine']['codes_agreement']:.0%} equal"
            gate += f", audio RMS difference {quality['audio']['rms_difference']:.1%}"
        print(
            f"precision {name}"
            + (f" ({row['runs_in']})" if row["runs_in"] != name else "")
            + f": RTF {row['rtf']}, semantic {row['semantic_ms_per_step']} ms/step, "
            f"coarse {row['coarse_ms_per_step']} ms/step, fine {row['fine_ms']} ms"
            + (f", {row['speedup']}x faster; {gate}" if "speedup" in row else "")
        )
    names = (
        ("server", "server"),
        ("server_serial", "serial server"),
        ("server_gil_5ms", "server, 5 ms GIL switch"),
    )
    for key, name in names:
        if key not in result:
            continue
        server = result[key]
        label = f"{name} (audio streaming {server['audio_streaming']}, batch {server['max_batch']})"
        if "first_audio" in server:
            first = server["first_audio"]
            print(
                f"{label}, {first['sentence_seconds']} s sentence over TCP: "
                f"first audio {first['first_audio_s']} s, complete {first['total_s']} s"
            )
        if "clients" in server:
            load = server["clients"]
            print(
                f"{label}, {load['clients']} clients x {load['requests'] // load['clients']} requests: "
                f"{load['audio_seconds_per_second']} audio-s/s, first audio p50 {load['first_audio_p50_s']} s, "
                f"p99 {load['first_audio_p99_s']} s, {load['ms_per_step']} ms per decode iteration"
            )
        if "contention" in server:
            busy = server["contention"]
            print(
                f"{label}, one {busy['sentence_seconds']} s request beside {busy['streams']} streamed answers: "
                f"first audio {busy['first_audio_beside_s']} s vs {busy['first_audio_alone_s']} s alone "
                f"({busy['ratio']}x); describe p99 {busy['describe_p99_ms']} ms"
            )
        if "fairness" in server:
            fair = server["fairness"]
            alone = fair["first_audio_alone_s"]
            for scenario in (name for name in fair if name in SCENARIOS):
                beside = fair[scenario]
                print(
                    f"{label}, a short request from its own address beside {scenario}: first audio "
                    f"{beside['first_audio_beside_s']} s (worst {beside['worst_s']} s) vs {alone} s "
                    f"alone ({beside['ratio']}x)"
                )
        if "stream" in server:
            stream = server["stream"]
            print(
                f"{label}, streamed answer ({stream['characters']} characters in Home Assistant's deltas, "
                f"{stream['audio_s']} s of speech): first audio {stream['first_audio_s']} s "
                f"(last delta sent at {stream['last_delta_s']} s), {stream['pauses']} pauses after it, "
                f"{stream['paused_s']} s in all, longest {stream['longest_pause_s']} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m wyoming_bark.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--arch", choices=tuple(ARCHS), default="full")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of speech per run")
    parser.add_argument("--reps", type=int, default=3, help="timed runs after the first (cold) one")
    parser.add_argument("--reference", action="store_true", help="also time transformers' BarkModel.generate")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    parser.add_argument("--first-audio", action="store_true", help="time to first audio-chunk over TCP")
    parser.add_argument("--clients", type=int, default=0, help="concurrent TCP clients for a load run")
    parser.add_argument("--requests", type=int, default=3, help="requests per client (--clients)")
    parser.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch")
    parser.add_argument("--sentence-seconds", type=float, default=3.0, help="speech per server request")
    parser.add_argument(
        "--stream-sentences",
        type=int,
        default=0,
        help="stream an answer of N sentences as Home Assistant's LLM deltas; report pauses in playback",
    )
    parser.add_argument(
        "--contention",
        type=int,
        default=0,
        help="first audio of one request alone and beside N streamed 12-sentence answers (the ratio)",
    )
    parser.add_argument(
        "--fairness",
        type=lambda value: SCENARIOS if value == "all" else value.split(","),
        default=[],
        help=f"first audio of a short request from its own address, alone and beside each of these "
        f"loads: {', '.join(SCENARIOS)}, or all",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        help="ours (and the server runs) at this precision, as the server's --precision (default: as "
        "shipped); a list, e.g. fp32,int8, also compares them in one run (the first is the baseline)",
    )
    parser.add_argument(
        "--self-check", choices=SELF_CHECK_MODES, default="on", help="the server's --self-check"
    )
    parser.add_argument(
        "--compile",
        default="auto",
        help="the decode steps through torch.compile, as the server's --compile: auto, on or off; a "
        "list, e.g. off,on, also compares them in one run (the first is the baseline and the server's)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    result = benchmark(args)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
