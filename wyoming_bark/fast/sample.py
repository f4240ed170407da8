"""Token selection for batched decoding: masks, Bark's EOS rule and seeded sampling.

Sampling noise is counter-based: a stream's random draws are a hash of its seed, a draw counter
and the vocabulary index, not the state of a shared generator. So a seeded request says the same
thing whether it is decoded alone or batched with others, and the whole selection, noise
included, fits inside a CUDA graph with no host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")
_MASK32 = 0xFFFFFFFF


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32 family) on int64 tensors holding values below 2**32."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


def race_noise(
    seed: torch.Tensor, draw: torch.Tensor, n: int, offset: torch.Tensor | int = 0
) -> torch.Tensor:
    """Exp(1) noise (rows, n) that depends only on each row's ``seed`` and ``draw`` (both (rows, 1))
    and the index ``offset + i`` of each of its ``n`` values."""
    key = _mix((_mix(seed & _MASK32) + draw) & _MASK32)
    index = torch.arange(n, device=seed.device) + offset
    bits = _mix(_mix((key + index) & _MASK32) ^ key) >> 8  # 24 bits: exact in float32
    return -torch.log((bits.float() + 0.5) * 2.0**-24)


def pick(
    scores: torch.Tensor, temperature: torch.Tensor, seed: torch.Tensor, draw: torch.Tensor
) -> torch.Tensor:
    """Sample each row from ``softmax(scores / temperature)``, or take its argmax at temperature 0.

    Exponential race: argmax of p / Exp(1) draws from p exactly, like ``multinomial``, but without
    a host sync. ``scores`` (rows, V); ``temperature``, ``seed``, ``draw`` (rows, 1).
    """
    greedy = scores.argmax(-1)
    probs = F.softmax(scores / temperature.clamp_min(1e-5), dim=-1)
    sampled = (probs / race_noise(seed, draw, scores.shape[-1])).argmax(-1)
    return torch.where(temperature[:, 0] > 0, sampled, greedy)


class SemanticHead:
    """Semantic logits -> token: only semantic tokens and EOS; EOS forced once likely enough.

    Per row ``ints`` = (seed, draw, may_stop) and ``floats`` = (temperature, min_eos_p). Suno's
    rule (``bark/generation.py``): speech ends once EOS's probability *after* temperature,
    ``softmax(scores / temperature)``, reaches ``min_eos_p`` (``>=``). transformers' port reads the
    unscaled probability with ``>``, which stops at other tokens. Greedy rows (temperature 0) read
    it at temperature 1.
    """

    def __init__(self, vocab: int, semantic_vocab: int, pad: int, eos: int, device) -> None:
        self.suppress = torch.zeros(1, vocab, device=device)
        self.suppress[:, semantic_vocab:pad] = NEG_INF
        self.suppress[:, pad + 1 :] = NEG_INF
        self.eos_only = torch.full((1, vocab), NEG_INF, device=device)
        self.eos_only[:, eos] = 0.0
        self.no_eos = torch.zeros(1, vocab, device=device)
        self.no_eos[:, eos] = NEG_INF
        self.eos = eos

    def __call__(self, logits: torch.Tensor, ints: torch.Tensor, floats: torch.Tensor) -> torch.Tensor:
        scores = logits.float() + self.suppress
        may_stop = ints[:, 2:3] > 0
        scores = torch.where(may_stop, scores, scores + self.no_eos)
        temp = floats[:, :1]
        eos_p = F.softmax(scores / torch.where(temp > 0, temp, 1.0), dim=-1)[:, self.eos : self.eos + 1]
        scores = torch.where(may_stop & (eos_p >= floats[:, 1:2]), scores + self.eos_only, scores)
        return pick(scores, floats[:, :1], ints[:, :1], ints[:, 1:2])


class CoarseHead:
    """Coarse logits -> token of the codebook whose turn it is (they alternate).

    Per row ``ints`` = (seed, draw, codebook parity) and ``floats`` = (temperature,).
    """

    def __init__(self, vocab: int, offset: int, codebook_size: int, device) -> None:
        self.masks = torch.full((2, vocab), NEG_INF, device=device)
        self.masks[0, offset : offset + codebook_size] = 0.0  # first codebook
        # Second codebook: its 1024 ids only, as Suno. (transformers leaves the ids above open:
        # pad and infer tokens, which the remainder would turn into codes 0..47.)
        self.masks[1, offset + codebook_size : offset + 2 * codebook_size] = 0.0

    def __call__(self, logits: torch.Tensor, ints: torch.Tensor, floats: torch.Tensor) -> torch.Tensor:
        return pick(logits.float() + self.masks[ints[:, 2]], floats[:, :1], ints[:, :1], ints[:, 1:2])
