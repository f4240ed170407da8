"""``--precision fp32,int8``: our core at several precisions in one run, interleaved, with medians,
and the quality gate's numbers (teacher-forced, against the first precision on the same weights)."""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable

import torch

from .. import precision as precisions
from ..fast import FastBark
from ..fast.check import compare_models


def at_precision(model, name: str, device: torch.device):
    """``(model at precision name, its resolved name)``: the model itself where its weights already
    are in that dtype, else a converted (and, for int8, quantized) copy, as the server loads it."""
    resolved = precisions.resolve(name, device)
    if precisions.dtype(resolved) == next(model.parameters()).dtype and resolved != "int8":
        return model, resolved
    variant = copy.deepcopy(model).to(precisions.dtype(resolved))
    if resolved == "int8":
        precisions.quantize(variant)
    return variant, resolved


def compare_precisions(model, device: torch.device, run: Callable, names: list[str], reps: int) -> dict:
    """``run(core)`` times one generation (a ``bench.Run``); the first round is a warm-up."""
    cores = {name: FastBark(at_precision(model, name, device)[0]) for name in names}
    runs: dict[str, list] = {name: [] for name in names}
    for _ in range(reps + 1):  # interleaved, so a busy moment of the machine hits every variant
        for name in names:
            runs[name].append(run(cores[name]))
    result: dict = {}
    for name in names:
        timed = runs[name][1:]

        def median(field: str, timed=timed) -> float:
            return statistics.median(getattr(one, field) for one in timed)

        audio_s = timed[0].audio_s
        result[name] = {
            "wall_s": round(median("wall"), 3),
            "rtf": round(median("wall") / audio_s, 3),
            "semantic_ms_per_step": round(1000 * median("semantic_s") / max(timed[0].semantic_tokens, 1), 2),
            "coarse_ms_per_step": round(1000 * median("coarse_s") / max(timed[0].coarse_tokens, 1), 2),
            "fine_ms": round(1000 * median("fine_s"), 1),
            "codec_ms": round(1000 * median("codec_s"), 1),
        }
        if name != names[0]:
            result[name]["speedup"] = round(result[names[0]]["wall_s"] / result[name]["wall_s"], 2)
            result[name]["quality_vs_" + names[0]] = compare_models(cores[names[0]], cores[name])
    return result
