"""Voices from recordings dropped into the voices folder: ``NAME.wav`` (``.flac``, ``.ogg``,
``.mp3``; ``NAME.LANG.wav`` for one language) becomes voice ``NAME``.

A watcher thread looks at the folder every ``POLL_S``. A recording unchanged for ``SETTLE_S``
(not still being copied) is read once, bounded, through one descriptor; its content, with the
recipe's models, is the key of the voice made from it, kept as ``DATA_DIR/voices-made/KEY.npz``:
a restart finds it, a changed recording is made again, and the file of a removed or replaced one
is deleted. A voice is listed once it is made (a request for it before then is spoken with the
default voice, as any unknown voice).

Voices are made in a child process at idle priority (``SCHED_IDLE``, else ``nice 19``): it gets
only CPU time no sentence wants, a decoder crash on a hostile file ends it and not the server, and
its memory (HuBERT, the quantizer, the codec) is returned when it exits after the last recording.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import VoiceError, quoted
from .prompts import load_npz
from .recording import MAX_RECORDING_BYTES, SUFFIXES
from .settings import CloneSettings
from .userfiles import UserFileError, listable, read_user_file
from .voices import Voice, custom_name

_LOGGER = logging.getLogger(__name__)

MADE_DIR = "voices-made"  # under the data dir
POLL_S = 2.0
SETTLE_S = 2.0  # a recording unchanged this long is whole
MAKE_TIMEOUT_S = 1800.0  # one recording, at idle priority on a busy machine included
MODEL_RETRY_S = 600.0  # missing models (offline): tried again this much later
RECIPE = "hubert-layer9-quantizer-encodec6kbps-1"  # part of every key: change it when the recipe does


class MakeFailed(Exception):
    """A recording that did not become a voice; the message says why."""

    def __init__(self, message: str, retry_s: float = math.inf) -> None:
        super().__init__(message)
        self.retry_s = retry_s  # inf: not until the file changes


@dataclass
class _Seen:
    """What the watcher knows of one recording file."""

    stat: tuple[int, int]  # size, mtime
    since: float  # monotonic time it was first seen with this stat
    key: str | None = None  # of the voice made from it
    failed: str | None = None
    retry_at: float = math.inf


class RecordedVoices:
    """The voices made from the recordings in ``voices_dir``; ``voices()`` is what is ready."""

    def __init__(
        self,
        voices_dir: Path | None,
        data_dir: Path,
        model: str,
        clone: CloneSettings,
        poll_s: float = POLL_S,
    ) -> None:
        self.voices_dir, self.made_dir, self.poll_s = voices_dir, data_dir / MADE_DIR, poll_s
        self.maker = MakerProcess(clone, model, data_dir)
        self._recipe = f"{RECIPE}\n{clone.hubert}\n{clone.quantizer}\n".encode()
        self._seen: dict[str, _Seen] = {}
        self._warned: set[tuple[str, str]] = set()
        self._known_keys: set[str] = set()  # made files this watcher referenced (only those are deleted)
        self._ready: list[Voice] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def voices(self) -> list[Voice]:
        """The voices made so far (no disk access)."""
        return self._ready

    def status(self) -> dict[str, int]:
        """Recordings in the folder by state (for status)."""
        entries = list(self._seen.values())
        failed = sum(entry.key is None and entry.failed is not None for entry in entries)
        made = sum(entry.key is not None for entry in entries)
        return {"made": made, "failed": failed, "waiting": len(entries) - made - failed}

    def start(self) -> None:
        """List what was made before (no making: quick), then watch on a thread of its own."""
        if self.voices_dir is None:
            return
        self.poll(make=False)
        self._thread = threading.Thread(target=self._watch, name="bark-recordings", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self.maker.stop()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:  # the watcher must outlive any one surprise
                _LOGGER.exception("Looking for voice recordings failed; trying again")

    def poll(self, make: bool = True) -> None:
        """One look at the folder: note changes, make what has settled, publish what is ready."""
        now, wall = time.monotonic(), time.time()
        seen: dict[str, _Seen] = {}
        for file_name in self._recording_names():
            named = custom_name(_stem(file_name))
            listed = (
                named
                if isinstance(named, str)
                else listable(self.voices_dir / file_name, MAX_RECORDING_BYTES)
            )
            if isinstance(listed, str):
                self._warn(file_name, listed)
                continue
            stat = (listed.size, listed.mtime_ns)
            old = self._seen.get(file_name)
            if old is None or old.stat != stat:  # new or changed: settle first (unless old already)
                settled = wall - listed.mtime_ns / 1e9 >= SETTLE_S
                old = _Seen(stat, now - SETTLE_S if settled else now)
            seen[file_name] = old
        self._seen = seen
        try:
            for file_name, entry in seen.items():
                if self._stop.is_set():
                    break
                due = entry.key is None and (entry.failed is None or now >= entry.retry_at)
                if due and now - entry.since >= SETTLE_S:
                    self._voice_for(file_name, entry, make)
        finally:
            self.maker.stop()  # after the last recording: its memory back
        self._publish()

    def _recording_names(self) -> list[str]:
        try:
            names = [entry.name for entry in os.scandir(self.voices_dir)]
        except OSError:
            return []  # the voices folder is absent or unreadable: VoiceLibrary says so
        return sorted(name for name in names if name.lower().endswith(SUFFIXES))

    def _voice_for(self, file_name: str, entry: _Seen, make: bool) -> None:
        """The made voice of one settled recording: found by its key, else made now."""
        try:
            data = read_user_file(self.voices_dir / file_name, MAX_RECORDING_BYTES)
        except FileNotFoundError:
            return
        except UserFileError as err:
            entry.failed = str(err)
            self._warn(file_name, entry.failed.removeprefix(file_name).strip())
            return
        if len(data) != entry.stat[0]:  # still being written: settle again
            entry.since = time.monotonic()
            return
        key = hashlib.sha256(self._recipe + data).hexdigest()[:32]
        made = self.made_dir / f"{key}.npz"
        if made.is_file():
            with contextlib.suppress(VoiceError):
                load_npz(made)
                entry.key = key
                return
            made.unlink(missing_ok=True)  # damaged: made again
        if not make:
            return
        name = _stem(file_name)
        started = time.monotonic()

        def begun(seconds: float) -> None:  # it decoded: a recording, not a bad file
            _LOGGER.info("Making voice %s from %.1f s of %s in the background", quoted(name), seconds,
                         quoted(file_name))  # fmt: skip

        try:
            self.made_dir.mkdir(parents=True, exist_ok=True)
            report = self.maker.make(data, file_name, made, begun)
        except (MakeFailed, OSError) as err:
            if self._stop.is_set():  # stopped while making: not the file's fault
                return
            entry.failed = str(err)
            entry.retry_at = time.monotonic() + getattr(err, "retry_s", math.inf)
            again = "when the file changes" if entry.retry_at == math.inf else "in a few minutes"
            _LOGGER.warning("No voice made from %s: %s (tried again %s)", quoted(file_name), err, again)
            return
        for warning in report["warnings"]:
            _LOGGER.warning("%s", warning)
        entry.key, entry.failed = key, None
        _LOGGER.info(
            "Made voice %s in %.1f s from %.1f s of audio (of %.1f s in the file; peak memory %.0f MiB); kept in %s",
            quoted(name),
            time.monotonic() - started,
            report["seconds_used"],
            report["seconds_in_file"],
            report["peak_mib"],
            made,
        )

    def _publish(self) -> None:
        ready: dict[str, Voice] = {}
        keys = set()
        for file_name, entry in self._seen.items():
            if entry.key is None:
                continue
            name, languages = custom_name(_stem(file_name))  # a good name: poll() saw to it
            if name in ready:
                self._warn(file_name, f"voice {name} already exists")
                continue
            keys.add(entry.key)
            ready[name] = Voice(name, languages, f"Custom voice {name}", self.made_dir / f"{entry.key}.npz")
        self._ready = list(ready.values())
        if not any(entry.key is None and entry.failed is None for entry in self._seen.values()):
            for key in self._known_keys - keys:  # replaced or removed recordings
                (self.made_dir / f"{key}.npz").unlink(missing_ok=True)
            self._known_keys = keys
        else:
            self._known_keys |= keys

    def _warn(self, file_name: str, why: str) -> None:
        if (file_name, why) not in self._warned:
            self._warned.add((file_name, why))
            _LOGGER.warning("Voice recording %s ignored: %s", quoted(file_name), why)


def _stem(file_name: str) -> str:
    return file_name[: file_name.rfind(".")]


class MakerProcess:
    """``VoiceMaker`` in a child process at idle priority, started on the first recording and
    stopped after the last (``stop``); a crash or a hang fails that recording, not the server."""

    def __init__(self, clone: CloneSettings, model: str, data_dir: Path, timeout: float = MAKE_TIMEOUT_S):
        self.args = (clone, model, data_dir)
        self.timeout = timeout
        self._process: Any = None
        self._conn: Any = None

    def make(self, data: bytes, file_name: str, out: Path, begun: Callable[[float], None]) -> dict[str, Any]:
        """Make the voice of recording ``data`` into ``out``, calling ``begun(seconds used)`` once
        it is decoded; raises ``MakeFailed``."""
        if self._process is None:
            context = multiprocessing.get_context("spawn")  # never fork a process with threads
            self._conn, child = context.Pipe()
            self._process = context.Process(
                target=_serve, args=(child, *self.args), name="bark-voice-maker", daemon=True
            )
            self._process.start()
            child.close()
        try:
            self._conn.send((data, file_name, str(out)))
            deadline = time.monotonic() + self.timeout
            kind = "started"
            while kind == "started":
                if not self._conn.poll(max(0.0, deadline - time.monotonic())):
                    raise MakeFailed(f"making it took over {self.timeout:g} s", retry_s=MODEL_RETRY_S)
                kind, payload, retry = self._conn.recv()
                if kind == "started":
                    begun(payload)
        except (EOFError, OSError):
            self._process.join(5)
            code = self._process.exitcode
            self.stop()
            raise MakeFailed(f"the voice maker ended while making it (exit code {code})") from None
        except MakeFailed:
            self.stop()
            raise
        if kind == "error":
            raise MakeFailed(payload, MODEL_RETRY_S if retry else math.inf)
        return payload

    def stop(self) -> None:
        if self._process is None:
            return
        with contextlib.suppress(OSError):
            self._conn.close()
        self._process.join(2)  # it leaves when the pipe closes
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._process = self._conn = None


def lower_priority() -> None:
    """This process (and the threads it starts from now on) at idle priority."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(AttributeError, OSError):
            os.nice(19)


