"""Numeric precision (``--precision``) and CPU threads (``--threads``).

On a CPU a decode step reads every weight of a 12- or 24-layer GPT, so it is bound by memory
bandwidth; int8 weights read a quarter of the bytes of float32. The three GPTs' linear layers are
quantized after transformers has loaded the weights (the loader stays transformers'), with
int8 weights (one scale per tensor) and activations quantized per call (PyTorch's dynamic
quantization, whose int8 kernels need no compiler). EnCodec stays in float32. What was measured
(one scale per output channel, torchao, float32) is in docs/performance.md.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from . import int8_kernels
from .errors import ModelLoadError

_LOGGER = logging.getLogger(__name__)

QUANTIZED = ("semantic", "coarse_acoustics", "fine_acoustics")  # the GPTs; not EnCodec


def resolve(precision: str, device: torch.device) -> str:
    """``auto`` -> ``fp16`` on CUDA, and on a CPU stays ``auto`` (by stage, measured at load:
    ``stage_precision``); ``int8`` and ``bf16`` are for CPUs."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "auto"
    if precision in ("int8", "bf16") and device.type == "cuda":
        raise ModelLoadError(f"--precision {precision} is for the CPU; on a GPU use auto (float16) or fp32")
    return precision


def dtype(resolved: str) -> torch.dtype:
    """The dtype transformers loads the weights in."""
    return torch.float16 if resolved == "fp16" else torch.float32


# The int8 gate: each quantized GPT's top-1 agreement with its float32 self, teacher-forced on the
# same random inputs. Kernels that work give 0.84-0.93 even on random weights (flat logits; real
# weights agree more); kernels that silently compute something else fall far below.
INT8_MIN_TOP1 = 0.6
GATE_SEED, GATE_TOKENS, GATE_FRAMES = 1234, 64, 96


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # the float ones


def convert(bark: nn.Module, choice: dict[str, str]) -> tuple[dict[str, str], dict[str, float], list[str]]:
    """Each GPT of a loaded float32 ``BarkModel`` in its ``choice`` (int8, bf16, fp16; fp32 as it
    is), one at a time, each copy gated against its float32 self on this machine's own kernels
    (``gate``) before the float weights go (memory peaks at the model plus one GPT's copy). A GPT
    whose copy fails the gate, or whose kernels raise, stays float32. Returns what each GPT runs
    in, the agreement by converted GPT and the problems."""
    done, agreement, problems = dict(choice), {}, []
    for name in QUANTIZED:
        if choice[name] == "fp32":
            continue
        original = getattr(bark, name)
        try:
            if choice[name] == "int8":
                converted = int8_kernels.quantize(original)
            else:
                converted = copy.deepcopy(original).to(DTYPES[choice[name]])
            agreement[name], problem = gate(name, converted, original)
        except (RuntimeError, NotImplementedError) as err:  # no such kernels for this CPU/build
            converted, problem = None, f"{name}: {err}"
        if problem:
            problems.append(problem)
            done[name] = "fp32"
        else:
            setattr(bark, name, converted)
        del original, converted
        gc.collect()  # the float weights go now, before the next GPT's copy is made
    return done, agreement, problems


@torch.inference_mode()
def gate(name: str, quantized: nn.Module, original: nn.Module) -> tuple[float, str | None]:
    """``(top-1 agreement, problem or None)`` of one converted GPT against its float32 original."""
    from .fast.model import fine_logits

    generator = torch.Generator().manual_seed(GATE_SEED)
    config = original.config
    if name == "fine_acoustics":
        codes = torch.randint(
            0, config.output_vocab_size, (1, GATE_FRAMES, config.n_codes_total), generator=generator
        )
        books = range(config.n_codes_given, config.n_codes_total)
        ours = torch.cat([fine_logits(quantized, book, codes)[0] for book in books])
        theirs = torch.cat([fine_logits(original, book, codes)[0] for book in books])
    else:
        ids = torch.randint(0, config.input_vocab_size, (1, GATE_TOKENS), generator=generator)
        ours, theirs = quantized(input_ids=ids).logits[0], original(input_ids=ids).logits[0]
    agreement = float((ours.argmax(-1) == theirs.argmax(-1)).float().mean())
    if not torch.isfinite(ours).all():
        return agreement, f"{name}: non-finite logits"
    if agreement < INT8_MIN_TOP1:
        return agreement, f"{name}: top-1 agreement {agreement:.0%} < {INT8_MIN_TOP1:.0%}"
    return agreement, None


_ENGINE_PROBE = int8_kernels.PROBE
PROBE_TIMEOUT_S = 300  # importing torch (and transformers) under emulation takes a while


# EnCodec's decoder as it runs at serving time (random weights, a few frames): oneDNN's float
# kernels, JIT-compiled for the CPU it detects, died with SIGILL under qemu's aarch64.
_ONEDNN_PROBE = """
import torch
from transformers import EncodecConfig, EncodecModel
codec = EncodecModel(EncodecConfig()).eval()
with torch.inference_mode():
    assert torch.isfinite(codec.decode(torch.randint(0, 1024, (1, 1, 8, 10)), [None])[0]).all()
"""


