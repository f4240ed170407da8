"""The bench's server runs: the real handler and engine on a loopback port over the in-memory
random model, measured from the client's side — first audio of one sentence, many clients at
once, and a streamed answer as Home Assistant sends it."""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from ..contract import TtsEngine
from ..fast import FastBark, SamplingSettings
from .random_bark import SEMANTIC_HZ, random_inputs
from .stream import stream_answer

SAMPLE_RATE = TtsEngine.sample_rate
T = TypeVar("T")


def on_own_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on a thread that ends with it. On a CPU the OpenMP workers a thread starts (filling
    a KV cache is enough) live as long as the thread, and a second set alive slows the server's
    scheduler thread (see ``fast.release.Releaser``): the server loads on such a thread too."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench") as pool:
        return pool.submit(fn).result()


async def _serve(
    served: tuple, device: torch.device, n_semantic: int, folder: Path, audio_streaming: str, max_batch: int
):
    """The real server (handler + engine) on a loopback port, over the in-memory random model
    (``served``: the model, its precision and whether its steps are compiled)."""
    from types import SimpleNamespace

    from transformers import BertTokenizerFast
    from wyoming.server import AsyncTcpServer

    from ..engine import BarkEngine
    from ..handler import BarkEventHandler
    from ..loader import LoadedBark
    from ..self_check import prepare
    from ..settings import EngineSettings, GenerationSettings, ModelSettings

    model, precision, compiled = served
    _, _, history = random_inputs(torch.device("cpu"))
    np.savez(folder / "bench.npz", **{key: value.numpy() for key, value in history.items()})
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters), ".", ","]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    sampling = SamplingSettings(max_semantic_tokens=n_semantic, allow_early_stop=False)
    # capture and warm up, on a thread that ends (as the server loads: see on_own_thread)
    fast = on_own_thread(
        lambda: prepare(FastBark(model, max_batch), "off", folder, "random", compile=compiled).fast
    )
    dtype = next(model.parameters()).dtype
    settings = EngineSettings(
        model=ModelSettings(model="random", data_dir=folder, device=str(device), max_batch=max_batch),
        generation=GenerationSettings(sampling=sampling),
        voice="bench",
        voices_dir=folder,
        audio_streaming=audio_streaming,
    )
    loaded = LoadedBark(
        model, SimpleNamespace(tokenizer=tokenizer), folder, device, dtype, fast, precision=precision
    )
    engine = BarkEngine(settings, loaded=loaded)
    with socket.socket() as probe:  # a free loopback port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = AsyncTcpServer("127.0.0.1", port)
    await server.start(lambda reader, writer: BarkEventHandler(reader, writer, engine))
    return server, engine, f"tcp://127.0.0.1:{port}"


async def _request(uri: str, text: str) -> tuple[float, float, float]:
    """(time to first audio-chunk, total time, audio seconds) for one synthesize over TCP."""
    from wyoming.client import AsyncClient
    from wyoming.tts import Synthesize

    started = time.perf_counter()
    first, samples = None, 0
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Synthesize(text).event())
        while True:
            event = await client.read_event()
            if event is None or event.type == "error":
                raise RuntimeError(f"request failed: {event}")
            if event.type == "audio-chunk":
                first = first or time.perf_counter() - started
                samples += len(event.payload) // TtsEngine.sample_width
            if event.type == "audio-stop":
                return first or 0.0, time.perf_counter() - started, samples / SAMPLE_RATE


async def _describe_ms(uri: str) -> float:
    from wyoming.client import AsyncClient
    from wyoming.info import Describe

    started = time.perf_counter()
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Describe().event())
        await client.read_event()
    return 1000 * (time.perf_counter() - started)


async def _contention(uri: str, engine, text: str, n_streams: int, max_batch: int, reps: int) -> dict:
    """One request's first audio alone, then beside ``n_streams`` streamed answers of 12 sentences
    (each making sentences ahead): how long a doorbell announcement waits behind other listeners."""
    alone = [(await _request(uri, text))[0] for _ in range(max(1, reps))]
    answer = " ".join(f"Sentence number {i} of a long answer is here." for i in range(12))
    streams = [asyncio.create_task(stream_answer(uri, answer)) for _ in range(n_streams)]
    while engine.get_status()["batch"]["running"] < min(n_streams, max_batch):  # the answers are under way
        await asyncio.sleep(0.05)
    describes: list[float] = []

    async def poll() -> None:
        while True:
            describes.append(await _describe_ms(uri))
            await asyncio.sleep(0.2)

    poller = asyncio.create_task(poll())
    beside = [(await _request(uri, text)) for _ in range(max(1, reps))]
    poller.cancel()
    for stream in streams:
        stream.cancel()
    await asyncio.gather(*streams, poller, return_exceptions=True)
    first_alone, first_beside = statistics.median(alone), statistics.median(r[0] for r in beside)
    return {
        "streams": n_streams,
        "sentence_seconds": round(beside[0][2], 2),
        "first_audio_alone_s": round(first_alone, 3),
        "first_audio_beside_s": round(first_beside, 3),
        "ratio": round(first_beside / first_alone, 2),
        "describe_p99_ms": round(_percentile(describes, 0.99), 1) if describes else None,
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def serve_and_measure(
    served: tuple, device: torch.device, args: argparse.Namespace, audio_streaming: str, max_batch: int
) -> dict:
    """--first-audio and --clients: the whole server path, client to first sound."""
    with tempfile.TemporaryDirectory() as folder:
        n_semantic = round(args.sentence_seconds * SEMANTIC_HZ)
        server, engine, uri = await _serve(
            served, device, n_semantic, Path(folder), audio_streaming, max_batch
        )
        try:
            text = "The washing machine is done."
            await _request(uri, text)  # warm
            streams = engine.audio_in_pieces()
            result: dict = {
                "audio_streaming": "on" if streams else "off",
                "max_batch": max_batch,
                "precision": engine.get_status()["precision"],
            }
            if args.first_audio:
                runs = [await _request(uri, text) for _ in range(args.reps)]
                result["first_audio"] = {
                    "sentence_seconds": round(runs[0][2], 2),
                    "first_audio_s": round(statistics.median(r[0] for r in runs), 4),
                    "total_s": round(statistics.median(r[1] for r in runs), 4),
                }
            if args.clients:

                async def client() -> list[tuple[float, float, float]]:
                    return [await _request(uri, text) for _ in range(args.requests)]

                started = time.perf_counter()
                runs = [
                    r for rs in await asyncio.gather(*(client() for _ in range(args.clients))) for r in rs
                ]
                wall = time.perf_counter() - started
                firsts = [r[0] for r in runs]
                result["clients"] = {
                    "ms_per_step": engine.get_status()["batch"].get("ms_per_step"),
                    "clients": args.clients,
                    "requests": len(runs),
                    "audio_seconds_per_second": round(sum(r[2] for r in runs) / wall, 3),
                    "first_audio_p50_s": round(_percentile(firsts, 0.5), 4),
                    "first_audio_p99_s": round(_percentile(firsts, 0.99), 4),
                }
            if args.contention:
                result["contention"] = await _contention(
                    uri, engine, text, args.contention, max_batch, args.reps
                )
            if args.fairness:
                from .fairness import fairness

                result["fairness"] = await fairness(uri, engine, args.fairness, args.reps)
            if args.stream_sentences:
                answer = " ".join(
                    f"Sentence number {i} of the answer is here." for i in range(args.stream_sentences)
                )
                result["stream"] = await stream_answer(uri, answer)
            return result
        finally:
            await server.stop()
            engine.close()