def _serve(conn, clone: CloneSettings, model: str, data_dir: Path) -> None:
    """The child: make each recording sent until the pipe closes."""
    lower_priority()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    from .cloning import VoiceMaker

    # One thread: a second would take the core the decode thread's workers come back to between
    # steps (docs/performance.md: the sentences beside it 17-22 % slower with two, 0-11 % with one).
    torch.set_num_threads(1)
    maker = VoiceMaker(clone, model, data_dir)
    while True:
        try:
            data, file_name, out = conn.recv()
            conn.send(_make_one(conn, maker, data, file_name, Path(out)))
        except (EOFError, OSError):  # the server stopped (or was killed): so do we
            return


def _make_one(conn, maker, data: bytes, file_name: str, out: Path) -> tuple[str, Any, bool]:
    """Make one voice: the reply (kind, report or message, whether to retry soon)."""
    from .cloning import save_prompt
    from .errors import ModelLoadError
    from .recording import RecordingError, prepare

    try:
        recording = prepare(data, file_name)
    except RecordingError as err:
        return "error", str(err), False
    conn.send(("started", recording.seconds_used, False))
    try:
        save_prompt(maker.make(recording), out)
    except ModelLoadError as err:
        return "error", str(err), True
    except VoiceError as err:
        return "error", str(err), False
    except Exception as err:  # noqa: BLE001 - reported as this recording's failure
        return "error", f"{type(err).__name__}: {err}", False
    report = {
        "seconds_used": recording.seconds_used,
        "seconds_in_file": recording.seconds_in_file,
        "warnings": recording.warnings,
        "peak_mib": _peak_mib(),
    }
    return "ok", report, False


def _peak_mib() -> float:
    """This process's peak memory since it started its program: ``VmHWM`` (``ru_maxrss`` also
    counts the parent's pages the child held between fork and exec)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
