"""Finding, downloading and loading Bark weights through transformers.

Everything is loaded from one local directory: either the ``--model`` directory itself, or the
snapshot that ``huggingface_hub`` downloads (with progress bars and a resumable cache in the data
dir) for a hub id such as ``suno/bark-small``. Tests load a tiny checkpoint through this same code.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import precision as precisions
from .errors import ModelLoadError
from .fast import FastBark
from .fast.reference import TransformersCore
from .self_check import prepare

_LOGGER = logging.getLogger(__name__)

CORES = ("fast", "transformers")  # --core: ours, or transformers' BarkModel.generate

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


@dataclass
class LoadedBark:
    """A ready Bark: model, processor (tokenizer) and where it came from."""

    model: object  # transformers.BarkModel
    processor: object  # transformers.BarkProcessor
    model_dir: Path
    device: torch.device
    dtype: torch.dtype
    core: FastBark | TransformersCore  # ours, or transformers' (--core transformers, or a fallback)
    precision: str = "fp32"  # fp16, fp32 or int8 (see precision.py)
    self_check: str = "not run"  # the self-check's verdict, for status


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> first CUDA device if there is one, else CPU; ``cpu``, ``cuda``, ``cuda:N`` as given."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ModelLoadError(f"Invalid --device '{spec}': use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            missing = (
                "this torch is a CUDA build, so the NVIDIA driver or a visible GPU is missing "
                "(check nvidia-smi; in Docker, the GPU reservation and the NVIDIA Container Toolkit)"
                if torch.version.cuda
                else "this torch is a CPU build: install a CUDA build of torch"
            )
            raise ModelLoadError(
                f"--device {spec} was requested but PyTorch sees no CUDA GPU (torch {torch.__version__}): "
                f"{missing}; or use --device cpu."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) found")
    elif device.type != "cpu":
        raise ModelLoadError(f"Unsupported --device '{spec}': use auto, cpu, cuda or cuda:N")
    return device


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


def load_bark(
    model: str,
    data_dir: Path,
    device_spec: str,
    core: str = "fast",
    max_batch: int = 1,
    self_check: str = "on",
    precision: str = "auto",
    threads: int | None = None,
) -> LoadedBark:
    """Load Bark (float16 on CUDA, int8 GPTs on a CPU by default; see ``precision.py``), set up
    the chosen core and check it (``self_check.py``). Slow: run it off the event loop."""
    from transformers import BarkModel, BarkProcessor

    device = resolve_device(device_spec)
    resolved = precisions.resolve(precision, device)
    if device.type == "cpu":
        precisions.use_threads(threads)
    model_dir = model_directory(model, data_dir)
    dtype = precisions.dtype(resolved)
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        try:
            processor = BarkProcessor.from_pretrained(str(model_dir), local_files_only=True)
            bark = BarkModel.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
            bark = bark.to(device).eval()
        except torch.cuda.OutOfMemoryError as err:
            raise ModelLoadError(
                f"Not enough GPU memory to load {model} on {device}. "
                "Use --model suno/bark-small, free the GPU, or use --device cpu."
            ) from err
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"Cannot load a Bark model from {model_dir}: {err}") from err
        if not hasattr(bark.generation_config, "semantic_config"):
            raise ModelLoadError(f"{model_dir} has no Bark generation_config.json; copy it from the hub repo")
        if resolved == "int8":
            try:
                precisions.quantize(bark)
            except (RuntimeError, NotImplementedError) as err:  # no int8 kernels for this CPU/build
                _LOGGER.warning("No int8 weights on this machine (%s); running in float32", err)
                resolved = "fp32"
        loaded = LoadedBark(bark, processor, model_dir, device, dtype, TransformersCore(bark), resolved)
        if core == "fast":  # the one place that picks the core
            started = time.monotonic()
            outcome = prepare(_fast_core(bark, max_batch, model), self_check, data_dir / "self-check", model)
            loaded.core = outcome.fast or loaded.core
            loaded.self_check = outcome.summary
            _LOGGER.info("Core set up and checked in %.1f s", time.monotonic() - started)
    _LOGGER.info("Bark runs on %s with the %s core", device_summary(device, resolved), loaded.core.name)
    return loaded


def _fast_core(bark, max_batch: int, model: str) -> FastBark:
    """Our core with KV-cache rows for ``max_batch`` sentences, or as many as GPU memory holds."""
    while True:
        try:
            return FastBark(bark, max_batch)
        except torch.cuda.OutOfMemoryError as err:
            if max_batch == 1:
                raise ModelLoadError(
                    f"Not enough GPU memory for {model}'s decode cache even for one sentence; "
                    "use --model suno/bark-small, free the GPU, or use --device cpu"
                ) from err
            torch.cuda.empty_cache()
            _LOGGER.warning(
                "Not enough GPU memory for --max-batch %d (each row holds a KV cache); using %d",
                max_batch,
                max_batch // 2,
            )
            max_batch //= 2


def device_summary(device: torch.device, precision: str | None = None) -> str:
    """What a user checks to know the GPU is really used: its name and memory; and the precision."""
    names = {"fp16": "float16", "fp32": "float32", "int8": "int8 weights"}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{device}: {props.name}, {props.total_memory / 2**30:.1f} GiB, {names[precision or 'fp16']}"
    return f"the CPU ({torch.get_num_threads()} threads), {names[precision or 'fp32']}"
