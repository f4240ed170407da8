"""The sentence pipeline of one request: text arrives in pieces, sentences leave as each is
complete, and their audio is played in order while the next ones are made (``TextStream``).
The engine makes each sentence (``TtsEngine.start_sentence``); this file only decides when."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .text import SentenceSplitter

if TYPE_CHECKING:
    from .voices import Voice


class SentenceAudio(Protocol):
    """One sentence under way: started by the engine, played when its turn comes."""

    def play(self) -> AsyncIterator[bytes]:
        """Its PCM chunks, as they are made (raises what made it fail)."""

    def cancel(self) -> None:
        """Not wanted any more: stop making it."""


class SentenceMaker(Protocol):
    """What the pipeline asks of an engine (``contract.TtsEngine`` is one); declared here, so
    this file depends on nothing that depends on it."""

    lookahead: int  # sentences of one text made ahead of the one playing

    def start_sentence(self, sentence: str, voice: Voice, turn: Turn) -> SentenceAudio:
        """Start making one sentence now; it is played when its turn comes."""

    def silence(self) -> list[bytes]:
        """PCM chunks of the silence between sentences (none: no pause)."""


@dataclass(frozen=True, eq=False)
class Client:
    """Whose requests: one per connection (each is its own), and the address it came from (as
    ``connections.client_key`` counts it; None: none known). Turns go round addresses first, then
    round the connections of an address, so many connections, or many small sentences of one
    stream, do not take more turns than a client with one."""

    address: str | None = None


@dataclass(eq=False)
class Turn:
    """Whose sentence this is, and whether a listener is waiting for it now (``now`` is set: a
    request's first sentence, or the next once the one before has played) or it is made ahead.
    An engine that decodes many sentences at once serves those waiting now first."""

    client: Client
    now: threading.Event = field(default_factory=threading.Event)


class TextStream:
    """Text arrives in pieces; audio leaves sentence by sentence, as soon as each is complete.

    A sentence is spoken once it ends, or, for text that runs on without an end, once the buffer
    holds more than one generation can speak (it is then cut at a clause or between words). A
    completed sentence starts generating at once if fewer than ``1 + lookahead`` sentences of
    this stream are under way, so the next ones are made while one plays however the text is
    cut into pieces. Only text is buffered; what waits is bounded by what the caller adds.
    """

    def __init__(
        self, engine: SentenceMaker, voice: Voice, quick_start: bool = False, client: Client | None = None
    ) -> None:
        self.engine = engine
        self.voice = voice
        self.client = client or Client()
        self._splitter = SentenceSplitter(quick_start=quick_start)
        self._waiting: deque[str] = deque()  # complete sentences not started yet
        self._started: deque[tuple[SentenceAudio, Turn]] = deque()  # playing first, then ahead
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
            turn = Turn(client=self.client)
            if not self._started:  # nothing plays before it: the listener waits for this one
                turn.now.set()
            sentence = self.engine.start_sentence(self._waiting.popleft(), self.voice, turn)
            self._started.append((sentence, turn))

    async def audio(self) -> AsyncIterator[bytes]:
        """The audio of the sentences as they complete, until ``close`` and the last sentence."""
        self._playing = True
        try:
            while True:
                self._start_ahead()
                if not self._started:
                    if self._closed:
                        return
                    self._changed.clear()
                    await self._changed.wait()
                    continue
                if self._spoken:
                    for pcm in self.engine.silence():
                        yield pcm
                self._spoken = True
                sentence, turn = self._started[0]
                turn.now.set()  # its turn: the listener waits for it now
                async with aclosing(sentence.play()) as chunks:
                    async for pcm in chunks:
                        yield pcm
                self._started.popleft()
        except BaseException:  # stopped early (error, cancel, listener gone): drop the work ahead
            self._waiting.clear()
            while self._started:
                self._started.popleft()[0].cancel()
            raise
