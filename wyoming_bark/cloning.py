"""A Bark voice (history prompt) from a recording, by the community's recipe (the MIT-licensed
HuBERT quantizer of the bark-voice-cloning project, re-implemented here):

- ``semantic_prompt``: HuBERT base on the raw 16 kHz waveform, the output of its 9th transformer
  layer (fairseq's ``output_layer=9``, transformers' ``hidden_states[9]``: one 768-d vector per
  20 ms), then the quantizer (a 2-layer LSTM, in version 1 a 4096-wide linear layer, a linear
  layer onto Bark's 10 000 semantic tokens), the argmax per frame;
- ``fine_prompt``: Bark's own EnCodec (24 kHz) at 6 kbps, its 8 codebooks; ``coarse_prompt``:
  the first two.

The models are loaded only to make voices (``VoiceMaker``) and released after. Checkpoints are
read with ``weights_only=True``: a quantizer file is data, never code.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import tensors
from .errors import ModelLoadError
from .hub import checkpoint_file, checkpoint_folder, model_directory
from .prompts import N_COARSE, N_FINE, Prompt, validate_prompt
from .recording import Recording
from .settings import CloneSettings

_LOGGER = logging.getLogger(__name__)

HUBERT_LAYER = 9
CODEC_KBPS = 6.0  # 8 codebooks, as Suno's codec


@dataclass(frozen=True)
class QuantizerShape:
    """A quantizer checkpoint's sizes: from its ``.info`` entry where it has one, else its weights."""

    input_size: int
    hidden_size: int
    output_size: int
    version: int  # 0: LSTM -> fc; 1: LSTM -> intermediate (4096) -> fc


class Quantizer(nn.Module):
    """HuBERT features (frames x input_size) -> semantic token logits (frames x output_size)."""

    def __init__(self, shape: QuantizerShape, intermediate: int = 4096) -> None:
        super().__init__()
        self.shape = shape
        self.lstm = nn.LSTM(shape.input_size, shape.hidden_size, 2, batch_first=True)
        self.intermediate = nn.Linear(shape.hidden_size, intermediate) if shape.version == 1 else None
        self.fc = nn.Linear(intermediate if shape.version == 1 else shape.hidden_size, shape.output_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(features)
        if self.intermediate is not None:
            hidden = self.intermediate(hidden)
        return self.fc(hidden)


def load_quantizer(path: Path) -> Quantizer:
    """A quantizer from its checkpoint (a torch zip of its state dict, perhaps with a
    ``<name>/.info`` JSON entry); raises ``ModelLoadError`` naming the file."""
    name = path.name
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [entry for entry in archive.namelist() if entry.endswith("/.info")]
            info = json.loads(archive.read(infos[0])) if infos else None
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelLoadError(
            f"Quantizer {name} is not a readable checkpoint: it holds objects other than tensors, "
            "which are never loaded (only weights are)"
        ) from err
    except (OSError, ValueError, RuntimeError, KeyError, zipfile.BadZipFile) as err:
        raise ModelLoadError(f"Quantizer {name} is not a readable checkpoint: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"Quantizer {name} does not hold a state dict")
    try:
        shape = _quantizer_shape(state, info)
        quantizer = Quantizer(shape, state["intermediate.weight"].shape[0] if shape.version == 1 else 4096)
        quantizer.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"Quantizer {name} is not a HuBERT quantizer of a known version: {err}") from err
    return quantizer.eval()


def _quantizer_shape(state: dict[str, torch.Tensor], info: dict | None) -> QuantizerShape:
    hidden4, input_size = state["lstm.weight_ih_l0"].shape
    found = QuantizerShape(
        int(input_size),
        int(hidden4) // 4,
        int(state["fc.weight"].shape[0]),
        int("intermediate.weight" in state),
    )
    if info is None:
        return found
    declared = QuantizerShape(
        int(info["input_size"]), int(info["hidden_size"]), int(info["output_size"]), int(info["version"])
    )
    if declared != found:
        raise ValueError(f"its .info says {declared}, its weights are {found}")
    return declared


def load_hubert(spec: str, data_dir: Path) -> nn.Module:
    """HuBERT, cut after layer ``HUBERT_LAYER``: its last hidden state is then ``hidden_states[9]``
    of the whole model (the encoder's layer norm comes before the layers in HuBERT base)."""
    from transformers import HubertModel

    folder = checkpoint_folder(spec, data_dir, "HuBERT", "hubert")
    try:
        hubert = HubertModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"Cannot load HuBERT from {folder}: {err}") from err
    if getattr(hubert.config, "do_stable_layer_norm", False):
        raise ModelLoadError(f"{spec} is a HuBERT large-style model; the quantizers need HuBERT base")
    if len(hubert.encoder.layers) < HUBERT_LAYER:
        raise ModelLoadError(
            f"{spec} has {len(hubert.encoder.layers)} layers; layer {HUBERT_LAYER} is needed"
        )
    hubert.encoder.layers = hubert.encoder.layers[:HUBERT_LAYER]
    return hubert.eval()


