"""Values computed once across worker processes and kept on disk: a FileLock per entry, atomic writes.

A cache entry is a JSON object at a path named by a digest (:func:`stable_digest`) of everything that determines
it; whoever takes the entry's lock first computes and stores it, every other process waits and reads it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from pytest_proofpack.results import atomic_write_json, read_json_object


def load_or_compute(
    path: Path, compute: Callable[[], dict[str, Any]], *, blocking: bool = True
) -> dict[str, Any] | None:
    """``path``'s JSON object, or ``compute()`` stored there atomically, under ``path``'s FileLock (a corrupt entry
    is recomputed, never trusted). Either way the value comes back in its JSON form, so every process sees the
    same numbers. ``None`` only when ``blocking`` is false and another process holds the lock."""
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(blocking=blocking)
    except Timeout:
        return None
    try:
        data = read_json_object(path)
        if data is None:
            data = json.loads(json.dumps(compute()))
            atomic_write_json(path, data)
        return data
    finally:
        lock.release()


def shared_parts(directory: Path, n: int, compute: Callable[[int], dict[str, Any]],
                 on_done: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Items ``0..n-1``, each computed once across processes and kept as ``<directory>/part_<i>.json``.

    A first pass takes every item that no other process holds (a non-blocking FileLock per item) and computes it
    unless it is on disk; a second pass waits for the items that were held and reads them. Workers that reach the
    same uncalibrated model together therefore split its calibration runs instead of one computing them all while
    the others wait. ``on_done(k)`` is called each time this process has ``k`` of the ``n`` items (progress).
    """
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[int, dict[str, Any]] = {}
    for blocking in (False, True):
        for i in range(n):
            if i not in out:
                got = load_or_compute(directory / f"part_{i}.json", functools.partial(compute, i), blocking=blocking)
                if got is not None:
                    out[i] = got
                    if on_done is not None:
                        on_done(len(out))
    return [out[i] for i in range(n)]


def stable_digest(*parts: object) -> str:
    """sha256 hex of the parts' sorted JSON (``str`` for anything JSON cannot hold): a cache key."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
