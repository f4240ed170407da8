"""One Wyoming connection: describe, synthesize and streaming synthesis."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, Coroutine
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from . import metrics
from .connection import IdleVerdict, serve_connection
from .connections import ConnectionLimits, client_key
from .contract import TtsEngine
from .describe import build_info
from .errors import SynthesisCancelled, TtsError, UnknownVoice, for_client, quoted
from .protocol import BarkStatus, parse_event
from .proxy import ProxyRefused, client_address
from .sentences import Client, TextStream
from .settings import ServerSettings
from .text import clean_text
from .voices import Voice

_LOGGER = logging.getLogger(__name__)

DEFAULT_SERVER = ServerSettings()

# Requests (synthesize, or a streaming request from synthesize-start) that may wait for their turn
# on one connection; each holds at most --max-chars of text, so this bounds a connection's memory.
MAX_QUEUED_REQUESTS = 16
# An empty text still gets one chunk: Home Assistant writes its WAV header at the first chunk.
EMPTY_AUDIO = bytes(2 * TtsEngine.sample_rate // 10)  # 0.1 s of silence

# Fixed for the whole connection: Home Assistant builds its WAV header from the first audio-start.
AUDIO_FORMAT = {
    "rate": TtsEngine.sample_rate,
    "width": TtsEngine.sample_width,
    "channels": TtsEngine.channels,
}


@dataclass
class _Request:
    """One request's answer to the client: a synthesize, or a start...stop streaming request."""

    voice: Voice | None  # resolved once, when the request opens (None: refused at its start)
    text: TextStream | None = None  # streaming requests only, while text may still come
    chars: int = 0  # text received so far (streaming)
    queued: bool = False  # its work was queued (else synthesize-stop is answered at once)
    started: bool = False  # audio-start sent
    failed: bool = False  # an error was sent: drop the rest of this request
    refusal: Error | None = None  # sent once the audio made before it has gone out
    stopped: asyncio.Event = field(default_factory=asyncio.Event)  # synthesize-stop came
    kind: str = "oneshot"  # or streaming (for the metrics)
    opened: float = field(default_factory=time.monotonic)
    outcome: str | None = None  # ok, cancelled or an error code, once it ended

    def ended(self, outcome: str) -> None:
        """Count the request's end, once."""
        if self.outcome is None:
            self.outcome = outcome
            metrics.request_ended(self.kind, outcome)


@contextlib.contextmanager
def _counted(request: _Request):
    """Count ``request``'s end however its work ends: cancelled when the client goes away, else
    ok or other (unless it was counted with its own outcome before)."""
    try:
        yield
    except (ConnectionError, asyncio.CancelledError):
        request.ended("cancelled")
        raise
    finally:
        request.ended("other" if request.failed else "ok")


