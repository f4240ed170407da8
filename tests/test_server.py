"""End to end: the real server process, spoken to over TCP with wyoming's client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time

import pytest
from helpers import (
    SAMPLES_PER_SENTENCE,
    assert_stream,
    describe,
    describe_latencies,
    eventually,
    read_until,
    samples_for,
    status,
    synthesize,
)
from wyoming.client import AsyncClient
from wyoming.info import Attribution, Info, TtsProgram
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from wyoming_bark import __version__
from wyoming_bark.text import split_sentences


async def test_describe_lists_every_voice(bark_server):
    info = Info.from_event(await describe(bark_server.uri))
    assert len(info.tts) == 1
    program = info.tts[0]
    assert program.name == "bark" and program.installed and program.version == __version__
    assert program.attribution.name == "Suno / Bark" and program.attribution.url.startswith("https://")
    assert program.supports_synthesize_streaming
    voices = {voice.name: voice for voice in program.voices}
    assert len(voices) == 131 + 2, "130 v2 presets, announcer, and the two custom files"
    assert voices["v2/pl_speaker_4"].languages == ["pl"]
    assert voices["v2/pl_speaker_4"].description == "Polish speaker 4"
    assert voices["grandpa"].description == "Custom voice grandpa"
    assert len(voices["grandpa"].languages) == 13
    assert "on the CPU" in bark_server.log_text(), "the start-up log names the device"


async def test_synthesize_streams_audio_of_the_generated_length(bark_server):
    text = "Hello world. This is Bark! [laughs]"
    assert split_sentences(text) == ["Hello world.", "This is Bark! [laughs]"]
    result = await synthesize(bark_server.uri, text, "v2/en_speaker_6")
    assert_stream(result, sentences=2)
    assert len(result.chunks) > 2 and len(result.chunks[0].audio) == 2048
    assert (
        max(abs(int.from_bytes(result.audio[i : i + 2], "little", signed=True)) for i in range(0, 2000, 2))
        > 0
    )


async def test_default_voice_and_seed_make_audio_reproducible(bark_server):
    first = await synthesize(bark_server.uri, "Same words twice.")
    second = await synthesize(bark_server.uri, "Same words twice.", "v2/en_speaker_6")
    other = await synthesize(bark_server.uri, "Same words twice.", "v2/en_speaker_0")
    assert first.audio == second.audio, "default voice is v2/en_speaker_6 and --seed fixes sampling"
    assert first.audio != other.audio


async def test_long_text_comes_out_whole(bark_server):
    """Longer than Bark's ~14 s window: every sentence part is spoken, none truncated."""
    text = " ".join(f"Sentence {i} goes on, and on, and on about nothing in particular." for i in range(4))
    text += " " + ", ".join(["a very long clause without any full stop"] * 12) + "."
    parts = split_sentences(text)
    assert len(parts) >= 6
    result = await synthesize(bark_server.uri, text, "v2/fr_speaker_3")
    assert_stream(result, sentences=len(parts))


async def test_streaming_synthesis_is_one_continuous_stream(bark_server):
    text = "Good morning. The weather today is sunny! Bring water"
    async with AsyncClient.from_uri(bark_server.uri) as client:
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice("v2/es_speaker_1")).event())
        for i in range(0, len(text), 4):  # splits mid-word
            await client.write_event(SynthesizeChunk(text=text[i : i + 4]).event())
        # Home Assistant repeats the whole text for servers without streaming: must be ignored.
        await client.write_event(Synthesize(text, voice=SynthesizeVoice("v2/es_speaker_1")).event())
        await client.write_event(SynthesizeStop().event())
        result = await read_until(client, "synthesize-stopped")
    assert result.types[-1] == "synthesize-stopped"
    result.events.pop()
    assert_stream(result, sentences=3)


async def test_streaming_audio_starts_before_the_text_ends(bark_server):
    async with AsyncClient.from_uri(bark_server.uri) as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="First sentence is here. Sec").event())
        first = await read_until(client, "audio-chunk")
        assert first.types == ["audio-start", "audio-chunk"], "the first sentence is spoken before stop"
        await client.write_event(SynthesizeChunk(text="ond one.").event())
        await client.write_event(SynthesizeStop().event())
        rest = await read_until(client, "synthesize-stopped")
    assert rest.types[-2:] == ["audio-stop", "synthesize-stopped"]
    assert "audio-start" not in rest.types
    assert (len(first.audio) + len(rest.audio)) // 2 == 2 * SAMPLES_PER_SENTENCE


