"""Reading Wyoming events from untrusted clients, with bounds.

wyoming's own reader trusts the header: it will wait for, and buffer, whatever ``data_length`` or
``payload_length`` a client claims, for as long as the client likes. A server on a home network
must not: this reader parses the same wire format (a JSON header line, then optional JSON data and
a binary payload) but refuses oversized, malformed or slow events with a ``ProtocolError`` that
says what was wrong, and ``connections.ConnectionLimits`` bounds what all connections together
may hold.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wyoming.event import Event, Eventable
from wyoming.ping import Ping
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart

from .errors import quoted

if TYPE_CHECKING:
    from .connections import ConnectionLimits

STATUS_EVENT = "bark-status"  # our extension: ask for (and receive) the engine's status
MAX_DATA_BYTES = 1 << 20  # synthesize text lives here; --max-chars bounds it further
MAX_PAYLOAD_BYTES = 1 << 20  # a TTS server receives no audio
EVENT_TIMEOUT = 10.0  # seconds from an event's first byte to its last
BUFFER_BUDGET = 16 << 20  # bytes of large events being read, all connections together
SMALL_EVENT = 64 << 10  # data and payload up to this always pass (their sum is bounded by the
# connection cap); only larger ones draw on the budget, so half-sent large events cannot lock
# ordinary requests out


@dataclass
class BarkStatus(Eventable):
    """Our extension event ``bark-status``: asked with no data; answered with the engine's
    verdict (``healthy``, ``health``) and its state (``details``), sent as one flat object."""

    healthy: bool | None = None
    health: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def is_type(event_type: str) -> bool:
        return event_type == STATUS_EVENT

    def event(self) -> Event:
        if self.healthy is None:  # the question
            return Event(STATUS_EVENT)
        return Event(STATUS_EVENT, data={**self.details, "healthy": self.healthy, "health": self.health})

    @staticmethod
    def from_event(event: Event) -> BarkStatus:
        details = dict(event.data or {})
        return BarkStatus(
            healthy=details.pop("healthy", None), health=details.pop("health", None), details=details
        )


class ProtocolError(ValueError):
    """The client sent something that is not a well-formed, acceptable Wyoming event."""

    code = "bad-event"


class Overloaded(ProtocolError):
    """All connections together are reading as much as the server allows; try again later."""

    code = "busy"


class IdleTimeout(Exception):
    """No event began within the idle timeout."""


def _length(header: dict, key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"{key} must be a non-negative integer, got {quoted(value)}")
    if value > limit:
        raise ProtocolError(f"{key} {value} exceeds the limit of {limit} bytes")
    return value


def _json(raw: bytes, what: str):
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ProtocolError(f"{what} is not valid UTF-8") from err
    except ValueError as err:
        raise ProtocolError(f"{what} is not valid JSON: {err}") from err
    except RecursionError as err:  # json nests by recursion: 5,000 levels fit in 64 KiB
        raise ProtocolError(f"{what} is nested too deeply") from err


async def read_event(
    reader: asyncio.StreamReader,
    limits: ConnectionLimits | None = None,
    idle_timeout: float | None = None,
    first: bytes = b"",
) -> Event | None:
    """The next event, ``None`` at a clean end of stream.

    Raises ``IdleTimeout`` when no event begins within ``idle_timeout`` (None: wait forever) and
    ``ProtocolError`` on bad input, including an event not complete within ``limits.event_timeout``.
    """
    try:  # ``first``: its first byte, already read by someone else
        first = first or await asyncio.wait_for(reader.read(1), idle_timeout)
    except asyncio.TimeoutError as err:
        raise IdleTimeout from err
    if not first:
        return None
    if limits is None:
        return await _read_rest(reader, first, None)
    try:
        return await asyncio.wait_for(_read_rest(reader, first, limits), limits.event_timeout)
    except asyncio.TimeoutError as err:
        raise ProtocolError(f"event not complete within {limits.event_timeout:g} s") from err


async def _read_rest(reader: asyncio.StreamReader, first: bytes, limits: ConnectionLimits | None) -> Event:
    try:
        line = first + (await reader.readline() if first != b"\n" else b"")
    except ValueError as err:  # longer than the stream's limit (64 KiB) without a newline
        raise ProtocolError("event header line too long") from err
    if not line.endswith(b"\n"):
        raise ProtocolError("connection closed in the middle of an event header")
    header = _json(line, "event header")
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError('event header must be a JSON object with a string "type"')
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise ProtocolError('event "data" must be a JSON object')
    data_length = _length(header, "data_length", MAX_DATA_BYTES)
    payload_length = _length(header, "payload_length", MAX_PAYLOAD_BYTES)
    claimed = data_length + payload_length
    if limits is not None and claimed > SMALL_EVENT:
        if limits.buffered + claimed > limits.buffer_budget:
            raise Overloaded("the server is reading as much as it allows from all clients; try again")
        limits.buffered += claimed
    try:
        if data_length:
            extra = _json(await reader.readexactly(data_length), "event data")
            if not isinstance(extra, dict):
                raise ProtocolError('event "data" must be a JSON object')
            data = {**data, **extra}
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError as err:
        raise ProtocolError("connection closed in the middle of an event") from err
    finally:
        if limits is not None and claimed > SMALL_EVENT:
            limits.buffered -= claimed
    return Event(type=header["type"], data=data, payload=payload)


_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def parse_event(event: Event) -> Any:
    """The typed form of an event we act on (None for the others), with the fields a client could
    get wrong checked here, so that only the client's data, never our own code, can make an event
    "malformed"."""
    for kind in (Synthesize, SynthesizeStart, SynthesizeChunk, Ping):
        if kind.is_type(event.type):
            message = kind.from_event(event)
            if kind in (Synthesize, SynthesizeChunk) and not isinstance(message.text, str):
                raise TypeError("text must be a string")
            if kind is Ping and not isinstance(message.text, (str, type(None))):
                raise TypeError("text must be a string")
            if kind is Ping and message.text:  # echoed back: a lone surrogate cannot be sent as UTF-8
                message.text = _SURROGATE_RE.sub("\ufffd", message.text)
            voice = getattr(message, "voice", None)
            if voice is not None:
                for field in ("name", "language", "speaker"):
                    if not isinstance(getattr(voice, field), (str, type(None))):
                        raise TypeError(f"voice {field} must be a string")
            return message
    return None
