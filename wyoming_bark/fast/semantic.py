"""Bark's semantic stage for one sentence, as a program: text -> semantic tokens."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from .program import SEMANTIC_DRAWS, Prefill, Program, SamplingSettings, Step, temperature
from .shapes import BarkShapes


class SemanticStage:
    """Semantic tokens (without EOS), appended to ``tokens`` as they come; ``done`` at the end.

    The coarse stage reads ``tokens`` while they are still being made (see ``CoarseStage.ready``).
    """

    def __init__(
        self, shapes: BarkShapes, input_ids, attention_mask, history, sampling: SamplingSettings, seed: int
    ):
        self.shapes, self.sampling, self.seed = shapes, sampling, seed
        sem = shapes.sem
        length = sem.max_input_semantic_length
        ids = (input_ids[:, :length] + sem.text_encoding_offset).masked_fill(
            attention_mask[:, :length] == 0, sem.text_pad_token
        )
        ids = F.pad(ids, (0, length - ids.shape[1]), value=sem.text_pad_token).to(shapes.device)
        hist = torch.full((1, length), sem.semantic_pad_token, dtype=torch.long, device=shapes.device)
        if history is not None:
            prompt = history["semantic_prompt"][-length:].to(shapes.device)
            hist[0, : len(prompt)] = prompt
        embed = shapes.semantic_embed
        infer = shapes.to_device([[sem.semantic_infer_token]])
        self.embeds = torch.cat([embed(ids) + embed(hist), embed(infer)], dim=1)
        self.tokens: list[int] = []
        self.done = False

    def program(self) -> Program:
        """Decode until EOS or the limit; returns the tokens as a tensor."""
        shapes, sampling = self.shapes, self.sampling
        draws = itertools.count(SEMANTIC_DRAWS)
        prefix = self.embeds.shape[1]
        may_stop = int(sampling.allow_early_stop)
        floats = (temperature(sampling.text_temperature), sampling.min_eos_p)
        token = yield Prefill("semantic", self.embeds, (self.seed, next(draws), may_stop), floats)
        # Token k is predicted at position prefix + k - 2: positions end at the block size.
        limit = min(sampling.max_semantic_tokens, shapes.semantic_block_size - prefix + 1)
        for i in range(limit):
            if token == shapes.sem.eos_token_id:
                break
            self.tokens.append(token)
            if i + 1 < limit:
                token = yield Step("semantic", token, prefix + i, (self.seed, next(draws), may_stop), floats)
        self.done = True
        return shapes.to_device(self.tokens)
