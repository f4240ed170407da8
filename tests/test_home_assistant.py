"""Home Assistant 2026.11's wyoming TTS client (tests/ha_client.py) against the real server."""

from __future__ import annotations

import asyncio
import time

import pytest
from ha_client import (
    describe,
    get_tts_audio,
    llm_deltas,
    pipeline_voice,
    stream_tts_audio,
    voices_by_language,
)
from helpers import SAMPLES_PER_SENTENCE, SEMANTIC_TOKENS, read_until
from wyoming.client import AsyncClient
from wyoming.event import Event
from wyoming.ping import Ping
from wyoming.tts import Synthesize, SynthesizeVoice

from wyoming_bark.voices import LANGUAGES

# Sentences of about 110 characters without commas, so each is one generation.
SENTENCE = "Then " + " ".join(f"word{i}" for i in range(1, 18)) + " ends here."
ANSWER = " ".join([SENTENCE] * 18)


def address(server) -> tuple[str, int]:
    host, port = server.uri.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


async def test_a_new_pipeline_gets_each_languages_intended_voice(bark_server):
    """Voices sorted by description per language: the default of each language comes first."""
    started = time.monotonic()
    info = await describe(*address(bark_server))
    assert time.monotonic() - started < 5, "within one describe attempt"
    by_language = voices_by_language(info)
    assert set(by_language) == set(LANGUAGES)
    expected = {code: f"v2/{code}_speaker_{6 if code == 'en' else 0}" for code in LANGUAGES}
    assert {code: pipeline_voice(info, code) for code in LANGUAGES} == expected
    assert by_language["en"][0][0] == "(default) English speaker 6"
    # The custom voice in the test voices dir declares no language: listed in every one, never first.
    assert all("grandpa" in [name for _, name in entries] for entries in by_language.values())


async def test_custom_voices_declare_their_language(server_factory, tiny_model, voices_dir, tmp_path):
    """NAME.LANG.npz is NAME in that language only; a language's default can be any voice."""
    folder = tmp_path / "voices"
    folder.mkdir()
    (folder / "oma.de.npz").write_bytes((voices_dir / "grandpa.npz").read_bytes())
    server = server_factory(
        "--model", str(tiny_model), "--voices-dir", str(folder), "--language-voices", "fr=v2/fr_speaker_7"
    )
    info = await describe(*address(server))
    by_language = voices_by_language(info)
    assert [name for _, name in by_language["de"]].count("oma") == 1
    assert all("oma" not in [name for _, name in by_language[code]] for code in LANGUAGES if code != "de")
    assert pipeline_voice(info, "fr") == "v2/fr_speaker_7"
    assert pipeline_voice(info, "de") == "v2/de_speaker_0"


async def test_one_shot_is_a_valid_wav(bark_server):
    result = await get_tts_audio(*address(bark_server), "Hello from Home Assistant.", "v2/en_speaker_6")
    assert result.params() == (24000, 2, 1, SAMPLES_PER_SENTENCE)


@pytest.mark.parametrize(
    ("text", "voice"),
    [("word " * 3_000, "v2/en_speaker_6")],
    ids=["long"],  # an unknown voice is not a failure: it speaks with the default (test_server.py)
)
async def test_a_failed_one_shot_ends_at_once_as_home_assistant_reads_it(
    server_factory, tiny_model, text, voice
):
    """Home Assistant ignores error events and waits for audio-stop with no timeout: only the
    connection closing tells it there is no audio (it then reports "no TTS audio")."""
    server = server_factory(
        "--model", str(tiny_model), "--no-streaming", "--max-semantic-tokens", str(SEMANTIC_TOKENS)
    )
    started = time.monotonic()
    assert await asyncio.wait_for(get_tts_audio(*address(server), text, voice, exact=True), 30) is None
    assert time.monotonic() - started < 20
    result = await get_tts_audio(*address(server), "Still speaking.", "v2/en_speaker_6")
    assert result.params() == (24000, 2, 1, SAMPLES_PER_SENTENCE)


async def test_empty_text_is_a_valid_wav(bark_server):
    result = await get_tts_audio(*address(bark_server), " ", "v2/en_speaker_6")
    rate, width, channels, frames = result.params()
    assert (rate, width, channels) == (24000, 2, 1) and frames > 0


@pytest.mark.slow
async def test_long_streamed_answer_arrives_whole_and_starts_early(bark_server):
    """A 2,000-character LLM answer in 4-character deltas: every sentence, first audio before the last delta."""
    assert len(ANSWER) >= 2000
    result, last_delta = await stream_tts_audio(
        *address(bark_server), llm_deltas(ANSWER, pause=0.01), "v2/en_speaker_6"
    )
    assert "error" not in result.events and result.events[-1] == "synthesize-stopped"
    assert result.params() == (24000, 2, 1, 18 * SAMPLES_PER_SENTENCE)
    assert result.first_audio is not None and result.first_audio < last_delta, (
        "speaking began while text came"
    )


async def test_unknown_events_are_ignored_and_ping_answered(bark_server):
    """The wyoming spec: unknown event types are ignored; the connection keeps working."""
    async with AsyncClient.from_uri(bark_server.uri) as client:
        await client.write_event(Event("select-program", data={"name": "bark"}))
        await client.write_event(Ping(text="hi").event())
        pong = await read_until(client, "pong")
        assert pong.types == ["pong"], "nothing answers select-program"


async def test_language_picks_that_languages_default(bark_server):
    """A client sending only voice.language gets that language's default voice (a seeded server: same audio)."""

    async def audio(voice: SynthesizeVoice) -> bytes:
        async with AsyncClient.from_uri(bark_server.uri) as client:
            await client.write_event(Synthesize("Guten Tag.", voice=voice).event())
            return (await read_until(client, "audio-stop")).audio

    by_language = await audio(SynthesizeVoice(language="de-DE"))
    assert by_language == await audio(SynthesizeVoice(name="v2/de_speaker_0"))
    assert by_language != await audio(SynthesizeVoice(name="v2/en_speaker_6"))
    assert await audio(SynthesizeVoice(name="v2/en_speaker_6", language="de")) == await audio(
        SynthesizeVoice(name="v2/en_speaker_6")
    ), "a name wins over a language"
