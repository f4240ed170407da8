"""Bark's stages one at a time, and whole sentences alone, on our core: for the stage-by-stage
equivalence tests and the benchmark's per-stage timings. The server runs sentences as programs
through ``batch.Scheduler`` instead."""

from __future__ import annotations

import threading
from collections.abc import Generator
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from .coarse import CoarseStage
from .generate import FastBark
from .program import SamplingSettings, random_seed, temperature
from .semantic import SemanticStage


def semantic_tokens(
    core: FastBark, input_ids, attention_mask, history, sampling: SamplingSettings, cancel=None, seed=None
) -> torch.Tensor:
    """Text -> semantic tokens (1-D, without the EOS token)."""
    seed = random_seed() if seed is None else seed
    stage = SemanticStage(core.shapes, input_ids, attention_mask, history, sampling, seed)
    return _value(core.solo(stage.program(), cancel))


def coarse_tokens(
    core: FastBark, semantic: torch.Tensor, history, sampling: SamplingSettings, cancel=None, seed=None
) -> torch.Tensor:
    """Semantic tokens -> the first two EnCodec codebooks, shape (2, frames), values 0..1023."""
    seed = random_seed() if seed is None else seed
    done = SimpleNamespace(tokens=semantic.tolist(), done=True)
    coarse = CoarseStage(core.shapes, done, history, sampling, seed)
    codes = torch.zeros(2, 0, dtype=torch.long, device=core.device)
    while not coarse.done:
        codes = _value(core.solo(coarse.window(), cancel))
    return codes


def fine_tokens(
    core: FastBark,
    coarse: torch.Tensor,
    history,
    sampling: SamplingSettings,
    seed: int | None = None,
    draw: int = 0,
) -> torch.Tensor:
    """Two coarse codebooks -> all eight, shape (8, frames), in 1024-frame windows as Suno."""
    prompt = history["fine_prompt"] if history is not None else None
    seed = random_seed() if seed is None else seed
    return core.fine.tokens(coarse, prompt, temperature(sampling.fine_temperature), seed, draw)


def generate(
    core: FastBark,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    history: dict[str, torch.Tensor] | None,
    sampling: SamplingSettings,
    cancel: threading.Event | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """Tokenized text (1, T) and a voice prompt -> float audio, one sentence alone."""
    program = core.speech(input_ids, attention_mask, history, sampling, seed)
    pieces = list(core.solo(program, cancel))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


def _value(driver: Generator[Any, None, Any]) -> Any:
    """Run a driver to its end and return its value."""
    while True:
        try:
            next(driver)
        except StopIteration as done:
            return done.value
