"""The scheduler's memory gate: which device each worker is pinned to, and whether a model fits on it.

In GPU mode a model may start on a worker only if its memory plan fits the worker's device now: ``need_gb ≤
available × usable_frac``, where ``available`` is the device's live free memory (read from the inventory at most
once per scheduling pass) plus what the worker's own previous model holds (released when it switches models).
CPU mode, or a model without a plan, never gates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pytest_proofpack.scheduling.gpus import GpuDevice, GpuInventory
from pytest_proofpack.scheduling.state import ModelGroup
from pytest_proofpack.scheduling.worker_env import WORKER_GPU_ENV, gateway_number

if TYPE_CHECKING:
    from xdist.workermanage import WorkerController


class MemoryGate:
    """Device memory as the scheduler sees it. ``usable_frac``: the share of a device a model may plan to use."""

    def __init__(self, inventory: GpuInventory, usable_frac: float) -> None:
        self.inventory = inventory
        self.usable_frac = usable_frac
        self.devices: list[GpuDevice] = inventory.devices()
        self._fresh = False

    @property
    def gpu_mode(self) -> bool:
        """True when the inventory has GPUs (memory gating on)."""
        return self.inventory.mode == "gpu" and bool(self.devices)

    def largest_gb(self) -> float:
        """The largest device's total memory (GiB), 0 in CPU mode: what a model's plan is made against."""
        return max((d.total_gb for d in self.devices), default=0.0) if self.gpu_mode else 0.0

    def new_pass(self) -> None:
        """A scheduling pass starts: the next :meth:`fits` reads live free memory again."""
        self._fresh = False

    def fits(self, device: int | None, held_gb: float, group: ModelGroup) -> bool:
        """``group`` fits ``device`` now, counting the ``held_gb`` its worker's current model frees."""
        if not self.gpu_mode or device is None or group.plan is None:
            return True
        if not self._fresh:
            self.devices = self.inventory.refresh()
            self._fresh = True
        dev = self.devices[device]
        available = min(dev.total_gb, dev.free_gb + held_gb)
        return group.need_gb <= available * self.usable_frac

    def fits_ever(self, device: int | None, group: ModelGroup) -> bool:
        """``group`` would fit ``device`` were it empty."""
        if not self.gpu_mode or device is None or group.plan is None:
            return True
        return group.need_gb <= self.devices[device].total_gb * self.usable_frac

    def pinned_device(self, node: WorkerController) -> tuple[int | None, str]:
        """The device ``node`` was pinned to: its index in the inventory (None without devices) and its
        ``CUDA_VISIBLE_DEVICES`` entry.

        Read from :data:`WORKER_GPU_ENV` in the node's spec env, else ``workerinput["proofpack_gpu"]``, else
        its gateway number; taken modulo the device count.
        """
        env: Mapping[str, str] = getattr(getattr(node.gateway, "spec", None), "env", None) or {}
        raw = env.get(WORKER_GPU_ENV)
        if raw is None:
            value = getattr(node, "workerinput", {}).get("proofpack_gpu")
            raw = "" if value is None else str(value)
        if not raw:
            raw = gateway_number(str(node.gateway.id)) or "0"
        if not self.devices:
            return None, raw
        device = int(raw) % len(self.devices) if raw.isdigit() else 0
        return device, env.get("CUDA_VISIBLE_DEVICES") or self.devices[device].cuda_id
