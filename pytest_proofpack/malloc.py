"""glibc malloc settings for the processes that hold a model (Linux with glibc only; elsewhere nothing happens).

Three settings, all about the large blocks torch allocates and frees for every weight backup and activation:

* :func:`pin_malloc_mmap_threshold` (called when a worker loads a model): blocks of at least 1 MiB get their
  own mapping and go back to the OS when freed, so the heap cannot keep them resident behind fragmentation.
* :func:`reusing_heap` (held around each batch's forward, ``engine.metric.token_nll``, and around each edit or
  fault application and each restore): in a process that pinned the threshold, blocks up to 32 MiB come from the
  heap and stay there when freed, so each layer's activations reuse the pages of the layer before instead of
  faulting in fresh, kernel-zeroed ones; on leaving, the pin is back and ``malloc_trim`` gives every free page to
  the OS, so what a phase freed does not stay resident after it. Held per batch rather than per scenario, so a
  worker's peak grows by one forward's fragmentation only.
* :func:`worker_glibc_tunables` (applied by the controller before it spawns xdist workers): those mappings are
  advised as transparent huge pages (``glibc.malloc.hugetlb=1``), so touching a fresh 2 MiB region costs one
  page fault instead of 512. glibc reads ``GLIBC_TUNABLES`` only when a process starts, so it cannot be set from
  inside a worker; a run without xdist workers keeps 4 KiB pages.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Final

#: glibc ``mallopt`` parameter numbers of ``M_TRIM_THRESHOLD`` and ``M_MMAP_THRESHOLD`` (malloc.h).
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
#: glibc's default ``M_TRIM_THRESHOLD`` (128 KiB): what :func:`reusing_heap` puts back.
_DEFAULT_TRIM_THRESHOLD: Final = 128 << 10
#: The mmap threshold while :func:`reusing_heap` holds: glibc's largest (``DEFAULT_MMAP_THRESHOLD_MAX``, 64-bit).
REUSE_MMAP_THRESHOLD: Final = 32 << 20
#: The trim threshold while :func:`reusing_heap` holds: the largest ``int``, so a free never shrinks the heap.
_NEVER_TRIM: Final = (1 << 31) - 1
#: Blocks of at least this many bytes get their own mmap, unmapped on free (see :func:`pin_malloc_mmap_threshold`).
MALLOC_MMAP_THRESHOLD: Final = 1 << 20
#: The tunable that makes glibc advise its mmapped blocks as transparent huge pages (glibc >= 2.35).
HUGETLB_TUNABLE: Final = "glibc.malloc.hugetlb"

_pinned = False  # this process pinned the mmap threshold: reusing_heap may change it for a while
_depth = 0  # reusing_heap holds open in this process
_depth_lock = threading.Lock()


def _tunable_names(environ: Mapping[str, str]) -> set[str]:
    """The names set in ``environ``'s ``GLIBC_TUNABLES`` (``name=value`` items separated by ``:``)."""
    return {item.split("=", 1)[0].strip() for item in environ.get("GLIBC_TUNABLES", "").split(":") if item.strip()}


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
    backups and activations (megabytes each) therefore come from the heap, and once freed they stay resident behind
    fragmentation, so a worker's memory grows far beyond its live tensors. A fixed threshold
    (which also disables the adjustment) returns every such block to the OS when torch frees it. Not glibc (macOS,
    musl): nothing to do, ``False``. ``MALLOC_MMAP_THRESHOLD_`` in the environment wins (glibc reads it at start).
    """
    global _pinned
    if glibc_version() is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    applied = bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD))
    _pinned = _pinned or applied
    return applied


def _user_sets_trim_threshold(environ: Mapping[str, str]) -> bool:
    return "MALLOC_TRIM_THRESHOLD_" in environ or "glibc.malloc.trim_threshold" in _tunable_names(environ)


@contextlib.contextmanager
def reusing_heap() -> Iterator[None]:
    """Serve blocks up to :data:`REUSE_MMAP_THRESHOLD` from the heap, and keep them there when freed, while held;
    on leaving the outermost hold, pin the threshold again and give every free heap page back (``malloc_trim``).

    For a phase that allocates and frees the same large blocks over and over (a forward's activations, an edit's
    per-matrix temporaries): with the pin alone each of them is a fresh mapping whose every page faults and is
    zeroed by the kernel; here the second forward reuses the first one's pages. Between holds the process is as
    :func:`pin_malloc_mmap_threshold` left it, so blocks that outlive the phase (a weight backup kept past it, say)
    cost at most what they would have, and the phase's free memory does not stay resident.

    Nothing happens unless this process pinned the threshold (a plugin worker holding a model: a user's own
    ``MALLOC_MMAP_THRESHOLD_`` opts out of both); a user's trim threshold (``MALLOC_TRIM_THRESHOLD_`` or
    ``glibc.malloc.trim_threshold``) is left as it is. Reentrant; the holds of several threads are counted together.
    """
    global _depth
    if not _pinned:
        yield
        return
    libc = ctypes.CDLL(None)
    keep_trim = _user_sets_trim_threshold(os.environ)
    with _depth_lock:
        _depth += 1
        if _depth == 1:
            libc.mallopt(_M_MMAP_THRESHOLD, REUSE_MMAP_THRESHOLD)
            if not keep_trim:
                libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
    try:
        yield
    finally:
        with _depth_lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
                if not keep_trim:
                    libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)


def worker_glibc_tunables(environ: Mapping[str, str], version: tuple[int, int] | None = None) -> str | None:
    """The ``GLIBC_TUNABLES`` value a model worker should start with, or ``None`` to leave it as it is.

    ``environ``'s own value plus ``glibc.malloc.hugetlb=1``, on glibc >= 2.35 (``version``: default, the running
    one) and only when the tunable is not set already: a user's ``glibc.malloc.hugetlb=0`` turns it off.
    """
    version = glibc_version() if version is None else version
    if version is None or version < (2, 35):
        return None
    if HUGETLB_TUNABLE in _tunable_names(environ):
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    return f"{current}:{HUGETLB_TUNABLE}=1" if current.strip() else f"{HUGETLB_TUNABLE}=1"


__all__ = [
    "HUGETLB_TUNABLE",
    "MALLOC_MMAP_THRESHOLD",
    "REUSE_MMAP_THRESHOLD",
    "glibc_version",
    "pin_malloc_mmap_threshold",
    "reusing_heap",
    "worker_glibc_tunables",
]
