"""Scheduling scenarios onto devices.

* :mod:`.gpus`: the device inventory (NVML, fake, CPU); :mod:`.plan`: a model's memory plan.
* :mod:`.scheduler`: the xdist scheduler, with its records (:mod:`.state`), groups (:mod:`.groups`), memory gate
  (:mod:`.memory_gate`) and choice of work (:mod:`.choice`).
* :mod:`.reservations`: devices held for a multi-GPU model, and the file that tells its leader.
* :mod:`.worker_env`: a worker's device environment and ``-n auto``; :mod:`.xdist_plugin`: the hooks that
  install the scheduler and pin the workers.
* :mod:`.launch`: the subprocess that runs a multi-GPU model's items on its reserved devices.

Importing this package is cheap: pynvml is imported only when an NVML inventory is built, and the scheduler
modules only when their names are first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_proofpack.lazy import lazy_exports
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
    from pytest_proofpack.scheduling.reservations import Reservation, reservation_for
    from pytest_proofpack.scheduling.scheduler import ProofpackScheduling
    from pytest_proofpack.scheduling.worker_env import auto_num_workers, worker_device_env
    from pytest_proofpack.scheduling.xdist_plugin import SchedulingPlugin

__getattr__ = lazy_exports(
    __name__,
    {
        "ProofpackScheduling": "scheduler",
        "Reservation": "reservations",
        "SchedulingPlugin": "xdist_plugin",
        "auto_num_workers": "worker_env",
        "reservation_for": "reservations",
        "worker_device_env": "worker_env",
    },
)

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
