"""What the scheduler and the engine need of a core: ours (``FastBark``) or transformers'
(``TransformersCore``). Either can run any sentence; the scheduler never asks which it has."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from .program import NonFiniteLogits, Prefill, Program, SamplingSettings, Step


@runtime_checkable
class Core(Protocol):
    name: str  # for status and logs: fast | transformers
    releases_pieces: bool  # can release a sentence's audio in pieces, before its end
    max_batch: int  # sentences decoded together (rows)
    device: torch.device

    def speech(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        history: dict[str, torch.Tensor] | None,
        sampling: SamplingSettings,
        seed: int | None = None,
        *,
        in_pieces: bool = False,
        cancel: threading.Event | None = None,
    ) -> Program:
        """One sentence as a program (``program.py``): its requests, then its ``Audio``."""

    def run(self, work: Sequence[tuple[int, Prefill | Step]]) -> list[int | NonFiniteLogits]:
        """Answer the programs' requests (by cache row) in one batched call."""

    def decode_paths(self) -> dict[str, str]:
        """How each part runs, for status."""
