"""A Bark history prompt (``semantic_prompt``, ``coarse_prompt``, ``fine_prompt``) from a file:
a custom voice's ``.npz`` read bounded through one descriptor (``userfiles``), a built-in one from
the model's speaker embeddings, and either checked before Bark indexes anything with it."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from .errors import UnknownVoice, VoiceError, quoted
from .userfiles import UserFileError, read_user_file

EMBEDDINGS_INDEX = "speaker_embeddings_path.json"

PROMPT_KEYS = ("semantic_prompt", "coarse_prompt", "fine_prompt")
# Bark's prompts are tens of kilobytes; these bounds keep a hostile file from costing more.
MAX_VOICE_FILE_BYTES = 1 << 20
MAX_VOICE_ARRAY_BYTES = 8 << 20  # all arrays of one prompt, uncompressed
SEMANTIC_VOCAB = 10_000
CODEBOOK_SIZE = 1024
N_COARSE, N_FINE = 2, 8

Prompt = dict[str, np.ndarray]


def validate_prompt(arrays: dict[str, np.ndarray], source: str) -> Prompt:
    """Check a history prompt's keys, shapes and token ranges; return int64 copies.

    Bark indexes embedding tables with these tokens, so an out-of-range value would crash
    generation deep inside torch: reject it here with a message naming ``source``.
    """
    missing = [key for key in PROMPT_KEYS if key not in arrays]
    if missing:
        raise VoiceError(f"Voice prompt {source} lacks {', '.join(missing)}")
    prompt = {key: np.asarray(arrays[key]) for key in PROMPT_KEYS}
    for key, array in prompt.items():
        if not np.issubdtype(array.dtype, np.integer):
            raise VoiceError(f"Voice prompt {source}: {key} must hold integer tokens, not {array.dtype}")
    semantic, coarse, fine = (prompt[key] for key in PROMPT_KEYS)
    if semantic.ndim != 1 or semantic.size == 0:
        raise VoiceError(
            f"Voice prompt {source}: semantic_prompt must be 1-D and non-empty, got shape {semantic.shape}"
        )
    if coarse.ndim != 2 or coarse.shape[0] != N_COARSE or coarse.shape[1] == 0:
        raise VoiceError(
            f"Voice prompt {source}: coarse_prompt must be {N_COARSE} x N, got shape {coarse.shape}"
        )
    if fine.ndim != 2 or fine.shape[0] != N_FINE or fine.shape[1] == 0:
        raise VoiceError(f"Voice prompt {source}: fine_prompt must be {N_FINE} x N, got shape {fine.shape}")
    for key, limit in (
        ("semantic_prompt", SEMANTIC_VOCAB),
        ("coarse_prompt", CODEBOOK_SIZE),
        ("fine_prompt", CODEBOOK_SIZE),
    ):
        array = prompt[key]
        if array.min() < 0 or array.max() >= limit:
            raise VoiceError(f"Voice prompt {source}: {key} tokens must lie in [0, {limit})")
    return {key: array.astype(np.int64) for key, array in prompt.items()}


class VoiceGone(UnknownVoice):
    """A custom voice listed a moment ago whose file is gone now: spoken like an unknown voice."""


def load_npz(path: Path) -> Prompt:
    """Load a custom voice file (Bark's ``.npz`` history-prompt format); blocking, bounded.

    The file is opened once and read through that descriptor (``userfiles``), the archive parsed
    in memory: its members' sizes and each array's header are checked before anything is inflated."""
    name = path.name
    try:
        raw = read_user_file(path, MAX_VOICE_FILE_BYTES)
    except FileNotFoundError as err:
        raise VoiceGone(f"Voice file {quoted(name)} was removed") from err
    except UserFileError as err:
        raise VoiceError(f"Voice file {err}") from err
    try:
        arrays = _npz_arrays(raw, name)
    except VoiceError:
        raise
    except (OSError, ValueError, EOFError, MemoryError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise VoiceError(f"Voice file {name} is not a readable .npz: {err}") from err
    return validate_prompt(arrays, name)


def _npz_arrays(raw: bytes, name: str) -> dict[str, np.ndarray]:
    """The prompt arrays of an ``.npz`` held in memory; members other than the prompt's are not read."""
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        members = archive.infolist()
        if sum(member.file_size for member in members) > MAX_VOICE_ARRAY_BYTES:
            raise VoiceError(f"Voice file {name} expands beyond {MAX_VOICE_ARRAY_BYTES >> 20} MiB")
        arrays = {}
        for member in members:
            key = member.filename.removesuffix(".npy")
            if key not in PROMPT_KEYS:
                continue
            with archive.open(member) as stream:  # zipfile stops at the size it declared
                data = stream.read(member.file_size + 1)
            arrays[key] = _npy_array(data, name, key)
        return arrays


def _npy_array(data: bytes, name: str, key: str) -> np.ndarray:
    """One ``.npy`` array from bytes, its header checked first: numpy allocates the shape a header
    claims before it reads the data, so a 20-byte member could ask for gigabytes."""
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    if dtype.hasobject or not np.issubdtype(dtype, np.integer):
        raise VoiceError(f"Voice prompt {name}: {key} must hold integer tokens, not {dtype}")
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data) - stream.tell():
        raise VoiceError(f"Voice file {name}: {key}'s shape {shape} does not match its data")
    stream.seek(0)
    return np.lib.format.read_array(stream, allow_pickle=False)


def load_builtin(model_dir: Path, name: str) -> Prompt:
    index = json.loads((model_dir / EMBEDDINGS_INDEX).read_text(encoding="utf-8"))
    entry = index.get(name)
    if not isinstance(entry, dict):
        raise VoiceError(f"Voice '{name}' is not in this model's speaker embeddings")
    arrays = {}
    for key in PROMPT_KEYS:
        # Lexical containment check only: hub snapshots are symlinks into a blobs/ folder.
        root = Path(os.path.normpath(model_dir))
        path = Path(os.path.normpath(root / str(entry.get(key, ""))))
        if not path.is_relative_to(root) or path == root:
            raise VoiceError(f"Voice '{name}': bad path for {key} in {EMBEDDINGS_INDEX}")
        try:
            arrays[key] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise VoiceError(f"Voice '{name}': cannot read {path}: {err}") from err
    return validate_prompt(arrays, f"'{name}'")
