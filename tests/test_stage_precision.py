"""``--precision auto`` on a CPU: each GPT in the precision measured fastest on this machine, the
choice kept for the next start, each converted GPT gated against float32."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import seeded_speech
from hypothesis import given
from hypothesis import strategies as st

from wyoming_bark import int8_cache, precision, stage_precision
from wyoming_bark.int8_kernels import is_int8
from wyoming_bark.loader import load_bark
from wyoming_bark.settings import ModelSettings
from wyoming_bark.stage_precision import MARGIN, choose

GPTS = precision.QUANTIZED


def _load(tiny_model, data_dir):
    return load_bark(ModelSettings(model=str(tiny_model), data_dir=data_dir, device="cpu", max_batch=2))


def _runs_in(bark, name: str) -> str:
    gpt = getattr(bark, name)
    if is_int8(gpt.lm_head if name != "fine_acoustics" else gpt.lm_heads[0]):
        return "int8"
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[
        gpt.layers[0].mlp.in_proj.weight.dtype
    ]


def test_each_gpt_takes_the_fastest_precision_or_a_smaller_one_within_the_margin():
    measured = {
        "semantic": {"int8": 10.0, "bf16": 30.0, "fp32": 40.0},  # decode steps: memory-bound
        "coarse_acoustics": {"int8": 100.0, "bf16": 95.0, "fp32": 300.0},  # within the margin: int8
        "fine_acoustics": {"int8": 600.0, "bf16": 300.0, "fp32": 900.0},  # compute-bound passes
    }
    assert choose(measured) == {"semantic": "int8", "coarse_acoustics": "int8", "fine_acoustics": "bf16"}
    assert choose({"semantic": {"fp32": 1.0, "int8": 3.0}}) == {"semantic": "fp32"}


@given(st.dictionaries(st.sampled_from(stage_precision.PREFERENCE), st.floats(0.01, 1e4), min_size=1))
def test_the_choice_is_never_slower_than_int8_nor_beyond_the_margin(times):
    chosen = choose({"semantic": times})["semantic"]
    assert times[chosen] <= MARGIN * min(times.values())
    if "int8" in times:
        assert times[chosen] <= times["int8"]


def test_float_candidates_follow_the_cpu_s_units(monkeypatch):
    monkeypatch.setattr(stage_precision, "cpu_flags", lambda: {"avx2", "fma"})
    assert stage_precision.candidates("x86") == ["int8", "fp32"]
    assert stage_precision.candidates(None) == ["fp32"]
    monkeypatch.setattr(
        stage_precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16", "amx_fp16"}
    )
    assert stage_precision.candidates("onednn") == ["int8", "bf16", "fp16", "fp32"]


def test_auto_measures_once_here_and_the_next_start_reuses_the_choice(tiny_model, tmp_path, caplog):
    """Real measurements on this machine's kernels (the tiny model's shapes: its choice is
    whatever is fastest for them here); the second start reads the kept choice."""
    with caplog.at_level("INFO"):
        first = _load(tiny_model, tmp_path)
    line = next(line for line in caplog.text.splitlines() if "Precision by stage, measured here" in line)
    for stage in ("semantic", "coarse", "fine"):
        assert f"{stage} " in line
    assert line.count("int8 ") >= 3 and line.count("fp32 ") >= 3, line  # every candidate timed, per stage
    (kept,) = json.loads((tmp_path / precision.PROBES_FILE).read_text())["verdicts"].values()
    choice = json.loads(kept)["choice"]
    assert set(json.loads(kept)["ms"]) == set(GPTS)
    assert first.precision == stage_precision.summary(choice)
    assert {name: _runs_in(first.model, name) for name in GPTS} == choice
    assert first.self_check.startswith("passed"), first.self_check
    audio = seeded_speech(first)
    caplog.clear()
    with caplog.at_level("INFO"):
        second = _load(tiny_model, tmp_path)
    assert "measured here" not in caplog.text and second.precision == first.precision
    np.testing.assert_array_equal(seeded_speech(second), audio)


@pytest.fixture
def fine_fastest_in_bf16(monkeypatch):
    """Times as a CPU with bfloat16 units might give (the fine passes compute-bound)."""
    times = {
        "semantic": {"int8": 1.0, "bf16": 3.0, "fp32": 4.0},
        "coarse_acoustics": {"int8": 10.0, "bf16": 30.0, "fp32": 8.0},
        "fine_acoustics": {"int8": 6.0, "bf16": 3.0, "fp32": 9.0},
    }
    monkeypatch.setattr(stage_precision, "measure", lambda bark, candidates: times)


def test_a_mixed_choice_runs_is_gated_and_its_weights_are_kept(
    tiny_model, tmp_path, caplog, fine_fastest_in_bf16
):
    with caplog.at_level("INFO"):
        first = _load(tiny_model, tmp_path)
    wanted = {"semantic": "int8", "coarse_acoustics": "fp32", "fine_acoustics": "bf16"}
    assert {name: _runs_in(first.model, name) for name in GPTS} == wanted
    assert first.precision == "semantic int8, coarse fp32, fine bf16"
    assert "bf16/int8 quality gate passed" in caplog.text and "fine " in caplog.text  # bf16 gated too
    assert first.self_check.startswith("passed"), first.self_check
    audio = seeded_speech(first)
    caplog.clear()
    with caplog.at_level("INFO"):
        second = _load(tiny_model, tmp_path)
    assert "int8 weights loaded from" in caplog.text and "quality gate" not in caplog.text
    assert {name: _runs_in(second.model, name) for name in GPTS} == wanted
    np.testing.assert_array_equal(seeded_speech(second), audio)


def test_a_gpt_whose_copy_fails_the_gate_runs_in_float32(
    tiny_model, tmp_path, caplog, monkeypatch, fine_fastest_in_bf16
):
    real = precision.gate

    def gate(name, converted, original):  # bfloat16 kernels that compute something else
        agreement, problem = real(name, converted, original)
        return (
            (0.1, f"{name}: top-1 agreement 10% < 60%") if name == "fine_acoustics" else (agreement, problem)
        )

    monkeypatch.setattr(precision, "gate", gate)
    with caplog.at_level("WARNING"):
        loaded = _load(tiny_model, tmp_path)
    assert _runs_in(loaded.model, "fine_acoustics") == "fp32" and _runs_in(loaded.model, "semantic") == "int8"
    assert loaded.precision == "semantic int8, coarse fp32, fine fp32"
    assert (
        "bf16 weights disagree with float32 on this machine (fine_acoustics: top-1 agreement 10% < 60%); "
        "the fine_acoustics GPT is running in float32" in caplog.text
    )
    audio = seeded_speech(loaded)
    caplog.clear()
    with caplog.at_level("INFO"):  # the next start: what was kept, without converting or gating again
        again = _load(tiny_model, tmp_path)
    assert "int8 weights loaded from" in caplog.text and "quality gate" not in caplog.text
    assert "disagree" not in caplog.text and again.precision == loaded.precision
    assert _runs_in(again.model, "fine_acoustics") == "fp32"
    np.testing.assert_array_equal(seeded_speech(again), audio)


@pytest.fixture
def qnnpack_chosen(monkeypatch):
    """As on aarch64: the build's default int8 engine (oneDNN there) died in its child probe and
    QNNPACK was chosen; torch's engine setting restored after."""
    default = torch.backends.quantized.engine
    monkeypatch.setattr(precision, "int8_engine", lambda data_dir=None: "qnnpack")
    yield
    torch.backends.quantized.engine = default


