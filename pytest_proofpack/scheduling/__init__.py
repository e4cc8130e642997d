"""Scheduling scenarios onto devices: inventory (:mod:`.gpus`), memory plans (:mod:`.plan`), the xdist
scheduler with per-worker pinning (:mod:`.xdist`) and the subprocess that runs a multi-GPU model's items on its
reserved devices (:mod:`.launch`).

Importing this package is cheap: pynvml is imported only when an NVML inventory is built, and the xdist
scheduler module only when its names are first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_proofpack.scheduling.gpus import (
    CpuInventory,
    FakeInventory,
    GpuDevice,
    GpuInventory,
    NvmlInventory,
    detect_inventory,
)
from pytest_proofpack.scheduling.plan import ModelPlan, PlanSettings, plan_model

if TYPE_CHECKING:
    from pytest_proofpack.scheduling.xdist import (
        ProofpackScheduling,
        Reservation,
        SchedulingPlugin,
        auto_num_workers,
        reservation_for,
        worker_device_env,
    )

_LAZY = {
    "ProofpackScheduling",
    "Reservation",
    "SchedulingPlugin",
    "auto_num_workers",
    "reservation_for",
    "worker_device_env",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from pytest_proofpack.scheduling import xdist

        return getattr(xdist, name)
    raise AttributeError(name)


__all__ = [
    "CpuInventory",
    "FakeInventory",
    "GpuDevice",
    "GpuInventory",
    "ModelPlan",
    "NvmlInventory",
    "PlanSettings",
    "ProofpackScheduling",
    "Reservation",
    "SchedulingPlugin",
    "auto_num_workers",
    "detect_inventory",
    "plan_model",
    "reservation_for",
    "worker_device_env",
]
