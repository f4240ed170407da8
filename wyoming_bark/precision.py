"""Numeric precision (``--precision``) and CPU threads (``--threads``).

On a CPU a decode step reads every weight of a 12- or 24-layer GPT, so it is bound by memory
bandwidth; int8 weights read a quarter of the bytes of float32. The three GPTs' linear layers are
quantized after transformers has loaded the weights (the loader stays transformers'), with
int8 weights (one scale per tensor) and activations quantized per call (PyTorch's dynamic
quantization, whose int8 kernels need no compiler). EnCodec stays in float32. What was measured
(one scale per output channel, torchao, float32) is in docs/performance.md.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import ModelLoadError

_LOGGER = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "int8")  # auto: int8 on a CPU, float16 on CUDA
QUANTIZED = ("semantic", "coarse_acoustics", "fine_acoustics")  # the GPTs; not EnCodec


def resolve(precision: str, device: torch.device) -> str:
    """``auto`` -> ``int8`` on a CPU, ``fp16`` on CUDA; ``int8`` is for CPUs."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "int8"
    if precision == "int8" and device.type == "cuda":
        raise ModelLoadError("--precision int8 is for the CPU; on a GPU use auto (float16) or fp32")
    return precision


def dtype(resolved: str) -> torch.dtype:
    """The dtype transformers loads the weights in."""
    return torch.float16 if resolved == "fp16" else torch.float32


def quantize(bark: nn.Module) -> dict[str, nn.Module]:
    """Int8 linear layers for the three GPTs of a loaded ``BarkModel``, in place (all or none).
    Returns the float modules they replaced (for ``int8_gate``, then ``restore`` or drop)."""
    with warnings.catch_warnings():  # torch 2.13 marks it deprecated; its CPU kernels remain
        warnings.simplefilter("ignore")
        quantized = {
            name: torch.ao.quantization.quantize_dynamic(getattr(bark, name), {nn.Linear}, torch.qint8)
            for name in QUANTIZED
        }
    originals = {name: getattr(bark, name) for name in QUANTIZED}
    for name, module in quantized.items():
        setattr(bark, name, module)
    return originals


def restore(bark: nn.Module, originals: dict[str, nn.Module]) -> None:
    for name, module in originals.items():
        setattr(bark, name, module)


# The int8 gate: each quantized GPT's top-1 agreement with its float32 self, teacher-forced on the
# same random inputs. Kernels that work give 0.84-0.88 even on random weights (flat logits; real
# weights agree more); kernels that silently compute something else fall far below.
INT8_MIN_TOP1 = 0.6
GATE_SEED, GATE_TOKENS, GATE_FRAMES = 1234, 64, 96


@torch.inference_mode()
def int8_gate(bark: nn.Module, originals: dict[str, nn.Module]) -> tuple[dict[str, float], list[str]]:
    """``(top-1 agreement by GPT, problems)`` of the quantized GPTs in ``bark`` against the float
    ``originals``, on this machine's own kernels (an int8 path that silently gives other numbers
    is caught here, not only one that raises)."""
    from .fast.model import fine_logits

    generator = torch.Generator().manual_seed(GATE_SEED)
    agreement: dict[str, float] = {}
    problems: list[str] = []

    def top1(name: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
        if not torch.isfinite(ours).all():
            problems.append(f"{name}: non-finite logits")
        agreement[name] = float((ours.argmax(-1) == theirs.argmax(-1)).float().mean())
        if agreement[name] < INT8_MIN_TOP1:
            problems.append(f"{name}: top-1 agreement {agreement[name]:.0%} < {INT8_MIN_TOP1:.0%}")

    for name, key in (("semantic", "semantic"), ("coarse", "coarse_acoustics")):
        vocab = originals[key].config.input_vocab_size
        ids = torch.randint(0, vocab, (1, GATE_TOKENS), generator=generator)
        top1(name, getattr(bark, key)(input_ids=ids).logits[0], originals[key](input_ids=ids).logits[0])
    fine = originals["fine_acoustics"]
    codes = torch.randint(
        0, fine.config.output_vocab_size, (1, GATE_FRAMES, fine.config.n_codes_total), generator=generator
    )
    books = range(fine.config.n_codes_given, fine.config.n_codes_total)
    top1(
        "fine",
        torch.cat([fine_logits(bark.fine_acoustics, book, codes)[0] for book in books]),
        torch.cat([fine_logits(fine, book, codes)[0] for book in books]),
    )
    return agreement, problems


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