class BarkEventHandler(AsyncEventHandler):
    """Answers describe at once; queues synthesis so it never holds up reading events.

    Requests run one after another on this connection's worker task. A streaming request is one
    request: its chunks only add text to its ``TextStream``, which starts each sentence as it
    completes, so a client may send any number of chunks within ``--max-chars``.

    A one-shot ``synthesize`` that is refused or fails ends with its ``error`` and then the
    connection closing: Home Assistant ignores ``error`` events and, without ``audio-stop``, would
    wait for ever (it sets no timeout on synthesis); a closed connection is how it learns that
    there is no audio. A streaming request ends with ``synthesize-stopped`` as always.
    """

    def __init__(
        self,
        reader,
        writer,
        engine: TtsEngine,
        *,
        settings: ServerSettings = DEFAULT_SERVER,
        limits: ConnectionLimits | None = None,
    ) -> None:
        super().__init__(reader, writer)
        self.engine = engine
        self.settings = settings
        self.limits = limits  # shared by all connections; None: no limits (tests, bench)
        self._streaming: _Request | None = None  # the open streaming request, if any
        self._jobs: asyncio.Queue[Coroutine[Any, Any, None]] = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        peer = writer.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) and peer else None  # None: a unix socket
        # Who this connection is, for fair turns and the per-address cap.
        self.client = Client(address=client_key(self.peer))

    async def run(self) -> None:
        """wyoming's loop, replaced on every transport by ours (``connection.py``): the PROXY
        header where a trusted balancer sends one, admission, a bounded reader, the idle timeout."""
        first = b""
        if self.settings.proxy_protocol:
            wait = self.limits.idle_timeout if self.limits else None
            try:
                address, first = await client_address(
                    self.reader, self.peer, self.settings.trusted_proxies, wait
                )
            except ProxyRefused:
                self.writer.close()
                return
            self.client = Client(address=client_key(address))
        await serve_connection(self, self.writer, self.limits, self.client.address, first)

    @staticmethod
    def is_work(event: Event) -> bool:
        """Does ``event`` ask for work? Only work keeps a connection from being idle: not a ping,
        an event we do not know, or a chunk of blank text."""
        if SynthesizeChunk.is_type(event.type):
            text = (event.data or {}).get("text")
            return isinstance(text, str) and bool(text.strip())
        return any(kind.is_type(event.type) for kind, _ in BarkEventHandler._acts if kind is not Ping)

    def on_idle(self) -> IdleVerdict:
        """The client has sent no work for --idle-timeout: what now?"""
        request = self._streaming
        if request is not None and (request.text is None or request.text.idle):
            # A streaming request that sends no text and has nothing left to say would hold its
            # place (and the client's) for ever: end it.
            return "timeout"
        return "wait" if self._in_flight() else "close"

    async def answer_rest(self) -> None:
        """At the end of the client's stream: finish the requests it sent (a streaming request
        left open ends as if synthesize-stop had come)."""
        request, self._streaming = self._streaming, None
        if request is not None:
            if request.text is not None:
                request.text.close()
            request.stopped.set()
        if self._worker is not None and not self._worker.done():
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await self._worker

    def _in_flight(self) -> bool:
        """A request is open or being answered (then silence from the client is no idleness)."""
        return self._streaming is not None or (self._worker is not None and not self._worker.done())

    async def handle_event(self, event: Event) -> bool:
        _LOGGER.debug("Received %s (%d bytes of data)", quoted(event.type), len(str(event.data or "")))
        try:
            message = parse_event(event)
        except (KeyError, TypeError, ValueError, AttributeError) as err:  # the client's data, not our code
            await self.send_error_text(
                f"Malformed {quoted(event.type)} event: {quoted(str(err))}", "bad-event"
            )
            return True
        try:
            await self._dispatch(event, message)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:  # our bug, not the client's: say so, log it whole, keep the connection
            _LOGGER.exception("Handling a %s event failed", quoted(event.type))
            await self.send_error_text(
                f"Internal error handling {quoted(event.type)}; see the server log", "internal-error"
            )
        return True

    async def _dispatch(self, event: Event, message: Any) -> None:
        """Act on one event; ``message`` is its parsed form (``protocol.parse_event``). The wyoming
        spec: events a program does not know are ignored."""
        for kind, act in self._acts:
            if kind.is_type(event.type):
                await act(self, message)
                return
        _LOGGER.debug("Ignoring event of type %s", quoted(event.type))

    async def _describe(self, _: Describe) -> None:
        # Off the event loop: the custom voices folder may be large (or on a slow disk).
        info = await asyncio.to_thread(build_info, self.engine, self.settings.streaming)
        await self.write_event(info.event())

    async def _synthesize(self, synthesize: Synthesize) -> None:
        if self._streaming is not None:
            # Home Assistant repeats the whole text for older servers while streaming.
            _LOGGER.debug("Ignoring synthesize during a streaming request")
        elif not await self._busy("oneshot"):
            opened = self._too_long(synthesize.text, 0) or self._open(synthesize.voice)
            if isinstance(opened, Error):
                metrics.request_ended("oneshot", opened.code or "other")
                self._submit(self._refuse(opened))  # in turn, after the audio queued before it
            else:
                self._submit(self._speak_text(opened, clean_text(synthesize.text)))

    async def _synthesize_start(self, start: SynthesizeStart) -> None:
        if self._streaming is not None:
            await self.send_error_text("synthesize-start while a streaming request is open", "bad-order")
            return
        if await self._busy("streaming"):
            self._streaming = _Request(voice=None, failed=True)
            return
        request = self._open(start.voice)
        if isinstance(request, Error):
            metrics.request_ended("streaming", request.code or "other")
            await self._send_error(request)
            self._streaming = _Request(voice=None, failed=True)
            return
        request.kind = "streaming"
        self._streaming = request
        request.text = self.engine.open_stream(request.voice, quick_start=True, client=self.client)
        request.queued = True
        self._submit(self._speak_streamed(request, request.text))

    async def _synthesize_chunk(self, chunk: SynthesizeChunk) -> None:
        request = self._streaming
        if request is None:
            await self.send_error_text("synthesize-chunk without synthesize-start", "bad-order")
        elif request.text is not None:
            request.refusal = self._too_long(chunk.text, request.chars)
            if request.refusal is not None:  # what came before is still spoken, then the error
                request.text.close(speak_rest=False)
                request.text = None
            else:
                request.chars += len(chunk.text)
                request.text.add(clean_text(chunk.text))

    async def _synthesize_stop(self, _: SynthesizeStop) -> None:
        if self._streaming is None:
            await self.send_error_text("synthesize-stop without synthesize-start", "bad-order")
            return
        request, self._streaming = self._streaming, None
        if request.text is not None:
            request.text.close()
        request.stopped.set()
        if not request.queued:  # refused at its start: nothing of it is waiting
            await self.write_event(SynthesizeStopped().event())

    async def _ping(self, ping: Ping) -> None:
        await self.write_event(Pong(text=ping.text).event())

    async def _status(self, _: BarkStatus) -> None:
        verdict = await self.engine.health_check()
        details = {
            **verdict.details,
            "model": for_client(str(verdict.details["model"])),  # no server paths to clients
            "last_error": for_client(verdict.details["last_error"] or "") or None,
            "tasks": len(asyncio.all_tasks()),
            "python_threads": threading.active_count(),  # "threads" is the engine's (torch's)
        }
        status = BarkStatus(healthy=verdict.healthy, health=for_client(verdict.message), details=details)
        await self.write_event(status.event())

    _acts = (
        (Describe, _describe),
        (Synthesize, _synthesize),
        (SynthesizeStart, _synthesize_start),
        (SynthesizeChunk, _synthesize_chunk),
        (SynthesizeStop, _synthesize_stop),
        (Ping, _ping),
        (BarkStatus, _status),
    )

    def _too_long(self, text: str, so_far: int) -> Error | None:
        """The error for text beyond --max-chars (``so_far``: what the request sent before)."""
        if so_far + len(text) <= self.settings.max_chars:
            return None
        return Error(
            text=f"Text of {so_far + len(text)} characters exceeds the limit of {self.settings.max_chars} (--max-chars)",
            code="text-too-long",
        )

    def _open(self, requested: SynthesizeVoice | None) -> _Request | Error:
        """The request's voice: its name, else its language's default (the wyoming spec), else ours.

        A voice that does not exist (a custom voice whose file was removed, say) is spoken with
        our default, with a warning in the log: Home Assistant turns an error into an empty HTTP
        500, and a pipeline should keep speaking."""
        if requested is None or not (requested.name or requested.language):
            return _Request(voice=self.engine.resolve_voice(None))
        try:
            voice = self.engine.resolve_voice(requested.name, requested.language)
        except UnknownVoice as err:
            voice = self.engine.resolve_voice(None)
            _LOGGER.warning("%s Speaking with %s instead", err, voice.name)
        except TtsError as err:
            return Error(text=str(err), code=err.code)
        return _Request(voice=voice)

    # --- queued work, run in order on this connection's worker task ---

    async def _busy(self, kind: str) -> bool:
        """Bound the work one connection can queue: a flooding client gets errors, not memory."""
        if self._jobs.qsize() < MAX_QUEUED_REQUESTS:
            return False
        metrics.request_ended(kind, "busy")
        await self.send_error_text(
            f"More than {MAX_QUEUED_REQUESTS} requests queued on this connection", "busy"
        )
        return True

    def _submit(self, job: Coroutine[Any, Any, None]) -> None:
        self._jobs.put_nowait(job)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="bark synthesis")

    async def _work(self) -> None:
        try:
            while not self._jobs.empty():
                await self._jobs.get_nowait()
        except ConnectionError:
            _LOGGER.debug("Client went away during synthesis")

    async def _speak_text(self, request: _Request, text: str) -> None:
        with _counted(request):
            await self._speak(request, self.engine.speak(text, request.voice, client=self.client))
            if request.failed:
                await self._close_after_failure()
            else:
                request.ended("ok")  # counted before the client hears audio-stop
                await self._finish(request, streaming=False)

    async def _refuse(self, error: Error) -> None:
        await self._send_error(error)
        await self._close_after_failure()

    async def _close_after_failure(self) -> None:
        """End a failed one-shot request the way Home Assistant notices (see the class)."""
        _LOGGER.debug("Closing the connection after a failed synthesize")
        self._drop_queued()
        await self.stop()

    async def _speak_streamed(self, request: _Request, text: TextStream) -> None:
        """A streaming request: its audio while text still comes, then the answer to synthesize-stop."""
        with _counted(request):
            await self._speak(request, text.audio())
            if request.refusal is not None and not request.failed:
                request.failed = True
                request.ended(request.refusal.code or "other")
                await self._send_error(request.refusal)
            await request.stopped.wait()
            request.ended("other" if request.failed else "ok")  # before the client hears the end
            await self._finish(request, streaming=True)

    async def _speak(self, request: _Request, chunks: AsyncGenerator[bytes, None]) -> None:
        if request.failed:
            await chunks.aclose()
            return
        try:
            async with aclosing(chunks):
                async for pcm in chunks:
                    if not request.started:
                        metrics.FIRST_AUDIO.labels(request.kind).observe(time.monotonic() - request.opened)
                        await self.write_event(AudioStart(**AUDIO_FORMAT).event())
                        request.started = True
                    await self.write_event(AudioChunk(audio=pcm, **AUDIO_FORMAT).event())
        except SynthesisCancelled:
            request.failed = True
            request.ended("cancelled")
        except TtsError as err:
            request.failed = True
            request.ended(err.code)
            await self.send_error_text(str(err), err.code)
        except (ConnectionError, asyncio.CancelledError):
            request.ended("cancelled")
            raise
        except Exception as err:  # one bad request must not end the connection
            _LOGGER.exception("Synthesis failed")
            request.failed = True
            request.ended("synthesis-failed")
            await self.send_error_text(f"Synthesis failed: {err}", "synthesis-failed")

    async def _finish(self, request: _Request, streaming: bool) -> None:
        if not request.failed:
            if not request.started:  # no speakable text: a short silence, so it is a valid WAV
                await self.write_event(AudioStart(**AUDIO_FORMAT).event())
                await self.write_event(AudioChunk(audio=EMPTY_AUDIO, **AUDIO_FORMAT).event())
            await self.write_event(AudioStop().event())
        if streaming:
            await self.write_event(SynthesizeStopped().event())

    async def send_error_text(self, text: str, code: str) -> None:
        await self._send_error(Error(text=text, code=code))

    async def _send_error(self, error: Error) -> None:
        _LOGGER.warning("Error sent to client: %s", error.text)
        with contextlib.suppress(ConnectionError):
            await self.write_event(Error(text=for_client(error.text), code=error.code).event())

    async def disconnect(self) -> None:
        """Stop this connection's synthesis; the engine's cancel flag ends its generation early."""
        if self._worker is not None:
            self._worker.cancel()
        self._drop_queued()

    def _drop_queued(self) -> None:
        while not self._jobs.empty():
            self._jobs.get_nowait().close()