async def test_an_unknown_voice_speaks_with_the_default_and_says_so_in_the_log(bark_server):
    """A pipeline whose voice is gone (a removed custom voice) keeps speaking: Home Assistant would
    turn an error into an empty HTTP 500. The log names the voice and what spoke instead."""
    assert_stream(await synthesize(bark_server.uri, "Hello.", "v2/xx_speaker_9"), sentences=1)
    log = bark_server.log_text()
    assert "Unknown voice 'v2/xx_speaker_9'" in log and "Speaking with v2/en_speaker_6 instead" in log


async def test_streaming_with_unknown_voice_speaks_with_the_default(bark_server):
    async with AsyncClient.from_uri(bark_server.uri) as client:
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice("nobody")).event())
        await client.write_event(SynthesizeChunk(text="Hi there. ").event())
        await client.write_event(SynthesizeStop().event())
        result = await read_until(client, "synthesize-stopped")
        assert "error" not in result.types and result.types[-1] == "synthesize-stopped"
        assert result.samples == SAMPLES_PER_SENTENCE
    assert "Unknown voice 'nobody'" in bark_server.log_text()


async def test_custom_voices(bark_server):
    assert_stream(await synthesize(bark_server.uri, "Grandpa speaks.", "grandpa"), sentences=1)
    broken = await synthesize(bark_server.uri, "Broken voice.", "broken")
    assert broken.types == ["error"] and "broken.npz" in broken.events[0].data["text"]
    assert_stream(await synthesize(bark_server.uri, "Still fine.", "announcer"), sentences=1)


async def test_empty_text_gives_a_short_silence(bark_server):
    """Home Assistant writes its WAV header at the first chunk: no chunk would be a 0-byte file."""
    result = await synthesize(bark_server.uri, "   ")
    assert result.types == ["audio-start", "audio-chunk", "audio-stop"]
    assert result.audio == bytes(len(result.audio)) and result.samples == 2400


async def test_describe_answers_while_synthesizing(bark_server):
    text = " ".join(f"Sentence number {i} is here." for i in range(6))
    task = asyncio.create_task(synthesize(bark_server.uri, text))
    await asyncio.sleep(0.3)
    latencies = await describe_latencies(bark_server.uri, task.done)
    assert_stream(await task, sentences=6)
    assert len(latencies) >= 3, "synthesis finished too fast to measure"
    assert max(latencies) < 1.0, latencies


async def test_concurrent_clients_each_get_their_audio(bark_server):
    texts = ["One. Two.", "Three.", "Four. Five. Six."]
    results = await asyncio.gather(*(synthesize(bark_server.uri, text, "v2/ko_speaker_2") for text in texts))
    for text, result in zip(texts, results):
        assert_stream(result, sentences=len(split_sentences(text)))


async def test_a_request_never_waits_for_another_to_finish(bark_server):
    """A short request arriving during a long one gets its audio while the long one still runs."""
    long_text = " ".join(f"Sentence number {n} of a long text." for n in range(12))
    async with AsyncClient.from_uri(bark_server.uri) as first:
        await first.write_event(Synthesize(long_text).event())
        await read_until(first, "audio-chunk")
        short = await synthesize(bark_server.uri, "Quick one.")
        assert_stream(short, sentences=1)
        rest = await read_until(first, "audio-stop")
    assert rest.samples >= 6 * SAMPLES_PER_SENTENCE, "the long request was still running"


async def test_disconnect_mid_synthesis_cancels_it(bark_server):
    before = (await status(bark_server.uri))["sentences"]
    client = AsyncClient.from_uri(bark_server.uri)
    await client.connect()
    await client.write_event(Synthesize(" ".join(["Talk talk."] * 8)).event())
    await read_until(client, "audio-chunk")
    await client.disconnect()
    assert_stream(await synthesize(bark_server.uri, "After the hang up."), sentences=1)

    async def settled() -> bool:
        state = await status(bark_server.uri)
        return state["sentences_pending"] == 0 and state["batch"]["running"] == 0

    await eventually(settled, what="nothing left running")
    state = await status(bark_server.uri)
    # At most the sentence playing and the two made ahead of it (and perhaps the next one, started
    # as the first ended) were finished for the abandoned request, not all eight.
    assert state["sentences"] - before - 1 <= 4, state["sentences"] - before


