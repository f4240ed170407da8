"""Fixtures: a tiny random Bark with real voice presets, and real servers on loopback ports."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tiny_bark import build_tiny_bark, suno_wheel_prompts
from wyoming.client import AsyncClient
from wyoming.event import Event, read_event, write_event
from wyoming.info import Describe

os.environ["HF_HUB_OFFLINE"] = "1"

# The tiny random model almost never emits end-of-speech, so every sentence runs to this limit.
SEMANTIC_TOKENS = 20
SAMPLES_PER_SENTENCE = int(SEMANTIC_TOKENS * 75 / 49.9) * 320  # coarse frames x EnCodec hop
SEED = 1234
TIMEOUT = 60.0


@pytest.fixture(scope="session")
def bark_wheel(tmp_path_factory) -> Path:
    """suno's ``bark`` 0.1.5 wheel, downloaded (never installed) for its 130 real voice presets."""
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "bark==0.1.5", "-d", str(folder)],
        check=True,
    )
    return next(folder.glob("bark-0.1.5-*.whl"))


@pytest.fixture(scope="session")
def real_prompts(bark_wheel) -> dict[str, dict[str, np.ndarray]]:
    return suno_wheel_prompts(bark_wheel)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, real_prompts) -> Path:
    return build_tiny_bark(tmp_path_factory.mktemp("tiny-bark"), prompts=real_prompts)


@pytest.fixture(scope="session")
def voices_dir(tmp_path_factory, real_prompts) -> Path:
    """Custom voices: a real suno prompt under a new name, and a broken file."""
    folder = tmp_path_factory.mktemp("voices")
    np.savez(folder / "grandpa.npz", **real_prompts["v2/en_speaker_8"])
    (folder / "broken.npz").write_bytes(b"this is not a zip file")
    return folder


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
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory) -> Iterator:
    servers: list[Server] = []

    def factory(*args: str) -> Server:
        server = start_server(tmp_path_factory.mktemp("server"), *args)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        stop_server(server)


@pytest.fixture(scope="session")
def bark_server(server_factory, tiny_model, voices_dir) -> Server:
    """The server most tests talk to: tiny model on CPU, short sentences, fixed seed."""
    return server_factory(
        "--model",
        str(tiny_model),
        "--voices-dir",
        str(voices_dir),
        "--max-semantic-tokens",
        str(SEMANTIC_TOKENS),
        "--seed",
        str(SEED),
        "--debug",
    )


@dataclass
class Dist:
    """This repository built as users get it: a wheel and an sdist."""

    wheel: Path
    sdist: Path


@pytest.fixture(scope="session")
def dist(tmp_path_factory) -> Dist:
    """Built from a copy of the files git knows, so no build/ or *.egg-info left in the tree hides a gap."""
    folder, source = tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("source")
    root = Path(__file__).resolve().parent.parent
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, files):
        if (root / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, source / name)
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}  # as script/addon-wheel builds it
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(folder), str(source)],
        check=True,
        capture_output=True,
        env=env,
    )
    return Dist(next(folder.glob("*.whl")), next(folder.glob("*.tar.gz")))


def torch_version() -> str:
    """The torch the tests run on (without a local label such as +cpu): the one images install."""
    import torch

    return torch.__version__.split("+")[0]


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory, dist) -> Path:
    """Every wheel a clean install of ``dist.wheel`` needs, torch included, for installs without an index."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(folder),
            str(dist.wheel), f"torch=={torch_version()}", "setuptools>=68",
        ],
        check=True,
    )  # fmt: skip
    return folder
