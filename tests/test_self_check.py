"""The self-check at load and its fallback ladder, on the CPU: each GPU fault is injected where
it would show (a frozen graph, a graph captured on the wrong device, NaN logits, out of memory
for the KV cache, a core that disagrees with transformers, a crash mid-check) and each must be
detected, named in one log line, and end in correct audio or a clear error."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest
import torch
from helpers import samples_for
from transformers import BarkModel

from wyoming_bark import self_check
from wyoming_bark.errors import ModelLoadError
from wyoming_bark.fast import FastBark, SamplingSettings
from wyoming_bark.fast import model as networks
from wyoming_bark.fast.check import check_against_transformers, check_graphs, check_sentence
from wyoming_bark.fast.model import BatchedStep, CausalGPT, GraphCaptureError, KVCache
from wyoming_bark.fast.program import NonFiniteLogits
from wyoming_bark.fast.stages import generate
from wyoming_bark.loader import load_bark
from wyoming_bark.settings import ModelSettings

SETTINGS = SamplingSettings(max_semantic_tokens=20, allow_early_stop=False)


@pytest.fixture
def fast(tiny_model) -> FastBark:
    return FastBark(BarkModel.from_pretrained(str(tiny_model)).eval(), max_batch=3)


class ReplayedGraph:
    """Stands in for a captured CUDA graph on the CPU: ``replay`` re-runs the eager step into the
    graph's static output, or, ``frozen``, does nothing (a graph captured on the wrong device)."""

    def __init__(self, step: BatchedStep, b: int, frozen: bool = False) -> None:
        self.step, self.b, self.frozen = step, b, frozen
        self.out = tuple(t.clone() for t in step.run_eager(b))

    def replay(self) -> None:
        if not self.frozen:
            for static, fresh in zip(self.out, self.step.run_eager(self.b)):
                static.copy_(fresh)


def install_graphs(fast: FastBark, frozen: str | None = None) -> None:
    with torch.inference_mode():
        for name, step in fast.steps.items():
            for b in step.buckets:
                graph = ReplayedGraph(step, b, frozen=name == frozen)
                step.graphs[b] = graph, graph.out


def speak(fast: FastBark, seed: int = 3) -> np.ndarray:
    ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(seed))
    return generate(fast, ids, torch.ones_like(ids), None, SETTINGS, seed=seed)


def test_the_real_core_passes_every_check(fast):
    install_graphs(fast)
    assert check_graphs(fast) == {}
    assert check_against_transformers(fast) == {}
    assert check_sentence(fast) == {}


def test_a_frozen_graph_is_found_and_that_model_decodes_eagerly(fast, tmp_path, caplog):
    expected = speak(fast)
    install_graphs(fast, frozen="coarse")
    with caplog.at_level(logging.WARNING):
        outcome = self_check.prepare(fast, "on", tmp_path, "tiny")
    assert outcome.fast is fast
    assert fast.decode_paths() == {"semantic": "cuda graphs", "coarse": "eager", "fine": "eager"}
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Self-check:")]
    assert len(lines) == 1 and "the coarse graphs disagree with the eager code" in lines[0], lines
    assert "coarse runs eagerly" in lines[0] and outcome.summary.startswith("fell back")
    np.testing.assert_allclose(speak(fast), expected, atol=1e-5)  # correct audio after the fallback


class FinePassGraph:
    """A captured fine pass on the CPU: replays the eager pass, or, ``frozen``, nothing."""

    def __init__(self, fine, frozen: bool) -> None:
        self.fine, self.frozen = fine, frozen

    def replay(self) -> None:
        if not self.frozen:
            self.fine.run_eager()


@pytest.mark.parametrize("frozen", [False, True])
def test_the_fine_pass_graph_is_checked_too(fast, tmp_path, frozen):
    expected = speak(fast)
    fast.fine.graph = FinePassGraph(fast.fine, frozen)
    outcome = self_check.prepare(fast, "on", tmp_path, "tiny")
    assert fast.decode_paths()["fine"] == ("eager" if frozen else "cuda graphs")
    assert ("the fine graphs disagree with the eager code" in outcome.summary) == frozen, outcome.summary
    np.testing.assert_allclose(speak(fast), expected, atol=1e-5)