def load_codec(model: str, data_dir: Path) -> nn.Module:
    """Bark's EnCodec, its encoder and quantizer only, read from the Bark checkpoint's own files
    (the ``codec_model.*`` weights), not the whole model."""
    from transformers import EncodecConfig, EncodecModel

    folder = model_directory(model, data_dir)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))["codec_config"]
        codec = EncodecModel(EncodecConfig(**config))
        state = tensors(folder, "codec_model.")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"Cannot read Bark's codec from {folder}: {err}") from err
    codec.decoder = None  # not needed to encode
    wanted = {key for key in codec.state_dict() if not key.startswith("decoder.")}
    missing = wanted - state.keys()
    if missing:
        raise ModelLoadError(f"Bark's codec in {folder} lacks {len(missing)} weights, e.g. {min(missing)}")
    codec.load_state_dict({key: state[key] for key in wanted}, strict=False)
    return codec.eval()


class VoiceMaker:
    """Makes prompts from prepared recordings; loads its three models on first use."""

    def __init__(self, settings: CloneSettings, model: str, data_dir: Path) -> None:
        self.settings, self.model, self.data_dir = settings, model, data_dir
        self._models: tuple[nn.Module, Quantizer, nn.Module] | None = None

    def load(self) -> tuple[nn.Module, Quantizer, nn.Module]:
        if self._models is None:
            hubert = load_hubert(self.settings.hubert, self.data_dir)
            path = checkpoint_file(self.settings.quantizer, self.data_dir, "Quantizer", "quantizer")
            quantizer = load_quantizer(path)
            hidden = hubert.config.hidden_size
            if quantizer.shape.input_size != hidden:
                raise ModelLoadError(
                    f"Quantizer {path.name} takes {quantizer.shape.input_size}-d features; "
                    f"{self.settings.hubert} gives {hidden}"
                )
            self._models = (hubert, quantizer, load_codec(self.model, self.data_dir))
        return self._models

    @torch.inference_mode()
    def make(self, recording: Recording) -> Prompt:
        hubert, quantizer, codec = self.load()
        features = hubert(torch.from_numpy(recording.at_16k)[None]).last_hidden_state[0]
        semantic = quantizer(features).argmax(-1)
        encoded = codec.encode(torch.from_numpy(recording.at_24k)[None, None], bandwidth=CODEC_KBPS)
        codes = encoded.audio_codes[0, 0]  # one chunk, one row: codebooks x frames
        if codes.shape[0] != N_FINE:
            raise ModelLoadError(f"Bark's codec gave {codes.shape[0]} codebooks at {CODEC_KBPS:g} kbps")
        prompt = {
            "semantic_prompt": semantic.numpy(),
            "coarse_prompt": codes[:N_COARSE].numpy(),
            "fine_prompt": codes.numpy(),
        }
        return validate_prompt(prompt, "made from the recording")

    def close(self) -> None:
        self._models = None


def save_prompt(prompt: Prompt, path: Path) -> None:
    """Write ``prompt`` as Bark's ``.npz`` history prompt, atomically (a reader never sees half)."""
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as file:
        np.savez(file, **prompt)
    part.replace(path)
