"""A sentence made ready for the scheduler (``fast.batch.SpeechRequest``), off its thread: the
text tokenized as Suno reads it, the voice prompt and both on the device, the seed fixed (a
restart is exact), Bark's length cut to what the text can need (``length_cap.py``)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import torch

from .fast import SamplingSettings
from .fast.program import random_seed
from .fast.request import SpeechRequest
from .length_cap import max_semantic_tokens
from .loader import LoadedBark
from .sentences import Turn

_WHITESPACE_RE = re.compile(r"\s+")


def tokenize(tokenizer, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Text -> (input ids, attention mask), each (1, 256), as Suno's ``generate_text_semantic``
    reads it: whitespace collapsed, no special tokens, cut at 256 tokens."""
    inputs = tokenizer(
        _WHITESPACE_RE.sub(" ", text).strip(),
        return_tensors="pt",
        padding="max_length",
        max_length=256,
        truncation=True,
        add_special_tokens=False,
        return_attention_mask=True,
        return_token_type_ids=False,
    )
    return inputs.input_ids, inputs.attention_mask


def prepare(
    bark: LoadedBark,
    text: str,
    prompt: dict[str, np.ndarray],
    sampling: SamplingSettings,
    seed: int | None,
    turn: Turn,
    *,
    max_speech_ratio: float,
    in_pieces: bool,
) -> SpeechRequest:
    """Everything a sentence needs before it is decoded; slow parts (tokenizer, copies to the
    device) run here, on the caller's thread, not the decode thread whose every row would wait."""
    ids, mask = (tensor.to(bark.device) for tensor in tokenize(bark.processor.tokenizer, text))
    history = {key: torch.from_numpy(value).to(bark.device) for key, value in prompt.items()}
    limit = max_semantic_tokens(text, max_speech_ratio, sampling.max_semantic_tokens)
    return SpeechRequest(
        input_ids=ids,
        attention_mask=mask,
        history=history,
        sampling=dataclasses.replace(sampling, max_semantic_tokens=limit),
        seed=random_seed() if seed is None else seed,
        in_pieces=in_pieces,
        now=turn.now,
        client=turn.client,
    )
