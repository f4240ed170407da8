"""Benchmark: one linear layer of Bark's GPTs in each precision, at the shapes the CPU runs —
a decode step (1 row), a coarse window's prefill (890 rows) and a fine pass (1024 rows) — for
PyTorch's dynamic int8 (what the server uses), bfloat16, float32, and torchao's int8 where it is
installed (the maintained successor of the deprecated path; ``pip install torchao``).

    python -m wyoming_bark.bench.kernels --arch small --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from .. import int8_kernels
from .random_bark import ARCHS

SHAPES = {"decode": 1, "coarse prefill": 890, "fine pass": 1024}


def variants(linear: nn.Linear) -> dict[str, tuple[nn.Module, torch.dtype]]:
    found = {
        "fp32": (linear, torch.float32),
        "int8 (torch.ao dynamic)": (
            int8_kernels.quantize(nn.Sequential(copy.deepcopy(linear))),
            torch.float32,
        ),
        "bf16": (copy.deepcopy(linear).to(torch.bfloat16), torch.bfloat16),
    }
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError:
        return found
    for name, config in (("torchao int8 dynamic", Int8DynamicActivationInt8WeightConfig()),
                         ("torchao int8 weight-only", Int8WeightOnlyConfig())):  # fmt: skip
        layer = nn.Sequential(copy.deepcopy(linear))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_(layer, config)
        found[name] = (layer, torch.float32)
    return found


def ms_per_call(call: Callable[[], object], reps: int) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m wyoming_bark.bench.kernels", description=__doc__)
    parser.add_argument("--arch", choices=[a for a in ARCHS if a != "tiny"], default="small")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hidden = ARCHS[args.arch][1]
    torch.manual_seed(0)
    linear = nn.Linear(hidden, 4 * hidden).eval()  # the MLP's first layer, the largest
    table: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for name, (layer, dtype) in variants(linear).items():
            table[name] = {}
            for shape, rows in SHAPES.items():
                x = torch.randn(rows, hidden, dtype=dtype)
                table[name][shape] = round(ms_per_call(lambda layer=layer, x=x: layer(x), args.reps), 3)
    print(json.dumps({"arch": args.arch, "threads": torch.get_num_threads(), "ms_per_call": table}, indent=1))


if __name__ == "__main__":
    main()