async def test_no_streaming_flag(server_factory, tiny_model):
    server = server_factory("--model", str(tiny_model), "--no-streaming", "--max-semantic-tokens", "20")
    info = Info.from_event(await describe(server.uri))
    assert not info.tts[0].supports_synthesize_streaming


@pytest.mark.parametrize(
    "model, expected",
    [
        ("/nonexistent/bark", "--model"),
        ("suno/bark-small", "--model with that folder"),
    ],
)
@pytest.mark.slow
async def test_missing_model_gives_an_error_and_the_server_stays_up(server_factory, model, expected):
    server = server_factory("--model", model)
    for _ in range(2):  # every request gets a clear error (a retry after the back-off, or the same)
        result = await synthesize(server.uri, "Hello.")
        assert result.types == ["error"]
        assert expected in result.events[0].data["text"]
        assert result.events[0].data["code"] == "model-not-loaded"
    assert Info.from_event(await describe(server.uri)).tts[0].voices
    assert server.process.poll() is None
    assert expected in server.log_text()


def _health(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wyoming_bark.health", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_health_check(bark_server, server_factory):
    ok = await asyncio.to_thread(_health, "--uri", bark_server.uri, "--synthesize")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("healthy: bark ") and "133 voices" in ok.stdout and "s of audio" in ok.stdout
    broken = server_factory("--model", "/nonexistent/bark")
    bad = await asyncio.to_thread(_health, "--uri", broken.uri, "--synthesize")
    assert bad.returncode == 1 and "--model" in bad.stdout
    gone = await asyncio.to_thread(_health, "--uri", "tcp://127.0.0.1:1", "--timeout", "2")
    assert gone.returncode == 1 and gone.stdout.startswith("unhealthy: cannot reach")


async def test_transformers_core_serves_too(server_factory, tiny_model):
    server = server_factory(
        "--model", str(tiny_model), "--core", "transformers", "--max-semantic-tokens", "20"
    )
    result = await synthesize(server.uri, "The reference path. It still works.", "v2/hi_speaker_0")
    assert_stream(result, sentences=2)
    assert "with the transformers core" in server.log_text()


async def test_streaming_quick_start(bark_server):
    """A long first sentence from a streaming client is spoken from its first clause on."""
    async with AsyncClient.from_uri(bark_server.uri) as client:
        await client.write_event(SynthesizeStart().event())
        await client.write_event(
            SynthesizeChunk(text="Considering everything that happened today at work, I think that").event()
        )
        first = await read_until(client, "audio-chunk")
        assert first.types == ["audio-start", "audio-chunk"], "audio before the sentence has ended"
        await client.write_event(SynthesizeChunk(text=" we should go home.").event())
        await client.write_event(SynthesizeStop().event())
        rest = await read_until(client, "synthesize-stopped")
    assert (len(first.audio) + len(rest.audio)) // 2 == 2 * SAMPLES_PER_SENTENCE


async def test_preload_loads_at_start_while_describe_answers(server_factory, tiny_model):
    server = server_factory("--model", str(tiny_model), "--preload", "--log-format", "BARKLOG %(message)s")
    assert (await describe(server.uri)).type == "info"

    async def loaded() -> bool:  # a busy machine may take a while: wait for the state, not a time
        return "Loaded " in server.log_text()

    await eventually(loaded, what="the preload")
    assert "BARKLOG Loaded " in server.log_text(), "loaded without a request, in the chosen log format"


def test_unknown_default_voice_stops_the_server_with_a_message(tiny_model, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "wyoming_bark", "--model", str(tiny_model), "--voice", "v2/xx_speaker_1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BARK_DATA_DIR": str(tmp_path)},
    )
    assert done.returncode != 0 and "Unknown voice 'v2/xx_speaker_1'" in done.stderr


@pytest.fixture(scope="module")
def streaming_server(server_factory, tiny_model):
    """Audio released inside sentences (on by default only with a GPU)."""
    return server_factory(
        "--model", str(tiny_model), "--audio-streaming", "on", "--max-semantic-tokens", "100"
    )


SAMPLES_100 = samples_for(100)


