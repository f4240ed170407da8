"""Continuous batching: many sentences decoded together on one GPU.

One scheduler thread owns the decode loop. Each sentence is a program (see ``generate.py``)
holding a cache row while it runs. Every iteration the scheduler advances each program to its
next request, answers all decode steps of a model with one batched (graph-replayed) step and
equal-length prefills with one pass. On CUDA the audio a program releases is made (fine stage,
EnCodec) by a second thread on a stream of its own while decoding goes on; on a CPU the scheduler
thread makes it between iterations (see ``_Releaser``). Either way it reaches the listener in
order. A new sentence joins at the next iteration, so it never waits for another one to finish —
only for a free row when ``max_batch`` sentences are already running.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .core import Core
from .program import (
    Audio,
    Cancelled,
    NonFiniteLogits,
    Prefill,
    Program,
    SamplingSettings,
    Step,
    reply,
    requests,
)

_LOGGER = logging.getLogger(__name__)

DONE = None  # what ``emit`` gets after a program's last audio
MAX_CLIENTS_REMEMBERED = 256
GIL_SWITCH_S = 0.0005  # Python's thread switch interval while a GPU scheduler runs


_NOW = threading.Event()
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
    urgent: threading.Event = field(default_factory=lambda: _NOW)
    client: object = None  # whose sentence: equals are served round-robin by client
    restart: Callable[[], Program] | None = None  # the program anew, exactly (see Scheduler._preempt)
    released: bool = False  # it has released audio (then it cannot start again unheard)
    admitted: int = 0  # when it last got a row


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
    urgent: threading.Event = _NOW  # set: a listener waits for it now; clear: made ahead
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


class _Releaser:
    """Makes released audio and hands every item of a job — audio to make, then ``DONE`` or an
    error — to its listener in the order it was put; after a failure to make audio the job is
    cancelled and gets nothing more.

    On CUDA it works on a thread (and a stream) of its own, so the GPU decodes while audio is made.
    On a CPU it works on the caller's thread, the scheduler's: both would share the same cores
    anyway, and PyTorch's OpenMP spins its idle workers only while a single thread in the process
    runs parallel work — with a second team alive, every small op of a decode step waits for its
    workers to wake (measured: docs/performance.md).
    """

    def __init__(self, device: torch.device | None, name: str) -> None:
        cuda = device is not None and device.type == "cuda"
        self._device = device
        self._stream = torch.cuda.Stream(device) if cuda else None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = None
        if cuda:
            self._thread = threading.Thread(target=self._loop, name=f"{name}-audio", daemon=True)
            self._thread.start()

    def put(self, job: Job, item: Any) -> None:
        if self._thread is None:
            self._deliver(job, item, None)
            return
        ready = None
        if isinstance(item, Audio):
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self._device))  # the work that made the codes
        self._queue.put((job, item, ready))

    def close(self) -> None:
        self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        _use_device(self._device)
        with torch.inference_mode():
            while (entry := self._queue.get()) is not None:
                self._deliver(*entry)

    def _deliver(self, job: Job, item: Any, ready) -> None:
        if job.failed:
            return
        if job.cancel.is_set():
            if isinstance(item, Audio):
                return
            if item is DONE:  # cancelled while its last audio was still to go out
                item = Cancelled()
        if isinstance(item, Audio):
            try:
                item = self._make(item, ready)
            except Exception as err:  # noqa: BLE001 - e.g. out of memory: this job ends
                job.failed = True
                job.cancel.set()
                item = err
        _emit(job, item)

    def _make(self, audio: Audio, ready) -> Any:
        if self._stream is None:
            return audio.make()
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(ready)
            return audio.make()  # ends with a copy to the host: its GPU work is done on return


class Scheduler:
    """Runs jobs on one thread; their model requests are answered by ``core.run``, batched.

    ``core`` is any ``Core``: ours, or ``TransformersCore``, whose programs ask for nothing and so
    are simply run one at a time."""

    def __init__(self, core: Core, name: str = "bark") -> None:
        self.core = core
        self.capacity = core.max_batch
        self._free = list(range(self.capacity))  # a heap: the lowest rows, the smallest graphs
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._served: dict[int, int] = {}  # id(client) -> admission count when last admitted
        self._admissions = 0
        self._wake = threading.Condition()
        self._closed = False
        device = core.device
        self._releaser = _Releaser(device, name)
        self.steps = 0  # batched decode iterations, for status
        self.preempted = 0  # sentences made ahead that gave their row to one waited for now
        self._compute_bound = device is None or device.type != "cuda"  # see _to_answer
        self.batched_tokens = 0
        self.busy_s = 0.0  # wall time of iterations that decoded, for status (ms per iteration)
        if device is not None and device.type == "cuda":
            # The decode loop waits on the GPU every iteration and then needs the GIL back at
            # once; by default Python makes it wait up to 5 ms for a busy audio or asyncio thread.
            sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_S))
        self._thread = threading.Thread(target=self._loop, name=f"{name}-batch", daemon=True)
        self._thread.start()

    def submit(self, request: SpeechRequest) -> AudioStream:
        """Queue a prepared sentence; its audio arrives on the returned stream, on the calling event
        loop. A sentence made ahead that has released nothing can give its row up and start again
        later, exactly (``_preempt``)."""
        stream = AudioStream(request.cancel)

        def program() -> Program:
            return self.core.speech(
                request.input_ids,
                request.attention_mask,
                request.history,
                request.sampling,
                request.seed,
                in_pieces=request.in_pieces,
            )

        job = Job(program(), stream.emit, request.cancel, urgent=request.urgent, client=request.client)
        job.restart = program
        self.enqueue(job)
        return stream

    def enqueue(self, job: Job) -> None:
        """Run ``job`` (the thread-level form of ``submit``: its ``emit`` is called on our threads)."""
        with self._wake:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._waiting.append(job)
            self._wake.notify()

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def classes(self) -> dict[str, int]:
        """Rows and queued sentences by class: a listener waits for them now, or made ahead."""
        with self._wake:
            running, waiting = list(self._running), list(self._waiting)
        now = sum(job.urgent.is_set() for job in running), sum(job.urgent.is_set() for job in waiting)
        return {
            "running_now": now[0],
            "running_ahead": len(running) - now[0],
            "waiting_now": now[1],
            "waiting_ahead": len(waiting) - now[1],
        }

    def cancel_all(self) -> None:
        """Cancel every sentence queued or running (they end with ``Cancelled``)."""
        with self._wake:
            for job in [*self._waiting, *self._running]:
                job.cancel.set()
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            for job in [*self._waiting, *self._running]:
                job.cancel.set()
            self._wake.notify()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        self._releaser.join(timeout)

    # --- the loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        _use_device(self.core.device)
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._closed and not self._waiting and not self._running:
                        self._wake.wait()
                    if self._closed:
                        break
                    self._admit()
                try:
                    started = time.perf_counter()
                    for job in list(self._running):
                        # answered (or new): on to its next request; cancelled: its row is free now,
                        # even while its request waits (a paused sentence made ahead)
                        if job.op is None or job.cancel.is_set():
                            self._advance(job)
                    if self._answer(self._to_answer()):
                        self.busy_s += time.perf_counter() - started
                except Exception as err:  # a bug here must not leave listeners hanging
                    _LOGGER.exception("Scheduler iteration failed; failing the sentences it ran")
                    for job in list(self._running):
                        job.program.close()
                        self._finish(job, err)
        with self._wake:  # closed: every listener still waiting hears so
            left, self._waiting = [*self._running, *self._waiting], deque()
        for job in left:
            job.program.close()
            self._releaser.put(job, Cancelled())
        self._releaser.close()

    def _next(self) -> Job:
        """The waiting job to admit: one a listener waits for now before any made ahead; among
        equals, the client served longest ago (round-robin), then the oldest."""
        pool = [job for job in self._waiting if job.urgent.is_set()] or self._waiting
        job = min(pool, key=lambda job: self._served.get(id(job.client), -1))
        self._waiting.remove(job)
        self._admissions += 1
        self._served[id(job.client)] = self._admissions
        if len(self._served) > MAX_CLIENTS_REMEMBERED:  # only the order among present clients matters
            present = {id(other.client) for other in (*self._waiting, *self._running)}
            self._served = {key: n for key, n in self._served.items() if key in present}
        return job

    def _admit(self) -> None:
        while self._waiting and (self._free or self._preempt()):
            job = self._next()
            if job.cancel.is_set():
                job.program.close()
                self._releaser.put(job, Cancelled())
                continue
            job.row = heapq.heappop(self._free)
            job.admitted = self._admissions
            self._running.append(job)

    def _to_answer(self) -> list[Job]:
        """The jobs whose requests this iteration answers. On a CPU every row costs compute, so
        while somebody waits for a sentence now, sentences other clients make ahead pause (their
        requests wait); a client's own look-ahead goes on beside its own waited-for sentence (the
        trade-off ``--lookahead`` chooses). On a GPU a step costs about the same for 1 row or 8,
        and all go."""
        asking = [job for job in self._running if job.op is not None]
        if not self._compute_bound:
            return asking
        waited_for = {id(job.client) for job in asking if job.urgent.is_set()}
        return [job for job in asking if job.urgent.is_set() or not waited_for - {id(job.client)}]

    def _preempt(self) -> bool:
        """Free a row for a sentence a listener waits for now, if every row is taken: the sentence
        made ahead that started last, and has released no audio yet, starts again later from its
        beginning (its program made anew with the same seed: the same tokens). False if none can."""
        if not any(job.urgent.is_set() for job in self._waiting):
            return False
        movable = [
            job
            for job in self._running
            if not job.urgent.is_set() and job.restart is not None and not job.released
        ]
        if not movable:
            return False
        job = max(movable, key=lambda job: job.admitted)
        job.program.close()
        job.program, job.op, job.answer, job.error = job.restart(), None, None, None
        self._running.remove(job)
        heapq.heappush(self._free, job.row)
        job.row = -1
        self._waiting.appendleft(job)
        self.preempted += 1
        return True

    def _advance(self, job: Job) -> None:
        """Run ``job``'s program until it asks the models for something, ends or fails."""
        while True:
            if job.cancel.is_set():
                job.program.close()
                self._finish(job, Cancelled())
                return
            try:
                if job.error is not None:
                    error, job.error = job.error, None
                    op = job.program.throw(error)
                else:
                    op = job.program.send(job.answer)
            except StopIteration:
                self._finish(job, DONE)
                return
            except Exception as err:  # noqa: BLE001 - a program's failure goes to its listener
                self._finish(job, err)
                return
            job.answer = None
            if isinstance(op, Audio):
                job.released = True
                self._releaser.put(job, op)
                continue
            job.op = op
            return

    def _answer(self, jobs: list[Job]) -> bool:
        """Answer the jobs' model requests in one batched call; False if there were none."""
        if not jobs:
            return False
        work = [(job.row, op) for job in jobs for op in requests(job.op)]
        try:
            tokens = self.core.run(work)
        except Exception as err:  # noqa: BLE001 - e.g. out of memory, or one row's bad values
            if len(jobs) > 1:
                # Which row it was is unknown: each asks again alone, so only its own sentence
                # fails (a step rewrites the same cache positions: asking again is exact).
                _LOGGER.warning("Batched step for %d sentences failed (%s): one at a time", len(jobs), err)
                for job in jobs:
                    self._answer([job])
                return True
            _LOGGER.warning("A step failed: %s", err)
            jobs[0].op, jobs[0].error = None, err
            return True
        self.steps += 1
        self.batched_tokens += len(work)
        start = 0
        for job in jobs:
            count = len(requests(job.op))
            try:
                job.answer = reply(job.op, tokens[start : start + count])
            except NonFiniteLogits as err:  # this sentence's tokens would be noise: it fails
                job.answer, job.error = None, err
            job.op = None
            start += count
        return True

    def _finish(self, job: Job, outcome: Any) -> None:
        self._running.remove(job)
        heapq.heappush(self._free, job.row)
        job.row = -1
        self._releaser.put(job, outcome)


def _use_device(device: torch.device | None) -> None:
    """Make ``device`` current for this thread: CUDA streams, events and graphs are per device."""
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)


def _emit(job: Job, item: Any) -> None:
    try:
        job.emit(item)
    except Exception:  # a listener that is gone must not stop the others
        _LOGGER.debug("Listener failed", exc_info=True)
