"""Reading files from folders other people can write to (the voices folder; Samba, SSH, other apps).

Such a file can be swapped between two looks at it: checked as a small regular file, then opened
as a FIFO (which blocks ``open`` forever), a 2 GiB sparse file or ``/dev/zero``. So a user file is
opened **once** — not following a symbolic link, never blocking — and everything after is done
through that descriptor: ``fstat`` (a regular file, within a size bound), then reads bounded by
that size. What a name points to later no longer matters.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_OPEN_FLAGS |= getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


class UserFileError(ValueError):
    """A user file that cannot be used; the message says why (it names the file's name only)."""


@dataclass(frozen=True)
class Listed:
    """What a folder listing may show of a file: its size and change time (``lstat``)."""

    size: int
    mtime_ns: int


def listable(path: Path, max_bytes: int) -> Listed | str:
    """``path`` as a listing sees it without opening it: a regular file (not a link) holding 1 to
    ``max_bytes`` bytes, else the reason it is left out."""
    try:
        info = path.lstat()
    except OSError as err:
        return f"it cannot be read ({err.strerror or err})"
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link (copy the file itself into the folder)"
    if not stat.S_ISREG(info.st_mode):
        return "it is not a regular file"
    if info.st_size == 0:
        return "it is empty"
    if info.st_size > max_bytes:
        return f"it is larger than {_size(max_bytes)}"
    return Listed(info.st_size, info.st_mtime_ns)


def read_user_file(path: Path, max_bytes: int) -> bytes:
    """The whole content of ``path``, read through one descriptor; raises ``UserFileError``
    (``FileNotFoundError`` if it does not exist). Never blocks on a FIFO or device, never reads
    more than ``max_bytes`` + 1 bytes whatever the file claims."""
    name = path.name
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserFileError(f"{name} is a symbolic link (copy the file itself into the folder)") from err
        raise UserFileError(f"{name} cannot be opened ({err.strerror or err})") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserFileError(f"{name} is not a regular file")
        if info.st_size > max_bytes:
            raise UserFileError(f"{name} is larger than {_size(max_bytes)}")
        os.set_blocking(fd, True)  # a regular file: reads do not block on a writer
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 16, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:  # it grew while read (or lied about its size, as /proc files do)
            raise UserFileError(f"{name} is larger than {_size(max_bytes)}")
        return b"".join(chunks)
    except OSError as err:
        raise UserFileError(f"{name} cannot be read ({err.strerror or err})") from err
    finally:
        os.close(fd)


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 and not limit % (1 << 20) else f"{limit} bytes"
