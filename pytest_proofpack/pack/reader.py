"""Reading a pack that may be hostile: regular files inside it only, each size-bounded, JSON depth-bounded.

:func:`read_regular` is the only way ``proofpack verify`` opens a file of a pack. It refuses a path that leaves
the pack, a symlink anywhere on the path, and anything but a regular file (a FIFO, a device, a socket or a
directory), checking with ``lstat`` before the open and ``fstat`` after it; the open itself never follows a
symlink and never blocks (``O_NOFOLLOW | O_NONBLOCK``), so a FIFO swapped in between cannot hang it.

:func:`stage_listed` copies the files checksums.sha256 lists (and only those, each checked against its digest as
it is read) into a private directory, where the verdict is recomputed: whatever else lies in the pack —
``__MACOSX/``, ``.DS_Store``, an unlisted record — is never read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pytest_proofpack.bounded import BoundError, loads_json
from pytest_proofpack.pack.layout import VerifyFailure, is_safe_relpath

__all__ = ["MAX_CONTROL_BYTES", "MAX_FILE_BYTES", "read_json", "read_regular", "stage_listed"]

#: Largest file of a pack verify reads (reports are kilobytes; index.html a few megabytes).
MAX_FILE_BYTES: Final = 256 * 2**20
#: Largest manifest, signature or checksums file.
MAX_CONTROL_BYTES: Final = 16 * 2**20
_KINDS: Final = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                 (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _walk(pack: Path, rel: str, check: str, missing: int) -> Path:
    """``pack/rel`` after checking every component with ``lstat``: present, no symlink, directories above."""
    cur = pack
    parts = rel.split("/")
    for i, part in enumerate(parts):
        cur = cur / part
        try:
            mode = os.lstat(cur).st_mode
        except FileNotFoundError:
            raise VerifyFailure(missing, check, f"{rel}: listed file is missing" if missing == 6 else
                                f"{rel} is missing") from None
        except OSError as exc:
            raise VerifyFailure(6, check, f"{rel}: cannot be examined ({exc.strerror})") from None
        if stat.S_ISLNK(mode):
            raise VerifyFailure(6, check, f"{rel}: {'/'.join(parts[: i + 1])} is a symlink")
        if i < len(parts) - 1 and not stat.S_ISDIR(mode):
            raise VerifyFailure(6, check, f"{rel}: {'/'.join(parts[: i + 1])} is not a directory")
        if i == len(parts) - 1 and not stat.S_ISREG(mode):
            raise VerifyFailure(6, check, f"{rel}: is {_kind(mode)}, not a regular file")
    return cur


def read_regular(pack: Path, rel: str, check: str, *, limit: int = MAX_FILE_BYTES, missing: int = 6) -> bytes:
    """The bytes of the regular file ``pack/rel``; a :class:`VerifyFailure` of ``check`` otherwise.

    Class ``missing`` (6 for a listed file, 3 for a file the layout requires) when it does not exist; 6 when the
    path escapes the pack, passes a symlink, names anything but a regular file, or holds more than ``limit`` bytes.
    """
    if not is_safe_relpath(rel):
        raise VerifyFailure(6, check, f"{rel!r}: path escapes the pack")
    path = _walk(pack, rel, check, missing)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        why = "became a symlink" if exc.errno == errno.ELOOP else f"cannot be opened ({exc.strerror})"
        raise VerifyFailure(6, check, f"{rel}: {why}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise VerifyFailure(6, check, f"{rel}: is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise VerifyFailure(6, check, f"{rel}: {info.st_size} bytes, more than the {limit} a pack file may hold")
        chunks = []
        size = 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > limit:
                raise VerifyFailure(6, check, f"{rel}: grew past {limit} bytes while it was read")
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_json(data: bytes, rel: str, check: str, *, code: int = 4) -> Any:
    """``data`` (the bytes of ``rel``) parsed as bounded JSON; a :class:`VerifyFailure` of class ``code``."""
    try:
        return loads_json(data.decode("utf-8"))
    except BoundError as exc:
        raise VerifyFailure(code, check, f"{rel}: {exc}") from None
    except (UnicodeDecodeError, ValueError):
        raise VerifyFailure(code, check, f"{rel} is not valid JSON") from None


def stage_listed(pack: Path, entries: Mapping[str, str], stage: Path, check: str) -> None:
    """Copy each listed file (``{relative path: sha256}``) of ``pack`` into ``stage``, checking its digest on the
    bytes read, and each JSON file's bounds; a :class:`VerifyFailure` of ``check`` at the first problem."""
    for rel, digest in sorted(entries.items()):
        data = read_regular(pack, rel, check)
        if hashlib.sha256(data).hexdigest() != digest:
            raise VerifyFailure(6, check, f"{rel}: sha256 mismatch (file was modified)")
        if rel.endswith(".json"):
            read_json(data, rel, check)
        target = stage / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
