"""What the tests share: constants, the real server as a subprocess, wyoming's client to talk to
it, and checks of the audio that comes back. Test modules import from here, never from each other."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncClient
from wyoming.event import Event, read_event, write_event
from wyoming.info import Describe
from wyoming.tts import Synthesize, SynthesizeVoice

from wyoming_bark.sampling import SamplingSettings

# The tiny random model almost never emits end-of-speech, so every sentence runs to this limit.
SEMANTIC_TOKENS = 20
SEED = 1234
TIMEOUT = 60.0
# Greedy decoding in every stage (a temperature of None): the same tokens in any two correct cores.
GREEDY = SamplingSettings(text_temperature=None, waveform_temperature=None, fine_temperature=None)


def seeded_speech(loaded):
    """A loaded model's audio for one fixed token sequence, seeded and ``SEMANTIC_TOKENS`` long
    (checked): to compare two loads of the same model sample for sample."""
    import numpy as np
    import torch

    from wyoming_bark.fast.stages import generate

    ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(4))
    settings = SamplingSettings(max_semantic_tokens=SEMANTIC_TOKENS, allow_early_stop=False)
    audio = generate(loaded.core, ids, torch.ones_like(ids), None, settings, seed=4)
    assert np.isfinite(audio).all() and len(audio) == samples_for(SEMANTIC_TOKENS)
    return audio


SAMPLES_PER_FRAME = 320  # EnCodec's hop at 24 kHz: one coarse frame (75 Hz)


def samples_for(semantic_tokens: int, hop: int = SAMPLES_PER_FRAME) -> int:
    """Audio samples of a sentence of ``semantic_tokens``: coarse frames x EnCodec hop."""
    return int(semantic_tokens * 75 / 49.9) * hop


SAMPLES_PER_SENTENCE = samples_for(SEMANTIC_TOKENS)


@dataclass
class AudioResult:
    """What came back for one request, in order."""

    events: list[Event] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        return [event.type for event in self.events]

    @property
    def chunks(self) -> list[AudioChunk]:
        return [AudioChunk.from_event(e) for e in self.events if AudioChunk.is_type(e.type)]

    @property
    def audio(self) -> bytes:
        return b"".join(chunk.audio for chunk in self.chunks)

    @property
    def samples(self) -> int:
        return len(self.audio) // 2

    @property
    def start(self) -> AudioStart:
        return AudioStart.from_event(next(e for e in self.events if AudioStart.is_type(e.type)))

    def error(self) -> Event | None:
        return next((e for e in self.events if e.type == "error"), None)


async def read_until(client: AsyncClient, *last: str, timeout: float = TIMEOUT) -> AudioResult:
    """Read events until one of type ``last`` (or an error) arrives."""
    result = AudioResult()
    while True:
        event = await asyncio.wait_for(client.read_event(), timeout)
        assert event is not None, f"connection closed after {result.types}"
        result.events.append(event)
        if event.type in last or event.type == "error":
            return result


async def status(uri: str) -> dict:
    """The server's ``bark-status`` answer."""
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Event("bark-status"))
        event = await asyncio.wait_for(client.read_event(), TIMEOUT)
    assert event is not None and event.type == "bark-status"
    return event.data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A real ``python -m wyoming_bark`` process."""

    uri: str
    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


async def describe(uri: str) -> Event:
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Describe().event())
        return await asyncio.wait_for(client.read_event(), TIMEOUT)


def start_server(tmp_path: Path, *args: str, python: str = sys.executable) -> Server:
    """``python -m wyoming_bark`` (from ``python``'s environment), run in ``tmp_path``."""
    port = free_port()
    uri = f"tcp://127.0.0.1:{port}"
    log = tmp_path / f"server-{port}.log"
    cmd = [
        python,
        "-m",
        "wyoming_bark",
        "--uri",
        uri,
        "--device",
        "cpu",
        "--data-dir",
        str(tmp_path / "data"),
        *args,
    ]
    if "--seed" not in args:
        # The tiny random model may end a sentence early when sampling freely; a seed makes each
        # sentence's length fixed, so tests can count samples.
        cmd += ["--seed", str(SEED)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    server = Server(uri, process, log)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log_text()}")
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock,
                sock.makefile("rwb") as io,
            ):
                write_event(Describe().event(), io)
                if read_event(io) is not None:
                    return server
        except OSError:
            time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"server did not answer describe within {TIMEOUT} s:\n{server.log_text()}")


def stop_server(server: Server) -> None:
    stop_servers([server])


def stop_servers(servers: list[Server]) -> None:
    """SIGTERM to all at once (each takes most of a second to shut down), then wait for each."""
    for server in servers:
        server.process.send_signal(signal.SIGTERM)
    for server in servers:
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


async def synthesize(uri: str, text: str, voice: str | None = None, timeout: float = TIMEOUT):
    async with AsyncClient.from_uri(uri) as client:
        await client.write_event(Synthesize(text, voice=SynthesizeVoice(voice) if voice else None).event())
        return await read_until(client, "audio-stop", timeout=timeout)


def assert_stream(result, sentences: int, samples_per_chunk: int = 1024, full_length: bool = True) -> None:
    """One well-formed 24 kHz 16-bit mono stream of ``sentences`` full-length sentences (the
    length left to the caller where ``full_length`` is false)."""
    assert result.types[0] == "audio-start" and result.types[-1] == "audio-stop", result.types
    assert result.types.count("audio-start") == 1 and result.types.count("audio-stop") == 1
    start = result.start
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    assert all((c.rate, c.width, c.channels) == (24000, 2, 1) for c in result.chunks)
    assert all(len(c.audio) <= 2 * samples_per_chunk for c in result.chunks)
    assert not full_length or result.samples == sentences * SAMPLES_PER_SENTENCE


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def header(**fields) -> bytes:
    return json.dumps(fields).encode() + b"\n"


def tokens(processor, text: str) -> dict:
    """``text`` tokenized as the engine does (``prepare.tokenize``: Suno's whitespace rule too)."""
    from wyoming_bark.prepare import tokenize

    input_ids, attention_mask = tokenize(processor.tokenizer, text)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def torch_version() -> str:
    """The torch the tests run on (without a local label such as +cpu): the one images install."""
    import torch

    return torch.__version__.split("+")[0]


async def describe_latencies(uri: str, until) -> list[float]:
    """Describe round trips (seconds), one every 50 ms, until ``until()`` is true."""
    latencies = []
    while not until():
        started = time.monotonic()
        await describe(uri)
        latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.05)
    return latencies


async def eventually(check, timeout: float = TIMEOUT, what: str = "the condition") -> None:
    """Poll ``check()`` (plain or async) until it is true: tests wait for states, never for fixed
    times."""
    deadline = time.monotonic() + timeout

    async def holds() -> bool:
        result = check()
        return bool(await result if inspect.isawaitable(result) else result)

    while not await holds():
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout} s"
        await asyncio.sleep(0.05)


def dockerfile_args(path: Path) -> dict[str, str]:
    """The ``ARG NAME=DEFAULT`` defaults a Dockerfile declares (the app's versions live there)."""
    import re

    return dict(re.findall(r"^ARG (\w+)=(\S+)$", path.read_text(), re.MULTILINE))
