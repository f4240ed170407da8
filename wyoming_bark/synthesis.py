"""One sentence's life, in one line: looked up (the cache, or the same sentence being made for
another request), else claimed, prepared and submitted; then played as PCM chunks and, with the
cache on, kept. ``Sentence`` is a task plus a cancel handle; the engine does each step
(``Synthesizer``), the sentence only walks them in order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Protocol

from .cache import Claim
from .fast.request import AudioStream
from .pcm import SAMPLE_WIDTH, chunked
from .sentences import Turn
from .voices import Voice


class Synthesizer(Protocol):
    """The steps a sentence asks of its engine."""

    samples_per_chunk: int

    async def begin(self, sentence: Sentence) -> bytes | None:
        """Its cached audio; else None once it is submitted (``sentence.stream``, and
        ``sentence.claim`` where the cache is on)."""

    def audio(self, sentence: Sentence) -> AsyncIterator[bytes]:
        """Its PCM as the scheduler makes it; failures as ``TtsError``s."""

    def spoken(self, sentence: Sentence, samples: int, started: float) -> None:
        """Statistics and log lines for a sentence made and played."""


class Sentence:
    """One sentence under way (a ``SentenceAudio``): a short task begins it at once; ``play``
    then reads its audio when its turn comes; ``cancel`` ends it wherever it is."""

    def __init__(self, synthesizer: Synthesizer, text: str, voice: Voice, turn: Turn) -> None:
        self.text, self.voice, self.turn = text, voice, turn
        self.claim: Claim | None = None  # with the cache on: it is ours to make and keep
        self.stream: AudioStream | None = None
        self.limit = 0  # semantic tokens its speech may take (set when it is prepared)
        self._synthesizer = synthesizer
        self._task = asyncio.create_task(synthesizer.begin(self), name="bark sentence")
        # Its failure is raised by play(); one never played (cancelled ahead) is not an error.
        self._task.add_done_callback(lambda task: task.cancelled() or task.exception())

    async def play(self) -> AsyncIterator[bytes]:
        synthesizer = self._synthesizer
        size = synthesizer.samples_per_chunk
        try:
            cached = await self._task
            if cached is not None:
                for chunk in chunked(cached, size):
                    yield chunk
                return
            pieces: list[bytes] = []
            started, samples = time.monotonic(), 0
            async with aclosing(synthesizer.audio(self)) as made:
                async for pcm in made:
                    if self.claim is not None:
                        pieces.append(pcm)
                    samples += len(pcm) // SAMPLE_WIDTH
                    for chunk in chunked(pcm, size):
                        yield chunk
            synthesizer.spoken(self, samples, started)
            if self.claim is not None:
                claim, self.claim = self.claim, None
                await claim.keep(b"".join(pieces))
        finally:
            self._drop()  # failed or abandoned: those waiting for it make it themselves

    def cancel(self) -> None:
        self._task.cancel()
        if self.stream is not None:
            self.stream.cancel()
        self._drop()

    def _drop(self) -> None:
        if self.claim is not None:
            self.claim.drop()
            self.claim = None
