"""Command line and wiring: ``python -m wyoming_bark``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from platformdirs import user_cache_path
from wyoming.server import AsyncServer

from . import __version__
from .config import ConfigError, load_config
from .contract import ENGINES, TtsEngine, create_engine
from .discovery import ZeroconfAdvertiser, default_service_name
from .engine import GenerationSettings
from .errors import ModelLoadError, TtsError
from .handler import DEFAULT_MAX_CHARS, BarkEventHandler
from .model import device_summary, resolve_device
from .voices import DEFAULT_VOICE, VoiceLibrary

_LOGGER = logging.getLogger(__name__)
ENV_PREFIX = "BARK_"
DEFAULT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_ZEROCONF_NAME = default_service_name()
CORES = ("fast", "transformers")


def env_name(flag: str) -> str:
    """``--data-dir`` is read from ``BARK_DATA_DIR``."""
    return ENV_PREFIX + flag.upper().replace("-", "_")


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get(env_name(flag), default)


def _env_bool(flag: str) -> bool:
    return (_env(flag) or "").strip().lower() in ("1", "true", "yes", "on")


def _zeroconf_env() -> str | None:
    """``BARK_ZEROCONF``: a service name, or 1/true for the default one, or 0/false/empty for off."""
    value = (_env("zeroconf") or "").strip()
    if value.lower() in ("", "0", "false", "no", "off"):
        return None
    return DEFAULT_ZEROCONF_NAME if value.lower() in ("1", "true", "yes", "on") else value


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def _probability(value: str) -> float:
    number = float(value)
    if not 0.0 < number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return number


def _semantic_tokens(value: str) -> int:
    number = _positive_int(value)
    if number > 768:
        raise argparse.ArgumentTypeError("Bark generates at most 768 semantic tokens per sentence")
    return number


def _language_voices(value: str) -> dict[str, str]:
    """``de=v2/de_speaker_3,fr=grandpa`` -> {"de": "v2/de_speaker_3", "fr": "grandpa"}."""
    pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
    if any(len(pair) != 2 or not pair[0].strip() or not pair[1].strip() for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected LANG=VOICE[,LANG=VOICE...], got {value!r}")
    return {language.strip(): voice.strip() for language, voice in pairs}


def _non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return number


def build_parser(file_values: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """The command line; ``file_values`` (from --config) replace the built-in defaults only."""
    file_values = file_values or {}
    parser = argparse.ArgumentParser(
        prog="wyoming-bark",
        description="Wyoming text-to-speech server for Bark. Every flag can also be set as BARK_<FLAG>.",
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

    add("uri", "tcp://0.0.0.0:10200", "Where to listen: tcp://HOST:PORT, unix://PATH or stdio://")
    add("model", "suno/bark-small", "Hub id (suno/bark-small, suno/bark) or a local model directory")
    add("device", "auto", "auto (CUDA if available), cpu, cuda or cuda:N")
    add(
        "core",
        "fast",
        "fast (static KV cache, CUDA graphs) or transformers (BarkModel.generate)",
        choices=CORES,
    )
    add("voice", DEFAULT_VOICE, "Voice used when a request names none; also its language's default")
    add(
        "language-voices",
        "",
        "Default voice per language for requests that name only a language, and the voice Home "
        "Assistant lists first, e.g. de=v2/de_speaker_3,fr=v2/fr_speaker_1",
        type=_language_voices,
    )
    add("data-dir", str(user_cache_path("wyoming-bark")), "Where downloaded models are cached")
    add("voices-dir", None, "Folder of custom NAME.npz voices (default: DATA_DIR/voices)")
    add("samples-per-chunk", "1024", "Audio samples per audio-chunk event", type=_positive_int)
    add(
        "max-chars",
        str(DEFAULT_MAX_CHARS),
        "Longest text one request may send (characters)",
        type=_positive_int,
    )
    switch("no-streaming", "Do not announce streaming synthesis (synthesize-start/chunk/stop)")
    switch("preload", "Load the model at start instead of on the first request")
    add(
        "max-semantic-tokens",
        "768",
        "Semantic tokens per sentence at most (768 = ~15 s)",
        type=_semantic_tokens,
    )
    add(
        "min-eos-p",
        "0.05",
        "End a sentence once the end-of-speech probability reaches this",
        type=_probability,
    )
    add("text-temp", "0.7", "Sampling temperature of the semantic (text) stage", type=float)
    add("waveform-temp", "0.7", "Sampling temperature of the coarse (waveform) stage", type=float)
    add("seed", None, "Seed each sentence's sampling for reproducible audio", type=int)
    add("sentence-silence", "0", "Seconds of silence between sentences", type=_non_negative)
    add(
        "audio-streaming",
        "auto",
        "Release audio inside a sentence as it is generated: on, off, or auto (on with a GPU)",
        choices=("auto", "on", "off"),
    )
    add(
        "max-batch",
        "8",
        "Sentences decoded together on the GPU, across all clients (1: one at a time)",
        type=_positive_int,
    )
    switch("cache", "Keep spoken sentences on disk and replay repeats from there")
    add(
        "cache-size-mb",
        "200",
        "Size bound of the sentence cache (least recently used go first)",
        type=_non_negative,
    )
    parser.set_defaults(voice_seeds=file_values.get("voice_seeds", {}))
    parser.add_argument(
        "--zeroconf",
        nargs="?",
        const=DEFAULT_ZEROCONF_NAME,
        default=_zeroconf_env() if _env("zeroconf") is not None else file_values.get("zeroconf"),
        metavar="NAME",
        help=f"Announce NAME._wyoming._tcp.local. over mDNS (NAME defaults to {DEFAULT_ZEROCONF_NAME}; "
        f"env {env_name('zeroconf')}=NAME or 1)",
    )
    add("zeroconf-host", None, "Address to announce (default: the bound address, else the outgoing one)")
    switch("debug", "Log at DEBUG level")
    add("log-format", DEFAULT_LOG_FORMAT, "Python logging format")
    parser.add_argument("--version", action="version", version=__version__)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags over environment over --config file over defaults."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--config", default=_env("config"))
    config_path = early.parse_known_args(argv)[0].config
    file_values: dict[str, Any] = {}
    warnings: list[str] = []
    try:
        if config_path:
            file_values, warnings = load_config(Path(config_path).expanduser())
        parser = build_parser(file_values)
    except ConfigError as err:
        early.error(str(err))
    args = parser.parse_args(argv)
    args.config_warnings = warnings
    return args


def custom_voices_dir(args: argparse.Namespace) -> Path:
    return (
        Path(args.voices_dir).expanduser() if args.voices_dir else Path(args.data_dir).expanduser() / "voices"
    )


def voice_library(args: argparse.Namespace) -> VoiceLibrary:
    """Voices with their per-language defaults: --voice for its language(s), then --language-voices."""
    library = VoiceLibrary(custom_voices_dir(args))
    voice = library.resolve(args.voice)
    defaults = {language: voice.name for language in voice.languages}
    for language, name in {**defaults, **args.language_voices}.items():
        library.set_default(language, name)
    return library


def build_engine(args: argparse.Namespace) -> TtsEngine:
    data_dir = Path(args.data_dir).expanduser()
    settings = GenerationSettings(
        max_semantic_tokens=args.max_semantic_tokens,
        min_eos_p=args.min_eos_p,
        text_temperature=args.text_temp,
        waveform_temperature=args.waveform_temp,
        seed=args.seed,
        voice_seeds=args.voice_seeds,
        sentence_silence=args.sentence_silence,
    )
    return create_engine(
        args.engine,
        model=args.model,
        data_dir=data_dir,
        device=args.device,
        voices=voice_library(args),
        default_voice=args.voice,
        settings=settings,
        samples_per_chunk=args.samples_per_chunk,
        core=args.core,
        cache_size_mb=args.cache_size_mb if args.cache else None,
        audio_streaming=args.audio_streaming,
        max_batch=args.max_batch,
    )


def make_advertiser(args: argparse.Namespace) -> ZeroconfAdvertiser | None:
    """The zeroconf announcer for ``--uri``; problems are logged, never fatal."""
    uri = urlparse(args.uri)
    if uri.scheme != "tcp":
        _LOGGER.warning("Zeroconf needs a tcp:// --uri; not announcing %s", args.uri)
        return None
    try:
        return ZeroconfAdvertiser(args.zeroconf, uri.port, uri.hostname or "", args.zeroconf_host)
    except (OSError, ValueError) as err:
        _announcement_failed(err)
        return None


def _announcement_failed(err: Exception) -> None:
    reason = str(err) or type(err).__name__
    _LOGGER.error(
        "Zeroconf announcement failed: %s. Still serving; add it in Home Assistant by host and port", reason
    )


async def announce(advertiser: ZeroconfAdvertiser) -> None:
    try:
        await advertiser.start()
    except Exception as err:  # noqa: BLE001 - e.g. no multicast: the server keeps serving
        _announcement_failed(err)


async def serve(args: argparse.Namespace, engine: TtsEngine) -> None:
    server = AsyncServer.from_uri(args.uri)
    background: list[asyncio.Task] = []
    if args.preload:
        # In the background: describe must answer while the model loads.
        background.append(asyncio.create_task(engine.warm_up()))
    advertiser = make_advertiser(args) if args.zeroconf else None
    if advertiser is not None:
        # Registration probes the network for a second or so: don't delay listening for it.
        background.append(asyncio.create_task(announce(advertiser)))
    try:
        device = device_summary(resolve_device(args.device))
    except ModelLoadError as err:
        device = "no usable device (see the error above)"
        _LOGGER.error("%s", err)
    _LOGGER.info(
        "Serving Bark on %s (model %s on %s; %d voices, custom voices in %s)",
        args.uri,
        args.model,
        device,
        len(engine.get_available_voices()),
        custom_voices_dir(args),
    )
    try:
        handler = partial(
            BarkEventHandler, engine=engine, streaming=not args.no_streaming, max_chars=args.max_chars
        )
        await server.run(handler)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if advertiser is not None:
            await advertiser.stop()
        engine.close()
        _LOGGER.info("Stopped")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format=args.log_format)
    for warning in args.config_warnings:
        _LOGGER.warning("%s", warning)
    if not args.debug:
        # transformers' deprecation chatter on every generate call is noise for users.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        engine = build_engine(args)
    except TtsError as err:
        raise SystemExit(f"wyoming-bark: --voice/--language-voices: {err}") from err
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args, engine))


if __name__ == "__main__":
    main()
