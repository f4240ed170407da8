"""What a sentence's program asks of the models, and the settings it samples with.

A sentence is a *program*: a generator that yields ``Prefill`` (a prompt into its cache row,
answered with the first token) and ``Step`` (one more token, answered with the next) — one, or a
tuple of them for different models, answered with a tuple of tokens — and the ``Audio`` it makes.
Whoever drives it decides how to answer: alone, or batched with others.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..sampling import SamplingSettings  # noqa: F401 - the core's settings, declared torch-free


@dataclass
class Prefill:
    """Run ``embeds`` (1, T, C) at positions 0..T-1 into this program's cache row; answer: a token."""

    gpt: str  # "semantic" or "coarse"
    embeds: torch.Tensor
    ints: tuple[int, ...]  # the head's per-row integers (seed, draw, ...)
    floats: tuple[float, ...]


@dataclass
class Step:
    """Feed ``token`` at ``pos``; answer: the next token."""

    gpt: str
    token: int
    pos: int
    ints: tuple[int, ...]
    floats: tuple[float, ...]


@dataclass
class Audio:
    """Audio for the listener: ``make()`` returns float samples at 24 kHz.

    Deferred, so that a driver can make it (the fine stage and EnCodec) off the decode loop.
    Everything ``make`` reads must stay as it is until it has run: programs pass fresh tensors.
    """

    make: Callable[[], np.ndarray]


Op = Prefill | Step | Audio | tuple[Prefill | Step, ...]
Program = Generator[Op, Any, Any]

Request = Prefill | Step


def requests(op: Request | tuple[Request, ...]) -> tuple[Request, ...]:
    """The model requests in what a program yielded: one, or a tuple of them."""
    return op if isinstance(op, tuple) else (op,)


def reply(op: Request | tuple[Request, ...], tokens: list[int | Exception]) -> int | tuple[int, ...]:
    """What to send back for ``op``, given the tokens answering ``requests(op)`` in order; raises
    the error a request got instead of a token (see ``NonFiniteLogits``)."""
    for token in tokens:
        if isinstance(token, Exception):
            raise token
    return tuple(tokens) if isinstance(op, tuple) else tokens[0]


# Each stage counts its random draws from its own base, so the noise a token gets depends only on
# the seed and its place in its stage — not on how the stages of a sentence interleave.
SEMANTIC_DRAWS, COARSE_DRAWS, FINE_DRAWS = 0, 1 << 16, 1 << 20


class Cancelled(Exception):
    """Generation was stopped through the cancel event."""


class NonFiniteLogits(RuntimeError):
    """A model produced NaN or infinite logits for a sentence: its tokens would be noise."""


def random_seed() -> int:
    """A seed for an unseeded request, from torch's generator (so ``torch.manual_seed`` fixes it)."""
    return int(torch.randint(0, 2**31 - 1, ()))


def temperature(value: float | None) -> float:
    return float(value or 0.0)
