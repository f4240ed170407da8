"""The engine contract, driven directly (no server): streaming, stop, voices, health, cache."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from helpers import SAMPLES_PER_SENTENCE, eventually

from wyoming_bark.cache import HEADER
from wyoming_bark.contract import (
    ENGINE_MODULES,
    ENGINES,
    HealthCheckResult,
    TtsEngine,
    create_engine,
    register,
)
from wyoming_bark.engine import BarkEngine
from wyoming_bark.errors import ModelLoadError, SynthesisCancelled, UnknownVoice
from wyoming_bark.fast import SamplingSettings
from wyoming_bark.settings import ENGINE_NAMES, EngineSettings, GenerationSettings, ModelSettings

BYTES_PER_SENTENCE = 2 * SAMPLES_PER_SENTENCE


def make_engine(model: Path, data_dir: Path, **settings) -> BarkEngine:
    engine = {
        key: settings.pop(key) for key in ("cache_size_mb", "lookahead", "voices_dir") if key in settings
    }
    engine["cache"] = "cache_size_mb" in engine
    return create_engine(
        "bark",
        settings=EngineSettings(
            model=ModelSettings(
                model=str(model),
                data_dir=data_dir,
                device="cpu",
                max_batch=settings.pop("max_batch", 8),
                precision="fp32",  # exact: a seeded sentence is the same in any batch (int8: test_precision)
            ),
            generation=GenerationSettings(sampling=SamplingSettings(max_semantic_tokens=20), **settings),
            **engine,
        ),
    )


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


@pytest.fixture
def engine(tiny_model, tmp_path):
    engine = make_engine(tiny_model, tmp_path, seed=3)
    yield engine
    engine.close()


def test_registry():
    """Each --engine name is a registered class, found through its module; registering is the
    decorator at the class, and a second class under one name is an error."""
    assert set(ENGINE_MODULES) == set(ENGINE_NAMES), "every name the command line offers has a module"
    assert ENGINES["bark"] is BarkEngine

    class Echo(TtsEngine):
        name = "echo-test"

        def resolve_voice(self, name): ...
        def start_sentence(self, sentence, voice, turn): ...
        def stop(self): ...
        async def health_check(self, synthesize=False): ...
        def get_status(self): ...
        def get_available_voices(self): ...
        def set_voice(self, name): ...

    assert "echo-test" not in ENGINES, "defining a class registers nothing"
    try:
        assert register(Echo) is Echo and ENGINES["echo-test"] is Echo
        with pytest.raises(ValueError, match="needs a name of its own"):
            register(type("Other", (Echo,), {}))
        assert isinstance(create_engine("echo-test"), Echo)
    finally:
        del ENGINES["echo-test"]  # leave the registry as the other tests expect it
    with pytest.raises(ValueError, match="Unknown engine 'nope'"):
        create_engine("nope")


async def test_speak_and_streaming_buffering(engine):
    assert (
        len(await collect(engine.speak("First one here. Second one here. Third one here.")))
        == 3 * BYTES_PER_SENTENCE
    )
    stream = engine.open_stream()
    heard = bytearray()

    async def listen() -> None:
        async for pcm in stream.audio():
            heard.extend(pcm)

    listener = asyncio.create_task(listen())
    stream.add("The first sen")
    await asyncio.sleep(0.5)
    assert not heard and stream.idle, "no boundary yet: nothing started"
    stream.add("tence ends. The sec")
    await eventually(lambda: len(heard) == BYTES_PER_SENTENCE)  # spoken before the text ends
    stream.add("ond runs on")
    await asyncio.sleep(0.5)
    assert len(heard) == BYTES_PER_SENTENCE and stream.idle, "the rest waits for more text"
    stream.close()
    await asyncio.wait_for(listener, 60)
    assert len(heard) == 2 * BYTES_PER_SENTENCE, "closing speaks the rest and ends the stream"


async def test_on_a_cpu_one_thread_computes(engine):
    """After loading and speaking, no loader thread and no audio thread is left: on a CPU every
    thread that ran parallel work keeps its OpenMP workers, and a second set alive slows each
    decode step by half (see fast.release.Releaser)."""
    assert len(await collect(engine.speak("One sentence here."))) == BYTES_PER_SENTENCE
    names = [thread.name for thread in threading.enumerate()]
    assert sum(name == "bark-batch" for name in names) == 1, names
    assert not [name for name in names if name.startswith("bark-load") or name.endswith("-audio")], names


async def test_run_on_text_starts_before_the_text_ends(engine):
    stream = engine.open_stream(engine.resolve_voice("announcer"))
    heard = bytearray()

    async def listen() -> None:
        async for pcm in stream.audio():
            heard.extend(pcm)

    listener = asyncio.create_task(listen())
    for i in range(80):  # ~480 characters without a sentence end
        stream.add(f"word{i} ")
    await eventually(lambda: len(heard) >= 2 * BYTES_PER_SENTENCE)  # the minimum buffer, twice
    stream.close()
    await asyncio.wait_for(listener, 60)
    assert len(heard) == 3 * BYTES_PER_SENTENCE


async def test_silence_between_sentences(tiny_model, tmp_path):
    engine = make_engine(tiny_model, tmp_path, seed=3, sentence_silence=0.1)
    audio = await collect(engine.speak("First one here. Second one here. Third one here."))
    assert len(audio) == 3 * BYTES_PER_SENTENCE + 2 * 2 * 2400
    engine.close()


async def test_stop_mid_synthesis(engine):
    async def consume() -> int:
        return len(await collect(engine.speak(" ".join(["Stop me now."] * 10))))

    task = asyncio.create_task(consume())
    for _ in range(200):
        if engine.sentences >= 1 and engine.get_status()["sentences_pending"]:
            break
        await asyncio.sleep(0.01)
    engine.stop()
    with pytest.raises(SynthesisCancelled):
        await task
    assert engine.sentences < 10
    assert len(await collect(engine.speak("Next one works."))) == BYTES_PER_SENTENCE


async def test_sentences_of_one_text_are_batched(tiny_model, tmp_path):
    """With batching, the next sentences are made while the first plays — and sound the same."""
    text = "First one here. Second one here. Third one here. Fourth one here."
    batched = make_engine(tiny_model, tmp_path / "a", seed=3, max_batch=3)
    serial = make_engine(tiny_model, tmp_path / "b", seed=3, max_batch=1, lookahead=2)
    chosen = make_engine(tiny_model, tmp_path / "c", seed=3, max_batch=8, lookahead=1)
    try:
        assert (batched.lookahead, serial.lookahead) == (2, 0), "never more than the batch can hold"
        assert chosen.lookahead == 1, "as --lookahead asks"
        together, alone = await collect(batched.speak(text)), await collect(serial.speak(text))
        assert len(together) == len(alone) == 4 * BYTES_PER_SENTENCE
        difference = np.frombuffer(together, "<i2").astype(int) - np.frombuffer(alone, "<i2")
        assert np.abs(difference).max() <= 4, "seeded sentences say the same, batched or not"
        batch = batched.get_status()["batch"]
        assert batch["mean_size"] >= 1.9, batch  # three sentences together, then the fourth
        assert serial.get_status()["batch"]["mean_size"] == 1
    finally:
        batched.close()
        serial.close()
        chosen.close()


async def test_voices(engine, tmp_path):
    assert len(engine.get_available_voices()) == 131
    assert engine.set_voice("v2/fr_speaker_1") and engine.get_status()["default_voice"] == "v2/fr_speaker_1"
    assert not engine.set_voice("v9/xx") and engine.get_status()["default_voice"] == "v2/fr_speaker_1"
    with pytest.raises(UnknownVoice):
        engine.resolve_voice("v9/xx")


async def test_health(engine, tmp_path):
    before = await engine.health_check()
    assert isinstance(before, HealthCheckResult)
    assert before.healthy and "not loaded yet" in before.message and not before.details["loaded"]
    spoken = await engine.health_check(synthesize=True)
    assert spoken.healthy and "s of audio" in spoken.message and spoken.details["loaded"]
    after = await engine.health_check()
    assert after.healthy and "loaded on cpu" in after.message

    broken = make_engine(tmp_path / "missing", tmp_path)
    result = await broken.health_check(synthesize=True)
    assert not result.healthy and "--model" in result.message
    assert not (await broken.health_check()).healthy, "the last load failed"
    with pytest.raises(ModelLoadError):
        await collect(broken.speak("Hi."))
    broken.close()


async def test_cache_hits_evicts_survives_and_heals(tiny_model, tmp_path):
    engine = make_engine(tiny_model, tmp_path, seed=11, cache_size_mb=1)
    first = await collect(engine.speak("The washing machine is done."))
    second = await collect(engine.speak("The washing machine is done."))
    status = engine.get_status()
    assert first == second and status["cache_hits"] == 1 and status["sentences"] == 1, "served from disk"

    fresh = make_engine(tiny_model, tmp_path / "elsewhere", seed=11)  # no cache
    assert await collect(fresh.speak("The washing machine is done.")) == first, "seeded: cached == fresh"
    fresh.close()

    restarted = make_engine(tiny_model, tmp_path, seed=11, cache_size_mb=1)
    assert await collect(restarted.speak("The washing machine is done.")) == first
    assert restarted.get_status()["cache_hits"] == 1 and restarted.sentences == 0, "survives a restart"

    files = list((tmp_path / "cache").glob("*.pcm"))
    assert len(files) == 1
    files[0].write_bytes(files[0].read_bytes()[:-100])  # damage it
    assert await collect(restarted.speak("The washing machine is done.")) == first
    status = restarted.get_status()
    assert status["cache_corrupt"] == 1 and status["sentences"] == 1, "ignored and regenerated"
    assert len(files[0].read_bytes()) == HEADER.size + BYTES_PER_SENTENCE, "and rewritten"

    # ~19 KB per sentence: a 0.05 MB bound keeps only the two most recent.
    small = make_engine(tiny_model, tmp_path / "small", seed=11, cache_size_mb=0.05)
    for text in ("One.", "Two.", "Three.", "Four."):
        await collect(small.speak(text))
    assert small.get_status()["cache_files"] == 2
    assert small.get_status()["cache_bytes"] <= 0.05 * 2**20
    await collect(small.speak("Four."))
    assert small.get_status()["cache_hits"] == 1, "the newest entry survived eviction"
    await collect(small.speak("One."))
    assert small.get_status()["cache_hits"] == 1, "the oldest was evicted"
    for item in (engine, restarted, small):
        item.close()


async def test_cache_key_covers_voice_and_settings(tiny_model, tmp_path):
    engine = make_engine(tiny_model, tmp_path, seed=2, cache_size_mb=5)
    await collect(engine.speak("Hello."))
    await collect(engine.speak("Hello.", engine.resolve_voice("announcer")))
    assert engine.get_status()["cache_hits"] == 0, "another voice is another entry"
    other = make_engine(tiny_model, tmp_path, seed=3, cache_size_mb=5)
    await collect(other.speak("Hello."))
    assert other.get_status()["cache_hits"] == 0, "another seed is another entry"
    engine.close()
    other.close()


async def test_per_voice_seed(tiny_model, tmp_path):
    engine = make_engine(tiny_model, tmp_path, voice_seeds={"announcer": 5})
    one = await collect(engine.speak("Attention please.", engine.resolve_voice("announcer")))
    two = await collect(engine.speak("Attention please.", engine.resolve_voice("announcer")))
    assert one == two
    engine.close()


async def test_concurrent_identical_misses_are_made_once(tiny_model, tmp_path):
    """Four listeners ask for the same uncached sentence at once: one generation, four replays."""
    engine = make_engine(tiny_model, tmp_path, seed=4, cache_size_mb=5)
    results = await asyncio.gather(*(collect(engine.speak("The doorbell rang.")) for _ in range(4)))
    assert all(result == results[0] for result in results) and results[0]
    state = engine.get_status()
    assert state["sentences"] == 1
    assert (state["cache_misses"], state["cache_hits"]) == (1, 3), "made once, shared three times"
    engine.close()
