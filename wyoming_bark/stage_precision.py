"""``--precision auto`` on a CPU: each of Bark's three GPTs in the precision that is fastest here.

int8's gain depends on the CPU: decode steps read every weight once per token (memory-bound: int8's
quarter of the bytes wins), while the coarse window's prefill and the fine model's 1024-frame
passes are compute-bound, where bfloat16 units (AVX512-BF16, AMX, Arm's BF16) can beat int8. So
at the first start one of each GPT's own blocks is timed at the shapes its stage runs, in every
precision this CPU has units for, and each GPT takes the fastest (``choose``, a pure policy). The
choice is kept with the kernel probes' verdicts (``precision.ProbeVerdicts``: CPU model and flags,
torch, this package) under the model's shapes and the thread count, so later starts do not
measure again. One weight copy per GPT: the coarse GPT's prefills and its steps share one
precision, weighed as a window (one prefill, then 60 steps).
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import int8_kernels
from .precision import DTYPES, QUANTIZED, ProbeVerdicts, cpu_flags, off_the_beaten_path

_LOGGER = logging.getLogger(__name__)

# Among candidates within MARGIN of the fastest, the first of these: fewer bytes held, and a
# choice that does not flip between starts on a noisy machine.
PREFERENCE = ("int8", "bf16", "fp16", "fp32")
MARGIN = 1.10
STAGE_NAMES = {"semantic": "semantic", "coarse_acoustics": "coarse", "fine_acoustics": "fine"}


@dataclass(frozen=True)
class Call:
    """One kind of call a stage makes: ``tokens`` new positions attending to ``context`` in all
    (causal, with a KV cache) or to each other (``causal=False``: the fine model), ``count`` times."""

    what: str
    tokens: int
    context: int
    count: int
    causal: bool = True


# Bark's shapes: a semantic step sees the 513-token prompt plus up to 255 tokens made; a coarse
# window prefills 256 semantic + 1 + 630 coarse tokens, then takes 60 steps; a fine pass is 1024 frames.
CALLS = {
    "semantic": (Call("decode step", 1, 640, 1),),
    "coarse_acoustics": (Call("prefill", 887, 887, 1), Call("decode step", 1, 917, 60)),
    "fine_acoustics": (Call("pass", 1024, 1024, 1, causal=False),),
}


# Run in a child process off x86-64 (``precision.ProbeVerdicts``): a block's kernels in the dtype
# named in argv[1], oneDNN on or off (argv[2]) as in the server.
FLOAT_PROBE = """
import sys, torch, torch.nn.functional as F
dtype = getattr(torch, sys.argv[1])
torch.backends.mkldnn.enabled = sys.argv[2] == "1"
x = torch.randn(1, 8, 64, dtype=dtype)
y = F.scaled_dot_product_attention(x, x, x, is_causal=True)
assert torch.isfinite(torch.nn.Linear(64, 64).to(dtype)(y)).all()
"""


def candidates(int8_engine: str | None, verdicts: ProbeVerdicts | None = None) -> list[str]:
    """The precisions worth timing on this CPU: int8 (where its kernels run), bfloat16 and
    float16 where the CPU has units for them (elsewhere they are emulated, many times slower) and,
    off x86-64, where they run in a child process, float32."""
    flags = cpu_flags()
    found = ["int8"] if int8_engine else []
    if flags & {"avx512_bf16", "amx_bf16", "bf16"}:  # x86 AVX512-BF16 / AMX; Arm's BF16
        found.append("bf16")
    if flags & {"avx512_fp16", "amx_fp16", "asimdhp"}:
        found.append("fp16")
    if verdicts is not None and off_the_beaten_path():
        for precision in [p for p in found if p in DTYPES]:
            dtype = str(DTYPES[precision]).removeprefix("torch.")
            why = verdicts.probe(FLOAT_PROBE, dtype, str(int(torch.backends.mkldnn.enabled)))
            if why:
                _LOGGER.warning("%s kernels do not run on this machine (%s); not a candidate", precision, why)
                found.remove(precision)
    return [*found, "fp32"]


def choose(measured: dict[str, dict[str, float]]) -> dict[str, str]:
    """By GPT, the precision to run: the fastest measured, or a preferred one within ``MARGIN`` of it."""
    choice = {}
    for gpt, times in measured.items():
        best = min(times.values())
        choice[gpt] = next(p for p in PREFERENCE if p in times and times[p] <= best * MARGIN)
    return choice


def summary(choice: dict[str, str]) -> str:
    """``int8`` where every GPT has one precision, else e.g. ``semantic int8, coarse int8, fine bf16``."""
    if len(set(choice.values())) == 1:
        return next(iter(choice.values()))
    return ", ".join(f"{STAGE_NAMES[gpt]} {choice[gpt]}" for gpt in QUANTIZED)


def shapes_key(config) -> str:
    """A ``BarkConfig``'s shapes (width, layers, heads by GPT) and torch's threads: what the times
    depend on."""
    parts = {
        name: [sub.hidden_size, sub.num_layers, sub.num_heads]
        for name, sub in (
            ("semantic", config.semantic_config),
            ("coarse_acoustics", config.coarse_acoustics_config),
            ("fine_acoustics", config.fine_acoustics_config),
        )
    }
    return json.dumps({"shapes": parts, "threads": torch.get_num_threads()}, sort_keys=True)


class StageChoice:
    """The choice for one model on this machine, measured once and kept in ``data_dir``."""

    def __init__(self, data_dir: Path | None, model_config, int8_engine: str | None) -> None:
        self.verdicts = ProbeVerdicts(data_dir)
        self.key = ("stage-precision", shapes_key(model_config), str(int8_engine))
        self.int8_engine = int8_engine

    def kept(self) -> dict[str, str] | None:
        """The choice an earlier start made here, if any."""
        stored = self.verdicts.recall(*self.key)
        return _valid(stored)

    def measure(self, bark: nn.Module) -> dict[str, str]:
        """Time ``bark``'s blocks (float32 weights), choose, log why, and keep the choice."""
        started = time.monotonic()
        measured = measure(bark, candidates(self.int8_engine, self.verdicts))
        choice = choose(measured)
        _LOGGER.info(
            "Precision by stage, measured here in %.1f s (ms per call of the whole GPT): %s",
            time.monotonic() - started,
            "; ".join(
                f"{STAGE_NAMES[gpt]} {choice[gpt]} ("
                + ", ".join(f"{p} {ms:.1f}" for p, ms in sorted(times.items(), key=lambda item: item[1]))
                + ")"
                for gpt, times in measured.items()
            ),
        )
        self.verdicts.remember(json.dumps({"choice": choice, "ms": measured}), *self.key)
        return choice


