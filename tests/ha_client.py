"""What Home Assistant 2026.11's ``wyoming`` integration does as a TTS client, replayed.

Written from reading its ``data.py`` and ``tts.py`` (``wyoming==1.10.2``): describe with retries
and a timeout per attempt; voices grouped per language and sorted by description, a new pipeline
taking the first; one-shot synthesis assembled into a WAV from the first chunk's format, until
``audio-stop``; and streaming synthesis while an LLM writes: ``synthesize-start``, one
``synthesize-chunk`` per delta, the full text again as ``synthesize`` (for servers without
streaming), ``synthesize-stop``, with audio read at the same time — a WAV header from
``audio-start``, then PCM — until ``synthesize-stopped``. It sends ``voice.name`` (and
``speaker`` only when configured), never ``language``. Stricter than Home Assistant in one way
unless asked to be exact (``get_tts_audio(..., exact=True)``): an ``error`` event fails here,
where Home Assistant ignores it and keeps reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
import wave
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

DESCRIBE_TIMEOUT = 5.0  # seconds per attempt
DESCRIBE_RETRIES = 3  # after the first attempt
RETRY_WAIT = 1.0


class HaError(Exception):
    """Where Home Assistant would log a failure and play nothing."""


async def describe(host: str, port: int) -> Info:
    """``load_wyoming_info``: 4 attempts of 5 s each."""
    for attempt in range(DESCRIBE_RETRIES + 1):
        try:
            async with AsyncTcpClient(host, port) as client, asyncio.timeout(DESCRIBE_TIMEOUT):
                await client.write_event(Describe().event())
                while True:
                    event = await client.read_event()
                    if event is None:
                        raise HaError("connection closed unexpectedly")
                    if Info.is_type(event.type):
                        return Info.from_event(event)
        except (TimeoutError, OSError, HaError):
            if attempt == DESCRIBE_RETRIES:
                raise
            await asyncio.sleep(RETRY_WAIT)
    raise AssertionError("unreachable")


def voices_by_language(info: Info) -> dict[str, list[tuple[str, str]]]:
    """Language -> [(description, voice name)], sorted as the voice picker shows them."""
    voices: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for program in info.tts:
        for voice in program.voices:
            for language in voice.languages:
                voices[language].append((voice.description or voice.name, voice.name))
    return {language: sorted(entries) for language, entries in voices.items()}


def pipeline_voice(info: Info, language: str) -> str:
    """The voice a new pipeline in ``language`` gets: the first one listed."""
    return voices_by_language(info)[language][0][1]


@dataclass
class WavResult:
    wav: bytes = b""
    chunks: int = 0
    first_audio: float | None = None  # monotonic time of the first audio-chunk
    events: list[str] = field(default_factory=list)

    def params(self) -> tuple[int, int, int, int]:
        """(rate, width, channels, frames) of the WAV, as a player would read it."""
        with wave.open(io.BytesIO(self.wav), "rb") as reader:
            return reader.getframerate(), reader.getsampwidth(), reader.getnchannels(), reader.getnframes()


class _WavAssembler:
    """One-shot: the WAV is opened at the first chunk, with that chunk's format. Streaming: at
    audio-start, with its format, and chunks before it are dropped (Home Assistant yields PCM only
    after the header it makes from audio-start)."""

    def __init__(self, result: WavResult, header_from_start: bool) -> None:
        self.result = result
        self.header_from_start = header_from_start
        self.buffer = io.BytesIO()
        self.writer: wave.Wave_write | None = None

    def _open(self, rate: int, width: int, channels: int) -> None:
        self.writer = wave.open(self.buffer, "wb")  # noqa: SIM115 - closed in close()
        self.writer.setframerate(rate)
        self.writer.setsampwidth(width)
        self.writer.setnchannels(channels)

    def start(self, start: AudioStart) -> None:
        if self.header_from_start and self.writer is None:
            self._open(start.rate, start.width, start.channels)

    def add(self, chunk: AudioChunk) -> None:
        if self.writer is None:
            if self.header_from_start:
                return
            self._open(chunk.rate, chunk.width, chunk.channels)
        if self.result.first_audio is None:
            self.result.first_audio = time.monotonic()
        self.writer.writeframes(chunk.audio)
        self.result.chunks += 1

    def close(self) -> WavResult:
        if self.writer is not None:
            self.writer.close()
        self.result.wav = self.buffer.getvalue()
        return self.result


def _voice(name: str | None, speaker: str | None) -> SynthesizeVoice | None:
    return SynthesizeVoice(name=name, speaker=speaker) if name is not None else None


async def get_tts_audio(
    host: str, port: int, message: str, voice: str | None = None, exact: bool = False
) -> WavResult | None:
    """One-shot synthesis (no timeout: Home Assistant sets none on synthesis connections).

    ``exact``: as Home Assistant, ``error`` events are ignored and a lost connection gives None
    (its ``(None, None)``: "no TTS audio"); otherwise both raise ``HaError``."""
    result = WavResult()
    wav = _WavAssembler(result, header_from_start=False)
    async with AsyncTcpClient(host, port) as client:
        await client.write_event(Synthesize(text=message, voice=_voice(voice, None)).event())
        try:
            await _receive(client, wav, until=AudioStop, ignore_errors=exact)
        except HaError:
            if exact:
                return None
            raise
    return wav.close()


async def _receive(
    client: AsyncTcpClient, wav: _WavAssembler, until: type, ignore_errors: bool = False
) -> None:
    """Audio into ``wav`` until an event of type ``until``; a lost connection (and, unless
    ``ignore_errors``, an ``error``) raises ``HaError``."""
    while True:
        event = await client.read_event()
        if event is None:
            raise HaError("connection lost")
        wav.result.events.append(event.type)
        if Error.is_type(event.type) and not ignore_errors:
            raise HaError(Error.from_event(event).text)
        if AudioStart.is_type(event.type):
            wav.start(AudioStart.from_event(event))
        elif AudioChunk.is_type(event.type):
            wav.add(AudioChunk.from_event(event))
        elif until.is_type(event.type):
            return


async def stream_tts_audio(
    host: str, port: int, deltas: AsyncIterator[str], voice: str | None = None
) -> tuple[WavResult, float]:
    """Streaming synthesis of an LLM answer; also returns when the last delta was sent."""
    result = WavResult()
    wav = _WavAssembler(result, header_from_start=True)
    last_delta = 0.0
    async with AsyncTcpClient(host, port) as client:

        async def write_text() -> None:
            nonlocal last_delta
            sent: list[str] = []
            await client.write_event(SynthesizeStart(voice=_voice(voice, None)).event())
            async for delta in deltas:
                sent.append(delta)
                await client.write_event(SynthesizeChunk(text=delta).event())
            last_delta = time.monotonic()
            await client.write_event(Synthesize(text="".join(sent), voice=_voice(voice, None)).event())
            await client.write_event(SynthesizeStop().event())

        writer = asyncio.create_task(write_text())
        try:
            await _receive(client, wav, until=SynthesizeStopped)  # Home Assistant disconnects here
        finally:
            if not writer.done():
                writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
    return wav.close(), last_delta


async def llm_deltas(text: str, first: int = 64, size: int = 4, pause: float = 0.005) -> AsyncIterator[str]:
    """An LLM answer as Home Assistant forwards it: a first chunk over 60 characters, then tiny deltas."""
    yield text[:first]
    for start in range(first, len(text), size):
        await asyncio.sleep(pause)
        yield text[start : start + size]
