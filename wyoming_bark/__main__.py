"""Wiring: ``python -m wyoming_bark`` parses the command line (``cli.py``), builds the engine and
serves it over Wyoming, announced over zeroconf."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

from wyoming.server import AsyncServer

from .cli import parse_args
from .contract import TtsEngine, create_engine
from .discovery import ZeroconfAdvertiser, default_service_name
from .engine import LOADER_THREAD, GenerationSettings
from .errors import ModelLoadError, TtsError
from .fast import SamplingSettings
from .handler import BarkEventHandler
from .hub import device_summary, pending_download, resolve_device
from .precision import resolve as resolve_precision
from .protocol import ConnectionLimits
from .voices import VoiceLibrary

_LOGGER = logging.getLogger(__name__)


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
    for name in args.voice_seeds:  # a seed for a voice that does not exist is a typo
        library.resolve(name)
    return library


def build_engine(args: argparse.Namespace) -> TtsEngine:
    data_dir = Path(args.data_dir).expanduser()
    settings = GenerationSettings(
        sampling=SamplingSettings(
            max_semantic_tokens=args.max_semantic_tokens,
            min_eos_p=args.min_eos_p,
            text_temperature=args.text_temp,
            waveform_temperature=args.waveform_temp,
        ),
        seed=args.seed,
        voice_seeds=args.voice_seeds,
        sentence_silence=args.sentence_silence,
        max_speech_ratio=args.max_speech_ratio,
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
        lookahead=args.lookahead,
        self_check=args.self_check,
        precision=args.precision,
        threads=args.threads,
    )


def make_advertiser(args: argparse.Namespace) -> ZeroconfAdvertiser | None:
    """The zeroconf announcer for ``--uri``; problems are logged, never fatal."""
    uri = urlparse(args.uri)
    if uri.scheme != "tcp":
        _LOGGER.warning("Zeroconf needs a tcp:// --uri; not announcing %s", args.uri)
        return None
    try:
        # The default name gains the port when it is not 10200: one server per GPU on one host.
        name = default_service_name(uri.port) if args.zeroconf == default_service_name() else args.zeroconf
        return ZeroconfAdvertiser(name, uri.port, uri.hostname or "", args.zeroconf_host)
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


class ListenError(RuntimeError):
    """The server could not take its address (in use, not this host's, not allowed)."""


async def _listening(server: AsyncServer, running: asyncio.Task) -> None:
    """Return once ``server`` holds its socket; raise ``ListenError`` if it could not bind."""
    while getattr(server, "_server", True) is None and not running.done():
        await asyncio.sleep(0.01)
    if running.done() and isinstance(running.exception(), OSError):
        raise ListenError(running.exception().strerror or str(running.exception()))


async def serve(args: argparse.Namespace, engine: TtsEngine) -> None:
    server = AsyncServer.from_uri(args.uri)
    limits = ConnectionLimits(
        max_connections=args.max_connections,
        max_per_address=args.max_connections_per_address,
        idle_timeout=args.idle_timeout,
    )
    handler = partial(
        BarkEventHandler,
        engine=engine,
        streaming=not args.no_streaming,
        max_chars=args.max_chars,
        limits=limits,
    )
    running = asyncio.create_task(server.run(handler))
    try:
        await _listening(server, running)
    except BaseException:
        running.cancel()
        engine.close()
        raise
    background: list[asyncio.Task] = []
    if args.preload:
        # In the background: describe must answer while the model loads.
        background.append(asyncio.create_task(engine.warm_up()))
    advertiser = make_advertiser(args) if args.zeroconf else None
    if advertiser is not None:
        # Registration probes the network for a few seconds: don't delay serving for it.
        background.append(asyncio.create_task(announce(advertiser)))
    # main() has refused a device, or a precision on it, that cannot work
    device = resolve_device(args.device)
    device = device_summary(device, resolve_precision(args.precision, device))
    _LOGGER.info(
        "Serving Bark on %s (model %s on %s; %d voices, custom voices in %s)",
        args.uri,
        args.model,
        device,
        len(engine.get_available_voices()),
        custom_voices_dir(args),
    )
    if not custom_voices_dir(args).is_dir():
        _LOGGER.info("No custom voices: %s does not exist (create it and put NAME.npz files in it)",
                     custom_voices_dir(args))  # fmt: skip
    download = None if args.preload else pending_download(args.model, Path(args.data_dir).expanduser())
    if download:
        _LOGGER.info("The first request downloads %s before it is answered (--preload: now)", download)
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on every platform
        # A closed terminal (SIGHUP) stops the server as SIGTERM does: cleanly, with the
        # zeroconf goodbye, through wyoming's own SIGTERM handling.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, signal.raise_signal, signal.SIGTERM)
    try:
        await running
    finally:
        running.cancel()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if advertiser is not None:
            await advertiser.stop()
        engine.close()
        _LOGGER.info("Stopped")


class _OncePer(logging.Filter):
    """Lets a repeated message through once per ``seconds`` (asyncio logs a traceback for every
    failed accept() while the open-file limit is reached)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = str(record.msg)[:80], time.monotonic()
        if now - self._last.get(key, -self.seconds) < self.seconds:
            return False
        self._last[key] = now
        return True


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format=args.log_format)
    logging.getLogger("asyncio").addFilter(_OncePer(30.0))
    for warning in args.config_warnings:
        _LOGGER.warning("%s", warning)
    if not args.debug:
        # transformers' deprecation chatter on every generate call is noise for users.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        resolve_precision(
            args.precision, resolve_device(args.device)
        )  # one that can never work stops us here
    except ModelLoadError as err:
        raise SystemExit(f"wyoming-bark: {err}") from err
    try:
        engine = build_engine(args)
    except TtsError as err:
        raise SystemExit(f"wyoming-bark: --voice/--language-voices/voice_seeds: {err}") from err
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args, engine))
    except ListenError as err:
        raise SystemExit(
            f"wyoming-bark: cannot listen on {args.uri}: {err}. Stop what uses it, or pick another "
            "address with --uri (e.g. --uri tcp://0.0.0.0:10201)"
        ) from None
    if any(t.is_alive() for t in threading.enumerate() if t.name.startswith(LOADER_THREAD)):
        # A model download or load still runs on the loader thread, which Python would wait for
        # (minutes, or forever on a stalled network): leave now; the download resumes next start.
        _LOGGER.info("Leaving the model load unfinished")
        logging.shutdown()
        os._exit(0)


if __name__ == "__main__":
    main()
