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


def quantize(bark: nn.Module) -> None:
    """Int8 linear layers for the three GPTs of a loaded ``BarkModel``, in place (all or none)."""
    with warnings.catch_warnings():  # torch 2.13 marks it deprecated; its CPU kernels remain
        warnings.simplefilter("ignore")
        quantized = {
            name: torch.ao.quantization.quantize_dynamic(getattr(bark, name), {nn.Linear}, torch.qint8)
            for name in QUANTIZED
        }
    for name, module in quantized.items():
        setattr(bark, name, module)


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
