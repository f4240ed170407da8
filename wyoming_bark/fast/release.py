"""Making released audio (fine stage, EnCodec) and handing it to listeners in order."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import torch

from .program import Audio, Cancelled
from .request import DONE, Job

_LOGGER = logging.getLogger(__name__)


class Releaser:
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
        use_device(self._device)
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


def use_device(device: torch.device | None) -> None:
    """Make ``device`` current for this thread: CUDA streams, events and graphs are per device."""
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)


def _emit(job: Job, item: Any) -> None:
    try:
        job.emit(item)
    except Exception:  # a listener that is gone must not stop the others
        _LOGGER.debug("Listener failed", exc_info=True)
