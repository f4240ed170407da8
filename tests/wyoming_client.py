"""Test-side helpers: talk to the server with wyoming's own client and collect audio."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncClient
from wyoming.event import Event

TIMEOUT = 60.0


@dataclass
class AudioResult:
    """What came back for one request, in order."""

    events: list[Event] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return [event.type for event in self.events]

    @property
    def chunks(self) -> list[AudioChunk]:
        return [AudioChunk.from_event(e) for e in self.events if AudioChunk.is_type(e.type)]

    @property
    def audio(self) -> bytes:
        return b"".join(chunk.audio for chunk in self.chunks)

    @property
    def samples(self) -> int:
        return len(self.audio) // 2

    @property
    def start(self) -> AudioStart:
        return AudioStart.from_event(next(e for e in self.events if AudioStart.is_type(e.type)))

    def error(self) -> Event | None:
        return next((e for e in self.events if e.type == "error"), None)


async def read_until(client: AsyncClient, *last: str, timeout: float = TIMEOUT) -> AudioResult:
    """Read events until one of type ``last`` (or an error) arrives."""
    result = AudioResult()
    while True:
        event = await asyncio.wait_for(client.read_event(), timeout)
        assert event is not None, f"connection closed after {result.types}"
        result.events.append(event)
        if event.type in last or event.type == "error":
            return result


async def status(uri: str) -> dict:
    """The server's ``bark-status`` answer."""
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Event("bark-status"))
        event = await asyncio.wait_for(client.read_event(), TIMEOUT)
    assert event is not None and event.type == "bark-status"
    return event.data
