"""Benchmark: making a voice from a recording, as the server does it (the child process at idle
priority), with the real models' sizes (HuBERT base, the version 0 quantizer, Bark's EnCodec)
and random weights; and what it does to a sentence made beside it.

    python -m wyoming_bark.bench.voice --seconds 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..recorded_voices import MakerProcess
from ..settings import CloneSettings


def build_models(folder: Path) -> tuple[CloneSettings, Path]:
    """HuBERT base, a version 0 quantizer (768 -> 1024 -> 10 000) and a Bark folder holding only
    the 24 kHz EnCodec, all random, in the layouts the real ones come in."""
    from safetensors.torch import save_file
    from torch import nn
    from transformers import EncodecConfig, EncodecModel, HubertConfig, HubertModel

    HubertModel(HubertConfig()).save_pretrained(str(folder / "hubert"))
    state = {f"lstm.{k}": v for k, v in nn.LSTM(768, 1024, 2, batch_first=True).state_dict().items()}
    state.update({f"fc.{k}": v for k, v in nn.Linear(1024, 10_000).state_dict().items()})
    torch.save(state, folder / "quantizer.pth")
    bark = folder / "bark"
    bark.mkdir()
    config = EncodecConfig()  # the 24 kHz model Bark uses
    codec = EncodecModel(config)
    save_file(
        {f"codec_model.{k}": v.contiguous() for k, v in codec.state_dict().items()},
        bark / "model.safetensors",
    )
    (bark / "config.json").write_text(json.dumps({"codec_config": config.to_dict()}), encoding="utf-8")
    return CloneSettings(hubert=str(folder / "hubert"), quantizer=str(folder / "quantizer.pth")), bark


def recording(seconds: float) -> bytes:
    """``seconds`` of speech-like audio (a voiced buzz with syllable-rate loudness), 44.1 kHz stereo WAV."""
    import io

    import soundfile

    rate = 44_100
    t = np.arange(int(seconds * rate)) / rate
    voice = np.sign(np.sin(2 * np.pi * 140 * t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    noise = np.random.default_rng(0).normal(0, 0.05, len(t))
    samples = (0.3 * voice + noise).astype(np.float32)
    out = io.BytesIO()
    soundfile.write(out, np.stack([samples, samples], axis=1), rate, format="WAV")
    return out.getvalue()


def sentence_timer(seconds: float) -> Callable[[], float]:
    """One ``seconds``-long sentence of random Bark small at int8 on the CPU, as the server runs
    it (our core, one thread per core): a call makes it and returns its wall time."""
    from .. import precision as precisions
    from ..fast import FastBark, SamplingSettings
    from .__main__ import run_ours
    from .precision import at_precision
    from .random_bark import SEMANTIC_HZ, build_random_bark, random_inputs

    device = torch.device("cpu")
    precisions.use_threads(None)
    model, _ = at_precision(build_random_bark("small", device), "int8", device)
    fast, inputs = FastBark(model), random_inputs(device)
    settings = SamplingSettings(max_semantic_tokens=round(seconds * SEMANTIC_HZ), allow_early_stop=False)
    run_ours(fast, device, inputs, settings)  # warm-up
    return lambda: run_ours(fast, device, inputs, settings).wall


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m wyoming_bark.bench.voice", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the recording")
    parser.add_argument("--sentence-seconds", type=float, default=2.0, help="of the sentence made beside it")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        clone, bark = build_models(folder)
        data = recording(args.seconds)
        maker = MakerProcess(clone, str(bark), folder)

        def make() -> tuple[float, dict]:
            started = time.monotonic()
            report = maker.make(data, "bench.wav", folder / "voice.npz", lambda seconds: None)
            maker.stop()
            return time.monotonic() - started, report

        alone_s, report = make()  # how long it takes (process start and model loads included)
        sentence = sentence_timer(args.sentence_seconds)
        sentence_alone = statistics.median(sentence() for _ in range(3))
        making = threading.Thread(target=lambda: results.append(make()))
        results: list = []
        making.start()
        beside = [sentence() for _ in range(3)]  # the child gets only what they leave over
        making.join()
    out = {
        "recording_s": args.seconds,
        "audio_used_s": round(report["seconds_used"], 2),
        "make_s": round(alone_s, 2),
        "peak_mib": round(report["peak_mib"]),
        "sentence_s_alone": round(sentence_alone, 2),
        "sentence_s_while_making": [round(one, 2) for one in beside],
        "make_s_with_3_sentences_first": round(results[0][0], 2),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
