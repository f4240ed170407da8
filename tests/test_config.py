"""The --config JSON file: design keys, our keys, precedence, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_stream, describe, status, synthesize

from wyoming_bark.cli import parse_args
from wyoming_bark.discovery import default_service_name

FLAG_ENV = (
    "BARK_MODEL",
    "BARK_DEVICE",
    "BARK_VOICE",
    "BARK_CACHE",
    "BARK_SEED",
    "BARK_CONFIG",
    "BARK_NO_STREAMING",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in FLAG_ENV:
        monkeypatch.delenv(name, raising=False)


def write(tmp_path, section: dict, name: str = "bark.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"tts": {"bark": section}}))
    return str(path)


def test_design_keys(tmp_path, caplog):
    path = write(
        tmp_path,
        {
            "use_small_model": False,
            "device": "cuda",
            "use_cache": True,
            "voice": "announcer",
            "np_load_scale": 1,
        },
    )
    args = parse_args(["--config", path])
    assert args.model == "suno/bark" and args.device == "cuda" and args.cache and args.voice == "announcer"
    assert any("np_load_scale" in warning and "ignored" in warning for warning in args.config_warnings)
    assert parse_args(["--config", write(tmp_path, {"model_size": "small"})]).model == "suno/bark-small"


def test_our_keys(tmp_path):
    path = write(
        tmp_path,
        {
            "model": "/models/bark",
            "model_size": "full",
            "voices_dir": "/voices",
            "text_temp": 0.6,
            "waveform_temp": 0.5,
            "min_eos_p": 0.1,
            "max_semantic_tokens": 300,
            "seed": 9,
            "voice_seeds": {"announcer": 4},
            "language_voices": {"de": "v2/de_speaker_3", "it": "v2/it_speaker_1"},
            "streaming": False,
            "cache_size_mb": 20,
            "sentence_silence": 0.2,
            "zeroconf": True,
            "core": "transformers",
        },
    )
    args = parse_args(["--config", path])
    assert args.model == "/models/bark", "an explicit model wins over model_size"
    assert (args.voices_dir, args.text_temp, args.waveform_temp, args.min_eos_p) == (
        Path("/voices"),
        0.6,
        0.5,
        0.1,
    )
    assert (args.max_semantic_tokens, args.seed, args.voice_seeds) == (300, 9, {"announcer": 4})
    assert args.no_streaming and args.cache_size_mb == 20 and args.sentence_silence == 0.2
    assert args.zeroconf == default_service_name() and args.core == "transformers"
    assert args.language_voices == {"de": "v2/de_speaker_3", "it": "v2/it_speaker_1"}


def test_precedence_flags_env_file_defaults(tmp_path, monkeypatch):
    path = write(tmp_path, {"voice": "announcer", "device": "cpu", "seed": 1})
    monkeypatch.setenv("BARK_CONFIG", path)
    args = parse_args([])
    assert (args.voice, args.device, args.seed, args.model) == ("announcer", "cpu", 1, "suno/bark-small")
    monkeypatch.setenv("BARK_DEVICE", "cuda:1")
    args = parse_args(["--seed", "5"])
    assert (args.voice, args.device, args.seed) == ("announcer", "cuda:1", 5)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"voise": "announcer"}, "unknown key tts.bark.voise"),
        ({"use_cache": "yes"}, "tts.bark.use_cache must be bool"),
        ({"seed": 1.5}, "tts.bark.seed must be int"),
        ({"seed": True}, "tts.bark.seed must be int"),
        ({"model_size": "huge"}, "tts.bark.model_size must be one of small, full"),
        ({"max_semantic_tokens": 2000}, "tts.bark.max_semantic_tokens"),
        ({"voice_seeds": {"announcer": "x"}}, "voice_seeds must map voice names to integers"),
        ({"language_voices": {"de": 3}}, "language_voices must map languages to voice names"),
    ],
)
def test_bad_files_name_the_key(tmp_path, capsys, section, message):
    with pytest.raises(SystemExit):
        parse_args(["--config", write(tmp_path, section)])
    assert message in capsys.readouterr().err


def test_unreadable_files(tmp_path, capsys):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(tmp_path / "broken.json")])
    assert "is not valid JSON" in capsys.readouterr().err
    (tmp_path / "flat.json").write_text(json.dumps({"voice": "announcer"}))
    with pytest.raises(SystemExit):
        parse_args(["--config", str(tmp_path / "flat.json")])
    assert '"tts": {"bark"' in capsys.readouterr().err


async def test_server_with_config_file_caches_announcements(server_factory, tiny_model, tmp_path):
    path = write(
        tmp_path,
        {"model": str(tiny_model), "use_cache": True, "voice": "announcer", "max_semantic_tokens": 20},
    )
    server = server_factory("--config", path)
    first = await synthesize(server.uri, "The washing machine is done.")
    second = await synthesize(server.uri, "The washing machine is done.")
    assert_stream(first, sentences=1)
    assert_stream(second, sentences=1)
    assert first.audio == second.audio
    state = await status(server.uri)
    assert state["cache_hits"] == 1 and state["sentences"] == 1 and state["default_voice"] == "announcer"
    assert (await describe(server.uri)).type == "info"


def test_the_file_takes_every_flag_with_the_flags_own_types():
    """One definition per setting: the file's keys come from the command line's definitions."""
    from wyoming_bark.config import flag_keys
    from wyoming_bark.settings import CORES, SELF_CHECK_MODES

    keys = flag_keys()
    assert (keys["core"], keys["self_check"], keys["audio_streaming"]) == (
        CORES,
        SELF_CHECK_MODES,
        ("auto", "on", "off"),
    )
    assert (keys["max_batch"], keys["min_eos_p"], keys["preload"], keys["lookahead"]) == (
        int,
        (int, float),
        bool,
        (int, str),
    )
    assert keys["use_small_model"] is bool and keys["voice_seeds"] is dict
