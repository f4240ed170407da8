"""The command line: every flag, its environment variable, its checks and its default.

Flags beat the environment, which beats the ``--config`` file, which beats the defaults; the
file's keys and types are derived from these definitions (``config.flag_keys``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from platformdirs import user_cache_path

from . import __version__, length_cap
from .config import MAX_SEED, ConfigError, flag_keys, load_config
from .contract import ENGINES
from .discovery import default_service_name
from .fast import SamplingSettings
from .loader import COMPILE_MODES, CORES
from .precision import PRECISIONS
from .self_check import MODES as SELF_CHECK_MODES
from .settings import EngineSettings, GenerationSettings, ModelSettings, ServerSettings

ENV_PREFIX = "BARK_"
DEFAULT_LOG_FORMAT = ServerSettings.log_format
DEFAULT_ZEROCONF_NAME = default_service_name()
SAMPLING = SamplingSettings()  # Bark's defaults


def env_name(flag: str) -> str:
    """``--data-dir`` is read from ``BARK_DATA_DIR``."""
    return ENV_PREFIX + flag.upper().replace("-", "_")


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get(env_name(flag), default)


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")


def _env_bool(flag: str) -> bool:
    value = (_env(flag) or "").strip().lower()
    if value not in TRUE_WORDS + FALSE_WORDS:
        raise ConfigError(
            f"{env_name(flag)} must be one of 1/true/yes/on or 0/false/no/off, got {_env(flag)!r}"
        )
    return value in TRUE_WORDS


def _zeroconf_env() -> str | None:
    """``BARK_ZEROCONF``: a service name, or 1/true for the default one, or 0/false/empty for off."""
    value = (_env("zeroconf") or "").strip()
    if value.lower() in FALSE_WORDS:
        return None
    return DEFAULT_ZEROCONF_NAME if value.lower() in TRUE_WORDS else value


def _ascii_number(value: str) -> str:
    """Python reads ``١٠٠`` (Arabic-Indic digits) as 100; a setting takes ASCII digits only."""
    if not value.isascii():
        raise argparse.ArgumentTypeError(f"must be written with ASCII digits, got {value!r}")
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (values from the environment and file too)."""

    def parse(value: str) -> int:
        number = int(_ascii_number(value))
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, got {value}")
        return number

    parse.__name__ = "integer"
    parse.json_types = int  # what the --config file may hold for it
    return parse


