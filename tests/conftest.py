"""Fixtures: a tiny random Bark with real voice presets, and real servers on loopback ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import SEED, SEMANTIC_TOKENS, Server, start_server, stop_servers, torch_version
from platformdirs import user_cache_path
from tiny_bark import build_tiny_bark, place_in_hub_cache, suno_wheel_prompts
from tiny_clone import (
    HUBERT_REPO,
    QUANTIZER_REPO,
    QUANTIZER_V0,
    QUANTIZER_V1,
    build_tiny_hubert,
    place_file_in_hub_cache,
    speech_samples,
    write_quantizer,
)

os.environ["HF_HUB_OFFLINE"] = "1"


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``cuda`` are skipped, saying why, where there is no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run it on a GPU machine: script/test -m cuda)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bark_wheel() -> Path:
    """suno's ``bark`` 0.1.5 wheel (never installed) for its 130 real voice presets: downloaded
    once into the user's cache, so later runs need no network."""
    folder = user_cache_path("wyoming-bark-tests")
    cached = folder / "bark-0.1.5-py3-none-any.whl"
    if not cached.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "bark==0.1.5",
                "-d",
                str(folder),
            ],
            check=True,
        )
    return cached


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


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory) -> Iterator:
    servers: list[Server] = []

    def factory(*args: str) -> Server:
        server = start_server(tmp_path_factory.mktemp("server"), *args)
        servers.append(server)
        return server

    yield factory
    stop_servers(servers)


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


@pytest.fixture(scope="session")
def clone_data(tmp_path_factory) -> Path:
    """A data dir whose hub cache holds a tiny HuBERT and both published quantizer files, as
    the first run downloads them; plus local quantizer files of the other two kinds."""
    data = tmp_path_factory.mktemp("clone-data")
    work = tmp_path_factory.mktemp("clone-models")
    place_in_hub_cache(build_tiny_hubert(work / "hubert"), data / "models", HUBERT_REPO)
    place_file_in_hub_cache(
        write_quantizer(work / QUANTIZER_V0, 0, info=False), data / "models", QUANTIZER_REPO
    )
    place_file_in_hub_cache(
        write_quantizer(work / QUANTIZER_V1, 1, info=True), data / "models", QUANTIZER_REPO
    )
    write_quantizer(data / "v0-with-info.pth", 0, info=True, seed=1)
    write_quantizer(data / "v1-without-info.pth", 1, info=False, seed=2)
    return data


@pytest.fixture(scope="session")
def speech() -> tuple[np.ndarray, int]:
    return speech_samples()
