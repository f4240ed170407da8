"""Float audio to the 16-bit mono PCM the Wyoming protocol carries, in chunks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

SAMPLE_RATE = 24_000  # Bark's (EnCodec's) rate
SAMPLE_WIDTH = 2  # bytes: 16-bit
CHANNELS = 1


def to_pcm(audio: np.ndarray) -> bytes:
    """Float audio in [-1, 1] -> 16-bit little-endian PCM."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def chunked(pcm: bytes, samples_per_chunk: int) -> Iterator[bytes]:
    step = samples_per_chunk * SAMPLE_WIDTH
    for start in range(0, len(pcm), step):
        yield pcm[start : start + step]
