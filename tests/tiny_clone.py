"""Tiny random cloning models in the layouts the real ones come in: HuBERT as a transformers
checkpoint folder (10 layers, so layer 9 exists; HuBERT base's real convolution stack, so 50
frames a second), and quantizers as the bark-voice-cloning project saves them (``torch.save`` of
the state dict, newer files with a ``<name>/.info`` JSON entry in the zip), both versions; and a
real speech recording made with espeak-ng."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np

HUBERT_REPO = "facebook/hubert-base-ls960"
QUANTIZER_REPO = "GitMylo/bark-voice-cloning"
QUANTIZER_V0 = "quantifier_hubert_base_ls960_14.pth"
QUANTIZER_V1 = "quantifier_V1_hubert_base_ls960_23.pth"
HIDDEN = 32  # the tiny HuBERT's feature size (HuBERT base: 768)
SPEECH = "The quick brown fox jumps over the lazy dog. It was a bright cold day in April."


def build_tiny_hubert(path: Path, seed: int = 0) -> Path:
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(seed)
    config = HubertConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=10,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    HubertModel(config).eval().save_pretrained(str(path))
    return path


def write_quantizer(path: Path, version: int, info: bool, hidden: int = 48, seed: int = 0) -> Path:
    """A random quantizer checkpoint with the real output size (Bark's 10 000 semantic tokens)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    state = {f"lstm.{k}": v for k, v in nn.LSTM(HIDDEN, hidden, 2, batch_first=True).state_dict().items()}
    width = hidden
    if version == 1:
        state.update({f"intermediate.{k}": v for k, v in nn.Linear(hidden, 4096).state_dict().items()})
        width = 4096
    # Large weights, no biases: tokens follow the features instead of one bias winning everywhere.
    state.update({f"fc.{k}": v * 20 for k, v in nn.Linear(width, 10_000, bias=False).state_dict().items()})
    state["fc.bias"] = torch.zeros(10_000)
    if version == 1:
        state["intermediate.weight"] *= 8
    torch.save(state, path)
    if info:
        fields = {"input_size": HIDDEN, "hidden_size": hidden, "output_size": 10_000, "version": version}
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(f"{path.stem}/.info", json.dumps(fields))
    return path


def place_file_in_hub_cache(file: Path, cache_dir: Path, repo_id: str) -> Path:
    """``file`` as huggingface_hub caches ``repo_id``'s file of that name."""
    revision = "0" * 40
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo / "snapshots" / revision).mkdir(parents=True, exist_ok=True)
    shutil.copy(file, repo / "snapshots" / revision / file.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs/main").write_text(revision, encoding="utf-8")
    return repo


def speech_wav(path: Path, text: str = SPEECH, voice: str = "en") -> Path:
    """A real speech recording (espeak-ng: 22.05 kHz mono WAV)."""
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, timeout=60)
    return path


def speech_samples(text: str = SPEECH) -> tuple[np.ndarray, int]:
    import tempfile

    import soundfile

    with tempfile.TemporaryDirectory() as folder:
        samples, rate = soundfile.read(speech_wav(Path(folder) / "speech.wav", text), dtype="float32")
    return samples, rate
