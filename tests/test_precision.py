"""CPU precision: int8 weights, the quality gate against float32, threads (``auto``'s choice by
stage: test_stage_precision)."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from helpers import seeded_speech
from transformers import BarkModel

from wyoming_bark import precision
from wyoming_bark.errors import ModelLoadError
from wyoming_bark.fast import FastBark
from wyoming_bark.fast.check import compare_models
from wyoming_bark.loader import load_bark
from wyoming_bark.settings import ModelSettings

# The gate int8 must pass on the tiny random model, teacher-forced against float32 on the same
# weights (random logits are flat, so near-ties are common: real weights agree more).
MIN_TOP1 = 0.75
MAX_MEDIAN_DIFF = 0.02
MAX_AUDIO_DIFF = 0.12  # RMS of the difference over the reference's RMS (int8 on bark's tiny arch: ~0.06)


@pytest.fixture(scope="module")
def fp32_and_int8(tiny_model):
    model = BarkModel.from_pretrained(str(tiny_model)).eval()
    quantized = copy.deepcopy(model)
    precision.convert(quantized, dict.fromkeys(precision.QUANTIZED, "int8"))
    return FastBark(model), FastBark(quantized)


def test_auto_is_chosen_by_stage_on_a_cpu_and_float16_on_cuda():
    assert precision.resolve("auto", torch.device("cpu")) == "auto"
    assert precision.resolve("auto", torch.device("cuda")) == "fp16"
    assert precision.resolve("fp32", torch.device("cuda")) == "fp32"
    for cpu_only in ("int8", "bf16"):
        with pytest.raises(ModelLoadError, match=f"{cpu_only} is for the CPU"):
            precision.resolve(cpu_only, torch.device("cuda"))


def test_int8_passes_the_quality_gate(fp32_and_int8):
    report = compare_models(*fp32_and_int8)
    assert set(report) == {"semantic", "coarse", "fine", "audio"}
    for part in ("semantic", "coarse", "fine"):
        numbers = report[part]
        assert numbers["top1_agreement"] >= MIN_TOP1, (part, numbers)
        assert numbers["median_diff"] <= MAX_MEDIAN_DIFF, (part, numbers)
    assert report["fine"]["codes_agreement"] >= MIN_TOP1, report["fine"]
    assert 0 <= report["audio"]["rms_difference"] < MAX_AUDIO_DIFF, report["audio"]


def test_the_gate_fails_a_model_that_is_wrong(fp32_and_int8):
    """Not vacuous: the same gate rejects a model whose output layers are scrambled."""
    reference, _ = fp32_and_int8
    wrong = copy.deepcopy(reference.bark)
    with torch.no_grad():
        for head in (wrong.semantic.lm_head, wrong.coarse_acoustics.lm_head, *wrong.fine_acoustics.lm_heads):
            head.weight.copy_(head.weight[torch.randperm(head.weight.shape[0])])
    report = compare_models(reference, FastBark(wrong))
    assert all(report[part]["top1_agreement"] < MIN_TOP1 for part in ("semantic", "coarse", "fine")), report
    assert report["fine"]["codes_agreement"] < MIN_TOP1  # (the tiny codec hears little of it: no audio bound)


def test_the_server_loads_int8_on_a_cpu_and_speaks(tiny_model, tmp_path):
    loaded = load_bark(
        ModelSettings(
            model=str(tiny_model), data_dir=tmp_path, device="cpu", core="fast", max_batch=2, precision="int8"
        )
    )
    assert loaded.precision == "int8"
    assert isinstance(loaded.model.semantic.lm_head, torch.ao.nn.quantized.dynamic.Linear)
    assert loaded.self_check.startswith("passed"), loaded.self_check
    audio = seeded_speech(loaded)  # finite, as long as asked
    np.testing.assert_array_equal(audio, seeded_speech(loaded))  # seeded, alone both times: the same audio
    exact = load_bark(
        ModelSettings(
            model=str(tiny_model), data_dir=tmp_path, device="cpu", core="fast", max_batch=2, precision="fp32"
        )
    )
    assert exact.precision == "fp32" and isinstance(exact.model.semantic.lm_head, torch.nn.Linear)


def test_threads_default_to_physical_cores():
    assert 1 <= precision.physical_cores() <= (os.cpu_count() or 1)
    previous = torch.get_num_threads()
    try:
        assert precision.use_threads(1) == 1 and torch.get_num_threads() == 1
        assert precision.use_threads(None) == precision.physical_cores()
    finally:
        torch.set_num_threads(previous)


def test_int8_is_gated_at_load_and_falls_back_when_its_kernels_are_wrong(
    tiny_model, tmp_path, monkeypatch, caplog
):
    """At load, on this machine's own kernels: int8 that gives other numbers without raising (as
    an untested CPU's kernels might) is caught by the gate and float32 serves, with one line."""
    settings = ModelSettings(
        model=str(tiny_model), data_dir=tmp_path, device="cpu", max_batch=2, precision="int8"
    )
    with caplog.at_level("INFO"):
        assert load_bark(settings).precision == "int8"
    assert (
        "int8 quality gate passed" in caplog.text and "top-1 agreement with float32: semantic" in caplog.text
    )
    real = torch.ao.quantization.quantize_dynamic

    def miscomputing(module, *args, **kwargs):  # int8 kernels that compute something else
        quantized = real(module, *args, **kwargs)
        for layer in quantized.modules():
            if isinstance(layer, torch.ao.nn.quantized.dynamic.Linear):
                weight, bias = layer._packed_params._weight_bias()
                scrambled = weight.dequantize()[torch.randperm(weight.shape[0])]
                layer.set_weight_bias(
                    torch.quantize_per_tensor(scrambled, weight.q_scale(), 0, torch.qint8), bias
                )
        return quantized

    monkeypatch.setattr(torch.ao.quantization, "quantize_dynamic", miscomputing)
    caplog.clear()
    with caplog.at_level("WARNING"):
        loaded = load_bark(
            ModelSettings(
                model=str(tiny_model), data_dir=tmp_path / "b", device="cpu", max_batch=2, precision="int8"
            )
        )
    assert loaded.precision == "fp32" and isinstance(loaded.model.semantic.lm_head, torch.nn.Linear)
    assert "int8 weights disagree with float32 on this machine (semantic: top-1 agreement" in caplog.text
    assert "running in float32" in caplog.text


