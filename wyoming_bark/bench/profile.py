"""Where a CPU sentence's time goes: each stage's ms by kind of op (linear, attention, sampling, ...)
and the Python between them, from ``torch.profiler``, for the precision the server would run.

    python -m wyoming_bark.bench.profile --arch small --seconds 2 --precision auto
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from ..fast import FastBark, SamplingSettings
from ..fast.stages import coarse_tokens, fine_tokens, semantic_tokens
from ..length_cap import SEMANTIC_RATE_HZ
from .precision import at_precision
from .random_bark import build_random_bark, random_inputs

# By the op's name (first match): what bounds a stage is which of these its time goes to.
KINDS = (
    ("linear", ("linear", "addmm", "aten::mm", "matmul", "quantize_per_tensor", "aten::bmm")),
    ("attention", ("scaled_dot_product", "attention", "softmax")),
    ("sampling", ("multinomial", "topk", "sort", "cumsum", "argmax", "exponential", "random", "where")),
    ("layer norm", ("layer_norm",)),
    ("cache writes, copies", ("index_put", "copy_", "cat", "index", "clone", "slice", "stack")),
    ("elementwise", ("add", "mul", "gelu", "div", "sub", "neg", "exp", "embedding", "masked_fill")),
)


def kind_of(op: str) -> str:
    return next((kind for kind, names in KINDS if any(name in op for name in names)), "other ops")


def by_kind(prof, wall_s: float) -> dict[str, float]:
    """ms by kind of op (each op's own CPU time, children excluded) and the rest of the wall time."""
    kinds: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        kinds[kind_of(event.key)] += event.self_cpu_time_total / 1000  # on the calling thread
    kinds = {kind: round(ms, 1) for kind, ms in sorted(kinds.items(), key=lambda item: -item[1])}
    kinds["Python and waiting"] = round(max(0.0, 1000 * wall_s - sum(kinds.values())), 1)
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="small", choices=("tiny", "small", "full"))
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    device = torch.device("cpu")
    model, runs_in = at_precision(build_random_bark(args.arch, device), args.precision, device)
    core = FastBark(model)
    ids, mask, history = random_inputs(device)
    settings = SamplingSettings(
        max_semantic_tokens=round(args.seconds * SEMANTIC_RATE_HZ), allow_early_stop=False
    )
    stages = (
        ("semantic", lambda _: semantic_tokens(core, ids, mask, history, settings, seed=1)),
        ("coarse", lambda semantic: coarse_tokens(core, semantic, history, settings, seed=1)),
        ("fine", lambda coarse: fine_tokens(core, coarse, history, settings, seed=1)),
    )
    value = None
    print(f"{args.arch}, {runs_in}, {torch.get_num_threads()} threads, {args.seconds} s of speech")
    for name, run in stages:
        run(value)  # warm
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            value = run(value)
            wall = time.perf_counter() - started
        kinds = by_kind(prof, wall)
        print(
            f"{name}: {1000 * wall:.0f} ms — " + ", ".join(f"{kind} {ms:.0f}" for kind, ms in kinds.items())
        )


if __name__ == "__main__":
    main()
