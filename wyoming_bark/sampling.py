"""Bark's sampling knobs, as settings (torch-free: the command line reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .options import setting

TEMPERATURE = {"kind": "number", "low": 0, "high": 10, "above_low": True}


@dataclass(frozen=True)
class SamplingSettings:
    """Bark's sampling knobs; a temperature of 0 (or None) means greedy decoding."""

    text_temperature: float | None = setting(
        0.7, "Sampling temperature of the semantic (text) stage", flag="text-temp", **TEMPERATURE
    )
    waveform_temperature: float | None = setting(
        0.7, "Sampling temperature of the coarse (waveform) stage", flag="waveform-temp", **TEMPERATURE
    )
    fine_temperature: float | None = 0.5
    min_eos_p: float = setting(
        0.05,
        "End a sentence once the end-of-speech probability reaches this",
        kind="number",
        low=0,
        high=1,
        above_low=True,
    )
    max_semantic_tokens: int = setting(
        768,
        "Semantic tokens per sentence at most (768 = ~15 s)",
        kind="int",
        low=1,
        high=768,  # Bark's limit: 768 semantic tokens per generation
    )
    allow_early_stop: bool = field(default=True)  # False: never end before max_semantic_tokens (benchmarks)
