"""``--compile``: decode steps through torch.compile, on the CPU (inductor compiles here too). The
compiled step must say what the eager step says, and a compile that fails or gives other numbers
must fall back to the plain step with one log line — proven here with injected faults."""

from __future__ import annotations

import dataclasses
import logging

import helpers
import pytest
import torch
from transformers import BarkModel

from wyoming_bark import self_check
from wyoming_bark.fast import FastBark
from wyoming_bark.fast.check import check_graphs
from wyoming_bark.fast.model import BatchedStep
from wyoming_bark.fast.stages import semantic_tokens

GREEDY = dataclasses.replace(helpers.GREEDY, max_semantic_tokens=24)


@pytest.fixture
def fast(tiny_model) -> FastBark:
    return FastBark(BarkModel.from_pretrained(str(tiny_model)).eval(), max_batch=2)


def _ids() -> torch.Tensor:
    return torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(3))


@pytest.mark.slow
def test_a_compiled_step_says_what_the_eager_step_says(fast, tmp_path, caplog):
    """Compiled through the self-check (inductor's C++ kernels here; Triton on CUDA): its check
    passes, status says so, and greedy tokens are the uncompiled core's, token for token."""
    ids = _ids()
    eager = semantic_tokens(fast, ids, torch.ones_like(ids), None, GREEDY, seed=1)
    with caplog.at_level(logging.INFO):
        outcome = self_check.prepare(fast, "on", tmp_path, "tiny", compile=True)
    assert outcome.fast is fast and not outcome.fallbacks, outcome.summary
    assert fast.decode_paths()["semantic"] == "compiled" == fast.decode_paths()["coarse"]
    assert "Decode steps compiled in" in caplog.text
    assert check_graphs(fast) == {}
    compiled = semantic_tokens(fast, ids, torch.ones_like(ids), None, GREEDY, seed=1)
    assert compiled.tolist() == eager.tolist()


def test_a_step_that_does_not_compile_runs_uncompiled(fast, tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler on this machine")

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.WARNING):
        outcome = self_check.prepare(fast, "on", tmp_path, "tiny", compile=True)
    assert outcome.fast is fast, "the fast core still serves"
    assert fast.decode_paths()["semantic"] == "eager" and fast.decode_paths()["coarse"] == "eager"
    assert "the semantic step did not compile (RuntimeError: no C++ compiler" in caplog.text
    assert "semantic runs uncompiled" in caplog.text


def test_a_compiled_step_with_other_numbers_runs_uncompiled(fast, tmp_path, monkeypatch, caplog):
    """A miscompiled step (numbers off, silently) is caught by the comparison with the eager step."""

    def miscompiled(self: BatchedStep) -> None:
        def wrong(b, span=None):
            packed, logits = self.run_eager(b, span)
            return packed, logits + 3.0 * torch.randn_like(logits)

        self.compiled = wrong

    monkeypatch.setattr(BatchedStep, "compile", miscompiled)
    with caplog.at_level(logging.WARNING):
        outcome = self_check.prepare(fast, "on", tmp_path, "tiny", compile=True)
    assert outcome.fast is fast
    assert "the compiled semantic step disagrees with the eager code" in caplog.text
    assert "semantic runs uncompiled" in caplog.text
    assert all(step.compiled is None for step in fast.steps.values())
    assert fast.decode_paths()["semantic"] == "eager"


def test_a_crash_while_compiling_skips_compiling_next_time(fast, tmp_path, caplog):
    markers = self_check._Markers(tmp_path, self_check.fingerprint(fast, "tiny"))
    markers.write(running="compile")  # the last start died while compiling
    with caplog.at_level(logging.WARNING):
        outcome = self_check.prepare(fast, "on", tmp_path, "tiny", compile=True)
    assert outcome.fast is fast
    assert "the compile check crashed the last start" in caplog.text and "running uncompiled" in caplog.text
    assert all(step.compiled is None for step in fast.steps.values())


@pytest.mark.cuda
def test_on_cuda_graphs_are_captured_over_the_compiled_steps(tiny_model, tmp_path):
    """As served with --compile on a GPU: float16, compiled, graphs captured over the compiled step,
    the strict self-check passes, and greedy tokens are the uncompiled core's."""
    model = BarkModel.from_pretrained(str(tiny_model), dtype=torch.float16).eval().to("cuda")
    ids = _ids().to("cuda")
    plain = self_check.prepare(FastBark(model, max_batch=4), "strict", tmp_path / "plain", "tiny").fast
    expected = semantic_tokens(plain, ids, torch.ones_like(ids), None, GREEDY, seed=1)
    outcome = self_check.prepare(FastBark(model, max_batch=4), "strict", tmp_path, "tiny", compile=True)
    assert outcome.summary.startswith("passed"), outcome.summary
    paths = outcome.fast.decode_paths()
    assert paths["semantic"] == paths["coarse"] == "compiled + cuda graphs", paths
    got = semantic_tokens(outcome.fast, ids, torch.ones_like(ids), None, GREEDY, seed=1)
    assert got.tolist() == expected.tolist()