def off_the_beaten_path() -> bool:
    """Kernels are probed in a child process first everywhere but x86-64."""
    return platform.machine().lower() not in ("x86_64", "amd64")


PROBES_FILE = "kernel-probes.json"  # under the data dir: the verdicts, by machine fingerprint


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags: Arm's ``Features`` on Arm, x86's ``flags`` elsewhere. Only
    the running architecture's: under qemu-user an aarch64 process reads the x86 host's cpuinfo."""
    machine = _machine()
    arm = machine["machine"].lower().startswith(("aarch64", "arm"))
    return set(machine.get("Features" if arm else "flags", "").split())


def _machine() -> dict[str, str]:
    """What decides whether a kernel runs: the CPU (model and instruction set), torch, us."""
    from . import __version__

    cpu = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "flags", "Features", "CPU implementer", "CPU part"):
                cpu.setdefault(key.strip(), value.strip())
    return {"torch": torch.__version__, "machine": platform.machine(), "wyoming_bark": __version__, **cpu}


class ProbeVerdicts:
    """Kernel probes' verdicts kept in ``DATA_DIR/kernel-probes.json`` for this machine, so a
    second start does not start child processes again (minutes under emulation)."""

    def __init__(self, data_dir: Path | None) -> None:
        self.path = data_dir / PROBES_FILE if data_dir is not None else None
        self.machine = _machine()
        self.verdicts: dict[str, str] = {}
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            stored = json.loads(self.path.read_text(encoding="utf-8"))
            if stored.get("machine") == self.machine and isinstance(stored.get("verdicts"), dict):
                self.verdicts = {str(k): str(v) for k, v in stored["verdicts"].items()}

    def probe(self, code: str, *args: str) -> str:
        """``_probe(code, *args)``, or its verdict from an earlier start on this machine."""
        verdict = self.recall(code, *args)
        if verdict is None:
            verdict = self.remember(_probe(code, *args), code, *args)
        return verdict

    def recall(self, *key: str) -> str | None:
        """What was found for ``key`` on this machine before, if anything."""
        return self.verdicts.get(_digest(key))

    def remember(self, verdict: str, *key: str) -> str:
        """Keep ``verdict`` for ``key`` (a file that cannot be written: kept for this run only)."""
        self.verdicts[_digest(key)] = verdict
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                part = self.path.with_suffix(f".{os.getpid()}.part")
                part.write_text(
                    json.dumps({"machine": self.machine, "verdicts": self.verdicts}), encoding="utf-8"
                )
                os.replace(part, self.path)
        return verdict


def _digest(key: tuple[str, ...]) -> str:
    return hashlib.sha256("\0".join(key).encode()).hexdigest()[:16]


def check_onednn(data_dir: Path | None = None) -> None:
    """Off x86-64, run EnCodec's decoder once in a child process (its verdict kept in
    ``data_dir``); if oneDNN's kernels kill it, turn oneDNN off (PyTorch's own kernels: slower,
    but they run) and say so."""
    if not off_the_beaten_path() or not torch.backends.mkldnn.is_available():
        return
    why = ProbeVerdicts(data_dir).probe(_ONEDNN_PROBE)
    if why:
        torch.backends.mkldnn.enabled = False
        _LOGGER.warning("oneDNN's kernels do not run on this machine (%s); using PyTorch's own", why)


def _probe(code: str, *args: str) -> str:
    """Run ``code`` in a child process: "" if it worked, else why not."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"no answer in {PROBE_TIMEOUT_S} s"
    return "" if done.returncode == 0 else _exit_reason(done.returncode, done.stderr)


def int8_engine(data_dir: Path | None = None) -> str | None:
    """The quantized engine to use: this build's default where int8 is well trodden (x86-64);
    elsewhere (aarch64: oneDNN, then QNNPACK) the first whose int8 kernels run in a child process
    (the verdicts kept in ``data_dir``). None: no engine works here."""
    default = torch.backends.quantized.engine
    if not off_the_beaten_path():
        return default
    supported = torch.backends.quantized.supported_engines
    verdicts = ProbeVerdicts(data_dir)
    for engine in dict.fromkeys([default, "onednn", "qnnpack"]):
        if engine not in supported or engine == "none":
            continue
        why = verdicts.probe(_ENGINE_PROBE, engine)
        if not why:
            return engine
        _LOGGER.warning("The %s int8 kernels do not run on this machine (%s); trying the next", engine, why)
    return None


def _exit_reason(code: int, stderr: str) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    last = stderr.strip().splitlines()[-1:] or [f"exit status {code}"]
    return last[0][:200]


def physical_cores() -> int:
    """Cores this process may use, counting each physical core once (a second thread on a shared
    core made decode steps many times slower at the median under contention)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def use_threads(threads: int | None) -> int:
    """Set torch's CPU threads (None: one per physical core); returns the number."""
    count = threads or physical_cores()
    torch.set_num_threads(count)
    return count
