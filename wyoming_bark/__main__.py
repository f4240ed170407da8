"""``python -m wyoming_bark``: read the settings, then start the server (``server.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time

from .cli import parse_args
from .settings import Settings

_LOGGER = logging.getLogger(__name__)


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
    settings = Settings.from_args(args)
    debug = settings.server.debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format=settings.server.log_format)
    logging.getLogger("asyncio").addFilter(_OncePer(30.0))
    for warning in args.config_warnings:
        _LOGGER.warning("%s", warning)
    if not debug:
        # transformers' deprecation chatter on every generate call is noise for users.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # The heavy part (torch, transformers) only now: --help and a bad flag answer at once.
    from .errors import ModelLoadError, TtsError
    from .loader import LOADER_THREAD, resolve_device
    from .precision import resolve as resolve_precision
    from .server import ListenError, build_engine, serve

    model = settings.engine.model
    try:
        resolve_precision(
            model.precision, resolve_device(model.device)
        )  # one that can never work stops us here
    except ModelLoadError as err:
        raise SystemExit(f"wyoming-bark: {err}") from err
    try:
        engine = build_engine(settings)
    except TtsError as err:
        raise SystemExit(f"wyoming-bark: --voice/--language-voices/voice_seeds: {err}") from err
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings, engine))
    except ListenError as err:
        raise SystemExit(
            f"wyoming-bark: cannot listen on {settings.server.uri}: {err}. Stop what uses it, or pick another "
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
