"""Our core against Suno's own ``bark`` 0.1.5 (``bark/generation.py``), token for token.

Same random weights on both sides (see ``suno_bark.py``), greedy on both sides, temperatures
still applied where Suno's end-of-speech rule reads them. What users hear as Bark is Suno's code,
so wherever this suite and transformers' port disagree, this suite is right.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from suno_bark import greedy_suno, import_suno, load_into_suno
from tiny_bark import random_voice
from transformers import BarkModel, BarkProcessor

from wyoming_bark.fast import FastBark, SamplingSettings
from wyoming_bark.fast import fine as fine_module
from wyoming_bark.fast import sample as sample_module
from wyoming_bark.fast.batch import Scheduler, SpeechRequest
from wyoming_bark.fast.stages import coarse_tokens, fine_tokens, semantic_tokens
from wyoming_bark.prepare import tokenize

SHORT_TEXT = "Short one."
TEXT = "Hello world, this is a test of the fast core."
LONG_TEXT = "The quick brown fox jumps over the lazy dog again and again. " * 6  # > 256 tokens


@pytest.fixture(scope="module")
def suno(bark_wheel, tiny_model, tmp_path_factory):
    """Suno's ``bark.generation`` holding the tiny model's weights."""
    generation = import_suno(bark_wheel, tmp_path_factory.mktemp("suno"))
    bark = BarkModel.from_pretrained(str(tiny_model)).eval()
    load_into_suno(generation, bark, tiny_model, tmp_path_factory.mktemp("suno-checkpoints"))
    yield generation
    generation.models.clear()


@pytest.fixture(scope="module")
def ours(tiny_model):
    bark = BarkModel.from_pretrained(str(tiny_model)).eval()
    return FastBark(bark, max_batch=2), BarkProcessor.from_pretrained(str(tiny_model)).tokenizer


@pytest.fixture
def greedy(monkeypatch):
    """Argmax on both sides: Suno's multinomial, and our race noise set to one (argmax of the
    tempered probabilities: the temperature still reaches the end-of-speech rule)."""
    monkeypatch.setattr(sample_module, "race_noise", lambda seed, draw, n, offset=0: torch.ones(len(seed), n))
    monkeypatch.setattr(fine_module, "race_noise", lambda seed, draw, n, offset=0: torch.ones(n))
    with greedy_suno(), torch.inference_mode():
        yield


def _voices(real_prompts) -> dict[str, dict[str, np.ndarray] | None]:
    rng = np.random.default_rng(7)
    return {
        "none": None,
        "preset": real_prompts["v2/en_speaker_6"],  # semantic prompt shorter than 256
        "long": random_voice(rng, frames=900),  # 598 semantic tokens, 900 frames: both cut
        "short": random_voice(rng, frames=30),  # fine prompt shorter than 512 frames
    }


def _history(voice: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor] | None:
    return None if voice is None else {key: torch.from_numpy(value) for key, value in voice.items()}


@pytest.mark.parametrize(
    ("text", "voice", "temp", "min_eos_p", "length"),
    [
        (TEXT, "none", 0.7, 0.001, 96),  # speech ends mid-run at 0.7 ...
        (TEXT, "none", 1.0, 0.001, 62),  # ... elsewhere at 1.0: the rule reads tempered probabilities
        (SHORT_TEXT, "none", 0.7, 1e-4, 6),
        (SHORT_TEXT, "none", 1.0, 1e-4, 0),
        (SHORT_TEXT, "preset", 0.7, 0.001, None),
        (TEXT, "preset", 0.7, 0.05, 768),  # never likely enough: the limit
        (TEXT, "long", 1.0, 0.05, 768),  # the semantic prompt cut to its last 256
        (LONG_TEXT, "short", 0.7, 0.05, 768),  # text over 256 tokens: cut as Suno cuts it
    ],
)
def test_semantic_tokens_are_suno_s(suno, ours, greedy, real_prompts, text, voice, temp, min_eos_p, length):
    fast, tokenizer = ours
    prompt = _voices(real_prompts)[voice]
    expected = suno.generate_text_semantic(
        text, history_prompt=prompt, temp=temp, min_eos_p=min_eos_p, use_kv_caching=True, silent=True
    )
    settings = SamplingSettings(text_temperature=temp, min_eos_p=min_eos_p)
    ids, mask = tokenize(tokenizer, text)
    got = semantic_tokens(fast, ids, mask, _history(prompt), settings, seed=1)
    assert got.tolist() == expected.tolist()
    assert length is None or len(expected) == length, "the case no longer tests what it says"


@pytest.mark.parametrize(
    ("n_semantic", "voice"),
    [
        (40, "none"),  # less than one 60-step window
        (260, "none"),  # 13 windows, the last partial, the 630-token history filling up
        (260, "preset"),
        (500, "long"),  # voice history longer than 630 coarse tokens: trimmed as Suno trims it
    ],
)
def test_coarse_codes_are_suno_s(suno, ours, greedy, real_prompts, n_semantic, voice):
    fast, _ = ours
    prompt = _voices(real_prompts)[voice]
    semantic = np.random.default_rng(n_semantic).integers(0, 10_000, n_semantic)
    expected = suno.generate_coarse(
        semantic, history_prompt=prompt, temp=0.7, use_kv_caching=True, silent=True
    )
    got = coarse_tokens(fast, torch.from_numpy(semantic), _history(prompt), SamplingSettings(), seed=1)
    assert got.shape == expected.shape
    assert np.array_equal(got.numpy(), expected)


@pytest.mark.parametrize(
    ("frames", "voice"), [(300, "none"), (300, "short"), (1500, "long"), (700, "preset")]
)
def test_fine_codes_and_encodec_are_suno_s(suno, ours, greedy, real_prompts, frames, voice):
    fast, _ = ours
    prompt = _voices(real_prompts)[voice]
    coarse = np.random.default_rng(frames).integers(0, 1024, (2, frames))
    expected = suno.generate_fine(coarse, history_prompt=prompt, temp=0.5)
    got = fine_tokens(fast, torch.from_numpy(coarse), _history(prompt), SamplingSettings(), seed=1)
    assert np.array_equal(got.numpy(), expected)
    assert np.array_equal(fast.decode(got), suno.codec_decode(expected))


def test_served_program_speaks_as_suno_end_to_end(suno, ours, greedy, real_prompts):
    """Two sentences decoded together by the scheduler, as the server decodes them: each is Suno's
    ``semantic -> coarse -> fine -> codec_decode`` of the same text and voice."""
    fast, tokenizer = ours
    settings = SamplingSettings(min_eos_p=0.001)
    cases = [(TEXT, "none"), (SHORT_TEXT, "preset")]
    voices = _voices(real_prompts)
    expected = []
    for text, voice in cases:
        prompt = voices[voice]
        semantic = suno.generate_text_semantic(
            text, history_prompt=prompt, temp=0.7, min_eos_p=0.001, use_kv_caching=True, silent=True
        )
        coarse = suno.generate_coarse(
            semantic, history_prompt=prompt, temp=0.7, use_kv_caching=True, silent=True
        )
        expected.append(suno.codec_decode(suno.generate_fine(coarse, history_prompt=prompt, temp=0.5)))

    async def speak(scheduler: Scheduler, text: str, voice: str) -> np.ndarray:
        ids, mask = tokenize(tokenizer, text)
        request = SpeechRequest(
            input_ids=ids, attention_mask=mask, history=_history(voices[voice]), sampling=settings, seed=1
        )
        pieces = [piece async for piece in scheduler.submit(request)]
        return np.concatenate(pieces)

    async def both() -> list[np.ndarray]:
        scheduler = Scheduler(fast)
        try:
            return await asyncio.gather(*(speak(scheduler, text, voice) for text, voice in cases))
        finally:
            scheduler.close()

    for got, want in zip(asyncio.run(both()), expected):
        assert len(want) > 0
        assert np.array_equal(got, want)
