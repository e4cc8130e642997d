"""glibc malloc settings for the processes that hold a model (Linux with glibc only; elsewhere nothing happens).

Two settings, both about the large blocks torch allocates and frees for every weight backup and activation:

* :func:`pin_malloc_mmap_threshold` (called when a worker loads a model): blocks of at least 1 MiB get their
  own mapping and go back to the OS when freed, so the heap cannot keep them resident behind fragmentation.
* :func:`worker_glibc_tunables` (applied by the controller before it spawns xdist workers): those mappings are
  advised as transparent huge pages (``glibc.malloc.hugetlb=1``), so touching a fresh 2 MiB region costs one
  page fault instead of 512. With the pinned threshold alone a SmolLM2 worker spent ~20 % of its time in the
  kernel faulting in fresh pages (``bench/RESULTS.md``). glibc reads ``GLIBC_TUNABLES`` only when a process
  starts, so it cannot be set from inside a worker; a run without xdist workers keeps 4 KiB pages.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping
from typing import Final

#: glibc ``mallopt`` parameter number of ``M_MMAP_THRESHOLD`` (malloc.h).
_M_MMAP_THRESHOLD: Final = -3
#: Blocks of at least this many bytes get their own mmap, unmapped on free (see :func:`pin_malloc_mmap_threshold`).
MALLOC_MMAP_THRESHOLD: Final = 1 << 20
#: The tunable that makes glibc advise its mmapped blocks as transparent huge pages (glibc >= 2.35).
HUGETLB_TUNABLE: Final = "glibc.malloc.hugetlb"


def glibc_version() -> tuple[int, int] | None:
    """``(major, minor)`` of the running glibc, or ``None`` (not Linux, or another C library such as musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).gnu_get_libc_version
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_char_p
    try:
        major, minor = (int(p) for p in fn().decode().split(".")[:2])
    except ValueError:
        return None
    return major, minor


def pin_malloc_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at :data:`MALLOC_MMAP_THRESHOLD` for this process; ``True`` if it applied.

    glibc serves a block from its heap unless it exceeds the mmap threshold, and by default raises that threshold
    (up to 32 MiB) each time a larger mmapped block is freed. After the first big tensor is freed, weight-matrix
    backups and activations (1-30 MiB each) therefore come from the heap, and once freed they stay resident behind
    fragmentation: a SmolLM2 worker held ~1 GB more than its live tensors after calibrating. A fixed threshold
    (which also disables the adjustment) returns every such block to the OS when torch frees it. Not glibc (macOS,
    musl): nothing to do, ``False``. ``MALLOC_MMAP_THRESHOLD_`` in the environment wins (glibc reads it at start).
    """
    if glibc_version() is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD))


def worker_glibc_tunables(environ: Mapping[str, str], version: tuple[int, int] | None = None) -> str | None:
    """The ``GLIBC_TUNABLES`` value a model worker should start with, or ``None`` to leave it as it is.

    ``environ``'s own value plus ``glibc.malloc.hugetlb=1``, on glibc >= 2.35 (``version``: default, the running
    one) and only when the tunable is not set already: a user's ``glibc.malloc.hugetlb=0`` turns it off.
    """
    version = glibc_version() if version is None else version
    if version is None or version < (2, 35):
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    names = {item.split("=", 1)[0].strip() for item in current.split(":") if item.strip()}
    if HUGETLB_TUNABLE in names:
        return None
    return f"{current}:{HUGETLB_TUNABLE}=1" if current.strip() else f"{HUGETLB_TUNABLE}=1"


__all__ = [
    "HUGETLB_TUNABLE",
    "MALLOC_MMAP_THRESHOLD",
    "glibc_version",
    "pin_malloc_mmap_threshold",
    "worker_glibc_tunables",
]
