"""Custom voice prompts read off the path every sentence takes, with a deadline.

A custom voice file lives in a folder others can write to, perhaps on a network share: its read
can be slow or hang (a stalled mount). So it is read on threads of its own, never on the I/O
thread that prepares every sentence, and a sentence waits for it ``READ_TIMEOUT_S`` at most: a
stuck file fails the requests that use it, and nobody else's. Built-in voices come from the model
folder and are read where the sentence is prepared.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import VoiceError, quoted
from .prompts import Prompt
from .voices import Voice, VoiceLibrary

_LOGGER = logging.getLogger(__name__)

READ_TIMEOUT_S = 10.0
READ_THREADS = 2  # stuck reads hold these; the others' voices keep coming from the memory cache


class VoiceReader:
    """Reads custom voices' prompts for ``library``; ``stuck()`` says how many reads overran."""

    def __init__(self, library: VoiceLibrary, timeout: float = READ_TIMEOUT_S) -> None:
        self.library = library
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="bark-voices")
        self._reading: dict[int, float] = {}  # id of a read under way -> when it began

    async def prompt(self, voice: Voice, model_dir: Path) -> Prompt:
        """The prompt of custom ``voice``; raises ``VoiceError`` (``VoiceGone`` when the file was
        removed) or, past the deadline, a ``VoiceError`` saying so."""
        began = time.monotonic()
        token = id(object())
        self._reading[token] = began

        def read() -> Prompt:
            try:
                return self.library.load(voice, model_dir)
            finally:
                self._reading.pop(token, None)

        future = asyncio.get_running_loop().run_in_executor(self._pool, read)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except asyncio.TimeoutError:
            _LOGGER.error("Reading voice file %s took over %g s; it is not used", quoted(voice.path.name),
                          self.timeout)  # fmt: skip
            raise VoiceError(
                f"Voice {quoted(voice.name)}: its file could not be read within {self.timeout:g} s"
            ) from None

    def stuck(self) -> int:
        """Reads past their deadline now (for status)."""
        now = time.monotonic()
        return sum(now - began > self.timeout for began in list(self._reading.values()))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
