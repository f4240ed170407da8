"""PyTorch's dynamic int8 linear layers: the one module that touches them.

``torch.ao.quantization.quantize_dynamic`` gives int8 weights (one scale per tensor, zero point 0)
and quantizes the activations on every call, on fbgemm's, oneDNN's or QNNPACK's kernels. PyTorch
2.13 marks it deprecated in favour of torchao; measured side by side on our shapes
(``python -m wyoming_bark.bench.kernels``, docs/performance.md "int8 kernels"), torchao's int8 on
a CPU is many times slower, so we stay here, behind these few names, with the behaviour pinned by
``tests/test_int8_kernels.py``; the plan for the day it goes is in the same section of the docs.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

# Run in a child process (``precision.int8_engine``): quantize a small linear layer with the
# engine named in argv[1] and use it; a kernel built for instructions this CPU lacks kills only it.
PROBE = """
import sys, warnings, torch
warnings.simplefilter("ignore")
torch.backends.quantized.engine = sys.argv[1]
layer = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(64, 64)), {torch.nn.Linear}, torch.qint8)
assert torch.isfinite(layer(torch.randn(8, 64))).all()
"""


def quantize(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every ``nn.Linear`` an int8 one."""
    with warnings.catch_warnings():  # deprecated in torch 2.13; see the module's docstring
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, torch.qint8)


def int8_linear(in_features: int, out_features: int, bias: bool) -> nn.Module:
    """An empty int8 linear layer, for a state kept by ``quantize`` (``int8_cache``)."""
    from torch.ao.nn.quantized import dynamic

    return dynamic.Linear(in_features, out_features, bias_=bias, dtype=torch.qint8)


def is_int8(module: nn.Module) -> bool:
    return isinstance(module, torch.ao.nn.quantized.dynamic.Linear)