def test_an_int8_engine_that_kills_its_process_is_ruled_out_in_a_child(monkeypatch, caplog):
    """Off x86-64 the engines are tried in a child process first: one whose kernels die on an
    illegal instruction (oneDNN's JIT under qemu did) is ruled out by name, the next one used."""
    monkeypatch.setattr(precision.platform, "machine", lambda: "aarch64")
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    real_run = precision.subprocess.run
    probed = []

    def run(argv, **kwargs):
        probed.append(argv[-1])
        if len(probed) == 1:  # the first engine tried dies as with SIGILL
            return precision.subprocess.CompletedProcess(argv, -4, "", "")
        return real_run(argv, **kwargs)

    monkeypatch.setattr(precision.subprocess, "run", run)
    with caplog.at_level("WARNING"):
        chosen = precision.int8_engine()
    if len(engines) < 2:
        assert chosen is None and "killed by SIGILL" in caplog.text
    else:
        assert chosen == probed[1] != probed[0], probed
        assert f"The {probed[0]} int8 kernels do not run on this machine (killed by SIGILL)" in caplog.text
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    assert precision.int8_engine() == torch.backends.quantized.engine, "x86-64: the build's default, no child"


def test_onednn_that_kills_its_process_is_turned_off(monkeypatch, caplog):
    """Off x86-64, EnCodec's decoder runs once in a child first: where oneDNN's kernels kill it
    (SIGILL under qemu's aarch64), oneDNN is turned off and the log says so; where it runs (here,
    for real), nothing changes."""
    monkeypatch.setattr(precision.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", True)
    precision.check_onednn()  # a real child process, on this machine's kernels
    assert torch.backends.mkldnn.enabled
    monkeypatch.setattr(
        precision.subprocess,
        "run",
        lambda argv, **kwargs: precision.subprocess.CompletedProcess(argv, -4, "", ""),
    )
    with caplog.at_level("WARNING"):
        precision.check_onednn()
    assert not torch.backends.mkldnn.enabled
    assert (
        "oneDNN's kernels do not run on this machine (killed by SIGILL); using PyTorch's own" in caplog.text
    )
