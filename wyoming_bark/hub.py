"""Finding and downloading Bark weights: the ``--model`` directory itself, or the snapshot that
``huggingface_hub`` downloads (with progress, resumable, cached in the data dir) for a hub id such
as ``suno/bark-small``. Tests load a tiny checkpoint through this same code."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from pathlib import Path

from .errors import ModelLoadError

_LOGGER = logging.getLogger(__name__)

# What BarkModel/BarkProcessor and the v2 presets need; the hub repos also carry the original
# suno checkpoints (*.pt, several GB), which are never downloaded.
_HUB_PATTERNS = [
    "*.json",
    "*.txt",
    "speaker_embeddings/v2/*",
    "speaker_embeddings/announcer_*",
]
_SAFETENSORS = ["model.safetensors", "model-*.safetensors", "model.safetensors.index.json"]
_PYTORCH_BIN = "pytorch_model.bin"


def _is_local(model: str) -> bool:
    return Path(model).expanduser().exists() or model.startswith((".", "/", "~")) or model.count("/") > 1


def model_directory(model: str, data_dir: Path) -> Path:
    """Local directory holding the model: ``model`` itself, or its hub snapshot (downloaded if needed)."""
    if not _is_local(model) and model.count("/") != 1:
        raise ModelLoadError(
            f"Model {model!r} is neither a directory nor a hub id (owner/name, e.g. suno/bark-small)"
        )
    if _is_local(model):
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"Model directory {path} does not exist or has no config.json. "
                "Pass --model with a directory that holds a transformers Bark checkpoint "
                "(a copy of the suno/bark-small or suno/bark hub repo)."
            )
        return path

    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    cache_dir = data_dir / "models"
    try:
        _LOGGER.info("Fetching %s into %s (first run downloads it)", model, cache_dir)
        with progress_lines(model, _cached_repo(model, cache_dir)):
            path = _snapshot(model, cache_dir)
    except RepositoryNotFoundError as err:
        raise ModelLoadError(
            f"Model '{model}' was not found on the Hugging Face hub. Use suno/bark-small or suno/bark."
        ) from err
    except (LocalEntryNotFoundError, OSError) as err:
        why = (
            "HF_HUB_OFFLINE is set, so nothing is downloaded: unset it for the first run"
            if huggingface_hub.is_offline_mode()  # read as huggingface_hub reads it
            else "the Hugging Face hub cannot be reached: connect this machine to the internet for "
            "the first run"
        )
        raise ModelLoadError(
            f"Model '{model}' is not in the cache ({cache_dir}) and {why}, or copy the model's "
            "files to a folder and pass --model with that folder."
        ) from err
    return path


def _cached_repo(model: str, cache_dir: Path) -> Path:
    """Where huggingface_hub caches hub repo ``model`` under ``cache_dir``."""
    return cache_dir / ("models--" + model.replace("/", "--"))


def _snapshot(model: str, cache_dir: Path) -> Path:
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download(model, cache_dir=cache_dir, allow_patterns=_HUB_PATTERNS + _SAFETENSORS))
    if not any(path.glob("*.safetensors")):
        path = Path(
            snapshot_download(model, cache_dir=cache_dir, allow_patterns=_HUB_PATTERNS + [_PYTORCH_BIN])
        )
    return path


PROGRESS_EVERY_S = 10.0


@contextlib.contextmanager
def progress_lines(model: str, repo_dir: Path, every: float = PROGRESS_EVERY_S):
    """While a download runs with no terminal to draw progress bars on (a service's or an
    add-on's log, where they arrive as one endless line): one plain line every ``every`` seconds
    with the bytes so far, and no bars."""
    if sys.stderr.isatty():
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    done = threading.Event()

    def report() -> None:
        while not done.wait(every):
            size = sum(f.stat().st_size for f in repo_dir.rglob("*") if f.is_file() and not f.is_symlink())
            _LOGGER.info(
                "Downloading %s: %.0f MB so far (of %s)",
                model,
                size / 1e6,
                DOWNLOAD_SIZES.get(model, "an unknown size"),
            )

    reporter = threading.Thread(target=report, name="download-progress", daemon=True)
    reporter.start()
    try:
        yield
    finally:
        done.set()
        if not was_disabled:
            enable_progress_bars()


DOWNLOAD_SIZES = {"suno/bark-small": "about 1.7 GB", "suno/bark": "about 5 GB"}


def pending_download(model: str, data_dir: Path) -> str | None:
    """What the first load will download, if ``model`` is a hub id not in the cache yet."""
    if _is_local(model) or model.count("/") != 1:
        return None
    repo = _cached_repo(model, data_dir / "models")
    if (repo / "snapshots").is_dir() and any((repo / "snapshots").iterdir()):
        return None
    return f"{model} ({DOWNLOAD_SIZES.get(model, 'size unknown')})"
