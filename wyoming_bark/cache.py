"""On-disk cache of spoken sentences, for announcements that repeat.

"The washing machine is done" costs seconds of GPU time once and a file read afterwards. Entries
are keyed by everything that shapes the audio (text, voice, model, sampling settings, seed),
bounded in total size with least-recently-used eviction, checked on read (a damaged file is
dropped and regenerated) and kept across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
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
    """PCM files in ``folder``, at most ``max_bytes`` in all. Thread-safe; does blocking I/O.

    Best effort throughout: a full, read-only or shared directory, a race with eviction (or with a
    second server using the same folder), or anything odd where an entry should be, is logged
    once per kind and treated as a miss; it never fails a request.
    """

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.hits = self.misses = self.corrupt = 0
        self._lock = threading.Lock()
        self._reported: set[tuple[str, int | None]] = set()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for leftover in folder.glob("*.tmp"):  # from a crash or a full disk
                leftover.unlink(missing_ok=True)
        except OSError as err:
            self._report("open", err)

    def _report(self, what: str, err: OSError) -> None:
        """Log a cache problem once per operation and kind of error."""
        if (what, err.errno) not in self._reported:
            self._reported.add((what, err.errno))
            _LOGGER.warning(
                "Sentence cache: cannot %s in %s (%s); carrying on without it", what, self.folder, err
            )

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.pcm"

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:  # not cached, or evicted meanwhile
            self.misses += 1
            return None
        except OSError as err:  # e.g. a directory where the entry should be
            self._report("read an entry", err)
            raw = b""
        if len(raw) >= HEADER.size:
            magic, length, crc = HEADER.unpack_from(raw)
            pcm = raw[HEADER.size :]
            if magic == MAGIC and length == len(pcm) and zlib.crc32(pcm) == crc:
                self.hits += 1
                try:
                    os.utime(path)  # most recently used
                except OSError as err:  # read-only, or evicted since the read: the audio is good
                    self._report("mark an entry as used", err)
                return pcm
        _LOGGER.warning("Dropping damaged cache entry %s", path)
        self.corrupt += 1
        self.misses += 1
        self._remove(path)
        return None

    def shared(self) -> None:
        """The miss just counted was answered by the same sentence being made for another
        request: it is a hit (four requests for one new sentence: one miss, three hits)."""
        with self._lock:
            self.misses -= 1
            self.hits += 1

    def _remove(self, path: Path) -> None:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as err:
            self._report("remove a damaged entry", err)

    def put(self, key: str, pcm: bytes) -> None:
        if HEADER.size + len(pcm) > self.max_bytes:
            return
        path = self._path(key)
        temporary = path.with_suffix(f".{threading.get_ident()}.tmp")
        try:
            temporary.write_bytes(HEADER.pack(MAGIC, len(pcm), zlib.crc32(pcm)) + pcm)
            os.replace(temporary, path)  # readers never see half a file
        except OSError as err:  # full or read-only disk, a directory in the way
            self._report("store an entry", err)
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            return
        self._evict()

    def _entries(self) -> list[tuple[float, int, str]]:
        """(mtime, size, path) of every entry, oldest first."""
        entries = []
        try:
            scan = list(os.scandir(self.folder))
        except OSError as err:
            self._report("list entries", err)
            return []
        for entry in scan:
            if entry.name.endswith(".pcm"):
                try:
                    info = entry.stat()
                except OSError:  # evicted meanwhile
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
                self._remove(Path(path))
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


class Claim:
    """The right (and duty) to make one sentence that is not cached: ``keep`` its audio (stored,
    and handed to everyone waiting for it) or ``drop`` it (they make it themselves)."""

    def __init__(self, flight: SingleFlight, key: str) -> None:
        self.key = key
        self._flight = flight
        self._made: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

    async def keep(self, pcm: bytes) -> None:
        self._end(pcm)
        await asyncio.to_thread(self._flight.cache.put, self.key, pcm)

    def drop(self) -> None:
        self._end(None)

    def _end(self, pcm: bytes | None) -> None:
        if not self._made.done():
            self._made.set_result(pcm)
        if self._flight.making.get(self.key) is self:
            del self._flight.making[self.key]


class SingleFlight:
    """The cache as requests see it (on the event loop): a sentence is a hit, or it waits for
    the same sentence being made for another request, or it is claimed, once, to be made. The
    maker streams its audio to its own listener while it is made, so the claim, not a ``make``
    callable, is what the maker holds."""

    def __init__(self, cache: AudioCache) -> None:
        self.cache = cache
        self.making: dict[str, Claim] = {}

    async def get_or_claim(self, key: str) -> bytes | Claim:
        cached = await asyncio.to_thread(self.cache.get, key)
        while cached is None and key in self.making:  # being made now: wait for it
            cached = await asyncio.shield(self.making[key]._made)
            if cached is not None:
                self.cache.shared()
        if cached is not None:
            return cached
        claim = self.making[key] = Claim(self, key)
        return claim
