"""A worker gives freed tensor memory back to the OS (glibc's mmap threshold pinned by the model runtime)."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest

# In a fresh process: glibc's dynamic threshold depends on everything the process freed before.
PROBE = textwrap.dedent(
    """
    import re, sys
    import torch
    from pytest_proofpack.runtime import pin_malloc_mmap_threshold

    def rss():
        return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024

    if sys.argv[1] == "pin":
        assert pin_malloc_mmap_threshold()
    big = torch.ones(24 << 20, dtype=torch.uint8)
    del big  # glibc's default policy now serves blocks below 24 MiB from the heap
    base = rss()
    tensors, small = [], []
    for _ in range(64):  # 4 MiB tensors (like weight backups), a small long-lived block after each
        tensors.append(torch.ones(4 << 20, dtype=torch.uint8))
        small.append(torch.ones(64 << 10, dtype=torch.uint8))
    del tensors
    print((rss() - base) >> 20)
    """
)


def _glibc() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    return True


def _retained_mib(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not _glibc(), reason="the mmap threshold is a glibc setting")
def test_pinned_threshold_returns_freed_tensors_to_the_os() -> None:
    pinned = _retained_mib("pin")
    default = _retained_mib("default")
    assert pinned < 16  # 256 MiB of 4 MiB tensors freed: only the 4 MiB of small blocks may stay
    assert default > pinned + 128  # the control: glibc's default policy keeps them resident behind the small blocks
