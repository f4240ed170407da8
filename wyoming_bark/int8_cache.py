"""Int8 weights kept between starts, so a small board's second start is quick and small.

The first start loads float32 weights, converts the GPTs (to int8, or where ``--precision auto``
chose it for a GPT, bfloat16) and gates each against its float self (``precision.convert``); its
GPTs are then written here, one file each, with a manifest of their SHA-256, what each runs in,
and the fingerprint of what made them (model files, torch, the int8 kernel engine, each GPT's
asked precision, this package). A later start with the same fingerprint builds the model without
weights (on the ``meta`` device), puts int8 layers where the GPTs' linear layers are, and loads
the kept state into them (``weights_only``) and EnCodec from the model's own files: float32 GPT
weights are never in memory. A damaged file, or any change in the fingerprint, and the slow way
runs again and replaces the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import time
import uuid
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .checkpoint import tensors
from .int8_kernels import int8_linear
from .precision import DTYPES, QUANTIZED

_LOGGER = logging.getLogger(__name__)

CACHE_DIR = "int8-cache"  # under the data dir
FORMAT = 1  # of the files: change it when what is written changes


def fingerprint(model_dir: Path, engine: str, choice: dict[str, str]) -> dict[str, object]:
    """What the int8 weights depend on: the model's files (the hub snapshot's revision is in its
    path; a local folder's files by size and time), torch, its int8 engine, each GPT's precision,
    this package."""
    files = (
        sorted(model_dir.glob("*.safetensors"))
        + sorted(model_dir.glob("*.bin"))
        + [model_dir / "config.json"]
    )
    return {
        "format": FORMAT,
        "wyoming_bark": __version__,
        "torch": torch.__version__,
        "engine": engine,
        "precisions": choice,
        "machine": platform.machine(),
        "model": str(model_dir.resolve()),
        "files": [
            [file.name, file.stat().st_size, file.stat().st_mtime_ns] for file in files if file.exists()
        ],
    }


class Int8Cache:
    """The int8 GPTs of one model on one machine, in ``DATA_DIR/int8-cache/DIGEST/``."""

    def __init__(
        self, data_dir: Path, model_dir: Path, engine: str, choice: dict[str, str] | None = None
    ) -> None:
        # What was asked of each GPT; what it runs in (a GPT that failed its gate: float32) is
        # in the manifest, so such a GPT is not converted and gated again at every start.
        self.choice = choice or dict.fromkeys(QUANTIZED, "int8")
        self.print = fingerprint(model_dir, engine, self.choice)
        digest = hashlib.sha256(json.dumps(self.print, sort_keys=True).encode()).hexdigest()[:16]
        self.root, self.folder, self.model_dir = (
            data_dir / CACHE_DIR,
            data_dir / CACHE_DIR / digest,
            model_dir,
        )

    def load(self) -> tuple[nn.Module, dict[str, float], dict[str, str]] | None:
        """The model with its converted GPTs from the cache, the agreement their gate found and
        what each GPT runs in; None when there is no usable cache (said in the log when one was
        there but damaged)."""
        manifest = self._manifest()
        if manifest is None:
            return None
        try:
            runs_in = manifest.get("runs_in", self.choice)
            if set(runs_in) != set(QUANTIZED) or not set(runs_in.values()) <= {"int8", *DTYPES}:
                raise ValueError(f"the manifest's precisions {runs_in} are not ours")
            states = {name: self._state(name, manifest["files"][name]) for name in QUANTIZED}
            return _assemble(self.model_dir, states, runs_in), manifest["agreement"], runs_in
        except (OSError, ValueError, KeyError, RuntimeError, AttributeError) as err:
            _LOGGER.warning(
                "The kept int8 weights in %s cannot be used (%s); converting again", self.folder, err
            )
            shutil.rmtree(self.folder, ignore_errors=True)
            return None

    def _manifest(self) -> dict | None:
        try:
            manifest = json.loads((self.folder / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) and manifest.get("fingerprint") == self.print else None

    def _state(self, name: str, digest: str) -> dict:
        data = (self.folder / f"{name}.pt").read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"{name}.pt is damaged")
        import io
        import warnings

        with warnings.catch_warnings():  # int8 tensors still come back through TypedStorage
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def save(
        self, bark: nn.Module, agreement: dict[str, float], runs_in: dict[str, str] | None = None
    ) -> None:
        """Keep ``bark``'s GPTs, which run in ``runs_in`` (by default what was asked): written into a folder of this process's own, then renamed into
        place whole (servers sharing a data dir may start together: the first one's stays); other
        fingerprints' caches go (one model's int8 weights are up to 1.5 GB)."""
        part = self.root / f".{self.folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            part.mkdir(parents=True)
            files = {}
            for name in QUANTIZED:
                torch.save(getattr(bark, name).state_dict(), part / f"{name}.pt")
                files[name] = hashlib.sha256((part / f"{name}.pt").read_bytes()).hexdigest()
            manifest = {
                "fingerprint": self.print, "files": files, "agreement": agreement,
                "runs_in": runs_in or self.choice,
            }  # fmt: skip
            (part / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
            shutil.rmtree(self.folder, ignore_errors=True)  # a damaged one
            os.rename(part, self.folder)
            _LOGGER.info("Kept the int8 weights in %s: the next start loads them directly", self.folder)
        except (OSError, RuntimeError) as err:  # torch's zip writer raises RuntimeError (disk full)
            if not self.folder.is_dir():  # not another server's, kept a moment before
                _LOGGER.warning("Cannot keep the int8 weights in %s (%s); the next start converts again",
                                self.folder, err)  # fmt: skip
        finally:
            shutil.rmtree(part, ignore_errors=True)
        self._forget_others()

    def _forget_others(self) -> None:
        """Other fingerprints' caches, and writes that a killed process left (over an hour old)."""
        with contextlib.suppress(OSError):
            for other in self.root.iterdir():
                started = other.name.startswith(".")
                if other != self.folder and (not started or time.time() - other.stat().st_mtime > 3600):
                    shutil.rmtree(other, ignore_errors=True)


def _assemble(model_dir: Path, states: dict[str, dict], choice: dict[str, str]) -> nn.Module:
    """A BarkModel with no float32 copy of a converted GPT ever made: its GPTs built on ``meta``,
    int8 layers in place of an int8 GPT's linear ones (another GPT in its float dtype), then the
    kept states loaded; EnCodec from the model's files."""
    from transformers import BarkConfig, BarkModel, EncodecModel, GenerationConfig

    config = BarkConfig.from_pretrained(str(model_dir), local_files_only=True)
    with torch.device("meta"):
        bark = BarkModel(config)
    for name in QUANTIZED:
        gpt = getattr(bark, name)
        if choice[name] != "int8":
            gpt.to(DTYPES[choice[name]])
        for parent in list(gpt.modules()) if choice[name] == "int8" else []:
            for child_name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    layer = int8_linear(child.in_features, child.out_features, child.bias is not None)
                    setattr(parent, child_name, layer)
        gpt.to_empty(device="cpu")
        gpt.load_state_dict(states[name])
    bark.codec_model = EncodecModel(config.codec_config)  # for real: its buffers are not in the files
    bark.codec_model.load_state_dict(tensors(model_dir, "codec_model."))
    bark.generation_config = GenerationConfig.from_pretrained(str(model_dir), local_files_only=True)
    return bark.eval()
