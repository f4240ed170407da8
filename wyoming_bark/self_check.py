"""The self-check at load and its fallback ladder (``--self-check on|off|strict``).

The fast core proves itself on the device it will serve from (see ``fast/check.py``), and each
failure moves one step down the ladder, with one log line that says what was found and what runs
instead:

0. a decode step that fails to compile (``--compile``) -> that model's step runs uncompiled;
1. decode graphs (or a compiled step) that fail to capture or disagree with the eager step -> that
   model runs uncompiled, then eagerly;
2. our networks disagree with transformers' modules -> the transformers core;
3. a test sentence through the scheduler fails -> eager steps, then the transformers core.

Some GPU faults end the process instead of raising (a sticky CUDA error cannot be recovered
in-process). So before each check a marker naming it is written under the data dir, keyed by a
fingerprint of what could make it crash (package, torch, CUDA, driver, GPU, model); the next start
with the same fingerprint finds the marker and skips the check that crashed, and what it guards.
``strict`` fails the load instead of falling back (for GPU CI).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .errors import ModelLoadError
from .fast import FastBark
from .fast.check import check_against_transformers, check_graphs, check_sentence, precisions_of
from .fast.model import BatchedStep

_LOGGER = logging.getLogger(__name__)

STEPS = ("compile", "graphs", "core", "sentence")  # in order; a crash in one skips it next time


@dataclass
class Outcome:
    """The core to serve with (None: transformers') and the one-line verdict for status."""

    fast: FastBark | None
    summary: str
    fallbacks: list[str] = field(default_factory=list)


def fingerprint(fast: FastBark, model: str) -> dict[str, str]:
    """What decides whether a check that crashed once would crash again."""
    device = fast.device
    driver = getattr(torch._C, "_cuda_getDriverVersion", None)
    return {
        "wyoming_bark": __version__,
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "driver": str(driver()) if device.type == "cuda" and driver else "",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model": model,
        "precision": precisions_of(fast),  # int8 runs other kernels than float32
        "max_batch": str(fast.max_batch),
    }


class _Markers:
    """The marker file of one fingerprint: which check is running, which to skip."""

    def __init__(self, folder: Path, print_: dict[str, str]) -> None:
        digest = hashlib.sha256(json.dumps(print_, sort_keys=True).encode()).hexdigest()[:16]
        self.path = folder / f"{digest}.json"
        self.record: dict = {"fingerprint": print_, "running": None, "skip": []}
        with contextlib.suppress(OSError, ValueError):
            stored = json.loads(self.path.read_text())
            if isinstance(stored, dict) and stored.get("fingerprint") == print_:
                self.record.update(stored)
        self._warned = False

    @property
    def crashed_in(self) -> str | None:
        running = self.record.get("running")
        return running if running in STEPS else None

    def skipped(self) -> set[str]:
        return {step for step in self.record.get("skip", []) if step in STEPS}

    def write(self, **changes) -> None:
        """Durably: the next thing may be a crash."""
        self.record.update(changes)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w") as handle:
                json.dump(self.record, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as err:
            if not self._warned:
                self._warned = True
                _LOGGER.warning("Self-check: cannot keep its marker in %s (%s)", self.path.parent, err)


def prepare(
    fast: FastBark,
    mode: str,
    marker_dir: Path,
    model: str,
    sentence: bool | None = None,
    compile: bool = False,
) -> Outcome:
    """Compile the decode steps (``compile``), capture the graphs and run the self-check with its
    fallback ladder.

    The test sentence (``sentence``) runs on CUDA by default, where it is also the warm-up; on a
    CPU it would cost a fine pass (seconds) and exercise nothing the other checks have not."""
    sentence = fast.device.type == "cuda" if sentence is None else sentence
    if mode == "off":
        for name, err in (fast.compile() if compile else {}).items():
            _LOGGER.warning("The %s step did not compile (%s); it runs uncompiled", name, err)
        failed = fast.capture()
        for name, err in failed.items():
            _LOGGER.warning("No CUDA graph for the %s model (%s); %s runs eagerly", name, err, name)
        if fast.device.type == "cuda":
            check_sentence(fast)  # the warm-up: first-call costs paid now, not by a user
        return Outcome(fast, "off")
    started = time.monotonic()
    markers = _Markers(marker_dir, fingerprint(fast, model))
    skip = markers.skipped()
    fallbacks: list[str] = []

    def fall_back(found: str, instead: str) -> None:
        line = f"Self-check: {found}; {instead}"
        fallbacks.append(line)
        _LOGGER.warning("%s", line)
        if mode == "strict":
            markers.write(running=None)
            raise ModelLoadError(f"{line} (--self-check strict: not serving)")

    if (crashed := markers.crashed_in) is not None:
        skip.add(crashed)
        markers.write(running=None, skip=sorted(skip))
    for step in (step for step in STEPS if step in skip):
        fall_back(
            f"the {step} check crashed {'the last' if step == crashed else 'an earlier'} start with this "
            f"GPU, driver, torch and model, so it is skipped (delete {markers.path} to try it again)",
            _CONSEQUENCE[step],
        )

    if compile:
        _compile(fast, markers, skip, fall_back)
    fast = _graphs(fast, markers, skip, fall_back)
    if "core" in skip or "sentence" in skip:
        return _verdict(Outcome(None, "", fallbacks), markers, started)
    markers.write(running="core")
    if problems := check_against_transformers(fast):
        fall_back(f"our core disagrees with transformers ({_join(problems)})", "using the transformers core")
        return _verdict(Outcome(None, "", fallbacks), markers, started)
    if not sentence:
        return _verdict(Outcome(fast, "", fallbacks), markers, started)
    markers.write(running="sentence")
    if problems := check_sentence(fast):
        if any(part.path != "eager" for part in fast.graphed().values()):
            fall_back(
                f"a test sentence failed ({_join(problems)})", "running without graphs and trying again"
            )
            for part in fast.graphed().values():
                if isinstance(part, BatchedStep):
                    part.uncompile()
                part.use_eager("a test sentence failed with graphs")
            problems = check_sentence(fast)
        if problems:
            fall_back(f"a test sentence failed ({_join(problems)})", "using the transformers core")
            return _verdict(Outcome(None, "", fallbacks), markers, started)
    return _verdict(Outcome(fast, "", fallbacks), markers, started)


_CONSEQUENCE = {
    "compile": "running uncompiled",
    "graphs": "running eagerly, without CUDA graphs",
    "core": "using the transformers core",
    "sentence": "using the transformers core",
}


def _compile(fast: FastBark, markers: _Markers, skip: set[str], fall_back) -> None:
    """Rung 0: compile the decode steps; a model whose step fails to compile runs uncompiled.
    (Its numbers are checked with the graphs, next.)"""
    if "compile" in skip:
        return
    markers.write(running="compile")
    started = time.monotonic()
    failed = fast.compile()
    for name, err in failed.items():
        fall_back(f"the {name} step did not compile ({err})", f"{name} runs uncompiled")
    if len(failed) < len(fast.steps):
        _LOGGER.info("Decode steps compiled in %.1f s", time.monotonic() - started)


def _graphs(fast: FastBark, markers: _Markers, skip: set[str], fall_back) -> FastBark:
    """Rung 1: capture and compare the decode graphs; a model that fails decodes eagerly."""
    if "graphs" in skip:
        for part in fast.graphed().values():
            part.use_eager("its check crashed on an earlier start")
        return fast
    markers.write(running="graphs")

    def capture() -> None:  # the graphs not captured yet; a failure means eager steps
        for failed, err in fast.capture().items():
            fall_back(f"no CUDA graph for the {failed} model ({err})", f"{failed} runs eagerly")

    capture()
    for name, problem in check_graphs(fast).items():
        part = fast.graphed()[name]
        if isinstance(part, BatchedStep) and part.compiled is not None:
            fall_back(
                f"the compiled {name} step disagrees with the eager code ({problem})",
                f"{name} runs uncompiled",
            )
            part.uncompile()
            capture()  # the plain step's graphs
            problem = check_graphs(fast, only=name).get(name)
            if problem is None:
                continue
        part.use_eager(problem)
        fall_back(f"the {name} graphs disagree with the eager code ({problem})", f"{name} runs eagerly")
    return fast


def _verdict(outcome: Outcome, markers: _Markers, started: float) -> Outcome:
    seconds = time.monotonic() - started
    if outcome.fallbacks:
        outcome.summary = f"fell back after {seconds:.1f} s: " + " | ".join(outcome.fallbacks)
    else:
        paths = ", ".join(f"{name} {path}" for name, path in outcome.fast.decode_paths().items())
        outcome.summary = f"passed in {seconds:.1f} s ({paths})"
        _LOGGER.info("Self-check %s", outcome.summary)
    markers.write(running=None, result=outcome.summary)
    return outcome


def _join(problems: dict[str, str]) -> str:
    return "; ".join(f"{part}: {problem}" for part, problem in problems.items())
