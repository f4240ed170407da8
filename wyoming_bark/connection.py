"""One connection's life, the same on every transport: admission (``ConnectionLimits``), the
bounded read loop (``protocol.read_event``), the idle timeout, and the end.

wyoming's TCP and unix servers call a handler's ``run()``; its stdio server calls
``handle_event`` itself with wyoming's own unbounded reader, so ``StdioServer`` runs the
connection through ``run()`` too: a header announcing a terabyte on stdin is an error there as
on TCP.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Literal, Protocol

from wyoming.event import Event, async_get_stdin
from wyoming.server import AsyncServer, AsyncStdioServer, HandlerFactory

from . import metrics
from .connections import ConnectionLimits
from .protocol import IdleTimeout, ProtocolError, read_event

_LOGGER = logging.getLogger(__name__)

IdleVerdict = Literal["close", "wait", "timeout"]


class Connection(Protocol):
    """What the loop asks of the handler on the other end."""

    reader: asyncio.StreamReader

    def is_work(self, event: Event) -> bool: ...
    async def handle_event(self, event: Event) -> bool: ...
    async def send_error_text(self, text: str, code: str) -> None: ...
    def on_idle(self) -> IdleVerdict: ...
    async def answer_rest(self) -> None: ...
    async def disconnect(self) -> None: ...


async def serve_connection(
    connection: Connection,
    writer: asyncio.StreamWriter,
    limits: ConnectionLimits | None,
    key: str | None,
    first: bytes = b"",
) -> None:
    """Admit, read (bounded) and hand over events until the client goes, errs or idles.

    Only work keeps a connection open (the handler's ``is_work``): a client that sends pings, unknown events or
    blank text is closed after ``--idle-timeout`` like a silent one. A client that closes its side
    after a request (``shutdown(SHUT_WR)``) still gets the whole answer. ``first``: the first
    event's first byte, where the PROXY header's reader took it."""
    if limits is not None:
        refusal = await limits.admit(key)
        if refusal is not None:
            metrics.REFUSED.labels(limits.refusal_reason(key)).inc()
            await connection.send_error_text(refusal, "busy")
            writer.close()
            return
    idle = limits.idle_timeout if limits else None
    last_work = time.monotonic()
    try:
        while True:  # wyoming's stop() closes the connection: the next read ends the loop
            left = None if idle is None else max(0.0, last_work + idle - time.monotonic())
            try:
                event = await read_event(connection.reader, limits, left, first)
                first = b""
            except ProtocolError as err:
                await connection.send_error_text(f"Bad event: {err}; closing the connection", err.code)
                break
            except IdleTimeout:
                verdict = connection.on_idle()
                if verdict != "wait":
                    metrics.IDLE_CLOSED.inc()
                if verdict == "timeout":
                    await connection.send_error_text(
                        f"No text for {idle:g} s in an open streaming request (--idle-timeout); "
                        "closing the connection",
                        "timeout",
                    )
                    break
                if verdict == "wait":  # text may still come, audio is going out
                    last_work = time.monotonic()
                    continue
                _LOGGER.debug("Closing a connection without work for %s s", idle)
                break
            if event is None:  # the client closed its side: answer what it asked, then close
                await connection.answer_rest()
                break
            if connection.is_work(event):
                last_work = time.monotonic()
            if not await connection.handle_event(event):
                break
    except ConnectionError:
        pass
    finally:
        if limits is not None:
            limits.release(key)
        await connection.disconnect()
        writer.close()


class StdioServer(AsyncStdioServer):
    """wyoming's stdio server, the connection run by the handler's ``run()`` (see the module)."""

    async def run(self, handler_factory: HandlerFactory) -> None:
        reader = await async_get_stdin()
        self._reader = reader
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        handler = handler_factory(reader, writer)
        self._register_stop_signal()
        try:
            await handler.run()
        finally:
            self._unregister_stop_signal()


def server_for(uri: str) -> AsyncServer:
    """The wyoming server for ``--uri``; every transport runs each connection's ``run()``."""
    return StdioServer() if uri.startswith("stdio://") else AsyncServer.from_uri(uri)
