"""Installs as users make them: the wheel and sdist, a non-editable install in a clean venv, the add-on's wheel."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
from helpers import SEMANTIC_TOKENS, assert_stream, dockerfile_args, start_server, stop_server, synthesize

from wyoming_bark import __version__

pytestmark = pytest.mark.slow  # waits, builds or soaks: left out of the quick loop

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "wyoming_bark").rglob("*.py"))


def test_wheel_and_sdist_hold_every_module(dist):
    assert dist.wheel.name == f"wyoming_bark-{__version__}-py3-none-any.whl"
    wheel = set(zipfile.ZipFile(dist.wheel).namelist())
    assert set(MODULES) <= wheel, f"missing from the wheel: {set(MODULES) - wheel}"
    assert any(name.startswith("wyoming_bark/fast/") for name in wheel), "the inference core ships"
    with tarfile.open(dist.sdist) as sdist:
        top = f"wyoming_bark-{__version__}/"
        names = {name.removeprefix(top) for name in sdist.getnames()}
    assert set(MODULES) | {"pyproject.toml", "README.md"} <= names, set(MODULES) - names
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dist.wheel), str(dist.sdist)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture
def wheel_venv(wheelhouse, tmp_path) -> str:
    """A new virtual environment with only the wheel (and what it needs) installed; its python."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin/python")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheelhouse),
         f"wyoming-bark=={__version__}"],
        check=True,
    )  # fmt: skip
    where = subprocess.run(
        [python, "-c", "import wyoming_bark.fast, wyoming_bark; print(wyoming_bark.__file__)"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert where.startswith(str(env_dir)), f"imported from {where}, not the clean venv"
    return python


async def test_wheel_serves_audio_from_a_clean_venv(wheel_venv, tiny_model, tmp_path):
    """pip install of the wheel alone (no source tree, no editable install) runs the server."""
    server = start_server(
        tmp_path, "--model", str(tiny_model), "--max-semantic-tokens", str(SEMANTIC_TOKENS), python=wheel_venv
    )
    try:
        assert_stream(await synthesize(server.uri, "Installed from the wheel."), sentences=1)
    finally:
        stop_server(server)


def test_wheel_makes_a_voice_from_a_recording(wheel_venv, tiny_model, clone_data, speech, tmp_path):
    """The clone command, its script and its audio libraries (soundfile, soxr) come with the wheel."""
    import soundfile

    soundfile.write(tmp_path / "oma.mp3", *speech)
    clone = Path(wheel_venv).parent / "wyoming-bark-clone"
    done = subprocess.run(
        [str(clone), str(tmp_path / "oma.mp3"), "--model", str(tiny_model), "--data-dir", str(clone_data),
         "--voices-dir", str(tmp_path / "voices")],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "voices/oma.npz").is_file() and "Wrote" in done.stdout


def _package(wheel: Path) -> dict[str, bytes]:
    """What a wheel installs that matters at run time: modules, dependencies, entry points."""
    with zipfile.ZipFile(wheel) as archive:
        files = {name: archive.read(name) for name in archive.namelist() if name.startswith("wyoming_bark/")}
        info = f"wyoming_bark-{__version__}.dist-info"
        metadata = archive.read(f"{info}/METADATA").decode()
        files["Requires-Dist"] = "\n".join(
            line for line in metadata.splitlines() if line.startswith(("Requires-Dist", "Version"))
        ).encode()
        files["entry_points"] = archive.read(f"{info}/entry_points.txt")
    return files


def test_addon_installs_this_repositorys_code(dist):
    """The add-on installs the wheel in its build context, which must be this source at its version."""
    version = dockerfile_args(ROOT / "addon/Dockerfile")["WYOMING_BARK_VERSION"]
    assert version == __version__
    shipped = ROOT / "addon/wheels" / f"wyoming_bark-{version}-py3-none-any.whl"
    assert [path.name for path in (ROOT / "addon/wheels").iterdir()] == [shipped.name]
    old, new = _package(shipped), _package(dist.wheel)
    stale = sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))
    assert not stale, f"addon/wheels holds an older build ({', '.join(stale)}): run script/addon-wheel"
