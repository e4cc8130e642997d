"""A worker's device environment: which GPU it is pinned to and how many threads it uses, and ``-n auto``.

A worker cannot be moved to another device once CUDA may have started, so the controller fixes the device in the
environment the worker process starts with (:func:`worker_device_env`, applied to xdist's ``spec.env`` before
the workers are spawned). ``-n auto`` counts devices in GPU mode and physical cores on a CPU machine
(:func:`auto_num_workers`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Final

import pytest

from pytest_proofpack.errors import ProofpackError
from pytest_proofpack.scheduling.gpus import GpuInventory, detect_inventory

#: The visible device index of a worker (set in its start-up environment in GPU mode).
WORKER_GPU_ENV: Final = "PROOFPACK_WORKER_GPU"
_GATEWAY_NUMBER_RE: Final = re.compile(r"(\d+)$")
_THREAD_ENVS: Final = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PROOFPACK_TORCH_THREADS")


def gateway_number(gateway_id: str) -> str | None:
    """The trailing number of an xdist gateway id (``"gw3"`` → ``"3"``), or None when it has none."""
    m = _GATEWAY_NUMBER_RE.search(gateway_id)
    return m.group(1) if m else None


def physical_cores() -> int:
    """Physical CPU cores (psutil when installed), else logical cores, at least 1."""
    try:
        import psutil

        count = psutil.cpu_count(logical=False)
    except ImportError:
        count = None
    return int(count or os.cpu_count() or 1)


def worker_device_env(
    worker_index: int,
    inventory: GpuInventory,
    n_workers: int,
    environ: Mapping[str, str] | None = None,
    cores: int | None = None,
) -> dict[str, str]:
    """The environment variables worker ``worker_index`` of ``n_workers`` must start with.

    GPU mode: ``CUDA_VISIBLE_DEVICES`` = the device's entry in the parent's ``CUDA_VISIBLE_DEVICES`` list when
    it has one, else its physical (PCI bus order) index; ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so integers mean the
    same device as in NVML; ``PROOFPACK_WORKER_GPU`` = the visible index. More workers than devices share
    devices round-robin. Both modes: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``PROOFPACK_TORCH_THREADS`` =
    ``max(1, cores // n_workers)`` unless the parent already set them.
    """
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    devices = inventory.devices()
    if inventory.mode == "gpu" and devices:
        dev = devices[worker_index % len(devices)]
        parent = [e.strip() for e in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if e.strip()]
        out["CUDA_VISIBLE_DEVICES"] = parent[dev.index] if dev.index < len(parent) else dev.cuda_id
        out["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        out[WORKER_GPU_ENV] = str(dev.index)
    threads = str(max(1, (cores if cores is not None else physical_cores()) // max(1, n_workers)))
    for name in _THREAD_ENVS:
        if name not in env:
            out[name] = threads
    return out


def auto_num_workers(config: pytest.Config, inventory: GpuInventory) -> int | None:
    """Workers for ``-n auto``: one per device in GPU mode, physical cores in CPU mode.

    Returns None when ``PYTEST_XDIST_AUTO_NUM_WORKERS`` is set (xdist's default honours it) or for
    ``-n logical`` in CPU mode (xdist counts logical cores).
    """
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    devices = inventory.devices()
    if inventory.mode == "gpu" and devices:
        return len(devices)
    if getattr(config.option, "numprocesses", None) == "logical":
        return None
    return physical_cores()


def auto_num_workers_for(config: pytest.Config) -> int | None:
    """:func:`auto_num_workers` on the inventory ``--proofpack-gpu-memory`` describes.

    The environment override is checked first, so that an overridden ``-n auto`` never initialises NVML. xdist
    asks before ``pytest_configure``, so a bad option or ``PROOFPACK_FAKE_GPUS`` is reported here, as the same
    usage error the session would give without xdist.
    """
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    from pytest_proofpack.options import read_options

    try:
        return auto_num_workers(config, detect_inventory(read_options(config).gpu_memory))
    except ProofpackError as exc:
        raise pytest.UsageError(str(exc)) from None
