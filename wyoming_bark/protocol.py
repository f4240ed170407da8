"""Reading Wyoming events from untrusted clients, with bounds.

wyoming's own reader trusts the header: it will wait for, and buffer, whatever ``data_length`` or
``payload_length`` a client claims. A server on a home network must not: this reader parses the
same wire format (a JSON header line, then optional JSON data and a binary payload) but refuses
oversized or malformed events with a ``ProtocolError`` that says what was wrong.
"""

from __future__ import annotations

import asyncio
import json

from wyoming.event import Event

STATUS_EVENT = "bark-status"  # our extension: ask for (and receive) the engine's status
MAX_DATA_BYTES = 1 << 20  # synthesize text lives here; --max-chars bounds it further
MAX_PAYLOAD_BYTES = 1 << 20  # a TTS server receives no audio


class ProtocolError(ValueError):
    """The client sent something that is not a well-formed, acceptable Wyoming event."""


def _length(header: dict, key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"{key} must be a non-negative integer, got {value!r}")
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


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The next event, ``None`` at a clean end of stream; raises ``ProtocolError`` on bad input."""
    try:
        line = await reader.readline()
    except ValueError as err:  # longer than the stream's limit (64 KiB) without a newline
        raise ProtocolError("event header line too long") from err
    if not line:
        return None
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
    try:
        if data_length:
            extra = _json(await reader.readexactly(data_length), "event data")
            if not isinstance(extra, dict):
                raise ProtocolError('event "data" must be a JSON object')
            data = {**data, **extra}
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError as err:
        raise ProtocolError("connection closed in the middle of an event") from err
    return Event(type=header["type"], data=data, payload=payload)