def test_a_graph_captured_on_the_wrong_device_is_caught_at_capture(fast, monkeypatch):
    """What PyTorch does when the capture stream is on another device than the tensors: the graph
    records nothing and PyTorch only warns. The warning must stop the capture."""

    class Graph:
        def pool(self):
            return None

    @contextlib.contextmanager
    def empty_capture(graph, pool=None, stream=None):
        yield
        warnings.warn(
            "The CUDA Graph is empty. This usually means that the graph was attempted to be "
            "captured on wrong device or stream.",
            UserWarning,
        )

    class Stream:
        def wait_stream(self, other) -> None:
            pass

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", empty_capture)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    step = fast.steps["semantic"]
    step.capture_stream = Stream()
    with torch.inference_mode(), pytest.raises(GraphCaptureError, match="captured nothing"):
        step.capture()
    assert step.graphs == {}


def test_a_failed_capture_is_one_log_line_and_eager_steps(fast, tmp_path, monkeypatch, caplog):
    def failing(step):
        raise GraphCaptureError("operation not permitted when stream is capturing")

    monkeypatch.setattr(BatchedStep, "capture", failing)
    with caplog.at_level(logging.WARNING):
        outcome = self_check.prepare(fast, "on", tmp_path, "tiny")
    assert outcome.fast is fast and len(outcome.fallbacks) == 2
    assert "no CUDA graph for the semantic model" in caplog.text
    assert len(speak(fast)) > 0


def test_non_finite_logits_fail_that_sentence_and_switch_the_model_to_eager(fast, caplog):
    install_graphs(fast)
    with torch.no_grad():
        fast.bark.coarse_acoustics.lm_head.weight[0, 0] = float("nan")
    with caplog.at_level(logging.ERROR), pytest.raises(NonFiniteLogits, match="coarse"):
        speak(fast)
    assert fast.decode_paths()["coarse"] == "eager"
    assert "coarse steps run eagerly from now on" in caplog.text


def test_non_finite_logits_fail_only_their_sentence_in_a_batch(fast):
    """Through the scheduler: the sentence whose row goes bad hears an error; the one beside it
    finishes (rows are independent; the guard is per row)."""
    from wyoming_bark.fast.batch import DONE, Job, Scheduler

    outcomes: dict[str, list] = {"bad": [], "good": []}
    ended = {name: threading.Event() for name in outcomes}
    original = CausalGPT._logits

    def poisoned(self, x):  # the second row's semantic logits become NaN
        logits = original(self, x)
        if self is fast.semantic and logits.shape[0] > 1:
            logits = logits.clone()
            logits[1, 5] = float("nan")
        return logits

    def listener(name: str):
        def emit(item) -> None:
            outcomes[name].append(item)
            if not isinstance(item, np.ndarray):
                ended[name].set()

        return emit

    ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(1))
    scheduler = Scheduler(fast)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CausalGPT, "_logits", poisoned)
        try:
            for name in ("good", "bad"):  # rows 0 and 1
                program = fast.speech(ids, torch.ones_like(ids), None, SETTINGS, seed=1)
                scheduler.enqueue(Job(program, listener(name)))
            assert all(event.wait(60) for event in ended.values())
        finally:
            scheduler.close()
    assert outcomes["good"][-1] is DONE
    assert isinstance(outcomes["bad"][-1], NonFiniteLogits)


def test_out_of_memory_for_the_kv_cache_retries_with_fewer_rows(tiny_model, tmp_path, monkeypatch, caplog):
    original = KVCache.__init__

    def limited(self, batch, *args, **kwargs):
        if batch > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 192.00 MiB")
        original(self, batch, *args, **kwargs)

    monkeypatch.setattr(KVCache, "__init__", limited)
    with caplog.at_level(logging.WARNING):
        loaded = load_bark(
            ModelSettings(model=str(tiny_model), data_dir=tmp_path, device="cpu", core="fast", max_batch=8)
        )
    assert loaded.core.name == "fast" and loaded.core.max_batch == 2
    assert "Not enough GPU memory for --max-batch 8" in caplog.text
    assert "using 4" in caplog.text and "using 2" in caplog.text
    assert len(speak(loaded.core)) > 0


def test_a_core_that_disagrees_with_transformers_falls_back_to_transformers(
    tiny_model, tmp_path, monkeypatch, caplog
):
    original = networks._attention

    def skewed(block, x, heads, store, mask, causal):  # e.g. a kernel that is wrong on this GPU
        return original(block, x, heads, store, mask, causal) * 1.5

    monkeypatch.setattr(networks, "_attention", skewed)
    with caplog.at_level(logging.WARNING):
        loaded = load_bark(
            ModelSettings(model=str(tiny_model), data_dir=tmp_path, device="cpu", core="fast", max_batch=2)
        )
    assert loaded.core.name == "transformers"
    assert "Self-check: our core disagrees with transformers" in caplog.text
    assert "using the transformers core" in loaded.self_check
    with pytest.raises(ModelLoadError, match="strict"):
        load_bark(
            ModelSettings(
                model=str(tiny_model),
                data_dir=tmp_path / "strict",
                device="cpu",
                core="fast",
                max_batch=2,
                self_check="strict",
            )
        )


