"""The engine contract: what any front end (Wyoming, or another) may ask of a TTS engine.

An engine implements a few primitives — resolve a voice, speak one sentence, stop, report status
and health — and inherits the rest: whole-text ``speak`` and buffered streaming
(``speak_streaming`` + ``flush``), both through the one ``TextStream`` implementation that the
Wyoming handler uses too. Subclasses with a ``name`` register themselves on import, so
``create_engine("bark", ...)`` finds them.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .text import SentenceSplitter
from .voices import Voice

ENGINES: dict[str, type[TtsEngine]] = {}


@dataclass
class HealthCheckResult:
    healthy: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Turn:
    """Whose sentence this is, and whether a listener is waiting for it now (``now`` is set: a
    request's first sentence, or the next once the one before has played) or it is made ahead.
    An engine that decodes many sentences at once serves those waiting now first."""

    client: object
    now: threading.Event = field(default_factory=threading.Event)


# The turn of the sentence being made, for the engine: set in the task that makes it.
SENTENCE_TURN: ContextVar[Turn | None] = ContextVar("sentence_turn", default=None)


class _Started:
    """A sentence whose audio is being made now, in a task, before it is its turn to play."""

    def __init__(self, chunks: AsyncIterator[bytes], turn: Turn) -> None:
        self.turn = turn
        self._queue: asyncio.Queue[bytes | Exception | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._pump(chunks))

    async def _pump(self, chunks: AsyncIterator[bytes]) -> None:
        SENTENCE_TURN.set(self.turn)  # this task's own context: the engine reads it
        try:
            async for pcm in chunks:
                self._queue.put_nowait(pcm)
        except Exception as err:  # noqa: BLE001 - raised again where the sentence is played
            self._queue.put_nowait(err)
        else:
            self._queue.put_nowait(None)

    async def play(self) -> AsyncIterator[bytes]:
        while (item := await self._queue.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item

    def cancel(self) -> None:
        self._task.cancel()


class TextStream:
    """Text arrives in pieces; audio leaves sentence by sentence, as soon as each is complete.

    A sentence is spoken once it ends, or, for text that runs on without an end, once the buffer
    holds more than one generation can speak (it is then cut at a clause or between words). A
    completed sentence starts generating at once if fewer than ``1 + lookahead`` sentences of
    this stream are under way, so the next ones are made while one plays however the text is
    cut into pieces. Only text is buffered; what waits is bounded by what the caller adds.
    """

    def __init__(self, engine: TtsEngine, voice: str | None, quick_start: bool = False) -> None:
        self.engine = engine
        self.voice = voice
        self._splitter = SentenceSplitter(quick_start=quick_start)
        self._waiting: deque[str] = deque()  # complete sentences not started yet
        self._started: deque[_Started] = deque()  # the one playing (first) and those made ahead
        self._closed = False
        self._playing = False  # nothing is made before someone listens (a request's turn comes)
        self._changed = asyncio.Event()
        self._spoken = False

    @property
    def idle(self) -> bool:
        """Nothing to say now: no sentence is waiting, being made or playing (only text may come)."""
        return not self._waiting and not self._started

    def add(self, chunk: str) -> None:
        """Buffer ``chunk``; sentences it completes start generating (up to the lookahead)."""
        self._queue(self._splitter.add(chunk))

    def close(self, speak_rest: bool = True) -> None:
        """No more text: the rest of the buffer becomes the last sentence(s), or is dropped."""
        self._queue(self._splitter.finish() if speak_rest else [])
        self._closed = True

    def _queue(self, sentences: Iterable[str]) -> None:
        self._waiting.extend(sentences)
        self._start_ahead()
        self._changed.set()

    def _start_ahead(self) -> None:
        while self._playing and self._waiting and len(self._started) <= self.engine.lookahead:
            turn = Turn(client=self)
            if not self._started:  # nothing plays before it: the listener waits for this one
                turn.now.set()
            self._started.append(
                _Started(self.engine.speak_sentence(self._waiting.popleft(), self.voice), turn)
            )

    async def audio(self) -> AsyncIterator[bytes]:
        """The stream's audio as its sentences complete, until ``close`` and the last sentence."""
        async for pcm in self._play(until_closed=True):
            yield pcm

    async def speak_streaming(self, chunk: str) -> AsyncIterator[bytes]:
        """Audio for the sentences this chunk completes (none if it completes none)."""
        self.add(chunk)
        async for pcm in self._play(until_closed=False):
            yield pcm

    async def flush(self) -> AsyncIterator[bytes]:
        """Audio for whatever text is still buffered."""
        self.close()
        async for pcm in self._play(until_closed=False):
            yield pcm

    async def _play(self, until_closed: bool) -> AsyncIterator[bytes]:
        self._playing = True
        try:
            while True:
                self._start_ahead()
                if not self._started:
                    if self._closed or not until_closed:
                        return
                    self._changed.clear()
                    await self._changed.wait()
                    continue
                if self._spoken:
                    for pcm in self.engine.silence():
                        yield pcm
                self._spoken = True
                self._started[0].turn.now.set()  # its turn: the listener waits for it now
                async for pcm in self._started[0].play():
                    yield pcm
                self._started.popleft()
        except BaseException:  # stopped early (error, cancel, listener gone): drop the work ahead
            self._waiting.clear()
            while self._started:
                self._started.popleft().cancel()
            raise


class TtsEngine(ABC):
    """A text-to-speech engine producing 16-bit mono PCM at ``sample_rate``."""

    name: ClassVar[str] = ""
    sample_rate: ClassVar[int] = 24_000
    sample_width: ClassVar[int] = 2
    channels: ClassVar[int] = 1
    lookahead: int = 0  # sentences of one text made ahead of the one playing

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            ENGINES[cls.name] = cls

    # --- primitives ---------------------------------------------------------------------

    @abstractmethod
    def resolve_voice(self, name: str | None, language: str | None = None) -> Voice:
        """The named voice, else the default of ``language``, else the default; raises ``UnknownVoice``."""

    @abstractmethod
    def speak_sentence(self, sentence: str, voice: str | None = None) -> AsyncIterator[bytes]:
        """PCM chunks for one sentence."""

    @abstractmethod
    def stop(self) -> None:
        """Cancel whatever is being synthesized now."""

    @abstractmethod
    async def health_check(self, synthesize: bool = False) -> HealthCheckResult:
        """Is the engine usable? With ``synthesize``, prove it by speaking a short phrase."""

    @abstractmethod
    def get_status(self) -> dict[str, Any]:
        """Model state and counters."""

    @abstractmethod
    def get_available_voices(self) -> list[Voice]:
        """Every voice a request may name."""

    @abstractmethod
    def set_voice(self, name: str) -> bool:
        """Make ``name`` the default voice; False (and no change) if it is unknown."""

    async def warm_up(self) -> None:
        """Get ready now (load models) instead of on the first request; failures are logged."""

    def silence(self) -> list[bytes]:
        """PCM chunks put between two sentences of one stream (none by default)."""
        return []

    # --- built on the primitives --------------------------------------------------------

    def open_stream(self, voice: str | None = None, quick_start: bool = False) -> TextStream:
        """A buffered streaming synthesis with ``voice`` (checked now).

        ``quick_start`` speaks a long first sentence up to its first clause boundary, so the first
        audio of a stream (text still arriving, e.g. from an LLM) comes sooner.
        """
        self.resolve_voice(voice)
        return TextStream(self, voice, quick_start)

    async def speak(self, text: str, voice: str | None = None) -> AsyncIterator[bytes]:
        """PCM chunks for a whole text, sentence by sentence."""
        stream = self.open_stream(voice)
        async for pcm in stream.speak_streaming(text):
            yield pcm
        async for pcm in stream.flush():
            yield pcm

    async def speak_streaming(self, chunk: str, voice: str | None = None) -> AsyncIterator[bytes]:
        """Single-stream convenience: buffer ``chunk`` in the engine's own stream."""
        stream = getattr(self, "_default_stream", None)
        if stream is None or stream.voice != voice:
            stream = self._default_stream = self.open_stream(voice)
        async for pcm in stream.speak_streaming(chunk):
            yield pcm

    async def flush(self) -> AsyncIterator[bytes]:
        """Speak what ``speak_streaming`` has buffered and end that stream."""
        stream, self._default_stream = getattr(self, "_default_stream", None), None
        if stream is not None:
            async for pcm in stream.flush():
                yield pcm


def create_engine(name: str, **kwargs: Any) -> TtsEngine:
    """An engine by its registered name (``bark``)."""
    try:
        return ENGINES[name](**kwargs)
    except KeyError:
        raise ValueError(f"Unknown engine '{name}'; available: {', '.join(sorted(ENGINES))}") from None
