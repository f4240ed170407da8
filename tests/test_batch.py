"""Batched decoding on the tiny model (CPU): many sentences in one batch say what each would alone."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch
from helpers import samples_for, tokens
from transformers import BarkModel, BarkProcessor

from wyoming_bark import self_check
from wyoming_bark.fast import Cancelled, FastBark, SamplingSettings
from wyoming_bark.fast.batch import DONE, Job, Scheduler
from wyoming_bark.fast.model import BatchedStep
from wyoming_bark.fast.program import FINE_DRAWS, Audio, reply, requests
from wyoming_bark.fast.semantic import SemanticStage
from wyoming_bark.fast.stages import coarse_tokens, fine_tokens, generate, semantic_tokens
from wyoming_bark.voices import VoiceLibrary

SETTINGS = SamplingSettings(max_semantic_tokens=60, allow_early_stop=False)
TEXTS = ["The kitchen light is on.", "It will rain tomorrow.", "Timer done.", "Welcome home, Ada."]


@pytest.fixture(scope="module")
def batched(tiny_model):
    model = BarkModel.from_pretrained(str(tiny_model)).eval()
    processor = BarkProcessor.from_pretrained(str(tiny_model))
    library = VoiceLibrary(None)
    voices = [
        {k: torch.from_numpy(v) for k, v in library.load(library.resolve(name), tiny_model).items()}
        for name in ("v2/en_speaker_6", "v2/de_speaker_3")
    ]
    return processor, FastBark(model, max_batch=3), voices


class Listener:
    """Collects one job's output on the scheduler thread."""

    def __init__(self) -> None:
        self.pieces: list[np.ndarray] = []
        self.outcome = None
        self.done = threading.Event()
        self.first = threading.Event()

    def __call__(self, item) -> None:
        if isinstance(item, np.ndarray):
            self.pieces.append(item)
            self.first.set()
        else:
            self.outcome = item
            self.done.set()

    def audio(self) -> np.ndarray:
        assert self.done.wait(120) and self.outcome is DONE, self.outcome
        return np.concatenate(self.pieces)


def request(processor, fast, voices, n: int, stream: bool):
    inputs = tokens(processor, TEXTS[n % len(TEXTS)])
    history = voices[n % 2] if n % 3 else None  # with and without a voice prompt
    args = (inputs["input_ids"], inputs["attention_mask"], history, SETTINGS)
    return args, 100 + n, stream


def solo(fast, args, seed, stream) -> np.ndarray:
    if stream:
        return np.concatenate(list(fast.solo(fast.speech(*args, seed=seed, in_pieces=True))))
    return generate(fast, *args, seed=seed)


def test_batched_sentences_match_their_solo_runs(batched):
    """Five sentences, three rows: they join and leave the batch at different steps, streamed and
    not, with and without voices — and each sounds exactly as when generated alone (seeded)."""
    processor, fast, voices = batched
    requests = [request(processor, fast, voices, n, stream=n % 2 == 0) for n in range(5)]
    scheduler = Scheduler(fast)
    listeners = []
    try:
        for args, seed, stream in requests:
            listeners.append(Listener())
            scheduler.enqueue(Job(fast.speech(*args, seed=seed, in_pieces=stream), listeners[-1]))
        assert scheduler.waiting + scheduler.running == 5
        outputs = [listener.audio() for listener in listeners]
        assert scheduler.batched_tokens > scheduler.steps, "steps were shared between sentences"
    finally:
        scheduler.close()
    expected = samples_for(60, fast.hop)
    for (args, seed, stream), listener, audio in zip(requests, listeners, outputs):
        assert len(audio) == expected
        if stream:
            assert len(listener.pieces) >= 2, "streamed sentences arrive in pieces"
        np.testing.assert_allclose(audio, solo(fast, args, seed, stream), atol=1e-4)
    assert scheduler.running == 0 and sorted(scheduler._free) == [0, 1, 2]


