"""Build a tiny random Bark checkpoint laid out like the hub's ``suno/bark-small``.

Small hidden sizes, but Bark's real vocabulary sizes, codebook count and EnCodec hop, so every
piece of code that reads ``suno/bark-small`` (config, generation config, tokenizer, speaker
embeddings) reads this too. Usable as a script: ``python tests/tiny_bark.py DIR``.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import string
import sys
import zipfile
from pathlib import Path

import numpy as np

LANGUAGES = ("en", "de", "es", "fr", "hi", "it", "ja", "ko", "pl", "pt", "ru", "tr", "zh")
PROMPT_KEYS = ("semantic_prompt", "coarse_prompt", "fine_prompt")


def _vocab() -> list[str]:
    """A WordPiece vocabulary that spells any ASCII word letter by letter."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_letters + string.digits + string.punctuation)
    words = ["hello", "world", "the", "is", "and", "a", "to", "of", "laughs"]
    return specials + chars + ["##" + c for c in chars] + words


def _write_tokenizer(path: Path) -> None:
    from transformers import BertTokenizerFast

    vocab = {token: i for i, token in enumerate(_vocab())}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=False)
    assert tokenizer.tokenize("Hello") == ["H", "##e", "##l", "##l", "##o"]
    tokenizer.save_pretrained(str(path))


def _write_generation_config(path: Path) -> None:
    """Bark's generation config, written by hand: its save_pretrained fails in transformers 5."""
    from transformers import GenerationConfig
    from transformers.models.bark.generation_configuration_bark import (
        BarkCoarseGenerationConfig,
        BarkFineGenerationConfig,
        BarkGenerationConfig,
        BarkSemanticGenerationConfig,
    )

    bark_config = BarkGenerationConfig.from_sub_model_configs(
        BarkSemanticGenerationConfig(),
        BarkCoarseGenerationConfig(),
        BarkFineGenerationConfig(),
    )
    # Round-trip through GenerationConfig, the class BarkModel.from_pretrained reads it into.
    config = GenerationConfig.from_dict(bark_config.to_dict())
    data = config.to_dict()
    data.update(bark_config.to_dict())
    (path / "generation_config.json").write_text(json.dumps(data, indent=2), encoding="utf-8")


def random_voice(rng: np.random.Generator, frames: int = 30) -> dict[str, np.ndarray]:
    """A voice prompt in Bark's history-prompt format with plausible token ranges."""
    semantic = rng.integers(0, 10_000, size=int(frames * 49.9 / 75)).astype(np.int64)
    fine = rng.integers(0, 1024, size=(8, frames)).astype(np.int64)
    return {"semantic_prompt": semantic, "coarse_prompt": fine[:2].copy(), "fine_prompt": fine}


def _write_speaker_embeddings(
    path: Path, seed: int, prompts: dict[str, dict[str, np.ndarray]] | None
) -> None:
    """Voice presets in the hub layout that BarkProcessor.save_pretrained writes."""
    rng = np.random.default_rng(seed)
    names = [f"v2/{lang}_speaker_{i}" for lang in LANGUAGES for i in range(10)] + ["announcer"]
    index: dict[str, object] = {"repo_or_path": str(path)}
    for name in names:
        voice = prompts[name] if prompts else random_voice(rng)
        entry = {}
        for key in PROMPT_KEYS:
            rel = f"speaker_embeddings/{name}_{key}.npy"
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(path / rel, voice[key], allow_pickle=False)
            entry[key] = rel
        index[name] = entry
    (path / "speaker_embeddings_path.json").write_text(json.dumps(index), encoding="utf-8")


def build_tiny_bark(
    path: str | Path, seed: int = 0, prompts: dict[str, dict[str, np.ndarray]] | None = None
) -> Path:
    """Write a tiny random Bark to ``path`` and return it.

    ``prompts`` (name -> history prompt) supplies real voice presets; random ones otherwise.
    """
    import torch
    from transformers import BarkModel

    from wyoming_bark.bench.random_bark import bark_config, fill_codebooks

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    # A large init makes the random model react to its input (text, voice) instead of
    # sampling from near-uniform logits whatever it is given.
    codec = {"model_type": "encodec", "num_filters": 4, "hidden_size": 16}
    model = BarkModel(bark_config(1, 16, 2, codec=codec, initializer_range=0.5))
    fill_codebooks(model)
    model.save_pretrained(str(path))
    _write_generation_config(path)
    _write_tokenizer(path)
    _write_speaker_embeddings(path, seed, prompts)
    return path


def place_in_hub_cache(model: Path, cache_dir: Path, repo_id: str) -> Path:
    """Copy ``model`` into ``cache_dir`` as huggingface_hub caches ``repo_id``.

    The server then loads it by hub id (``--model suno/bark``) with ``HF_HUB_OFFLINE=1`` through
    the same code that downloads the real one.
    """
    revision = "0" * 40
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(model, repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs/main").write_text(revision, encoding="utf-8")
    return repo


if __name__ == "__main__":
    print(build_tiny_bark(sys.argv[1] if len(sys.argv) > 1 else "tiny-bark"))


def suno_wheel_prompts(wheel: Path) -> dict[str, dict[str, np.ndarray]]:
    """The 130 real v2 presets and ``announcer`` from a ``bark`` 0.1.5 wheel, without installing it."""
    prompts = {}
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            match = re.fullmatch(r"bark/assets/prompts/((?:v2/)?\w+)\.npz", member)
            if match and (match.group(1).startswith("v2/") or match.group(1) == "announcer"):
                with np.load(io.BytesIO(archive.read(member))) as data:
                    prompts[match.group(1)] = {key: data[key] for key in PROMPT_KEYS}
    return prompts
