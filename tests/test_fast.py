"""The fast core against transformers' BarkModel.generate, on the tiny model (CPU).

transformers is given Suno's coarse mask (its own leaves ids above the second codebook open);
``test_suno.py`` holds the equivalence with Suno's own code."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from helpers import GREEDY, samples_for, tokens
from transformers import BarkModel, BarkProcessor
from transformers.models.bark.generation_configuration_bark import (
    BarkCoarseGenerationConfig,
    BarkFineGenerationConfig,
    BarkSemanticGenerationConfig,
)

from wyoming_bark.fast import Cancelled, FastBark, SamplingSettings
from wyoming_bark.fast.model import CausalGPT
from wyoming_bark.fast.stages import coarse_tokens, fine_tokens, generate, semantic_tokens
from wyoming_bark.fast.transformers_core import suno_coarse_suppressed
from wyoming_bark.settings import PRECISIONS
from wyoming_bark.voices import VoiceLibrary


@pytest.fixture(scope="module")
def bark(tiny_model):
    model = BarkModel.from_pretrained(str(tiny_model)).eval()
    processor = BarkProcessor.from_pretrained(str(tiny_model))
    return model, processor, FastBark(model)


@pytest.fixture(scope="module")
def voice(tiny_model):
    library = VoiceLibrary(None)
    prompt = library.load(library.resolve("v2/en_speaker_6"), tiny_model)
    return {key: torch.from_numpy(value) for key, value in prompt.items()}


def configs(model):
    config = model.generation_config
    return (
        BarkSemanticGenerationConfig(**config.semantic_config),
        BarkCoarseGenerationConfig(**config.coarse_acoustics_config),
        BarkFineGenerationConfig(**config.fine_acoustics_config),
    )


def test_stages_match_transformers_token_for_token(bark, voice):
    model, processor, fast = bark
    sem, coarse_cfg, fine_cfg = configs(model)
    inputs = tokens(processor, "Hello world, this is a test of the fast core.")
    s = SamplingSettings(
        text_temperature=None, waveform_temperature=None, fine_temperature=None, max_semantic_tokens=60
    )
    with torch.inference_mode():
        ref_semantic = model.semantic.generate(
            inputs["input_ids"],
            semantic_generation_config=sem,
            history_prompt=voice,
            attention_mask=inputs["attention_mask"],
            do_sample=False,
            max_new_tokens=60,
            min_eos_p=0.05,
        )
        semantic = semantic_tokens(fast, inputs["input_ids"], inputs["attention_mask"], voice, s)
        assert len(semantic) == 60
        assert torch.equal(ref_semantic[0], semantic)

        ref_coarse = model.coarse_acoustics.generate(
            ref_semantic.clone(),
            semantic_generation_config=sem,
            coarse_generation_config=coarse_cfg,
            codebook_size=1024,
            history_prompt=voice,
            do_sample=False,
            suppress_tokens=suno_coarse_suppressed(model),  # transformers' own mask leaves ids open
        )
        coarse = coarse_tokens(fast, semantic, voice, s)
        assert coarse.shape == (2, samples_for(60, hop=1)), "two 60-step windows and a bit"
        assert torch.equal(torch.remainder(ref_coarse.view(-1, 2) - 10_000, 1024).T, coarse)

        # transformers decodes the fine stage greedily when its temperature is 1.0
        ref_fine = model.fine_acoustics.generate(
            ref_coarse,
            semantic_generation_config=sem,
            coarse_generation_config=coarse_cfg,
            fine_generation_config=fine_cfg,
            codebook_size=1024,
            history_prompt=voice,
            temperature=1.0,
        )
        fine = fine_tokens(fast, coarse, voice, s)
        assert torch.equal(ref_fine[0].long(), fine.long())

        reference_audio = model.codec_decode(ref_fine)[0].numpy()
    audio = fast.decode(fine)
    np.testing.assert_allclose(audio, reference_audio, atol=1e-5)


@pytest.mark.parametrize("with_voice", [True, False])
@pytest.mark.slow
def test_full_length_generation_matches(bark, voice, with_voice):
    """768 semantic tokens: the block-size limit, 13 coarse windows, two fine windows."""
    model, processor, fast = bark
    inputs = tokens(processor, "A long sentence.")
    history = voice if with_voice else None
    with torch.inference_mode():
        reference = model.generate(
            **inputs,
            history_prompt=history,
            do_sample=False,
            semantic_max_new_tokens=768,
            min_eos_p=0.05,
            fine_temperature=1.0,
            coarse_suppress_tokens=suno_coarse_suppressed(model),
        )[0].numpy()
    audio = generate(fast, inputs["input_ids"], inputs["attention_mask"], history, GREEDY)
    assert len(audio) == len(reference) == samples_for(768)
    np.testing.assert_allclose(audio, reference, atol=1e-5)


def test_eos_rule_and_immediate_stop(bark, voice):
    """Once EOS is likely enough it is forced; ending at once gives empty audio, not an EnCodec crash."""
    _, processor, fast = bark
    inputs = tokens(processor, "Stop.")
    s = SamplingSettings(
        text_temperature=None, waveform_temperature=None, fine_temperature=None, min_eos_p=1e-9
    )
    semantic = semantic_tokens(fast, inputs["input_ids"], inputs["attention_mask"], voice, s)
    assert len(semantic) == 0
    audio = generate(fast, inputs["input_ids"], inputs["attention_mask"], voice, s)
    assert audio.shape == (0,)


def test_sampling_is_seeded_and_in_range(bark, voice):
    _, processor, fast = bark
    inputs = tokens(processor, "Sampled speech.")
    s = SamplingSettings(max_semantic_tokens=30)
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        semantic = semantic_tokens(fast, inputs["input_ids"], inputs["attention_mask"], voice, s)
        coarse = coarse_tokens(fast, semantic, voice, s)
        runs.append((semantic, coarse))
        assert int(semantic.max()) < 10_000 and int(coarse.max()) < 1024 and int(coarse.min()) >= 0
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])
    greedy = semantic_tokens(fast, inputs["input_ids"], inputs["attention_mask"], voice, GREEDY)
    assert not torch.equal(runs[0][0], greedy[:30]), "temperature sampling is not greedy"


def test_no_early_stop_gives_fixed_lengths(bark, voice):
    _, processor, fast = bark
    inputs = tokens(processor, "Benchmarks need fixed lengths.")
    s = SamplingSettings(min_eos_p=1e-9, max_semantic_tokens=25, allow_early_stop=False)
    assert len(semantic_tokens(fast, inputs["input_ids"], inputs["attention_mask"], voice, s)) == 25


def test_decode_steps_match_a_full_forward(bark):
    """The batched static KV cache: rows stepped together at their own positions give the logits of
    one causal pass over each row's sequence."""
    _, _, fast = bark
    gpt = CausalGPT(fast.bark.coarse_acoustics)
    gpt.setup_cache(batch=3, max_seq=64)
    sequences = torch.randint(10_000, 12_048, (2, 40))
    with torch.inference_mode():
        full = [
            gpt.prefill(gpt.embed(sequences[r : r + 1, : n + 1]), torch.tensor([2]))
            for r in range(2)
            for n in range(40)
        ]
        # row 0 holds a 30-token prompt, row 2 a 25-token one; row 1 is idle (padding)
        gpt.prefill(gpt.embed(sequences[:1, :30]), torch.tensor([0]))
        gpt.prefill(gpt.embed(sequences[1:, :25]), torch.tensor([2]))
        for i in range(10):
            tokens = torch.stack([sequences[0, 30 + i], torch.tensor(0), sequences[1, 25 + i]])[:, None]
            pos = torch.tensor([30 + i, gpt.scratch, 25 + i])
            logits = gpt.step(tokens, pos)
            torch.testing.assert_close(logits[0], full[30 + i][0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(logits[2], full[40 + 25 + i][0], atol=1e-4, rtol=1e-4)
            # attending only to the first positions (past every real row's) changes nothing
            spanned = gpt.step(tokens, pos, span=40)
            torch.testing.assert_close(spanned[[0, 2]], logits[[0, 2]], atol=1e-5, rtol=1e-5)


class _SetAfter(threading.Event):
    """A cancel flag a listener sets while the sentence is under way: after ``checks`` looks."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.left = checks

    def is_set(self) -> bool:
        self.left -= 1
        return self.left < 0 or super().is_set()


def test_cancel_stops_generation_under_way(bark, voice):
    """Set before the start or in the middle of the semantic stage, the flag ends the sentence."""
    _, processor, fast = bark
    inputs = tokens(processor, "Never finished.")
    settings = SamplingSettings(max_semantic_tokens=40, allow_early_stop=False)
    for checks in (0, 10):
        cancel = _SetAfter(checks)
        with pytest.raises(Cancelled):
            generate(fast, inputs["input_ids"], inputs["attention_mask"], voice, settings, cancel)
        assert cancel.left < 0, "generation ran until the flag was set, and stopped at it"


@pytest.mark.slow
def test_benchmark_runs_and_reports_everything():
    """Not a speed test: the benchmark's CPU path works end to end and reports every figure."""
    import json
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "wyoming_bark.bench",
        "--arch",
        "tiny",
        "--device",
        "cpu",
        "--seconds",
        "0.5",
    ]
    command += ["--reps", "1", "--reference", "--first-audio", "--clients", "2", "--requests", "1"]
    command += ["--sentence-seconds", "0.5", "--stream-sentences", "2", "--contention", "2", "--json"]
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["arch"] == "tiny" and result["audio_seconds"] == pytest.approx(0.5, abs=0.03)
    assert {
        "rtf",
        "semantic_ms_per_step",
        "coarse_ms_per_step",
        "fine_ms",
        "codec_ms",
        "first_call_s",
        "self_check",
    } <= set(result["ours"])
    assert result["ours"]["self_check"].startswith("passed"), result["ours"]["self_check"]
    assert result["reference"]["audio_seconds"] == pytest.approx(result["audio_seconds"], abs=0.03)
    # as shipped on a CPU: each GPT as measured fastest here, whole sentences (audio streaming is
    # for GPUs), batched
    assert result["reference_dtype"] == "float32"
    assert result["precision"] in PRECISIONS or result["precision"].startswith("semantic "), result[
        "precision"
    ]
    for server, streaming, batch in ((result["server"], "off", 8), (result["server_serial"], "off", 1)):
        assert (server["audio_streaming"], server["max_batch"], server["precision"]) == (
            streaming,
            batch,
            result["precision"],
        )
        assert server["first_audio"]["first_audio_s"] > 0 and server["clients"]["requests"] == 2
        assert server["clients"]["audio_seconds_per_second"] > 0 and server["clients"]["ms_per_step"] > 0
        stream = server["stream"]  # an answer in Home Assistant's deltas, heard in real time
        assert stream["audio_s"] == pytest.approx(1.0, abs=0.06) and stream["first_audio_s"] > 0
        assert {"pauses", "paused_s", "longest_pause_s", "last_delta_s"} <= set(stream)
    busy = result["server"]["contention"]  # one request beside two streamed answers (as shipped only)
    assert busy["streams"] == 2 and busy["first_audio_alone_s"] > 0 and busy["first_audio_beside_s"] > 0
    assert busy["ratio"] > 0 and busy["describe_p99_ms"] > 0 and "contention" not in result["server_serial"]


@pytest.mark.slow
def test_benchmark_compares_precisions_in_one_run():
    """The CPU precision table of docs/performance.md comes from this path: fp32 first (the baseline), int8
    and auto's choice timed beside it, and the quality gate's numbers for both."""
    import json
    import subprocess
    import sys

    command = [sys.executable, "-m", "wyoming_bark.bench", "--arch", "tiny", "--device", "cpu"]
    command += ["--seconds", "0.5", "--reps", "1", "--precision", "fp32,int8,auto", "--json"]
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["precision"] == "fp32" and set(result["precisions"]) == {"fp32", "int8", "auto"}
    auto = result["precisions"]["auto"]  # what it chose here, timed and gated beside the others
    assert auto["rtf"] > 0 and "coarse_acoustics" not in auto["runs_in"] and "quality_vs_fp32" in auto
    int8 = result["precisions"]["int8"]
    assert int8["rtf"] > 0 and int8["speedup"] > 0
    gate = int8["quality_vs_fp32"]
    assert {"semantic", "coarse", "fine", "audio"} <= set(gate)
    assert 0 <= gate["fine"]["codes_agreement"] <= 1 and gate["audio"]["rms_difference"] >= 0


def test_streamed_audio_matches_the_whole_sentence(bark, voice):
    """Audio released window by window joins up to the whole-sentence result within a small tolerance."""
    _, processor, fast = bark
    inputs = tokens(processor, "A sentence streamed while it is being generated.")
    s = SamplingSettings(
        text_temperature=None, waveform_temperature=None, fine_temperature=None, max_semantic_tokens=200
    )
    pieces = list(
        fast.solo(fast.speech(inputs["input_ids"], inputs["attention_mask"], voice, s, in_pieces=True))
    )
    whole = generate(fast, inputs["input_ids"], inputs["attention_mask"], voice, s)
    streamed = np.concatenate(pieces)
    assert len(pieces) >= 4 and all(len(piece) % fast.hop == 0 for piece in pieces)
    assert len(streamed) == len(whole) == samples_for(200, fast.hop)
    head = 30 * fast.hop  # the first 30 frames: identical coarse codes and full right context
    assert np.sqrt(np.mean((streamed - whole) ** 2)) < 0.05 * np.sqrt(np.mean(whole**2))
    assert np.abs(streamed[:head] - whole[:head]).max() < 0.05 * np.abs(whole).max()


def test_codec_prefix_decodes_exactly():
    """What streaming relies on: EnCodec's 24 kHz decoder is causal, a prefix decodes to a prefix."""
    from transformers import BarkModel

    from wyoming_bark.bench.random_bark import bark_config, fill_codebooks

    torch.manual_seed(0)
    model = BarkModel(bark_config(1, 16, 2)).eval()  # the real EnCodec 24 kHz architecture
    fill_codebooks(model)
    codes = torch.randint(0, 1024, (1, 8, 90))
    with torch.inference_mode():
        full = model.codec_decode(codes)[0]
        # From 8 frames on (streaming releases 30 at least); shorter inputs meet its reflect padding.
        for n in (8, 31, 60):
            torch.testing.assert_close(
                model.codec_decode(codes[:, :, :n])[0], full[: n * 320], atol=1e-6, rtol=0
            )
