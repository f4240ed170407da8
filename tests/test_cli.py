"""Command line: defaults, environment variables and validation."""

import json

import pytest

from wyoming_bark.cli import build_parser, parse_args
from wyoming_bark.discovery import default_service_name
from wyoming_bark.errors import TtsError
from wyoming_bark.server import build_engine
from wyoming_bark.settings import Settings


def test_defaults_serve_home_assistant(monkeypatch):
    for name in ("BARK_URI", "BARK_MODEL", "BARK_DEVICE", "BARK_VOICE", "BARK_PRELOAD", "BARK_CORE"):
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args([])
    assert args.uri == "tcp://0.0.0.0:10200"
    assert args.model == "suno/bark-small"
    assert args.device == "auto"
    assert args.voice == "v2/en_speaker_6"
    assert args.samples_per_chunk == 1024
    assert args.max_semantic_tokens == 768
    assert args.core == "fast"
    assert not args.no_streaming and not args.preload and not args.debug


def engine_self_check(args) -> str:
    engine = build_engine(Settings.from_args(args))
    try:
        return engine.settings.model.self_check
    finally:
        engine.close()


def test_every_flag_reads_the_environment(monkeypatch, tmp_path):
    env = {
        "BARK_URI": "tcp://127.0.0.1:1234",
        "BARK_MODEL": "suno/bark",
        "BARK_DEVICE": "cuda:1",
        "BARK_CORE": "transformers",
        "BARK_SELF_CHECK": "strict",
        "BARK_PRECISION": "fp32",
        "BARK_THREADS": "3",
        "BARK_VOICE": "v2/de_speaker_2",
        "BARK_LANGUAGE_VOICES": "fr=v2/fr_speaker_4, en-US=announcer",
        "BARK_DATA_DIR": str(tmp_path),
        "BARK_VOICES_DIR": str(tmp_path / "v"),
        "BARK_SAMPLES_PER_CHUNK": "512",
        "BARK_MAX_CHARS": "2000",
        "BARK_NO_STREAMING": "true",
        "BARK_PRELOAD": "1",
        "BARK_MAX_SEMANTIC_TOKENS": "300",
        "BARK_MIN_EOS_P": "0.2",
        "BARK_MAX_SPEECH_RATIO": "3.5",
        "BARK_TEXT_TEMP": "0.6",
        "BARK_WAVEFORM_TEMP": "0.5",
        "BARK_SEED": "7",
        "BARK_ZEROCONF": "kitchen-bark",
        "BARK_ZEROCONF_HOST": "192.0.2.5",
        "BARK_ZEROCONF_PORT": "10300",
        "BARK_COMPILE": "on",
        "BARK_ENGINE": "bark",
        "BARK_CONFIG": str(tmp_path / "bark.json"),
        "BARK_SENTENCE_SILENCE": "0.25",
        "BARK_CACHE": "on",
        "BARK_AUDIO_STREAMING": "off",
        "BARK_CACHE_SIZE_MB": "50",
        "BARK_MAX_BATCH": "4",
        "BARK_LOOKAHEAD": "1",
        "BARK_MAX_CONNECTIONS": "10",
        "BARK_MAX_CONNECTIONS_PER_ADDRESS": "5",
        "BARK_IDLE_TIMEOUT": "30",
        "BARK_DEBUG": "yes",
        "BARK_LOG_FORMAT": "%(message)s",
        "BARK_HUBERT": "/models/hubert",
        "BARK_QUANTIZER": "/models/quantizer.pth",
        "BARK_METRICS_PORT": "9464",
        "BARK_PROXY_PROTOCOL": "1",
        "BARK_TRUSTED_PROXIES": "10.0.0.0/8",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parser = build_parser()
    flags = {action.dest for action in parser._actions} - {"help", "version"}
    assert {f"BARK_{flag.upper()}" for flag in flags} == set(env), "every flag has an environment variable"
    args = parser.parse_args([])
    assert (args.uri, args.model, args.device, args.voice) == (
        "tcp://127.0.0.1:1234",
        "suno/bark",
        "cuda:1",
        "v2/de_speaker_2",
    )
    assert (args.samples_per_chunk, args.max_semantic_tokens, args.seed, args.max_chars) == (
        512,
        300,
        7,
        2000,
    )
    assert args.max_batch == 4 and args.lookahead == 1
    assert (args.hubert, args.quantizer) == ("/models/hubert", "/models/quantizer.pth")
    assert (args.metrics_port, args.proxy_protocol, [str(n) for n in args.trusted_proxies]) == (
        9464,
        True,
        ["10.0.0.0/8"],
    )
    assert (args.max_connections, args.idle_timeout, args.max_connections_per_address) == (10, 30.0, 5)
    assert args.core == "transformers" and build_parser().parse_args(["--core", "fast"]).core == "fast"
    assert args.self_check == "strict" and engine_self_check(args) == "strict"
    assert (args.precision, args.threads) == ("fp32", 3)
    assert args.no_streaming and args.preload and args.debug
    assert (args.min_eos_p, args.text_temp, args.waveform_temp) == (0.2, 0.6, 0.5)
    assert args.max_speech_ratio == 3.5
    assert (args.zeroconf, args.zeroconf_host, args.zeroconf_port) == ("kitchen-bark", "192.0.2.5", 10300)
    assert args.compile == "on"
    assert (args.engine, args.config, args.sentence_silence) == ("bark", str(tmp_path / "bark.json"), 0.25)
    assert args.cache and args.cache_size_mb == 50 and args.audio_streaming == "off"
    assert parser.parse_args(["--model", "/models/bark"]).model == "/models/bark", (
        "flags beat the environment"
    )
    assert args.language_voices == {"fr": "v2/fr_speaker_4", "en-US": "announcer"}
    engine = build_engine(Settings.from_args(args))
    assert engine.voices.voices_dir == tmp_path / "v" and engine.default_voice.name == "v2/de_speaker_2"
    defaults = engine.voices.defaults
    assert (defaults["de"], defaults["fr"], defaults["en"]) == (
        "v2/de_speaker_2",
        "v2/fr_speaker_4",
        "announcer",
    )
    engine.close()


@pytest.mark.parametrize(
    "argv",
    [
        ["--samples-per-chunk", "0"],
        ["--max-semantic-tokens", "769"],
        ["--min-eos-p", "0"],
        ["--seed", "x"],
        ["--language-voices", "de"],
    ],
)
def test_bad_values_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert "argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    "env, argv, expected",
    [
        (None, [], None),
        ("1", [], default_service_name()),
        ("off", [], None),
        ("den", [], "den"),
        (None, ["--zeroconf"], default_service_name()),
        ("0", ["--zeroconf", "attic"], "attic"),
    ],
)
def test_zeroconf_flag(monkeypatch, env, argv, expected):
    if env is None:
        monkeypatch.delenv("BARK_ZEROCONF", raising=False)
    else:
        monkeypatch.setenv("BARK_ZEROCONF", env)
    assert build_parser().parse_args(argv).zeroconf == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("xx=v2/en_speaker_1", "Unknown language 'xx'"),
        ("de=v2/de_speaker_12", "Unknown voice 'v2/de_speaker_12'"),
    ],
)
def test_language_voices_are_checked_at_start(value, message, tmp_path):
    args = build_parser().parse_args(["--language-voices", value, "--data-dir", str(tmp_path)])
    with pytest.raises(TtsError, match=message):
        build_engine(Settings.from_args(args))


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BARK_CACHE_SIZE_MB", "inf"),
        ("BARK_SEED", str(2**63)),
        ("BARK_SENTENCE_SILENCE", "nan"),
        ("BARK_SENTENCE_SILENCE", "100000"),
        ("BARK_MAX_BATCH", "1000000"),
        ("BARK_TEXT_TEMP", "0"),
        ("BARK_ENGINE", "nope"),
        ("BARK_CORE", "slow"),
        ("BARK_LOG_FORMAT", "%"),
        ("BARK_LOG_FORMAT", "%(nope)s"),
        ("BARK_MAX_CHARS", "\u0661\u0660\u0660"),  # Arabic-Indic 100: Python's int() reads it
        ("BARK_IDLE_TIMEOUT", "\u0661\u0660"),
        ("BARK_URI", "tcp://127.0.0.1:99999"),
        ("BARK_URI", "tcp://:10200"),
        ("BARK_URI", "http://127.0.0.1:10200"),
        ("BARK_DATA_DIR", "~nosuchuser/x"),
        ("BARK_VOICES_DIR", "~nosuchuser/voices"),
    ],
)
def test_settings_that_would_break_the_server_stop_it_at_start(monkeypatch, capsys, variable, value):
    """A value that passes parsing but cannot work is refused with one line naming the setting."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_info:
        parse_args([])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    flag = "--" + variable.removeprefix("BARK_").lower().replace("_", "-")
    assert flag in message and "Traceback" not in message


def test_a_config_nested_too_deeply_is_a_message(tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text('{"tts": {"bark": {"x": ' + "[" * 200_000 + "]" * 200_000 + "}}}", encoding="utf-8")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(path)])
    message = capsys.readouterr().err
    assert "nested too deeply" in message and "Traceback" not in message


def test_an_unknown_language_in_the_config_file_stops_the_start(tmp_path):
    path = tmp_path / "bark.json"
    path.write_text(json.dumps({"tts": {"bark": {"language_voices": {"xx": "v2/en_speaker_1"}}}}))
    args = parse_args(["--config", str(path), "--data-dir", str(tmp_path)])
    with pytest.raises(TtsError, match="Unknown language 'xx'"):
        build_engine(Settings.from_args(args))


def test_infinity_in_the_config_file_is_refused(tmp_path, capsys):
    path = tmp_path / "bark.json"
    path.write_text(json.dumps({"tts": {"bark": {"cache_size_mb": float("inf")}}}), encoding="utf-8")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(path)])
    assert "cache_size_mb" in capsys.readouterr().err


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "(default: 8)" in capsys.readouterr().out