def _valid(stored: str | None) -> dict[str, str] | None:
    try:
        choice = json.loads(stored)["choice"] if stored else None
    except (ValueError, TypeError, KeyError):
        return None
    if isinstance(choice, dict) and set(choice) == set(QUANTIZED) and set(choice.values()) <= set(PREFERENCE):
        return choice
    return None


@torch.inference_mode()
def measure(bark: nn.Module, precisions: list[str], reps: int = 5) -> dict[str, dict[str, float]]:
    """ms per stage call (as ``CALLS`` weighs them) of each GPT in each precision, from its first
    block timed at the stage's shapes times its number of blocks. A precision whose kernels
    raise here is left out."""
    measured: dict[str, dict[str, float]] = {}
    for name in QUANTIZED:
        gpt = getattr(bark, name)
        block, heads, layers = gpt.layers[0], gpt.config.num_heads, len(gpt.layers)
        variants = {}
        for precision in precisions:
            try:
                variants[precision] = _variant(block, precision)
                _time(variants[precision], precision, heads, CALLS[name])  # warm: first-call costs
            except (RuntimeError, NotImplementedError) as err:
                _LOGGER.info("%s in %s does not run here (%s)", STAGE_NAMES[name], precision, err)
                variants.pop(precision, None)
        times: dict[str, list[float]] = {p: [] for p in variants}
        for _ in range(reps):  # interleaved: a busy moment of the machine hits every precision
            for precision, variant in variants.items():
                times[precision].append(_time(variant, precision, heads, CALLS[name]))
        measured[name] = {p: round(1000 * layers * statistics.median(t), 2) for p, t in times.items()}
    return measured


def _variant(block: nn.Module, precision: str) -> nn.Module:
    if precision == "int8":
        return int8_kernels.quantize(copy.deepcopy(block))
    return copy.deepcopy(block).to(DTYPES[precision])


def _time(block: nn.Module, precision: str, heads: int, calls: tuple[Call, ...]) -> float:
    """Seconds one block spends on one round of ``calls``."""
    from .fast.model import _block

    dtype = DTYPES.get(precision, torch.float32)
    width = block.layernorm_1.weight.shape[0]
    total = 0.0
    for call in calls:
        x = torch.randn(1, call.tokens, width, dtype=dtype)
        past = call.context - call.tokens
        kv = torch.randn(1, heads, past, width // heads, dtype=dtype) if past else None
        store: Callable | None = None
        if kv is not None:
            store = lambda k, v, kv=kv: (torch.cat([kv, k], 2), torch.cat([kv, v], 2))
        started = time.perf_counter()
        for _ in range(call.count):
            _block(block, x, heads, store, causal=call.causal and kv is None)
        total += time.perf_counter() - started
    return total