async def test_audio_inside_a_sentence(streaming_server):
    result = await synthesize(streaming_server.uri, "One sentence, released in pieces.")
    assert result.types[0] == "audio-start" and result.types[-1] == "audio-stop"
    assert result.samples == SAMPLES_100
    # Each released piece ends in its own (short) chunk: several in one sentence.
    short = [c for c in result.chunks[:-1] if len(c.audio) < 2048]
    assert len(short) >= 2, [len(c.audio) for c in result.chunks]


async def test_interleaved_streams_and_a_disconnect(streaming_server):
    """Concurrent sentences interleave piece by piece; each client gets its own audio, in order."""
    dropped = AsyncClient.from_uri(streaming_server.uri)
    await dropped.connect()
    await dropped.write_event(Synthesize("I will hang up. Right now. Goodbye.").event())
    keep = [
        asyncio.create_task(synthesize(streaming_server.uri, f"Client {n} talks. And again."))
        for n in range(3)
    ]
    await read_until(dropped, "audio-chunk")
    await dropped.disconnect()
    for result in await asyncio.gather(*keep):
        assert result.types[0] == "audio-start" and result.types[-1] == "audio-stop"
        assert result.types.count("audio-start") == 1
        assert result.samples == 2 * SAMPLES_100
    state = await status(streaming_server.uri)
    assert state["sentences_pending"] == 0 and state["batch"]["running"] == 0, repr(state["batch"])
    assert state["batch"]["mean_size"] > 1.5, "the clients' sentences were decoded in shared steps"


@pytest.mark.slow
async def test_health_check_against_hostile_or_broken_peers():
    """Whatever the peer does, the check ends within --timeout with one 'unhealthy:' line."""

    async def chatty(reader, writer):  # never sends info, never stops talking
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b'{"type": "ping"}\n')
                await writer.drain()
                await asyncio.sleep(0.01)

    async def malformed(reader, writer):  # an info event whose data is not what info holds
        await reader.readline()
        writer.write(b'{"type": "info", "data": {"tts": "not a list"}}\n')
        await writer.drain()

    async def silent(reader, writer):
        await asyncio.sleep(30)

    for peer, reason in (
        (chatty, "timed out while waiting for describe's answer"),
        (malformed, "malformed answer"),
        (silent, "timed out while waiting for describe's answer"),
    ):
        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        started = time.monotonic()
        result = await asyncio.to_thread(_health, "--uri", f"tcp://127.0.0.1:{port}", "--timeout", "2")
        server.close()
        assert result.returncode == 1 and result.stdout.startswith("unhealthy: "), (
            result.stdout + result.stderr
        )
        assert reason in result.stdout and "Traceback" not in result.stderr, (peer.__name__, result.stdout)
        assert time.monotonic() - started < 10, peer.__name__


async def test_health_is_the_engines_verdict(server_factory):
    broken = server_factory("--model", "/nonexistent/bark")
    await synthesize(broken.uri, "Load, please.")  # the load fails
    state = await status(broken.uri)
    assert state["healthy"] is False and "--model" in state["health"]
    result = await asyncio.to_thread(_health, "--uri", broken.uri)
    assert result.returncode == 1 and result.stdout.startswith("unhealthy: ")
    assert "failed to load" in result.stdout and "not loaded yet" not in result.stdout


async def test_health_says_a_slow_synthesis_timed_out_not_that_nothing_answers():
    """A server that is up but slow to speak (a CPU): the check says what it was waiting for."""

    async def slow_speaker(reader, writer):
        await reader.readline()  # describe
        info = Info(tts=[TtsProgram(name="bark", description="Bark", attribution=Attribution("", ""),
                                    installed=True, version="0", voices=[])])  # fmt: skip
        writer.write(json.dumps(info.event().to_dict()).encode() + b"\n")
        await reader.readline()  # bark-status
        writer.write(
            json.dumps({"type": "bark-status", "data": {"loaded": True, "device": "cpu"}}).encode() + b"\n"
        )
        await writer.drain()
        await asyncio.sleep(30)  # speaking, slowly

    server = await asyncio.start_server(slow_speaker, "127.0.0.1", 0)
    uri = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    result = await asyncio.to_thread(_health, "--uri", uri, "--synthesize", "--timeout", "2")
    server.close()
    assert result.returncode == 1
    assert "timed out while synthesizing after 2 s" in result.stdout, result.stdout
    assert "cannot reach" not in result.stdout
    help_text = await asyncio.to_thread(_health, "--help")
    words = " ".join(help_text.stdout.split())
    assert "``" not in words and "(default: 10, with --synthesize 120)" in words, words
