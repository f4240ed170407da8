"""A Bark with Bark's real vocabularies, codebooks and EnCodec, and random weights.

Speed depends on the architecture, not on weight values, so the benchmark times these; the tests
save a tiny one in the hub layout and load it through the code that loads ``suno/bark``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..length_cap import SEMANTIC_RATE_HZ as SEMANTIC_HZ  # semantic tokens per second
from ..pcm import SAMPLE_RATE

ARCHS = {  # layers, hidden size, heads: Bark's checkpoints ("tiny" is for quick checks)
    "full": (24, 1024, 16),
    "small": (12, 768, 12),
    "tiny": (2, 64, 2),
}


def bark_config(layers: int, hidden: int, heads: int, codec: dict | None = None, **extra):
    """A BarkConfig with Bark's real vocabularies and codebooks and the given transformer sizes."""
    from transformers import BarkConfig, EncodecConfig

    common = {"hidden_size": hidden, "num_layers": layers, "num_heads": heads, "block_size": 1024, **extra}
    return BarkConfig(
        semantic_config={**common, "input_vocab_size": 129_600, "output_vocab_size": 10_048},
        coarse_acoustics_config={**common, "input_vocab_size": 12_096, "output_vocab_size": 12_096},
        fine_acoustics_config={
            **common,
            "input_vocab_size": 1_056,
            "output_vocab_size": 1_056,
            "n_codes_total": 8,
            "n_codes_given": 1,
        },
        codec_config=codec or EncodecConfig().to_dict(),
    )


def fill_codebooks(model) -> None:
    """EnCodec's codebooks are buffers that init leaves at zero, so every code would decode to
    the same audio; give them values, as a trained codec has."""
    for layer in model.codec_model.quantizer.layers:
        layer.codebook.embed.normal_()
        layer.codebook.embed_avg.copy_(layer.codebook.embed)
        layer.codebook.cluster_size.fill_(1.0)
        layer.codebook.inited.fill_(True)


def build_random_bark(arch: str, device: torch.device):
    """A BarkModel with Bark's vocabularies, codebooks and EnCodec, and random weights."""
    from transformers import BarkModel, GenerationConfig
    from transformers.models.bark.generation_configuration_bark import (
        BarkCoarseGenerationConfig,
        BarkFineGenerationConfig,
        BarkSemanticGenerationConfig,
    )

    torch.manual_seed(0)
    model = BarkModel(bark_config(*ARCHS[arch], bias=False))
    fill_codebooks(model)
    generation = GenerationConfig()
    generation.semantic_config = BarkSemanticGenerationConfig().to_dict()
    generation.coarse_acoustics_config = BarkCoarseGenerationConfig().to_dict()
    generation.fine_acoustics_config = BarkFineGenerationConfig().to_dict()
    generation.sample_rate, generation.codebook_size = SAMPLE_RATE, 1024  # EnCodec 24 kHz
    model.generation_config = generation
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    return model.to(device, dtype=dtype).eval()


def random_inputs(device: torch.device, seed: int = 0):
    """Tokenized text and a voice prompt the size of suno's v2 presets."""
    rng = np.random.default_rng(seed)
    ids = torch.zeros(1, 256, dtype=torch.long)
    ids[0, :40] = torch.from_numpy(rng.integers(1000, 100_000, 40))
    mask = (ids != 0).long()
    frames = 450
    history = {
        "semantic_prompt": torch.from_numpy(rng.integers(0, 10_000, int(frames * SEMANTIC_HZ / 75))),
        "coarse_prompt": torch.from_numpy(rng.integers(0, 1024, (2, frames))),
        "fine_prompt": torch.from_numpy(rng.integers(0, 1024, (8, frames))),
    }
    return ids.to(device), mask.to(device), {k: v.to(device) for k, v in history.items()}
