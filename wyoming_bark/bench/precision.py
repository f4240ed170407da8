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
from ..stage_precision import StageChoice, summary


def at_precision(model, name: str, device: torch.device):
    """``(model at precision name, what its GPTs run in)``: the model itself where its weights
    already are in that dtype, else a converted (gated) copy, as the server loads it; ``auto`` on
    a CPU measures the choice here (``stage_precision``), as the server's first start does."""
    resolved = precisions.resolve(name, device)
    if device.type != "cpu" or resolved == "fp32":
        if precisions.dtype(resolved) == next(model.parameters()).dtype:
            return model, resolved
        return copy.deepcopy(model).to(precisions.dtype(resolved)), resolved
    if resolved == "auto":
        choice = StageChoice(None, model.config, torch.backends.quantized.engine).measure(model)
    else:
        choice = dict.fromkeys(precisions.QUANTIZED, resolved)
    variant = copy.deepcopy(model)
    choice, _, problems = precisions.convert(variant, choice)
    if problems:
        raise SystemExit(f"precision {name}: the quality gate failed here ({'; '.join(problems)})")
    return variant, summary(choice)


def compare_precisions(model, device: torch.device, run: Callable, names: list[str], reps: int) -> dict:
    """``run(core)`` times one generation (a ``bench.Run``); the first round is a warm-up."""
    variants = {name: at_precision(model, name, device) for name in names}
    cores = {name: FastBark(variant) for name, (variant, _) in variants.items()}
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
            "runs_in": variants[name][1],
        }
        if name != names[0]:
            result[name]["speedup"] = round(result[names[0]]["wall_s"] / result[name]["wall_s"], 2)
            result[name]["quality_vs_" + names[0]] = compare_models(cores[names[0]], cores[name])
    return result