def test_int8_is_timed_and_its_kept_weights_loaded_on_the_engine_chosen(
    tiny_model, tmp_path, monkeypatch, qnnpack_chosen
):
    """The measurement ran int8 on the build's default engine, not the one the probes chose (under
    qemu: oneDNN's, whose SIGILL the server, PID 1 in its container, did not survive); a second
    start packed the kept int8 weights for it too."""
    seen = []
    real_measure, real_load = stage_precision.measure, int8_cache.Int8Cache.load

    def measure(bark, candidates):
        seen.append(("measure", torch.backends.quantized.engine))
        return real_measure(bark, candidates, reps=1)

    def load(self):
        seen.append(("load", torch.backends.quantized.engine))
        return real_load(self)

    monkeypatch.setattr(stage_precision, "measure", measure)
    monkeypatch.setattr(int8_cache.Int8Cache, "load", load)
    monkeypatch.setattr(stage_precision, "choose", lambda measured: dict.fromkeys(GPTS, "int8"))
    first = _load(tiny_model, tmp_path)
    torch.backends.quantized.engine = "x86"  # a new process starts on the build's default
    second = _load(tiny_model, tmp_path)
    assert seen == [("measure", "qnnpack"), ("load", "qnnpack")], seen
    assert first.precision == second.precision == "int8"
    np.testing.assert_array_equal(seeded_speech(second), seeded_speech(first))


def test_the_flags_are_the_running_architecture_s_own(monkeypatch):
    """Under qemu-user an aarch64 process reads the x86 host's /proc/cpuinfo (its ``flags``, no
    ``Features``): the host's AVX512-BF16 and AMX said nothing of the emulated CPU, yet made
    bfloat16 and float16 candidates there (the app's start then ran past its bound)."""
    host = {"model name": "Intel(R) Xeon(R) Processor", "flags": "avx512f avx512_bf16 amx_bf16 avx512_fp16"}
    monkeypatch.setattr(precision, "_machine", lambda: {"machine": "aarch64", **host})
    assert precision.cpu_flags() == set()
    assert stage_precision.candidates("qnnpack") == ["int8", "fp32"]
    monkeypatch.setattr(
        precision, "_machine", lambda: {"machine": "aarch64", "Features": "fp asimd bf16 asimdhp"}
    )
    assert precision.cpu_flags() == {"fp", "asimd", "bf16", "asimdhp"}
    monkeypatch.setattr(precision, "_machine", lambda: {"machine": "x86_64", **host, "Features": "bf16"})
    assert precision.cpu_flags() == {"avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16"}


def test_off_x86_a_float_precision_whose_kernels_kill_a_child_is_not_timed(monkeypatch, caplog, tmp_path):
    """Kernels that die take the process with them (oneDNN's did under qemu): off x86-64 each
    float candidate runs in a child process first (for real here), and one that dies is left out."""
    monkeypatch.setattr(precision.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(stage_precision, "cpu_flags", lambda: {"bf16", "asimdhp"})
    assert stage_precision.candidates("qnnpack", precision.ProbeVerdicts(tmp_path)) == [
        "int8",
        "bf16",
        "fp16",
        "fp32",
    ]

    def run(argv, **kwargs):  # the bfloat16 child dies as with SIGILL
        code = -4 if "bfloat16" in argv else 0
        return precision.subprocess.CompletedProcess(argv, code, "", "")

    monkeypatch.setattr(precision.subprocess, "run", run)
    with caplog.at_level("WARNING"):
        assert stage_precision.candidates("qnnpack", precision.ProbeVerdicts(None)) == [
            "int8",
            "fp16",
            "fp32",
        ]
    assert "bf16 kernels do not run on this machine (killed by SIGILL); not a candidate" in caplog.text
