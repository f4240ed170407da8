"""Health check for containers: ``python -m wyoming_bark.health --uri tcp://HOST:PORT``.

Sends describe and asks for ``bark-status`` (and, with ``--synthesize``, speaks a short phrase),
prints one status line and exits 0 when the server is healthy, 1 otherwise. Healthy is the
engine's own verdict (``healthy`` in ``bark-status``), the one definition the Docker images use;
a server that refuses the connection because it holds as many as it may says ``busy:`` (exit 0:
it is working, only full). The whole check ends within ``--timeout``, whatever the peer sends.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from urllib.parse import urlparse

from wyoming.audio import AudioChunk
from wyoming.client import AsyncClient
from wyoming.error import Error
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize

from .protocol import BarkStatus

# Seconds for the whole check: a describe answers at once, but a sentence takes a while on a CPU.
TIMEOUT_S = 10.0
SYNTHESIZE_TIMEOUT_S = 120.0


class _Progress:
    """What the check is doing now, so that a timeout can say where it happened."""

    def __init__(self) -> None:
        self.stage = "connecting"
        self.started = time.monotonic()

    def timed_out(self, uri: str, timeout: float) -> str:
        if self.stage == "connecting":
            return f"cannot reach {uri}: no answer within {timeout:g} s"
        return f"timed out while {self.stage} after {time.monotonic() - self.started:.0f} s"


async def check(
    uri: str, phrase: str | None, timeout: float, progress: _Progress | None = None
) -> tuple[bool | None, str]:
    """(healthy, what it found); healthy is None for a busy server."""
    progress = progress or _Progress()
    started = time.monotonic()
    async with AsyncClient.from_uri(uri) as client:
        progress.stage = "waiting for describe's answer"
        await client.write_event(Describe().event())
        while True:
            event = await asyncio.wait_for(client.read_event(), timeout)
            await asyncio.sleep(0)  # buffered events are read without a pause: let the deadline fire
            if event is None:
                return False, "connection closed before info"
            if Error.is_type(event.type):
                error = Error.from_event(event)
                if error.code == "busy":
                    return None, f"refuses new connections now: {error.text}"
                return False, f"error before info: {error.text}"
            if Info.is_type(event.type):
                break
        programs = [p for p in Info.from_event(event).tts if p.name == "bark"]
        if not programs:
            return False, "no bark TTS program in info"
        describe_ms = 1000 * (time.monotonic() - started)
        status = (
            f"bark {programs[0].version}, {len(programs[0].voices)} voices, describe {describe_ms:.0f} ms"
        )
        progress.stage = "waiting for bark-status"
        await client.write_event(BarkStatus().event())
        event = await asyncio.wait_for(client.read_event(), timeout)
        healthy = True
        if event is not None and BarkStatus.is_type(event.type):
            answer = BarkStatus.from_event(event)
            state = answer.details
            if state.get("loaded"):
                model = f"loaded on {state['device']}"
            else:
                model = "failed to load" if state.get("last_error") else "not loaded yet"
            status += f", model {state.get('model')} {model}, {state.get('sentences', 0)} sentences generated"
            if "cache_hits" in state:
                status += f", {state['cache_hits']} replayed from the cache"
            status += f", last error: {state.get('last_error') or 'none'}"
            healthy = answer.healthy is not False
        if phrase is None or not healthy:
            return healthy, status
        started = time.monotonic()
        progress.stage = "synthesizing"
        await client.write_event(Synthesize(phrase).event())
        seconds = 0.0
        while True:
            event = await asyncio.wait_for(client.read_event(), timeout)
            await asyncio.sleep(0)
            if event is None:
                return False, f"{status}; connection closed during synthesis"
            if event.type == "error":
                return False, f"{status}; synthesis error: {event.data.get('text')}"
            if AudioChunk.is_type(event.type):
                chunk = AudioChunk.from_event(event)  # the format it says, not one assumed here
                seconds += len(chunk.audio) / (chunk.width * chunk.channels * chunk.rate)
            if event.type == "audio-stop":
                audio = seconds
                return True, f"{status}; {audio:.2f} s of audio in {time.monotonic() - started:.1f} s"


def _verdict(uri: str, phrase: str | None, timeout: float, progress: _Progress) -> tuple[bool | None, str]:
    try:
        return asyncio.run(asyncio.wait_for(check(uri, phrase, timeout, progress), timeout))
    except asyncio.TimeoutError:
        return False, progress.timed_out(uri, timeout)
    except OSError as err:
        return False, f"cannot reach {uri}: {err}"
    except Exception as err:  # noqa: BLE001 - a malformed answer is an unhealthy server, not a traceback
        return False, f"malformed answer from {uri}: {type(err).__name__}: {err}"


def default_uri() -> str:
    """The server this host runs: ``BARK_URI`` (a wildcard address asked on loopback), else 10200."""
    uri = urlparse(os.environ.get("BARK_URI") or "tcp://127.0.0.1:10200")
    if uri.scheme != "tcp":
        return uri.geturl()
    host = "127.0.0.1" if uri.hostname in (None, "", "0.0.0.0", "::") else uri.hostname
    return f"tcp://{host}:{uri.port or 10200}"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m wyoming_bark.health",
        description="Ask a wyoming-bark server whether it is healthy: prints one line, exits 0 if "
        "it is (or is only busy: it holds all the connections it may), 1 if not.",
    )
    parser.add_argument(
        "--uri", default=default_uri(), help="the server (default: %(default)s, from BARK_URI if set)"
    )
    parser.add_argument("--synthesize", nargs="?", const="Test.", metavar="TEXT", help="also speak TEXT")
    parser.add_argument(
        "--timeout",
        type=float,
        help=f"seconds for the whole check (default: {TIMEOUT_S:g}, with --synthesize {SYNTHESIZE_TIMEOUT_S:g})",
    )
    args = parser.parse_args()
    timeout = args.timeout or (SYNTHESIZE_TIMEOUT_S if args.synthesize else TIMEOUT_S)
    # On a thread, with a hard deadline: closing a connection whose peer keeps talking can hold
    # asyncio's own cleanup past any timeout inside the loop.
    outcome: list[tuple[bool | None, str]] = []
    progress = _Progress()
    worker = threading.Thread(
        target=lambda: outcome.append(_verdict(args.uri, args.synthesize, timeout, progress)), daemon=True
    )
    worker.start()
    worker.join(timeout + 1)
    healthy, message = outcome[0] if outcome else (False, progress.timed_out(args.uri, timeout))
    print({True: "healthy: ", None: "busy: ", False: "unhealthy: "}[healthy] + message, flush=True)
    os._exit(1 if healthy is False else 0)  # a worker still stuck in cleanup must not hold the exit


if __name__ == "__main__":
    main()