def test_a_crash_during_a_check_is_skipped_on_the_next_start(tiny_model, tmp_path, caplog):
    """A real crash: a process dies (as on a sticky CUDA error) inside the core check. The next
    start with the same fingerprint skips that check and serves with the transformers core."""
    script = textwrap.dedent(
        f"""
        import os
        from wyoming_bark import self_check
        from pathlib import Path
        from wyoming_bark.loader import load_bark
        from wyoming_bark.settings import ModelSettings

        def crash(fast):
            os._exit(77)

        self_check.check_against_transformers = crash
        load_bark(ModelSettings(model={str(tiny_model)!r}, data_dir=Path({str(tmp_path)!r}), device="cpu", max_batch=2))
        """
    )
    assert subprocess.run([sys.executable, "-c", script], check=False, timeout=300).returncode == 77
    with caplog.at_level(logging.WARNING):
        loaded = load_bark(
            ModelSettings(model=str(tiny_model), data_dir=tmp_path, device="cpu", core="fast", max_batch=2)
        )
    assert loaded.core.name == "transformers"
    assert "Self-check: the core check crashed the last start" in caplog.text
    again = load_bark(
        ModelSettings(model=str(tiny_model), data_dir=tmp_path, device="cpu", core="fast", max_batch=2)
    )  # still skipped
    assert again.core.name == "transformers" and "the core check crashed an earlier start" in again.self_check
    with pytest.raises(ModelLoadError, match="strict"):
        load_bark(
            ModelSettings(
                model=str(tiny_model),
                data_dir=tmp_path,
                device="cpu",
                core="fast",
                max_batch=2,
                self_check="strict",
            )
        )
    assert (
        load_bark(
            ModelSettings(model=str(tiny_model), data_dir=tmp_path, device="cpu", core="fast", max_batch=4)
        ).core.name
        == "fast"
    )  # new print


def test_a_failing_test_sentence_tries_eager_steps_then_transformers(fast, tmp_path, monkeypatch, caplog):
    install_graphs(fast)
    calls = []

    def sentence(core):
        calls.append(core.decode_paths())
        return {"sentence": "no audio within 120 s"} if len(calls) == 1 else {}

    monkeypatch.setattr(self_check, "check_sentence", sentence)
    assert self_check.prepare(fast, "on", tmp_path / "cpu", "tiny").summary.startswith("passed")
    assert not calls, "on a CPU the test sentence is left out unless asked for"
    outcome = self_check.prepare(fast, "on", tmp_path, "tiny", sentence=True)
    assert outcome.fast is fast and set(fast.decode_paths().values()) == {"eager"}
    assert "running without graphs and trying again" in outcome.summary
    monkeypatch.setattr(self_check, "check_sentence", lambda core: {"sentence": "NaN audio"})
    assert self_check.prepare(fast, "on", tmp_path / "b", "tiny", sentence=True).fast is None


def test_off_checks_nothing(fast, tmp_path):
    install_graphs(fast, frozen="semantic")
    assert self_check.prepare(fast, "off", tmp_path, "tiny").summary == "off"
    assert fast.decode_paths()["semantic"] == "cuda graphs"
    assert not list(tmp_path.iterdir())


@pytest.mark.cuda
@pytest.mark.parametrize("index", [0, 1])
def test_on_cuda_the_strict_self_check_passes_in_half_precision(tiny_model, tmp_path, index):
    """The GPU path as served: float16, graphs captured and compared, the device made current in
    every thread (``cuda:1`` too, where there are two GPUs), and no warning of any kind."""
    if index >= torch.cuda.device_count():
        pytest.skip("needs a second GPU")
    device = torch.device("cuda", index)
    model = BarkModel.from_pretrained(str(tiny_model), dtype=torch.float16).eval().to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outcome = self_check.prepare(FastBark(model, max_batch=4), "strict", tmp_path, "tiny")
        fast = outcome.fast
        assert outcome.summary.startswith("passed"), outcome.summary
        assert set(fast.decode_paths().values()) == {"cuda graphs"}
        ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(3)).to(device)
        audio = generate(fast, ids, torch.ones_like(ids), None, SETTINGS, seed=3)
    assert np.isfinite(audio).all() and len(audio) == samples_for(20, fast.hop)
