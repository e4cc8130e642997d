"""A worker gives freed tensor memory back to the OS (glibc's mmap threshold pinned by the model runtime), reuses
heap pages for the activations of a phase (``reusing_heap``) and gives them back after it, and starts with huge
pages advised for malloc's mappings."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pytest_proofpack.malloc import _user_sets_trim_threshold, glibc_version, worker_glibc_tunables

# In a fresh process: glibc's dynamic threshold depends on everything the process freed before.
PROBE = textwrap.dedent(
    """
    import re, sys
    import torch
    from pytest_proofpack.malloc import pin_malloc_mmap_threshold

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


def _retained_mib(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(glibc_version() is None, reason="the mmap threshold is a glibc setting")
def test_pinned_threshold_returns_freed_tensors_to_the_os() -> None:
    pinned = _retained_mib("pin")
    default = _retained_mib("default")
    assert pinned < 16  # 256 MiB of 4 MiB tensors freed: only the 4 MiB of small blocks may stay
    assert default > pinned + 128  # the control: glibc's default policy keeps them resident behind the small blocks


# A phase's pattern: the same 8 MiB activation allocated, written and freed over and over, then blocks that the
# phase frees with small long-lived ones between them. Prints the page faults of the repeats once the heap is warm
# (the first few free blocks are split for small allocations, so a new one comes from the top) and the MiB still
# resident after the phase.
HEAP_PROBE = textwrap.dedent(
    """
    import contextlib, re, resource, sys
    import torch
    from pytest_proofpack.malloc import pin_malloc_mmap_threshold, reusing_heap

    def rss():
        return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024

    if sys.argv[1] != "unpinned":
        assert pin_malloc_mmap_threshold()
    base = rss()
    small = []
    with reusing_heap() if sys.argv[1] != "pinned" else contextlib.nullcontext():
        for _ in range(8):
            torch.ones(8 << 20, dtype=torch.uint8)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(16):
            torch.ones(8 << 20, dtype=torch.uint8)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        tensors = []
        for _ in range(32):
            tensors.append(torch.ones(4 << 20, dtype=torch.uint8))
            small.append(torch.ones(64 << 10, dtype=torch.uint8))
        del tensors
    print(faults, (rss() - base) >> 20)
    """
)


def _phase(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], capture_output=True, text=True, check=True)
    faults, retained = out.stdout.strip().splitlines()[-1].split()
    return int(faults), int(retained)


@pytest.mark.skipif(glibc_version() is None, reason="the mmap and trim thresholds are glibc settings")
def test_a_phase_reuses_heap_pages_and_gives_them_back_after() -> None:
    pinned_faults, pinned_retained = _phase("pinned")
    faults, retained = _phase("reusing")
    # 16 fresh 8 MiB mappings fault in 32768 pages of 4 KiB (fewer with transparent huge pages); reused heap pages
    # fault none, bar an occasional block that still comes from the top of the heap (0-2 of the 16 here).
    assert faults * 4 < pinned_faults
    assert retained < 16 and pinned_retained < 16  # the 128 MiB freed inside the phase went back to the OS
    # A process that did not pin the threshold (a user's own, or MALLOC_MMAP_THRESHOLD_ set) keeps glibc's policy:
    # the freed blocks stay in its heap behind the small ones, as without the hold.
    assert _phase("unpinned")[1] > 24


def test_a_users_trim_threshold_is_left_alone() -> None:
    assert not _user_sets_trim_threshold({})
    assert not _user_sets_trim_threshold({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    assert _user_sets_trim_threshold({"MALLOC_TRIM_THRESHOLD_": "0"})
    assert _user_sets_trim_threshold({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.trim_threshold=9"})


def test_worker_tunables_add_hugetlb_and_keep_the_callers() -> None:
    assert worker_glibc_tunables({}, (2, 36)) == "glibc.malloc.hugetlb=1"
    assert worker_glibc_tunables({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 35)) == (
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    )
    # The user's own setting wins, including "off"; an old glibc or another C library gets nothing.
    assert worker_glibc_tunables({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36)) is None
    assert worker_glibc_tunables({"GLIBC_TUNABLES": "a.b=1: glibc.malloc.hugetlb =1"}, (2, 36)) is None
    assert worker_glibc_tunables({}, (2, 34)) is None
    running = glibc_version()
    expected = "glibc.malloc.hugetlb=1" if running is not None and running >= (2, 35) else None
    assert worker_glibc_tunables({}) == expected  # the running C library decides


@pytest.mark.skipif(glibc_version() is None, reason="glibc only")
def test_glibc_version_is_the_running_one() -> None:
    import platform

    name, version = platform.libc_ver()
    assert name == "glibc" and glibc_version() == tuple(int(p) for p in version.split(".")[:2])


def test_controller_sets_the_tunables_for_its_workers_and_puts_them_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from pytest_proofpack.scheduling.gpus import CpuInventory
    from pytest_proofpack.scheduling.plan import PlanSettings
    from pytest_proofpack.scheduling.xdist_plugin import SchedulingPlugin

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    plugin = SchedulingPlugin(None, {}, PlanSettings(), CpuInventory())  # type: ignore[arg-type]
    plugin.pytest_xdist_setupnodes(None, [])  # type: ignore[arg-type]
    expected = worker_glibc_tunables({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert os.environ["GLIBC_TUNABLES"] == (expected or "glibc.malloc.arena_max=2")
    plugin.pytest_unconfigure(None)  # type: ignore[arg-type]
    assert os.environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    monkeypatch.delenv("GLIBC_TUNABLES")
    plugin.pytest_xdist_setupnodes(None, [])  # type: ignore[arg-type]
    plugin.pytest_unconfigure(None)  # type: ignore[arg-type]
    assert "GLIBC_TUNABLES" not in os.environ
