"""What the stages read of a loaded Bark: generation configs, sizes, device and the embeddings.

Frozen and built once by ``FastBark``, so the arrows go one way: the stages (``semantic.py``,
``coarse.py``) depend on this small object, not on the core that drives them, and each can be
built and tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class BarkShapes:
    sem: Any  # transformers' BarkSemanticGenerationConfig
    coarse_cfg: Any  # BarkCoarseGenerationConfig
    fine_cfg: Any  # BarkFineGenerationConfig
    codebook_size: int  # EnCodec codes per codebook (1024)
    ratio: float  # coarse tokens per semantic token (75 Hz x 2 codebooks / 49.9 Hz)
    device: torch.device
    semantic_block_size: int  # positions of the semantic GPT
    semantic_embed: nn.Embedding
    coarse_embed: nn.Embedding

    def to_device(self, values: list, dtype: torch.dtype = torch.long) -> torch.Tensor:
        """Small host lists to the device without waiting for its stream (a plain copy would sync)."""
        return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True)
