"""Tensors read straight from a transformers checkpoint folder (safetensors, else
``pytorch_model.bin``), by prefix, without building the model it belongs to: Bark's EnCodec for
the voice maker, and for a start from cached int8 weights everything but the GPTs."""

from __future__ import annotations

from pathlib import Path

import torch


def tensors(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, the prefix removed, weight norm in today's
    names (older transformers saved ``weight_g``/``weight_v``)."""
    state: dict[str, torch.Tensor] = {}
    files = sorted(folder.glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        for file in files:
            with safe_open(str(file), "pt") as weights:
                for key in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                    if key.startswith(prefix):
                        state[key] = weights.get_tensor(key)
    else:
        every = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
        state = {key: value for key, value in every.items() if key.startswith(prefix)}
    renamed = {}
    for key, value in state.items():
        key = key.removeprefix(prefix).replace(".weight_g", ".parametrizations.weight.original0")
        renamed[key.replace(".weight_v", ".parametrizations.weight.original1")] = value
    return renamed