def _number_in(low: float, high: float, above_low: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] (or (low, high] with ``above_low``)."""

    def parse(value: str) -> float:
        number = float(_ascii_number(value))
        if not (math.isfinite(number) and (low < number if above_low else low <= number) and number <= high):
            bounds = f"({low}, {high}]" if above_low else f"[{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be a number in {bounds}, got {value}")
        return number

    parse.__name__ = "number"
    parse.json_types = (int, float)
    return parse


def _lookahead(value: str) -> int | None:
    """``auto`` (None: the engine's choice) or a number of sentences."""
    return None if value == "auto" else _int_in(0, 7)(value)


_lookahead.json_types = (int, str)


def _threads(value: str) -> int | None:
    """``auto`` (None: one per physical core) or a number of threads."""
    return None if value == "auto" else _int_in(1, 1024)(value)


_threads.json_types = (int, str)


def _folder(value: str) -> str:
    """A folder path; ``~`` and ``~user`` expanded now, so a user that does not exist is a
    message, not a traceback at start."""
    try:
        return str(Path(value).expanduser())
    except RuntimeError as err:  # ~nosuchuser
        raise argparse.ArgumentTypeError(f"cannot expand {value!r}: {err}") from err


def _uri(value: str) -> str:
    """Where to listen: tcp://HOST:PORT (a port from 0, any free one, to 65535), unix://PATH or stdio://."""
    parsed = urlparse(value)
    if parsed.scheme not in ("tcp", "unix", "stdio"):
        raise argparse.ArgumentTypeError(f"use tcp://HOST:PORT, unix://PATH or stdio://, got {value!r}")
    if parsed.scheme == "tcp":
        try:
            port = parsed.port
        except ValueError:
            port = None
        if port is None or not 0 <= port <= 65_535:
            raise argparse.ArgumentTypeError(
                f"a tcp:// address needs a port from 0 (any free one) to 65535, got {value!r}"
            )
        if not parsed.hostname:
            raise argparse.ArgumentTypeError(f"a tcp:// address needs a host (0.0.0.0: all), got {value!r}")
    if parsed.scheme == "unix" and not (parsed.netloc + parsed.path):
        raise argparse.ArgumentTypeError(f"a unix:// address needs a path, got {value!r}")
    return value


def _log_format(value: str) -> str:
    """A logging format that can format a record (checked now, not at the first log line)."""
    try:
        logging.Formatter(value).format(logging.makeLogRecord({"msg": "check"}))
    except (ValueError, KeyError, TypeError) as err:
        raise argparse.ArgumentTypeError(f"not a usable logging format ({err!r})") from err
    return value


def _language_voices(value: str) -> dict[str, str]:
    """``de=v2/de_speaker_3,fr=grandpa`` -> {"de": "v2/de_speaker_3", "fr": "grandpa"}."""
    pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
    if any(len(pair) != 2 or not pair[0].strip() or not pair[1].strip() for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected LANG=VOICE[,LANG=VOICE...], got {value!r}")
    return {language.strip(): voice.strip() for language, voice in pairs}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless its help already says it, or it has none worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.default in (None, "", False, {}):
            return text
        return super()._get_help_string(action)


def build_parser(file_values: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """The command line; ``file_values`` (from --config) replace the built-in defaults only."""
    file_values = file_values or {}
    parser = argparse.ArgumentParser(
        prog="wyoming-bark",
        description="Wyoming text-to-speech server for Bark. Every flag can also be set as BARK_<FLAG>.",
        formatter_class=_HelpFormatter,
    )

    def from_file(flag: str, default, convert=None):
        key = flag.replace("-", "_")
        if key not in file_values:
            return default
        value = file_values[key]
        if convert is not None:
            try:
                convert(str(value))
            except (argparse.ArgumentTypeError, ValueError) as err:
                raise ConfigError(f"config key tts.bark.{key}: {err}") from err
        return value

    def add(flag: str, default, help_text: str, **kwargs) -> None:
        help_text = f"{help_text} (env {env_name(flag)})"
        default = _env(flag, from_file(flag, default, kwargs.get("type")))
        parser.add_argument(f"--{flag}", default=default, help=help_text, **kwargs)

    def switch(flag: str, help_text: str) -> None:
        help_text = f"{help_text} (env {env_name(flag)}=1)"
        default = _env_bool(flag) if _env(flag) is not None else bool(from_file(flag, False))
        parser.add_argument(f"--{flag}", action="store_true", default=default, help=help_text)

    parser.add_argument(
        "--config", metavar="FILE", default=_env("config"), help="JSON configuration file (env BARK_CONFIG)"
    )
    add("engine", "bark", "TTS engine", choices=sorted(ENGINES))

    add("uri", ServerSettings.uri, "Where to listen: tcp://HOST:PORT, unix://PATH or stdio://", type=_uri)
    add("model", ModelSettings.model, "Hub id (suno/bark-small, suno/bark) or a local model directory")
    add("device", ModelSettings.device, "auto (CUDA if available), cpu, cuda or cuda:N")
    add(
        "core",
        ModelSettings.core,
        "fast (static KV cache, CUDA graphs) or transformers (BarkModel.generate)",
        choices=CORES,
    )
    add(
        "self-check",
        ModelSettings.self_check,
        "Check the fast core on its device at load and fall back (eager steps, then the transformers "
        "core) on a failure: on, off, or strict (fail the load instead)",
        choices=SELF_CHECK_MODES,
    )
    add(
        "precision",
        ModelSettings.precision,
        "auto (int8 weights on a CPU, float16 on CUDA), fp32 (exact; slower), or int8 (CPU only)",
        choices=PRECISIONS,
    )
    add(
        "compile",
        ModelSettings.compile,
        "Compile the decode steps with torch.compile (fewer, fused kernels; minutes at the first "
        "start, cached in DATA_DIR/compile-cache): auto (on with CUDA), on, or off",
        choices=COMPILE_MODES,
    )
    add(
        "threads",
        "auto",
        "CPU threads for Bark: auto (one per physical core) or a number",
        type=_threads,
    )
    add("voice", EngineSettings.voice, "Voice used when a request names none; also its language's default")
    add(
        "language-voices",
        "",
        "Default voice per language for requests that name only a language, and the voice Home "
        "Assistant lists first, e.g. de=v2/de_speaker_3,fr=v2/fr_speaker_1",
        type=_language_voices,
    )
    add("data-dir", str(user_cache_path("wyoming-bark")), "Where downloaded models are cached", type=_folder)
    add("voices-dir", None, "Folder of custom NAME.npz voices (default: DATA_DIR/voices)", type=_folder)
    add(
        "samples-per-chunk",
        str(EngineSettings.samples_per_chunk),
        "Audio samples per audio-chunk event",
        type=_int_in(1, 240_000),
    )
    add(
        "max-chars",
        str(ServerSettings.max_chars),
        "Longest text one request may send (characters)",
        type=_int_in(1, 1_000_000),
    )
    add(
        "max-connections",
        str(ServerSettings.max_connections),
        "Connections served at once; more are refused with a busy error",
        type=_int_in(1, 10_000),
    )
    add(
        "max-connections-per-address",
        str(ServerSettings.max_connections_per_address),
        "Connections one client address may hold at once; more are refused with a busy error",
        type=_int_in(1, 10_000),
    )
    add(
        "idle-timeout",
        f"{ServerSettings.idle_timeout:g}",
        "Seconds a connection may stay open with no request in flight, or a streaming request "
        "with no text and nothing left to say",
        type=_number_in(1, 86_400),
    )
    switch("no-streaming", "Do not announce streaming synthesis (synthesize-start/chunk/stop)")
    switch("preload", "Load the model at start instead of on the first request")
    add(
        "max-semantic-tokens",
        str(SAMPLING.max_semantic_tokens),
        "Semantic tokens per sentence at most (768 = ~15 s)",
        type=_int_in(1, 768),  # Bark's limit: 768 semantic tokens per generation
    )
    add(
        "min-eos-p",
        str(SAMPLING.min_eos_p),
        "End a sentence once the end-of-speech probability reaches this",
        type=_number_in(0, 1, above_low=True),
    )
    add(
        "max-speech-ratio",
        str(GenerationSettings.max_speech_ratio),
        f"Cut a sentence's speech at this many times its expected length (at least "
        f"{length_cap.FLOOR_S:g} s; not for music or singing), so Bark does not speak on past "
        "the text; 0: off",
        type=_number_in(0, 100),
    )
    temperature = _number_in(0, 10, above_low=True)
    add(
        "text-temp",
        str(SAMPLING.text_temperature),
        "Sampling temperature of the semantic (text) stage",
        type=temperature,
    )
    add(
        "waveform-temp",
        str(SAMPLING.waveform_temperature),
        "Sampling temperature of the coarse (waveform) stage",
        type=temperature,
    )
    add("seed", None, "Seed each sentence's sampling for reproducible audio", type=_int_in(0, MAX_SEED))
    add(
        "sentence-silence",
        f"{GenerationSettings.sentence_silence:g}",
        "Seconds of silence between sentences",
        type=_number_in(0, 10),
    )
    add(
        "audio-streaming",
        EngineSettings.audio_streaming,
        "Release audio inside a sentence as it is generated: on, off, or auto (on with a GPU)",
        choices=("auto", "on", "off"),
    )
    add(
        "max-batch",
        str(ModelSettings.max_batch),
        "Sentences decoded together, across all clients (1: one at a time)",
        type=_int_in(1, 64),
    )
    add(
        "lookahead",
        "auto",
        "Sentences of a text made while an earlier one plays: auto (2, within --max-batch) or 0-7",
        type=_lookahead,
    )
    switch("cache", "Keep spoken sentences on disk and replay repeats from there")
    add(
        "cache-size-mb",
        f"{EngineSettings.cache_size_mb:g}",
        "Size bound of the sentence cache (least recently used go first)",
        type=_number_in(0, 1_000_000),
    )
    parser.set_defaults(voice_seeds=file_values.get("voice_seeds", {}))
    parser.add_argument(
        "--zeroconf",
        nargs="?",
        const=DEFAULT_ZEROCONF_NAME,
        default=_zeroconf_env() if _env("zeroconf") is not None else file_values.get("zeroconf"),
        metavar="NAME",
        help=f"Announce NAME._wyoming._tcp.local. over mDNS (NAME defaults to {DEFAULT_ZEROCONF_NAME}, "
        f"with -PORT added when the port is not 10200; env {env_name('zeroconf')}=NAME or 1)",
    )
    add("zeroconf-host", None, "Address to announce (default: the bound address, else the outgoing one)")
    add(
        "zeroconf-port",
        None,
        "Port to announce instead of the bound one: a balancer's, with servers behind it (announced "
        "from the outgoing address unless a zeroconf host is given)",
        type=_int_in(1, 65_535),
    )
    switch("debug", "Log at DEBUG level")
    add("log-format", DEFAULT_LOG_FORMAT, "Python logging format", type=_log_format)
    parser.add_argument("--version", action="version", version=__version__)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags over environment over --config file over defaults."""
    early = argparse.ArgumentParser(prog="wyoming-bark", add_help=False)
    early.add_argument("--config", default=_env("config"))
    config_path = early.parse_known_args(argv)[0].config
    file_values: dict[str, Any] = {}
    warnings: list[str] = []
    try:
        if config_path:
            file_values, warnings = load_config(Path(config_path).expanduser(), flag_keys(build_parser()))
        parser = build_parser(file_values)
    except ConfigError as err:
        early.error(str(err))
    args = parser.parse_args(argv)
    for action in parser._actions:  # argparse checks choices on the command line only
        value = getattr(args, action.dest, None)
        if action.choices is not None and value is not None and value not in action.choices:
            parser.error(
                f"argument {action.option_strings[0]} (or {env_name(action.option_strings[0][2:])}, "
                f"or the config file): invalid choice {value!r} (choose from {', '.join(action.choices)})"
            )
    args.config_warnings = warnings
    return args
