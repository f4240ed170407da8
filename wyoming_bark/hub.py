"""Finding and downloading Bark weights: the ``--model`` directory itself, or the snapshot that
``huggingface_hub`` downloads (with progress, resumable, cached in the data dir) for a hub id such
as ``suno/bark-small``. Tests load a tiny checkpoint through this same code."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from .errors import ModelLoadError
from .settings import DEFAULT_HUBERT, DEFAULT_QUANTIZER

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


@contextlib.contextmanager
def no_hub_kernels():
    """Importing transformers' Bark model (5.25 on) asks the hub for flash-attention kernels, a
    fallback our core never uses (it runs SDPA); with the hub slow or out of reach that stalled
    the start before the model's own download began. For the import only, the hub is offline
    (``huggingface_hub.constants``, read at call time): the check then looks in the local cache."""
    from huggingface_hub import constants

    offline, quiet = constants.HF_HUB_OFFLINE, logging.getLogger("kernels")
    level = quiet.level
    constants.HF_HUB_OFFLINE = True
    quiet.setLevel(logging.ERROR)  # its "Skipping publisher trust check … offline mode", three times
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline
        quiet.setLevel(level)


def bark_classes():
    """``(BarkConfig, BarkModel, BarkProcessor)``, imported without asking the hub for kernels."""
    with no_hub_kernels():
        from transformers import BarkConfig, BarkModel, BarkProcessor

    return BarkConfig, BarkModel, BarkProcessor


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

    cache_dir = data_dir / "models"
    return downloaded(
        "Model",
        model,
        cache_dir,
        lambda: _snapshot(model, cache_dir),
        missing=f"Model '{model}' was not found on the Hugging Face hub. Use suno/bark-small or suno/bark.",
        copy_hint="copy the model's files to a folder and pass --model with that folder",
    )


def downloaded(
    what: str, name: str, cache_dir: Path, fetch: Callable[[], Path], missing: str, copy_hint: str
) -> Path:
    """``fetch()`` (a download of ``what`` from hub repo ``name`` into ``cache_dir``, or a cache hit), with
    progress lines; a repo that does not exist raises ``ModelLoadError(missing)``, one not cached
    while the hub is out of reach (or ``HF_HUB_OFFLINE``) says why and ends with ``copy_hint``."""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo = name.split("/", 2)
    try:
        _LOGGER.info("Fetching %s into %s (first run downloads it)", name, cache_dir)
        with progress_lines(name, _cached_repo("/".join(repo[:2]), cache_dir)):
            return fetch()
    except LocalEntryNotFoundError as err:  # (an EntryNotFoundError too: first)
        raise ModelLoadError(_not_cached(what, name, cache_dir, copy_hint)) from err
    except (RepositoryNotFoundError, EntryNotFoundError) as err:
        raise ModelLoadError(missing) from err
    except OSError as err:
        raise ModelLoadError(_not_cached(what, name, cache_dir, copy_hint)) from err


def _not_cached(what: str, name: str, cache_dir: Path, copy_hint: str) -> str:
    import huggingface_hub

    why = (
        "HF_HUB_OFFLINE is set, so nothing is downloaded: unset it for the first run"
        if huggingface_hub.is_offline_mode()  # read as huggingface_hub reads it
        else "the Hugging Face hub cannot be reached: connect this machine to the internet for the first run"
    )
    return f"{what} '{name}' is not in the cache ({cache_dir}) and {why}, or {copy_hint}."


def checkpoint_folder(spec: str, data_dir: Path, what: str, flag: str) -> Path:
    """A transformers checkpoint (``config.json`` and weights): folder ``spec``, or the snapshot
    of hub repo ``spec`` (owner/name) downloaded into ``DATA_DIR/models`` like Bark's."""
    path = Path(spec).expanduser()
    if _is_local(spec) or spec.count("/") != 1:
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{what} folder {path} does not exist or has no config.json (--{flag})")
        return path
    cache_dir = data_dir / "models"
    return downloaded(
        what,
        spec,
        cache_dir,
        lambda: _snapshot(spec, cache_dir, ["*.json"]),
        missing=f"{what} '{spec}' was not found on the Hugging Face hub (--{flag})",
        copy_hint=f"copy its files to a folder and pass --{flag} with that folder",
    )


def checkpoint_file(spec: str, data_dir: Path, what: str, flag: str) -> Path:
    """One file: ``spec`` itself, or ``owner/name/FILE`` from the hub (cached like Bark's)."""
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") < 2:
        if not path.is_file():
            raise ModelLoadError(f"{what} file {path} does not exist (--{flag}: a file, or OWNER/REPO/FILE)")
        return path
    from huggingface_hub import hf_hub_download

    owner, repo, filename = spec.split("/", 2)
    cache_dir = data_dir / "models"
    return downloaded(
        what,
        spec,
        cache_dir,
        lambda: Path(hf_hub_download(f"{owner}/{repo}", filename, cache_dir=cache_dir)),
        missing=f"{what} '{spec}' was not found on the Hugging Face hub (--{flag})",
        copy_hint=f"copy the file here and pass --{flag} with its path",
    )


def _cached_repo(model: str, cache_dir: Path) -> Path:
    """Where huggingface_hub caches hub repo ``model`` under ``cache_dir``."""
    return cache_dir / ("models--" + model.replace("/", "--"))


def _snapshot(model: str, cache_dir: Path, patterns: list[str] = _HUB_PATTERNS) -> Path:
    """The repo's ``patterns`` and its safetensors weights (else its ``pytorch_model.bin``)."""
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download(model, cache_dir=cache_dir, allow_patterns=patterns + _SAFETENSORS))
    if not any(path.glob("*.safetensors")):
        path = Path(snapshot_download(model, cache_dir=cache_dir, allow_patterns=patterns + [_PYTORCH_BIN]))
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


DOWNLOAD_SIZES = {
    "suno/bark-small": "about 1.7 GB",
    "suno/bark": "about 5 GB",
    DEFAULT_HUBERT: "about 380 MB",
    DEFAULT_QUANTIZER: "about 100 MB",
}


def pending_download(model: str, data_dir: Path) -> str | None:
    """What the first load will download, if ``model`` is a hub id not in the cache yet."""
    if _is_local(model) or model.count("/") != 1:
        return None
    repo = _cached_repo(model, data_dir / "models")
    if (repo / "snapshots").is_dir() and any((repo / "snapshots").iterdir()):
        return None
    return f"{model} ({DOWNLOAD_SIZES.get(model, 'size unknown')})"
