"""The bench's fairness scenarios (``--fairness``): a short request's first audio from its own
address, alone and beside others who use the server hard, each from loopback addresses of its
own (127.0.0.x):

- ``one-address``: 16 connections from one address, each asking one sentence after another;
- ``three-addresses``: the same from 3 addresses (48 connections);
- ``streams``: 3 streamed 12-sentence answers (each making sentences ahead);
- ``trickle``: 3 streaming requests adding "Go. " every 50 ms (many short sentences).

The ratio (beside / alone) is what a doorbell announcement waits for behind the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from urllib.parse import urlparse

from wyoming.event import async_read_event, async_write_event
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

from .stream import stream_answer

SCENARIOS = ("one-address", "three-addresses", "streams", "trickle")
VICTIM = "127.0.0.9"
TRICKLE_S = 0.05


async def _connect(uri: str, address: str):
    parsed = urlparse(uri)
    return await asyncio.open_connection(parsed.hostname, parsed.port, local_addr=(address, 0))


async def first_audio(uri: str, text: str, address: str = VICTIM) -> float:
    """Seconds from sending ``synthesize`` to the first audio chunk (the rest is read too)."""
    reader, writer = await _connect(uri, address)
    started, first = time.perf_counter(), None
    try:
        await async_write_event(Synthesize(text).event(), writer)
        while (event := await async_read_event(reader)) is not None:
            if event.type == "error":
                raise RuntimeError(f"request failed: {event.data}")
            if event.type == "audio-chunk" and first is None:
                first = time.perf_counter() - started
            if event.type == "audio-stop":
                break
    finally:
        writer.close()
    if first is None:
        raise RuntimeError("no audio")
    return first


async def _one_shots(uri: str, address: str, text: str) -> None:
    """One connection asking for one sentence after another, for ever."""
    while True:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await first_audio(uri, text, address)


async def _trickle(uri: str, address: str) -> None:
    reader, writer = await _connect(uri, address)
    drain = asyncio.create_task(_read_all(reader))
    try:
        await async_write_event(SynthesizeStart().event(), writer)
        while True:
            await async_write_event(SynthesizeChunk("Go. ").event(), writer)
            await asyncio.sleep(TRICKLE_S)
    finally:
        with contextlib.suppress(ConnectionError):
            await async_write_event(SynthesizeStop().event(), writer)
        drain.cancel()
        writer.close()


async def _read_all(reader: asyncio.StreamReader) -> None:
    while await async_read_event(reader) is not None:
        pass


def _load(scenario: str, uri: str) -> list:
    answer = " ".join(f"Sentence number {i} of a long answer is here." for i in range(12))
    text = "Somebody else is speaking here."
    if scenario == "one-address":
        return [_one_shots(uri, "127.0.0.2", text) for _ in range(16)]
    if scenario == "three-addresses":
        return [_one_shots(uri, f"127.0.0.{n}", text) for n in (2, 3, 4) for _ in range(16)]
    if scenario == "streams":
        return [_streams_forever(uri, answer) for _ in range(3)]
    if scenario == "trickle":
        return [_trickle(uri, f"127.0.0.{n}") for n in (2, 3, 4)]
    raise ValueError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")


async def _streams_forever(uri: str, answer: str) -> None:
    while True:
        await stream_answer(uri, answer)


async def fairness(uri: str, engine, scenarios: list[str], reps: int, text: str = "Hi.") -> dict:
    """First audio of ``text`` alone, then beside each scenario's load: medians of ``reps``."""
    alone = statistics.median([await first_audio(uri, text) for _ in range(max(1, reps))])
    result: dict = {"first_audio_alone_s": round(alone, 3)}
    for scenario in scenarios:
        load = [asyncio.create_task(work) for work in _load(scenario, uri)]
        try:
            deadline = time.perf_counter() + 60
            while engine.get_status()["batch"]["running"] < 2 and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # the load is under way, its sentences at all stages
            beside = [await first_audio(uri, text) for _ in range(max(1, reps))]
        finally:
            for task in load:
                task.cancel()
            await asyncio.gather(*load, return_exceptions=True)
        while engine.get_status()["sentences_pending"]:  # the next scenario starts on a quiet server
            await asyncio.sleep(0.1)
        median = statistics.median(beside)
        result[scenario] = {
            "first_audio_beside_s": round(median, 3),
            "worst_s": round(max(beside), 3),
            "ratio": round(median / alone, 2),
        }
    return result
