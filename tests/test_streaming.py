"""Streaming synthesis as Home Assistant uses it: text as a buffer, bounded, sentences made ahead."""

from __future__ import annotations

import asyncio
import time

import pytest
from helpers import SAMPLES_PER_SENTENCE, assert_stream, header, read_until, rss_mib, status, synthesize
from wyoming.client import AsyncClient
from wyoming.tts import SynthesizeChunk, SynthesizeStart, SynthesizeStop

from wyoming_bark.handler import MAX_QUEUED_REQUESTS

# Ten sentences of 30 words, no commas (so a quick start does not cut the first one).
WORDS = ["Then", *(f"w{i}" for i in range(1, 30))]
TEXT = " ".join(" ".join(WORDS) + "." for _ in range(10))


async def test_hundreds_of_tiny_chunks_are_one_request(bark_server):
    """300 one-word chunks in a burst: no busy, every sentence spoken, one audio stream."""
    async with AsyncClient.from_uri(bark_server.uri) as client:
        await client.write_event(SynthesizeStart().event())
        for word in TEXT.split(" "):
            await client.write_event(SynthesizeChunk(word + " ").event())
        await client.write_event(SynthesizeStop().event())
        result = await read_until(client, "synthesize-stopped", timeout=120)
    assert len(TEXT.split(" ")) == 300 > MAX_QUEUED_REQUESTS
    assert result.error() is None, result.error()
    assert result.types[-2:] == ["audio-stop", "synthesize-stopped"]
    assert result.samples == 10 * SAMPLES_PER_SENTENCE


async def test_text_beyond_max_chars_is_refused_after_what_came_before(server_factory, tiny_model):
    server = server_factory("--model", str(tiny_model), "--max-semantic-tokens", "20", "--max-chars", "100")
    async with AsyncClient.from_uri(server.uri) as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk("This first sentence fits. ").event())
        for _ in range(10):
            await client.write_event(SynthesizeChunk("And this goes on and on ").event())
        await client.write_event(SynthesizeStop().event())
        result = await read_until(client, "synthesize-stopped")
        while result.types[-1] != "synthesize-stopped":
            result.events += (await read_until(client, "synthesize-stopped")).events
    assert result.samples == SAMPLES_PER_SENTENCE, "the sentence sent within the limit is spoken"
    assert [e.data["code"] for e in result.events if e.type == "error"] == ["text-too-long"]
    assert "audio-stop" not in result.types and result.types[-1] == "synthesize-stopped"


@pytest.mark.slow
async def test_start_stop_flood_is_bounded(server_factory, tiny_model):
    """A client that sends start/stop pairs and never reads: bounded memory, others served."""
    server = server_factory("--model", str(tiny_model), "--max-semantic-tokens", "20")
    assert_stream(await synthesize(server.uri, "Warm up."), sentences=1)
    before = rss_mib(server.process.pid)
    port = int(server.uri.rsplit(":", 1)[1])
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pair = header(type="synthesize-start") + header(type="synthesize-stop")
    flood = pair * 80_000  # 4.7 MiB
    writer.write(flood)
    await asyncio.sleep(5)  # the server reads what it will; its replies are never read
    assert rss_mib(server.process.pid) - before < 30, "memory stays bounded"
    assert_stream(await synthesize(server.uri, "Others are fine."), sentences=1)
    writer.close()


@pytest.mark.slow
async def test_sentences_are_made_ahead_while_one_is_made(server_factory, tiny_model):
    """A sentence completed by a later chunk joins the batch at once, beside the one still generating."""
    server = server_factory("--model", str(tiny_model), "--max-semantic-tokens", "400")
    async with AsyncClient.from_uri(server.uri) as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk("The first sentence is here. The sec").event())
        for delta in ("ond one ", "follows now. And"):
            await client.write_event(SynthesizeChunk(delta).event())
        started = time.monotonic()
        while (state := await status(server.uri))["sentences_pending"] < 2:
            assert time.monotonic() - started < 10, state
            await asyncio.sleep(0.02)
        assert state["sentences"] == 0, "both were under way before the first one ended"
        await client.write_event(SynthesizeChunk(" the third.").event())
        await client.write_event(SynthesizeStop().event())
        result = await read_until(client, "synthesize-stopped", timeout=300)
    assert result.error() is None and result.types[-2:] == ["audio-stop", "synthesize-stopped"]
    assert (await status(server.uri))["sentences"] == 3
