"""Continuous batching: many sentences decoded together on one GPU.

One scheduler thread owns the decode loop. Each sentence is a program (see ``generate.py``)
holding a cache row while it runs. Every iteration the scheduler advances each program to its
next request, answers all decode steps of a model with one batched (graph-replayed) step and
equal-length prefills with one pass. On CUDA the audio a program releases is made (fine stage,
EnCodec) by a second thread on a stream of its own while decoding goes on; on a CPU the scheduler
thread makes it between iterations (see ``release.py``). Either way it reaches the listener in
order. A new sentence joins at the next iteration, so it never waits for another one to finish —
only for a free row when ``max_batch`` sentences are already running.
"""

from __future__ import annotations

import heapq
import logging
import sys
import threading
import time
from collections import deque
from typing import Any

import torch

from .. import metrics
from . import policy
from .core import Core
from .program import Audio, Cancelled, NonFiniteLogits, Prefill, Program, reply, requests
from .release import Releaser, use_device
from .request import DONE, AudioStream, Job, SpeechRequest

__all__ = ["DONE", "AudioStream", "Job", "Scheduler", "SpeechRequest", "switch_threads_quickly"]

_LOGGER = logging.getLogger(__name__)

GIL_SWITCH_S = 0.0005  # Python's thread switch interval for a GPU decode loop


def switch_threads_quickly(device: torch.device) -> None:
    """Set once at start-up, for the process: on a GPU the decode loop waits on the device every
    iteration and then needs the GIL back at once; by default Python makes it wait up to 5 ms for
    a busy audio or asyncio thread."""
    if device.type == "cuda":
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_S))


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
        self._turns = policy.Turns()
        self._wake = threading.Condition()
        self._closed = False
        device = core.device
        self._releaser = Releaser(device, name)
        self.steps = 0  # batched decode iterations, for status
        self.preempted = 0  # sentences made ahead that gave their row to one waited for now
        self._compute_bound = device is None or device.type != "cuda"  # see policy.to_answer
        self.batched_tokens = 0
        self.busy_s = 0.0  # wall time of iterations that decoded, for status (ms per iteration)
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
                cancel=request.cancel,  # a core that decodes inside its program (transformers') stops
            )

        job = Job(program(), stream.emit, request.cancel, now=request.now, client=request.client)
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
        now = sum(job.now.is_set() for job in running), sum(job.now.is_set() for job in waiting)
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
        use_device(self.core.device)
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
        """The waiting job to admit (``policy.Turns``: by address, then connection)."""
        job = self._turns.pick(self._waiting)
        self._waiting.remove(job)
        self._turns.served(job, [*self._waiting, *self._running])
        return job

    def _admit(self) -> None:
        while self._waiting and (self._free or self._preempt()):
            job = self._next()
            if job.cancel.is_set():
                job.program.close()
                self._releaser.put(job, Cancelled())
                continue
            job.row = heapq.heappop(self._free)
            job.admitted = self._turns.admissions
            self._running.append(job)

    def _to_answer(self) -> list[Job]:
        """The jobs whose requests this iteration answers (``policy.to_answer``)."""
        return policy.to_answer(self._running, self._compute_bound)

    def _preempt(self) -> bool:
        """Free a row for a sentence a listener waits for now, if every row is taken (the job
        ``policy.to_preempt`` names): it starts again later from its beginning (its program made
        anew with the same seed: the same tokens). False if none can."""
        job = policy.to_preempt(self._waiting, self._running, self._compute_bound)
        if job is None:
            return False
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
            started = time.perf_counter()
            tokens = self.core.run(work)
            gpts, prefill = {op.gpt for _, op in work}, any(isinstance(op, Prefill) for _, op in work)
            metrics.decode_step(gpts, prefill, time.perf_counter() - started)
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
            job.op, job.answered = None, self.steps
            start += count
        return True

    def _finish(self, job: Job, outcome: Any) -> None:
        self._running.remove(job)
        heapq.heappush(self._free, job.row)
        job.row = -1
        self._releaser.put(job, outcome)
