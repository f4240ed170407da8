"""On-disk cache of spoken sentences, for announcements that repeat.

"The washing machine is done" costs seconds of GPU time once and a file read afterwards. Entries
are keyed by everything that shapes the audio (text, voice, model, sampling settings, seed),
bounded in total size with least-recently-used eviction, checked on read (a damaged file is
dropped and regenerated) and kept across restarts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
import zlib
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

MAGIC = b"BARKPCM1"
HEADER = struct.Struct("<8sQI")  # magic, PCM byte count, CRC-32 of the PCM


def cache_key(*parts: object) -> str:
    """A file-name-safe digest of ``parts`` (anything JSON can serialise)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class AudioCache:
    """PCM files in ``folder``, at most ``max_bytes`` in all. Thread-safe; does blocking I/O."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.hits = self.misses = self.corrupt = 0
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.pcm"

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        if len(raw) >= HEADER.size:
            magic, length, crc = HEADER.unpack_from(raw)
            pcm = raw[HEADER.size :]
            if magic == MAGIC and length == len(pcm) and zlib.crc32(pcm) == crc:
                self.hits += 1
                os.utime(path)  # most recently used
                return pcm
        _LOGGER.warning("Dropping damaged cache file %s", path)
        self.corrupt += 1
        self.misses += 1
        path.unlink(missing_ok=True)
        return None

    def put(self, key: str, pcm: bytes) -> None:
        if HEADER.size + len(pcm) > self.max_bytes:
            return
        path = self._path(key)
        temporary = path.with_suffix(f".{threading.get_ident()}.tmp")
        temporary.write_bytes(HEADER.pack(MAGIC, len(pcm), zlib.crc32(pcm)) + pcm)
        os.replace(temporary, path)  # readers never see half a file
        self._evict()

    def _entries(self) -> list[tuple[float, int, str]]:
        """(mtime, size, path) of every entry, oldest first."""
        entries = []
        for entry in os.scandir(self.folder):
            if entry.name.endswith(".pcm"):
                try:
                    info = entry.stat()
                except FileNotFoundError:  # evicted meanwhile
                    continue
                entries.append((info.st_mtime, info.st_size, entry.path))
        return sorted(entries)

    def _evict(self) -> None:
        with self._lock:
            entries = self._entries()
            total = sum(size for _, size, _ in entries)
            for _, size, path in entries:
                if total <= self.max_bytes:
                    break
                Path(path).unlink(missing_ok=True)
                total -= size

    def stats(self) -> dict:
        entries = self._entries()
        return {
            "cache_hits": self.hits,
            "cache_misses": self.misses,
            "cache_corrupt": self.corrupt,
            "cache_files": len(entries),
            "cache_bytes": sum(size for _, size, _ in entries),
        }
