"""Bark's coarse stage for one sentence, as a program: 60-token windows over a sliding context."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from .program import COARSE_DRAWS, Prefill, Program, SamplingSettings, Step, temperature
from .shapes import BarkShapes


class CoarseStage:
    """The coarse stage of one sentence: 60-token windows over a sliding semantic context.

    ``semantic`` is the sentence's ``SemanticStage`` (or anything with ``tokens`` and ``done``).
    A window may start before the semantic stage ends, once every semantic token it reads exists
    and the sentence is sure to be long enough for a whole window: with a voice prompt the first
    window needs only the first ~47 semantic tokens. The windows are exactly those of a run that
    waits for all semantic tokens, so the first audio of a long sentence comes much sooner.
    """

    def __init__(self, shapes: BarkShapes, semantic, history, sampling: SamplingSettings, seed: int) -> None:
        self.shapes, self.semantic, self.seed = shapes, semantic, seed
        self.draws = itertools.count(COARSE_DRAWS)
        semantic_history, self.coarse = self._histories(history)
        self.history = semantic_history.tolist()
        self.n_history = len(self.coarse)
        self.floats = (temperature(sampling.waveform_temperature),)
        self.generated = 0

    def _n_out(self, n_semantic: int) -> int:
        """Coarse tokens for ``n_semantic`` semantic tokens (a whole number of frames)."""
        n = self.shapes.coarse_cfg.n_coarse_codebooks
        return round(math.floor(n_semantic * self.shapes.ratio / n) * n)

    @property
    def n_out(self) -> int:
        """Coarse tokens of the whole sentence (final once the semantic stage is done)."""
        return self._n_out(len(self.semantic.tokens))

    @property
    def done(self) -> bool:
        return self.semantic.done and self.generated >= self.n_out

    def _start(self) -> int:
        """Where the next window's semantic context starts, in history + tokens."""
        max_semantic_history = math.floor(self.shapes.coarse_cfg.max_coarse_history / self.shapes.ratio)
        index = len(self.history) + round(self.generated / self.shapes.ratio)
        return max(0, index - max_semantic_history)

    def ready(self) -> bool:
        """Can the next window start now?"""
        if self.semantic.done:
            return self.generated < self.n_out
        cfg = self.shapes.coarse_cfg
        have = len(self.semantic.tokens)
        reads = self._start() + cfg.max_coarse_input_length - len(self.history)
        return have >= reads and self._n_out(have) >= self.generated + cfg.sliding_window_len

    def window(self) -> Program:
        """Decode the next window; returns the codes so far, shape (2, frames), values 0..1023."""
        shapes, cfg = self.shapes, self.shapes.coarse_cfg
        semantic = shapes.to_device(self.history + self.semantic.tokens)
        window = semantic[self._start() :][: cfg.max_coarse_input_length]
        window = F.pad(
            window, (0, cfg.max_coarse_input_length - len(window)), value=cfg.coarse_semantic_pad_token
        )
        history = self.coarse[len(self.coarse) - min(len(self.coarse), cfg.max_coarse_history) :]
        infer = shapes.to_device([cfg.coarse_infer_token])
        prompt = torch.cat([window, infer, history])
        # Not yet done: ready() made sure that the sentence has room for a whole window.
        n_new = (
            min(cfg.sliding_window_len, self.n_out - self.generated)
            if self.semantic.done
            else cfg.sliding_window_len
        )
        # Each window re-reads a shifted semantic context, so its prefix is new: one prefill.
        tokens = [(yield Prefill("coarse", shapes.coarse_embed(prompt[None]), self._ints(0), self.floats))]
        for i in range(1, n_new):
            tokens.append(
                (yield Step("coarse", tokens[-1], len(prompt) + i - 1, self._ints(i % 2), self.floats))
            )
        self.coarse = torch.cat([self.coarse, shapes.to_device(tokens)])
        self.generated += n_new
        flat = self.coarse[self.n_history :]
        return torch.remainder(
            flat.view(-1, cfg.n_coarse_codebooks) - shapes.sem.semantic_vocab_size, shapes.codebook_size
        ).T

    def _ints(self, parity: int) -> tuple[int, int, int]:
        return self.seed, next(self.draws), parity

    def _histories(self, history) -> tuple[torch.Tensor, torch.Tensor]:
        """Voice prompt -> aligned semantic and flattened coarse histories, as Suno trims them."""
        empty = torch.zeros(0, dtype=torch.long, device=self.shapes.device)
        if history is None:
            return empty, empty
        semantic = history["semantic_prompt"].to(self.shapes.device).long()
        coarse = history["coarse_prompt"].to(self.shapes.device).long().clone()
        for n in range(1, coarse.shape[0]):
            coarse[n] += self.shapes.codebook_size * n
        coarse = coarse.T.reshape(-1) + self.shapes.sem.semantic_vocab_size
        max_semantic_history = math.floor(self.shapes.coarse_cfg.max_coarse_history / self.shapes.ratio)
        n_semantic = min(
            max_semantic_history,
            len(semantic) - len(semantic) % 2,
            math.floor(len(coarse) / self.shapes.ratio),
        )
        n_coarse = round(n_semantic * self.shapes.ratio)
        return semantic[len(semantic) - n_semantic :], coarse[len(coarse) - n_coarse :][:-2]
