"""The server's run: the Wyoming server on ``--uri`` around one engine, zeroconf, preload,
start-up lines and a clean stop. Imports torch (through the engine); ``__main__`` imports it only
once the command line is read, so ``--help`` stays light."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from functools import partial
from urllib.parse import urlparse

from wyoming.server import AsyncServer

from .connection import server_for
from .connections import ConnectionLimits
from .contract import TtsEngine, create_engine
from .discovery import ZeroconfAdvertiser, default_service_name
from .fast.batch import switch_threads_quickly
from .handler import BarkEventHandler
from .hub import pending_download
from .loader import device_summary, resolve_device
from .metrics import serve_metrics
from .precision import resolve as resolve_precision
from .settings import ServerSettings, Settings

_LOGGER = logging.getLogger(__name__)


def build_engine(settings: Settings) -> TtsEngine:
    return create_engine(settings.engine_name, settings=settings.engine)


def make_advertiser(settings: ServerSettings) -> ZeroconfAdvertiser | None:
    """The zeroconf announcer for ``--uri``; problems are logged, never fatal."""
    uri = urlparse(settings.uri)
    if uri.scheme != "tcp":
        _LOGGER.warning("Zeroconf needs a tcp:// --uri; not announcing %s", settings.uri)
        return None
    # Behind a balancer the balancer's port is announced, from this host's outgoing address.
    port, bind_host = (
        (settings.zeroconf_port, "") if settings.zeroconf_port else (uri.port, uri.hostname or "")
    )
    try:
        # The default name gains the port when it is not 10200: one server per GPU on one host.
        wanted = settings.zeroconf
        name = default_service_name(port) if wanted == default_service_name() else wanted
        return ZeroconfAdvertiser(name, port, bind_host, settings.zeroconf_host)
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


async def serve(settings: Settings, engine: TtsEngine) -> None:
    server_settings, model = settings.server, settings.engine.model
    server = server_for(server_settings.uri)
    limits = ConnectionLimits(
        max_connections=server_settings.max_connections,
        max_per_address=server_settings.max_connections_per_address,
        idle_timeout=server_settings.idle_timeout,
    )
    handler = partial(BarkEventHandler, engine=engine, settings=server_settings, limits=limits)
    if server_settings.metrics_port:
        host = urlparse(server_settings.uri).hostname if server_settings.uri.startswith("tcp://") else ""
        try:
            serve_metrics(server_settings.metrics_port, host or "", lambda: {
                **engine.get_status(), "connections_open": limits.connections})  # fmt: skip
        except OSError as err:
            engine.close()
            raise ListenError(f"metrics port {server_settings.metrics_port}: {err.strerror or err}") from err
    running = asyncio.create_task(server.run(handler))
    try:
        await _listening(server, running)
    except BaseException:
        running.cancel()
        engine.close()
        raise
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on every platform
        # A closed terminal (SIGHUP) stops the server as SIGTERM does: cleanly, with the
        # zeroconf goodbye, through wyoming's own SIGTERM handling.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, signal.raise_signal, signal.SIGTERM)
    background: list[asyncio.Task] = []
    if server_settings.preload:
        # In the background: describe must answer while the model loads.
        background.append(asyncio.create_task(engine.warm_up()))
    advertiser = make_advertiser(server_settings) if server_settings.zeroconf else None
    if advertiser is not None:
        # Registration probes the network for a few seconds: don't delay serving for it.
        background.append(asyncio.create_task(announce(advertiser)))
    # main() has refused a device, or a precision on it, that cannot work
    device = resolve_device(model.device)
    switch_threads_quickly(device)
    device = device_summary(device, resolve_precision(model.precision, device))
    voices_dir = settings.engine.voices_dir
    _LOGGER.info(
        "Serving Bark on %s (model %s on %s; %d voices, custom voices in %s)",
        server_settings.uri,
        model.model,
        device,
        len(engine.get_available_voices()),
        voices_dir,
    )
    if voices_dir is not None and not voices_dir.is_dir():
        _LOGGER.info("No custom voices: %s does not exist (create it and put NAME.npz files in it)",
                     voices_dir)  # fmt: skip
    download = None if server_settings.preload else pending_download(model.model, model.data_dir)
    if download:
        _LOGGER.info("The first request downloads %s before it is answered (--preload: now)", download)
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
