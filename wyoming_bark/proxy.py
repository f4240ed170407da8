"""The client's own address behind a balancer: the PROXY protocol (v1 and v2, what HAProxy's
``send-proxy-v2`` sends first on each connection), parsed by the ``proxy-protocol`` library.

Only a trusted proxy's header (``--trusted-proxies``, loopback by default) is believed; a
connection from there without one (a health check or a tool on the same host) is served as
itself, and so is anyone else, whose header is then a bad event like any other garbage. A header
that is malformed, or not complete within ``HEADER_TIMEOUT_S``, closes the connection with one log
line. A health check's ``LOCAL`` header keeps the proxy's address.
"""

from __future__ import annotations

import asyncio
import logging

from proxyprotocol import ProxyProtocolIncompleteError
from proxyprotocol.detect import ProxyProtocolDetect

from . import metrics
from .connections import ip_of
from .errors import quoted

_LOGGER = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 5.0  # HAProxy sends the header with the connection
MAX_HEADER_BYTES = 4096  # v1: 107 bytes; v2: 16 and the addresses, and TLVs HAProxy may add


class ProxyRefused(Exception):
    """No believable header; ``reason`` is the metrics' label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def trusted(peer: str | None, proxies: tuple) -> bool:
    address = ip_of(peer)
    return address is not None and any(address in network for network in proxies)


async def client_address(
    reader: asyncio.StreamReader, peer: str | None, proxies: tuple, wait_s: float | None = None
) -> tuple[str | None, bytes]:
    """The client's address, and the bytes read that are not a header (the start of the first
    event, for the event reader). A trusted proxy's header gives its source (a ``LOCAL`` one, or
    none — a health check or tool on the proxy's host — the peer itself); anyone else is ``peer``.
    Raises ``ProxyRefused`` (logged, counted) for a bad or slow header."""
    if not trusted(peer, proxies):
        return peer, b""
    try:  # the first byte tells: a header begins with "PROXY " (v1) or "\r\n\r\n" (v2)
        first = await asyncio.wait_for(reader.read(1), wait_s)
    except asyncio.TimeoutError:
        return peer, b""  # the idle timeout then closes it
    if first not in (b"P", b"\r"):
        return peer, first
    try:
        result = await asyncio.wait_for(_read_header(reader, first), HEADER_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise _refused(
            "timeout", f"no whole PROXY header from proxy {peer} within {HEADER_TIMEOUT_S:g} s"
        ) from None
    except (
        ValueError,
        ProxyProtocolIncompleteError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
    ) as err:
        why = quoted(str(err) or type(err).__name__)
        raise _refused("malformed", f"a bad PROXY header from proxy {peer}: {why}") from None
    source = result.source if result.proxied else None
    host = getattr(source, "compressed", None) or (
        source[0] if isinstance(source, tuple) and source else None
    )
    return (str(host) if host else peer), b""


async def _read_header(reader: asyncio.StreamReader, first: bytes):
    """The header that begins with ``first``, read as far as the parser asks and never further
    (the library's own reader spins on a line cut short by the end of the stream)."""
    parser, data = ProxyProtocolDetect(), bytearray(first)
    while True:
        try:
            with memoryview(data) as view:
                return parser.unpack(view)
        except ProxyProtocolIncompleteError as incomplete:
            want = incomplete.want_read
        if want.want_bytes is not None:
            chunk = await reader.readexactly(want.want_bytes)
        else:
            chunk = await reader.readline()
            if not chunk.endswith(b"\n"):
                raise ValueError("the header ends before its line does")
        data += chunk
        if len(data) > MAX_HEADER_BYTES:
            raise ValueError(f"the header is longer than {MAX_HEADER_BYTES} bytes")


def _refused(reason: str, message: str) -> ProxyRefused:
    metrics.PROXY_REJECTED.labels(reason).inc()
    _LOGGER.warning("Connection closed: %s", message)
    return ProxyRefused(reason, message)