def test_a_cancelled_sentence_leaves_the_others_intact(batched):
    processor, fast, voices = batched
    requests = [request(processor, fast, voices, n, stream=True) for n in range(3)]
    scheduler = Scheduler(fast)
    jobs, listeners = [], []
    try:
        for args, seed, stream in requests:
            listeners.append(Listener())
            jobs.append(Job(fast.speech(*args, seed=seed, in_pieces=stream), listeners[-1]))
            scheduler.enqueue(jobs[-1])
        assert listeners[1].first.wait(120)
        jobs[1].cancel.set()  # the listener went away in the middle of the batch
        assert listeners[1].done.wait(120) and isinstance(listeners[1].outcome, Cancelled)
        for n in (0, 2):
            args, seed, stream = requests[n]
            np.testing.assert_allclose(listeners[n].audio(), solo(fast, args, seed, stream), atol=1e-4)
        # its row is free again: a new sentence runs in it
        late = Listener()
        args, seed, stream = requests[1]
        scheduler.enqueue(Job(fast.speech(*args, seed=seed, in_pieces=stream), late))
        np.testing.assert_allclose(late.audio(), solo(fast, args, seed, stream), atol=1e-4)
    finally:
        scheduler.close()


def test_a_failing_program_fails_alone(batched):
    processor, fast, voices = batched

    def broken():
        yield from SemanticStage(
            fast.shapes, *request(processor, fast, voices, 0, False)[0], seed=1
        ).program()
        raise ValueError("boom")

    scheduler = Scheduler(fast)
    try:
        bad, good = Listener(), Listener()
        scheduler.enqueue(Job(broken(), bad))
        args, seed, stream = request(processor, fast, voices, 1, False)
        scheduler.enqueue(Job(fast.speech(*args, seed=seed), good))
        assert bad.done.wait(120) and isinstance(bad.outcome, ValueError)
        np.testing.assert_allclose(good.audio(), solo(fast, args, seed, stream), atol=1e-4)
    finally:
        scheduler.close()


