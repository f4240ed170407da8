"""``--core transformers`` behind the scheduler: a hang-up stops its generation, and its seeding
leaves the process's random numbers alone."""

from __future__ import annotations

import asyncio
import threading

import torch

from wyoming_bark.engine import BarkEngine
from wyoming_bark.fast import SamplingSettings
from wyoming_bark.settings import EngineSettings, GenerationSettings, ModelSettings


def transformers_engine(model, data_dir):
    return BarkEngine(
        EngineSettings(
            model=ModelSettings(
                model=str(model), data_dir=data_dir, device="cpu", core="transformers", precision="fp32"
            ),
            generation=GenerationSettings(sampling=SamplingSettings(max_semantic_tokens=20), seed=3),
        ),
    )


async def test_seeding_leaves_the_global_generator_alone(tiny_model, tmp_path):
    engine = transformers_engine(tiny_model, tmp_path)
    try:
        await engine.load()
        torch.manual_seed(1234)
        before = torch.get_rng_state()
        audio = b"".join([chunk async for chunk in engine.speak_sentence("Seeded here.")])
        assert audio
        assert torch.equal(torch.get_rng_state(), before), "the core reseeded torch's global generator"
    finally:
        engine.close()


async def test_a_hang_up_stops_the_generation(tiny_model, tmp_path):
    engine = transformers_engine(tiny_model, tmp_path)
    try:
        loaded = await engine.load()
        bark = loaded.core.bark
        real, criteria, started, go = bark.generate, [], threading.Event(), threading.Event()

        def generate(**kwargs):
            criteria.append(kwargs["semantic_stopping_criteria"])
            started.set()
            go.wait(30)
            return real(**kwargs)

        bark.generate = generate
        listening = asyncio.ensure_future(engine.speak_sentence("Nobody listens to this.").__anext__())
        assert await asyncio.to_thread(started.wait, 30)
        stop = criteria[0][0]
        ids = torch.zeros((1, 1), dtype=torch.long)
        assert not bool(stop(ids, None)[0]), "running: not stopped"
        listening.cancel()
        await asyncio.sleep(0.2)
        assert bool(stop(ids, None)[0]), "the listener left: the generation is told to stop"
        go.set()
    finally:
        go.set()
        engine.close()
