"""What our int8 rests on (PyTorch's dynamic int8 linear layers, deprecated in torch 2.13; see
``wyoming_bark/int8_kernels.py``), pinned: the day a torch release changes or drops it, this
fails first, and docs/performance.md ("int8 kernels") says what to do."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from wyoming_bark import int8_kernels


def test_weights_are_int8_with_one_scale_per_tensor_and_activations_quantized_per_call():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(5, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation warning reaches our users' logs
        layer = int8_kernels.quantize(nn.Sequential(linear))[0]
    assert int8_kernels.is_int8(layer) and not int8_kernels.is_int8(linear)
    weight = layer.weight()
    assert weight.dtype == torch.qint8 and weight.qscheme() == torch.per_tensor_affine
    assert weight.q_zero_point() == 0
    assert abs(weight.q_scale() - float(linear.weight.abs().max()) / 127.5) < 1e-6  # symmetric, min-max
    expected = torch.clamp(torch.round(linear.weight / weight.q_scale()), -128, 127).to(torch.int8)
    assert torch.equal(weight.int_repr(), expected)
    with torch.inference_mode():
        ours = layer(x)
        exact = x @ weight.dequantize().T + linear.bias  # what is left: the activations' rounding
    assert float((ours - exact).abs().max()) < 0.02 * float(exact.abs().max())
    assert not torch.equal(ours, exact)  # the activations really are quantized (dynamically)


def test_an_empty_int8_layer_takes_a_kept_state():
    torch.manual_seed(1)
    layer = int8_kernels.quantize(nn.Sequential(nn.Linear(16, 8)))[0]
    empty = int8_kernels.int8_linear(16, 8, bias=True)
    empty.load_state_dict(layer.state_dict())
    x = torch.randn(3, 16)
    assert torch.equal(empty(x), layer(x))