def test_seeds_decide_the_audio_not_the_batch(batched):
    processor, fast, voices = batched
    args, _, _ = request(processor, fast, voices, 1, False)
    a, b, c = (generate(fast, *args, seed=seed) for seed in (7, 7, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_cpu_steps_attend_only_as_far_as_the_furthest_row(batched, monkeypatch):
    """Attention over the filled part of the cache, in 128-position spans: fewer positions early
    in a sentence, the same tokens (the seeded runs above compare them with solo runs)."""
    processor, fast, voices = batched
    spans: list[tuple[str, int | None]] = []
    for name, step in fast.steps.items():
        real = step.run_eager
        monkeypatch.setattr(
            step,
            "run_eager",
            lambda b, span=None, real=real, name=name: spans.append((name, span)) or real(b, span),
        )
    args, seed, _ = request(processor, fast, voices, 1, False)
    generate(fast, *args, seed=seed)
    assert {name for name, _ in spans} == {"semantic", "coarse"}
    full = fast.steps["semantic"].gpt.scratch + 1
    assert all(span is not None and span % 128 == 0 or span == full for _, span in spans)
    assert min(span for _, span in spans) < full, "some steps attended to less than the whole cache"


def test_cpu_steps_compute_only_the_rows_up_to_the_last_in_use(tiny_model, monkeypatch):
    """No graphs on a CPU, so no padding to a power of two: three rows are a three-row step."""
    fast = FastBark(BarkModel.from_pretrained(str(tiny_model)).eval(), max_batch=8)
    step = fast.steps["coarse"]
    sizes = []
    real = step.run_eager
    monkeypatch.setattr(step, "run_eager", lambda b, span=None: sizes.append(b) or real(b, span))
    n_ints, n_floats = step.ints.shape[1] - 2, step.floats.shape[1]
    for rows in ([0], [0, 1, 2], [0, 4]):
        step.read(step.launch(rows, [(5, 3) + (0,) * n_ints] * len(rows), [(0.0,) * n_floats] * len(rows)))
    assert sizes == [1, 3, 5]


def test_a_graph_capture_failure_falls_back_to_eager_steps(batched, monkeypatch, caplog, tmp_path):
    """No GPU here: a stand-in capture fails as an unsupported op would; the core still speaks."""
    processor, fast, voices = batched

    def failing(step):
        step.graphs[1] = "half-captured"
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(BatchedStep, "capture", failing)
    self_check.prepare(fast, "off", tmp_path, "tiny")
    assert "No CUDA graph for the semantic model" in caplog.text and "semantic runs eagerly" in caplog.text
    assert all(not step.graphs for step in fast.steps.values())
    args, seed, _ = request(processor, fast, voices, 2, False)
    assert len(generate(fast, *args, seed=seed)) == samples_for(60, fast.hop)


def test_coarse_windows_start_while_semantic_tokens_still_come(batched):
    """With a voice prompt the first coarse window needs ~47 semantic tokens, not all of them; the
    result is exactly that of the stages run one after the other (same seed)."""
    processor, fast, voices = batched
    inputs = tokens(processor, "A longer sentence, so that the stages can overlap for a while.")
    s = SamplingSettings(max_semantic_tokens=150, allow_early_stop=False)
    args = (inputs["input_ids"], inputs["attention_mask"], voices[0], s)
    program, answer, overlapped, pieces = fast.speech(*args, seed=5), None, 0, []
    with torch.inference_mode():
        while True:
            try:
                op = program.send(answer)
            except StopIteration:
                break
            if isinstance(op, Audio):
                pieces.append(op.make())
                answer = None
                continue
            overlapped += {one.gpt for one in requests(op)} == {"semantic", "coarse"}
            answer = reply(op, fast.run([(0, one) for one in requests(op)]))
    assert overlapped >= 60, "at least one whole coarse window ran beside the semantic stage"
    semantic = semantic_tokens(fast, *args, seed=5)
    coarse = coarse_tokens(fast, semantic, voices[0], s, seed=5)
    fine = fine_tokens(fast, coarse, voices[0], s, seed=5, draw=FINE_DRAWS)
    np.testing.assert_allclose(np.concatenate(pieces), fast.decode(fine), atol=1e-5)


def test_closing_the_scheduler_answers_every_listener(batched):
    processor, fast, voices = batched
    scheduler = Scheduler(fast)
    listeners = [Listener() for _ in range(5)]  # three running, two waiting for a row
    for n, listener in enumerate(listeners):
        args, seed, _ = request(processor, fast, voices, n, False)
        scheduler.enqueue(Job(fast.speech(*args, seed=seed), listener))
    scheduler.close()
    scheduler.join(60)
    for listener in listeners:
        assert listener.done.wait(60) and isinstance(listener.outcome, Cancelled)


def test_an_unexpected_scheduler_error_fails_the_batch_not_the_thread(batched, monkeypatch):
    processor, fast, voices = batched
    scheduler = Scheduler(fast)
    try:
        monkeypatch.setattr(Scheduler, "_answer", lambda self, jobs: 1 / 0)
        broken = Listener()
        args, seed, _ = request(processor, fast, voices, 0, False)
        scheduler.enqueue(Job(fast.speech(*args, seed=seed), broken))
        assert broken.done.wait(60) and isinstance(broken.outcome, ZeroDivisionError)
        monkeypatch.undo()
        fine = Listener()
        scheduler.enqueue(Job(fast.speech(*args, seed=seed), fine))
        np.testing.assert_allclose(fine.audio(), solo(fast, args, seed, False), atol=1e-4)
        assert scheduler.running == 0
    finally:
        scheduler.close()


@pytest.mark.cuda
def test_on_cuda_a_row_decodes_alike_in_every_bucket_replayed_or_eager(tiny_model):
    """What exact batched-vs-solo agreement rests on: one row's float32 logits are bit-identical
    in every bucket and replayed as eagerly. (A one-row bucket would break it: cuBLAS's
    matrix-vector kernels round differently; see ``BatchedStep``.)"""
    model = BarkModel.from_pretrained(str(tiny_model)).eval().to("cuda")
    fast = FastBark(model, max_batch=8)
    assert not fast.capture()
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for name, step in fast.steps.items():
            assert step.buckets[0] == 2, name
            width, length = step.gpt.embed.weight.shape[1], 300
            embeds = torch.randn(1, length, width, generator=generator).expand(8, -1, -1).cuda()
            step.gpt.prefill(embeds.contiguous(), torch.arange(8, device="cuda"))
            seen = []
            for b in step.buckets:
                ints = [(7, length) + (0,) * (step.ints.shape[1] - 2)] * b
                floats = [(0.0,) * step.floats.shape[1]] * b
                replayed = step.launch(range(b), ints, floats)
                step.read(replayed)
                seen.append(replayed[1][:b].clone())
                graphs = dict(step.graphs)
                step.graphs.clear()  # the same bucket, eagerly
                eager = step.launch(range(b), ints, floats)
                step.read(eager)
                step.graphs.update(graphs)
                seen.append(eager[1][:b].clone())
            reference = seen[0][0]
            for logits in seen:
                assert torch.equal(logits, reference.expand_as(logits)), name


@pytest.mark.cuda
def test_on_cuda_batched_graph_steps_match_solo_runs(tiny_model, tmp_path):
    """The GPU path CI cannot run: captured graphs per bucket, side streams, pinned staging, in
    float32 so that batched and solo runs round alike."""
    model = BarkModel.from_pretrained(str(tiny_model)).eval().to("cuda")
    processor = BarkProcessor.from_pretrained(str(tiny_model))
    library = VoiceLibrary(None)
    prompt = library.load(library.resolve("v2/en_speaker_6"), tiny_model)
    voices = [{k: torch.from_numpy(v).cuda() for k, v in prompt.items()}] * 2
    fast = self_check.prepare(FastBark(model, max_batch=3), "off", tmp_path, "tiny").fast
    assert all(step.graphs for step in fast.steps.values()), "every bucket was captured"
    requests = [request(processor, fast, voices, n, stream=n % 2 == 0) for n in range(5)]
    requests = [
        (tuple(a.cuda() if torch.is_tensor(a) else a for a in args), seed, stream)
        for args, seed, stream in requests
    ]
    scheduler = Scheduler(fast)
    try:
        listeners = [Listener() for _ in requests]
        for (args, seed, stream), listener in zip(requests, listeners):
            scheduler.enqueue(Job(fast.speech(*args, seed=seed, in_pieces=stream), listener))
        for (args, seed, stream), listener in zip(requests, listeners):
            np.testing.assert_allclose(listener.audio(), solo(fast, args, seed, stream), atol=1e-3)
    finally:
        scheduler.close()


def test_audio_that_cannot_be_made_ends_its_sentence_only(batched):
    """When making a sentence's audio fails (on a CPU, between decode iterations), that listener
    hears the error once and its program is stopped, while the sentence beside it is unaffected."""
    processor, fast, voices = batched

    def fails() -> np.ndarray:
        raise ValueError("no audio")

    def program():
        yield Audio(fails)
        yield from fast.speech(*request(processor, fast, voices, 0, False)[0], seed=1)

    heard = []
    stopped = threading.Event()

    def listener(item) -> None:
        heard.append(item)
        if not isinstance(item, np.ndarray):
            stopped.set()

    scheduler = Scheduler(fast)
    try:
        scheduler.enqueue(Job(program(), listener))
        args, seed, stream = request(processor, fast, voices, 1, True)
        good = Listener()
        scheduler.enqueue(Job(fast.speech(*args, seed=seed, in_pieces=stream), good))
        np.testing.assert_allclose(good.audio(), solo(fast, args, seed, stream), atol=1e-4)
        assert stopped.wait(60)
        for _ in range(100):
            if scheduler.running == 0:
                break
            threading.Event().wait(0.05)
        assert scheduler.running == 0, "the failed sentence's program was stopped"
        assert len(heard) == 1 and isinstance(heard[0], ValueError), heard
    finally:
        scheduler.close()


def test_a_sentence_cancelled_while_waiting_for_a_row_hears_so(batched):
    processor, fast, voices = batched
    scheduler = Scheduler(fast)
    try:
        listeners = [Listener() for _ in range(4)]  # three rows: the fourth waits
        jobs = []
        for n, listener in enumerate(listeners):
            args, seed, _ = request(processor, fast, voices, n, False)
            jobs.append(Job(fast.speech(*args, seed=seed), listener))
            scheduler.enqueue(jobs[-1])
        jobs[3].cancel.set()
        assert listeners[3].done.wait(60) and isinstance(listeners[3].outcome, Cancelled)
        assert not listeners[3].pieces
        for listener in listeners[:3]:
            assert len(listener.audio()) > 0
    finally:
        scheduler.close()


def test_cancel_after_the_program_ended_but_before_its_audio_went_out_is_heard(batched):
    """The race: the scheduler has finished the program (DONE queued behind its last audio) when
    the listener goes away; the listener must hear Cancelled, not DONE."""
    _, fast, _ = batched
    making, release = threading.Event(), threading.Event()

    def slow_audio() -> np.ndarray:
        making.set()
        release.wait(30)
        return np.zeros(10, dtype=np.float32)

    def program():
        yield Audio(slow_audio)

    scheduler = Scheduler(fast)
    try:
        listener = Listener()
        job = Job(program(), listener)
        scheduler.enqueue(job)
        assert making.wait(30), "the program has ended; its audio is being made"
        job.cancel.set()
        release.set()
        assert listener.done.wait(30) and isinstance(listener.outcome, Cancelled), listener.outcome
    finally:
        scheduler.close()


def _poisoned(program, at: int = 10):
    """A sentence whose ``at``-th model request carries a seed no step can hold (an int beyond
    64 bits): one row's bad value inside a batched step."""
    answer, count = None, 0
    while True:
        try:
            op = program.send(answer)
        except StopIteration as done:
            return done.value
        if not isinstance(op, Audio):
            count += 1
            if count == at:
                first, *rest = requests(op)
                bad = dataclasses.replace(first, ints=(2**70, *first.ints[1:]))
                op = (bad, *rest) if isinstance(op, tuple) else bad
        answer = yield op


def test_one_row_failing_inside_a_batched_step_fails_only_its_sentence(batched):
    """The others' audio is exactly their audio alone (seeded, float32)."""
    processor, fast, voices = batched
    healthy = [request(processor, fast, voices, n, stream=False) for n in (0, 1)]
    scheduler = Scheduler(fast)
    try:
        listeners = [Listener() for _ in range(3)]
        (args0, seed0, _), (args1, seed1, _) = healthy
        scheduler.enqueue(Job(fast.speech(*args0, seed=seed0), listeners[0]))
        scheduler.enqueue(Job(_poisoned(fast.speech(*args1, seed=seed1)), listeners[1]))
        scheduler.enqueue(Job(fast.speech(*args1, seed=seed1), listeners[2]))
        assert listeners[1].done.wait(120)
        assert isinstance(listeners[1].outcome, Exception), "the poisoned sentence fails"
        outputs = [listeners[0].audio(), listeners[2].audio()]
        assert scheduler.batched_tokens > scheduler.steps, "they shared steps"
    finally:
        scheduler.close()
    for (args, seed, _), audio in zip(healthy, outputs):
        np.testing.assert_array_equal(audio, solo(fast, args, seed, stream=False))


def _noting(program, name: str, order: list[str]):
    """``program``, noting in ``order`` when it is first advanced (it holds a row then)."""
    order.append(name)
    return (yield from program)


def test_a_sentence_waited_for_now_goes_before_those_made_ahead(batched):
    """Three rows busy (ending one by one), two sentences made ahead waiting: a sentence a listener
    waits for now, submitted last, takes the first free row; equals are served round-robin."""
    processor, fast, _voices = batched
    inputs = tokens(processor, TEXTS[0])
    order: list[str] = []

    def job(name: str, n_tokens: int, urgent: bool, client: object) -> tuple[Job, Listener]:
        settings = SamplingSettings(max_semantic_tokens=n_tokens, allow_early_stop=False)
        program = fast.speech(inputs["input_ids"], inputs["attention_mask"], None, settings, seed=1)
        event = threading.Event()
        if urgent:
            event.set()
        listener = Listener()
        return Job(_noting(program, name, order), listener, now=event, client=client), listener

    ahead_client, other_client, waiting_client = object(), object(), object()
    scheduler = Scheduler(fast)
    try:
        listeners = []
        for name, n_tokens in (("run1", 10), ("run2", 40), ("run3", 70)):
            submitted, listener = job(name, n_tokens, False, ahead_client)
            scheduler.enqueue(submitted)
            listeners.append(listener)
        while scheduler.running < 3:  # the three hold the rows before anything else comes
            time.sleep(0.001)
        for name, client in (
            ("ahead-a1", ahead_client),
            ("ahead-a2", ahead_client),
            ("ahead-b1", other_client),
        ):
            submitted, listener = job(name, 10, False, client)
            scheduler.enqueue(submitted)
            listeners.append(listener)
        submitted, listener = job("now", 10, True, waiting_client)
        scheduler.enqueue(submitted)
        listeners.append(listener)
        classes = scheduler.classes()
        assert classes["waiting_now"] == 1 and classes["waiting_ahead"] + classes["running_ahead"] >= 5
        for listener in listeners:
            listener.audio()
    finally:
        scheduler.close()
    assert order[:3] == ["run1", "run2", "run3"]
    assert order[3] == "now", order
    assert order[4:] == ["ahead-b1", "ahead-a1", "ahead-a2"], "round-robin: b had no turn yet"


def test_a_sentence_waited_for_now_takes_a_row_from_one_made_ahead_which_starts_again_exactly(batched):
    """Every row is taken by sentences made ahead: the one that started last gives its row up and
    later starts again from its beginning, saying exactly what it would have said (same seed)."""
    processor, fast, _voices = batched
    inputs = tokens(processor, TEXTS[1])
    settings = SamplingSettings(max_semantic_tokens=70, allow_early_stop=False)
    order: list[str] = []

    def program(name: str, seed: int):
        return _noting(
            fast.speech(inputs["input_ids"], inputs["attention_mask"], None, settings, seed=seed), name, order
        )

    scheduler = Scheduler(fast)
    try:
        listeners = {}
        for name, seed in (("ahead1", 1), ("ahead2", 2), ("ahead3", 3)):
            listeners[name] = Listener()
            scheduler.enqueue(
                Job(
                    program(name, seed),
                    listeners[name],
                    now=threading.Event(),
                    restart=lambda name=name, seed=seed: program(name, seed),
                )
            )
        while scheduler.running < 3:
            time.sleep(0.001)
        listeners["now"] = Listener()
        scheduler.enqueue(Job(program("now", 4), listeners["now"]))
        audio = {name: listener.audio() for name, listener in listeners.items()}
        assert scheduler.preempted == 1
    finally:
        scheduler.close()
    assert order == ["ahead1", "ahead2", "ahead3", "now", "ahead3"], (
        "ahead3 started last, gave way, started again"
    )
    for name, seed in (("ahead3", 3), ("now", 4)):
        args = (inputs["input_ids"], inputs["attention_mask"], None, settings)
        np.testing.assert_array_equal(audio[name], generate(fast, *args, seed=seed))


def _counting(program, counts: dict, name: str):
    """``program``, counting the requests it gets answered in ``counts[name]`` (and noting all
    counts in ``counts[name + " done"]`` when it has no more requests)."""
    answer = None
    while True:
        try:
            op = program.send(answer)
        except StopIteration as done:
            counts[name + " done"] = dict(counts)
            return done.value
        answer = yield op
        if not isinstance(op, Audio):
            counts[name] += 1


def test_on_a_cpu_other_clients_look_ahead_pauses_while_somebody_waits(batched):
    """A CPU computes every row: while a sentence somebody waits for now decodes, sentences other
    clients make ahead wait; their own look-ahead would go on (the --lookahead trade-off)."""
    processor, fast, _voices = batched
    inputs = tokens(processor, TEXTS[2])
    counts = {"ahead1": 0, "ahead2": 0, "now": 0}
    scheduler = Scheduler(fast)

    def program(name: str, n_tokens: int):
        settings = SamplingSettings(max_semantic_tokens=n_tokens, allow_early_stop=False)
        speech = fast.speech(inputs["input_ids"], inputs["attention_mask"], None, settings, seed=1)
        return _counting(speech, counts, name)

    try:
        other = object()
        ahead = [Listener(), Listener()]
        for name, listener in zip(("ahead1", "ahead2"), ahead):
            scheduler.enqueue(Job(program(name, 200), listener, now=threading.Event(), client=other))
        while min(counts["ahead1"], counts["ahead2"]) < 5:
            time.sleep(0.001)
        now = Listener()
        scheduler.enqueue(Job(program("now", 20), now, client=object()))
        while counts["now"] == 0:
            time.sleep(0.0005)
        before = dict(counts)
        assert now.done.wait(120) and now.outcome is DONE
        after = counts["now done"]
        during = {name: after[name] - before[name] for name in ("ahead1", "ahead2")}
        assert max(during.values()) <= 1, during  # at most the iteration already under way
        for listener in ahead:
            listener.audio()  # and then they go on to the end
    finally:
        scheduler.close()
