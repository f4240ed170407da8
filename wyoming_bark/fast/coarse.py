"""Bark's coarse stage for one sentence, as a program: 60-token windows over a sliding context."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .ops import Prefill, Program, SamplingSettings, Step, temperature

if TYPE_CHECKING:
    from .generate import FastBark


class CoarseStage:
    """The coarse stage of one sentence: 60-token windows over a sliding semantic context."""

    def __init__(
        self, fast: FastBark, semantic: torch.Tensor, history, s: SamplingSettings, seed: int, draws
    ):
        self.fast, self.seed, self.draws = fast, seed, draws
        cfg = fast.coarse_cfg
        self.n_out = round(
            math.floor(len(semantic) * fast.ratio / cfg.n_coarse_codebooks) * cfg.n_coarse_codebooks
        )
        semantic_history, self.coarse = self._histories(history)
        self.n_history = len(self.coarse)
        self.base = len(semantic_history)
        self.semantic = torch.cat([semantic_history, semantic.long()])
        self.floats = (temperature(s.waveform_temperature),)
        self.generated = 0

    @property
    def done(self) -> bool:
        return self.generated >= self.n_out

    def window(self) -> Program:
        """Decode the next window; returns the codes so far, shape (2, frames), values 0..1023."""
        fast, cfg = self.fast, self.fast.coarse_cfg
        max_semantic_history = math.floor(cfg.max_coarse_history / fast.ratio)
        index = self.base + round(self.generated / fast.ratio)
        window = self.semantic[max(0, index - max_semantic_history) :][: cfg.max_coarse_input_length]
        window = F.pad(
            window, (0, cfg.max_coarse_input_length - len(window)), value=cfg.coarse_semantic_pad_token
        )
        history = self.coarse[len(self.coarse) - min(len(self.coarse), cfg.max_coarse_history) :]
        infer = torch.tensor([cfg.coarse_infer_token], device=fast.device)
        prompt = torch.cat([window, infer, history])
        n_new = min(cfg.sliding_window_len, self.n_out - self.generated)
        # Each window re-reads a shifted semantic context, so its prefix is new: one prefill.
        tokens = [(yield Prefill("coarse", fast.coarse.embed(prompt[None]), self._ints(0), self.floats))]
        for i in range(1, n_new):
            tokens.append(
                (yield Step("coarse", tokens[-1], len(prompt) + i - 1, self._ints(i % 2), self.floats))
            )
        self.coarse = torch.cat([self.coarse, torch.tensor(tokens, dtype=torch.long, device=fast.device)])
        self.generated += n_new
        flat = self.coarse[self.n_history :]
        return torch.remainder(
            flat.view(-1, cfg.n_coarse_codebooks) - fast.sem.semantic_vocab_size, fast.codebook_size
        ).T

    def _ints(self, parity: int) -> tuple[int, int, int]:
        return self.seed, next(self.draws), parity

    def _histories(self, history) -> tuple[torch.Tensor, torch.Tensor]:
        """Voice prompt -> aligned semantic and flattened coarse histories, as transformers trims them."""
        empty = torch.zeros(0, dtype=torch.long, device=self.fast.device)
        if history is None:
            return empty, empty
        semantic = history["semantic_prompt"].to(self.fast.device).long()
        coarse = history["coarse_prompt"].to(self.fast.device).long().clone()
        for n in range(1, coarse.shape[0]):
            coarse[n] += self.fast.codebook_size * n
        coarse = coarse.T.reshape(-1) + self.fast.sem.semantic_vocab_size
        max_semantic_history = math.floor(self.fast.coarse_cfg.max_coarse_history / self.fast.ratio)
        n_semantic = min(
            max_semantic_history, len(semantic) - len(semantic) % 2, math.floor(len(coarse) / self.fast.ratio)
        )
        n_coarse = round(n_semantic * self.fast.ratio)
        return semantic[len(semantic) - n_semantic :], coarse[len(coarse) - n_coarse :][:-2]
