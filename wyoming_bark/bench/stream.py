"""The bench's streamed answer: an LLM answer sent as Home Assistant sends it, heard in real time.

Home Assistant forwards an LLM's answer as ``synthesize-start``, a first chunk of more than 60
characters, then one ``synthesize-chunk`` per delta (a few characters each), the full text again
as ``synthesize``, and ``synthesize-stop``, while it plays the audio that comes back. What a
listener notices is the wait for the first sound and every pause after it, when the next
sentence is not ready as the previous one ends: the player here starts at the first chunk,
plays in real time and counts how long it waited for audio after that.
"""

from __future__ import annotations

import asyncio
import time

from wyoming.audio import AudioChunk
from wyoming.client import AsyncClient
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

from ..contract import TtsEngine

FIRST_CHUNK = 64  # characters in Home Assistant's first chunk
DELTA = 4  # characters per later delta
DELTA_PAUSE = 0.02  # seconds between deltas (an LLM streaming ~50 tokens per second)
STALL = 0.01  # a wait shorter than this is not heard as a pause


def playback(chunks: list[tuple[float, int]]) -> dict:
    """A real-time player fed (arrival time, samples) chunks: the pauses it had to make."""
    clock: float | None = None
    pauses: list[float] = []
    for arrival, samples in chunks:
        if clock is None:
            clock = arrival
        elif arrival - clock > STALL:
            pauses.append(arrival - clock)
            clock = arrival
        clock = max(clock, arrival) + samples / TtsEngine.sample_rate
    return {
        "pauses": len(pauses),
        "paused_s": round(sum(pauses), 3),
        "longest_pause_s": round(max(pauses, default=0.0), 3),
    }


async def stream_answer(uri: str, text: str) -> dict:
    """Send ``text`` as Home Assistant's LLM deltas and play what comes back."""
    chunks: list[tuple[float, int]] = []
    started = time.perf_counter()
    last_delta = 0.0
    async with AsyncClient.from_uri(uri) as client:

        async def send() -> None:
            nonlocal last_delta
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk(text[:FIRST_CHUNK]).event())
            for start in range(FIRST_CHUNK, len(text), DELTA):
                await asyncio.sleep(DELTA_PAUSE)
                await client.write_event(SynthesizeChunk(text[start : start + DELTA]).event())
            last_delta = time.perf_counter() - started
            await client.write_event(Synthesize(text).event())
            await client.write_event(SynthesizeStop().event())

        sender = asyncio.create_task(send())
        try:
            while True:
                event = await client.read_event()
                if event is None or event.type == "error":
                    raise RuntimeError(f"streamed answer failed: {event}")
                if AudioChunk.is_type(event.type):
                    chunks.append((time.perf_counter(), len(event.payload or b"") // TtsEngine.sample_width))
                if event.type == "synthesize-stopped":
                    break
        finally:
            sender.cancel()
    audio_s = sum(samples for _, samples in chunks) / TtsEngine.sample_rate
    return {
        "characters": len(text),
        "audio_s": round(audio_s, 2),
        "first_audio_s": round(chunks[0][0] - started, 3) if chunks else None,
        "last_delta_s": round(last_delta, 3),
        "total_s": round(time.perf_counter() - started, 3),
        **playback(chunks),
    }
