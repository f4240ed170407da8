"""A sentence as the scheduler takes it (``SpeechRequest``: prepared, on the device) and as
the caller gets it back (``AudioStream``: its audio, on the caller's event loop); and ``Job``,
the scheduler's own record of a running program."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .program import Prefill, Program, SamplingSettings, Step

DONE = None  # what ``emit`` gets after a program's last audio

_NOW = threading.Event()  # the default class: a listener waits for it now
_NOW.set()


@dataclass(eq=False)
class Job:
    """One program and where its output goes.

    ``emit`` is called with each audio piece (a float array), then with ``DONE`` or with the
    exception that ended the program (``Cancelled`` once ``cancel`` is set) — on the audio thread
    (CUDA) or the scheduler thread (CPU).
    """

    program: Program
    emit: Callable[[Any], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    row: int = -1
    op: Prefill | Step | tuple[Prefill | Step, ...] | None = None  # waiting for an answer
    answer: Any = None
    error: BaseException | None = None  # to raise inside the program at its next advance
    failed: bool = False  # making its audio failed: nothing more goes to the listener
    # Set: a listener waits for this sentence now; clear: it is made ahead (see Scheduler._admit).
    now: threading.Event = field(default_factory=lambda: _NOW)
    client: object = None  # whose sentence: equals are served round-robin by client
    restart: Callable[[], Program] | None = None  # the program anew, exactly (see Scheduler._preempt)
    released: bool = False  # it has released audio (then it cannot start again unheard)
    admitted: int = 0  # when it last got a row
    answered: int = 0  # the step that last answered its request (turns within an address)


@dataclass(frozen=True, kw_only=True, eq=False)
class SpeechRequest:
    """A sentence prepared for ``Scheduler.submit``: tokenized, its voice prompt and inputs already
    on the core's device (made off the decode thread), its seed fixed (a restart is exact)."""

    input_ids: torch.Tensor  # (1, T)
    attention_mask: torch.Tensor
    history: dict[str, torch.Tensor] | None  # the voice prompt
    sampling: SamplingSettings
    seed: int
    in_pieces: bool = False  # release audio inside the sentence (see ``FastBark.speech``)
    cancel: threading.Event = field(default_factory=threading.Event)
    now: threading.Event = _NOW  # set: a listener waits for it now; clear: made ahead
    client: object = None  # whose sentence: equals are served round-robin by client


class AudioStream:
    """A submitted sentence's audio pieces (float arrays), read on the event loop that submitted
    it: one queue, filled from the scheduler's threads. Ends by raising what ended the program
    (``Cancelled`` once cancelled); a reader that stops early cancels the sentence."""

    def __init__(self, cancel: threading.Event) -> None:
        self._cancel = cancel
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue[Any] = asyncio.Queue()

    def emit(self, item: Any) -> None:
        """A piece, ``DONE`` or the exception that ended it (called on the scheduler's threads)."""
        with contextlib.suppress(RuntimeError):  # the loop is gone at shutdown
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)

    def cancel(self) -> None:
        self._cancel.set()

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        finished = False
        try:
            while (item := await self._items.get()) is not DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
            finished = True
        finally:
            if not finished:
                self._cancel.set()
