"""What accelerators this machine offers: a small inventory behind one protocol.

Three implementations answer :class:`GpuInventory`:

* :class:`NvmlInventory` reads NVIDIA devices through NVML (``pynvml``, imported lazily). NVML numbers
  *physical* devices in PCI bus order while a process sees only ``CUDA_VISIBLE_DEVICES``; the inventory maps
  each visible entry (an integer, read in PCI bus order like NVML, or a ``GPU-``/``MIG-`` UUID or UUID prefix)
  to its physical device, so ``GpuDevice.index`` is what CUDA calls the device inside this process.
* :class:`FakeInventory` stands in for GPUs on machines without them (``PROOFPACK_FAKE_GPUS``): ``4x80`` is
  four devices of 80 GiB, or a path to a JSON file listing devices. Tests and the simulator change its
  free memory.
* :class:`CpuInventory` has no devices: CPU mode, where memory gating is off.

Memory is in MiB on :class:`GpuDevice`; "GB" anywhere in this package means GiB (2**30 bytes).
``GPU_MEMORY_PER_DEVICE`` (GiB) or ``memory_override_gb`` caps every device's total memory (a shared or
partitioned card); the free memory is reduced by what is already in use so the cap behaves like a smaller
device.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from pytest_proofpack.errors import OptionError

FAKE_ENV = "PROOFPACK_FAKE_GPUS"
MEMORY_ENV = "GPU_MEMORY_PER_DEVICE"
#: Set (comma-separated device ids) in the subprocess of a multi-GPU reservation (see :mod:`.launch`).
RESERVED_DEVICES_ENV = "PROOFPACK_RESERVED_DEVICES"
_FAKE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+(?:\.\d+)?)\s*$")
_MIB_PER_GB = 1024
#: Bounds of a fake inventory: devices, and GiB per device.
MAX_FAKE_DEVICES = 1024
MAX_DEVICE_GB = 100_000.0

Mode = Literal["gpu", "cpu"]


@dataclass(frozen=True)
class GpuDevice:
    """One device as this process sees it.

    ``index`` is the visible index (what ``cuda:<index>`` means here), ``physical_index`` the NVML index (PCI
    bus order), ``visible_id`` the ``CUDA_VISIBLE_DEVICES`` entry that names it to a child process (the
    parent's entry when it set one, else the physical index). ``processes`` counts compute processes NVML
    reports on it.
    """

    index: int
    physical_index: int
    name: str
    total_mib: int
    free_mib: int
    processes: int
    visible_id: str = ""

    @property
    def total_gb(self) -> float:
        """Total memory in GiB."""
        return self.total_mib / _MIB_PER_GB

    @property
    def free_gb(self) -> float:
        """Free memory in GiB (as of the last refresh)."""
        return self.free_mib / _MIB_PER_GB

    @property
    def cuda_id(self) -> str:
        """The ``CUDA_VISIBLE_DEVICES`` entry that selects this device in a child process."""
        return self.visible_id or str(self.physical_index)


class GpuInventory(Protocol):
    """The devices available to this pytest session."""

    @property
    def mode(self) -> Mode:
        """``"gpu"`` when there is at least one device, else ``"cpu"``."""
        ...

    def devices(self) -> list[GpuDevice]:
        """The devices as of the last refresh (cheap; no driver call)."""
        ...

    def refresh(self) -> list[GpuDevice]:
        """Re-read live free memory and process counts, and return the devices."""
        ...

    def describe(self) -> str:
        """One line for the terminal header, e.g. ``2 GPU(s): 0 NVIDIA H100 (80.0 GiB, 79.1 free); ...``."""
        ...


def _describe_devices(devices: list[GpuDevice], source: str) -> str:
    parts = [f"{d.index} {d.name} ({d.total_gb:.1f} GiB, {d.free_gb:.1f} free)" for d in devices]
    return f"{len(devices)} GPU(s) [{source}]: " + "; ".join(parts)


def _cap(device: GpuDevice, cap_gb: float | None) -> GpuDevice:
    """Apply a per-device memory cap: total ← min(total, cap); free shrinks by the memory already used."""
    if cap_gb is None:
        return device
    cap_mib = int(cap_gb * _MIB_PER_GB)
    if cap_mib >= device.total_mib:
        return device
    used = device.total_mib - device.free_mib
    return replace(device, total_mib=cap_mib, free_mib=max(0, cap_mib - used))


def memory_cap_from_env(override_gb: float | None, environ: Mapping[str, str]) -> float | None:
    """The per-device cap in GiB: ``override_gb`` if given, else ``GPU_MEMORY_PER_DEVICE``, else ``None``.

    Raises :class:`OptionError` when the variable is not a positive number.
    """
    if override_gb is not None:
        if override_gb <= 0:
            raise OptionError(f"memory override must be a positive number of GiB, got {override_gb}")
        return override_gb
    raw = environ.get(MEMORY_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or not 0 < value <= MAX_DEVICE_GB:
        raise OptionError(f"{MEMORY_ENV}={raw!r} is not a positive number of GiB; set e.g. {MEMORY_ENV}=80")
    return value


class CpuInventory:
    """No devices: CPU mode. ``reason`` says why (shown once as a warning by :func:`detect_inventory`)."""

    def __init__(self, reason: str = "no GPU requested") -> None:
        self.reason = reason

    @property
    def mode(self) -> Mode:
        return "cpu"

    def devices(self) -> list[GpuDevice]:
        return []

    def refresh(self) -> list[GpuDevice]:
        return []

    def describe(self) -> str:
        return f"CPU only ({self.reason})"


class FakeInventory:
    """Pretend devices for tests and the simulator; free memory is whatever :meth:`set_free_gb` last said."""

    def __init__(self, devices: list[GpuDevice], source: str = "fake") -> None:
        if not devices:
            raise OptionError(f"{FAKE_ENV} describes no devices; use NxG (e.g. 4x80) or a JSON device file")
        self._devices = list(devices)
        self._source = source

    @classmethod
    def uniform(cls, count: int, total_gb: float, name: str = "Fake GPU") -> FakeInventory:
        """``count`` identical devices of ``total_gb`` GiB, all free."""
        mib = int(total_gb * _MIB_PER_GB)
        return cls([GpuDevice(i, i, name, mib, mib, 0) for i in range(count)], f"fake {count}x{total_gb:g}")

    @classmethod
    def from_spec(cls, spec: str, cap_gb: float | None = None) -> FakeInventory:
        """Parse ``NxG`` or a JSON file path. Raises :class:`OptionError` naming ``PROOFPACK_FAKE_GPUS``."""
        m = _FAKE_RE.match(spec) if len(spec) <= 40 else None
        if m is not None and 0 < int(m.group(1)) <= MAX_FAKE_DEVICES and 0 < float(m.group(2)) <= MAX_DEVICE_GB:
            inv = cls.uniform(int(m.group(1)), float(m.group(2)))
        elif m is None and len(spec) < 4096 and Path(spec).is_file():
            inv = cls(_load_fake_file(Path(spec)), f"fake {spec}")
        else:
            raise OptionError(
                f"{FAKE_ENV}={spec[:60]!r} is not understood; use NxG (e.g. 4x80 = four 80 GiB devices) or the "
                'path of a JSON file [{"name": ..., "total_gb": 80, "free_gb": 70}, ...]'
            )
        inv._devices = [_cap(d, cap_gb) for d in inv._devices]
        return inv

    @property
    def mode(self) -> Mode:
        return "gpu"

    def devices(self) -> list[GpuDevice]:
        return list(self._devices)

    def refresh(self) -> list[GpuDevice]:
        return list(self._devices)

    def set_free_gb(self, index: int, free_gb: float) -> None:
        """Set device ``index``'s free memory (clamped to ``[0, total]``)."""
        d = self._devices[index]
        free = min(d.total_mib, max(0, int(free_gb * _MIB_PER_GB)))
        self._devices[index] = replace(d, free_mib=free)

    def describe(self) -> str:
        return _describe_devices(self._devices, self._source)


def _load_fake_file(path: Path) -> list[GpuDevice]:
    where = f"{FAKE_ENV} file {path}"
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OptionError(f"{where} is not readable JSON ({exc}); write a list of devices") from exc
    if isinstance(data, dict):
        data = data.get("devices")
    if not isinstance(data, list) or not data or len(data) > MAX_FAKE_DEVICES:
        raise OptionError(f'{where}: expected a non-empty list of at most {MAX_FAKE_DEVICES} devices '
                          '(or {"devices": [...]})')
    out: list[GpuDevice] = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise OptionError(f"{where}: $[{i}] must be an object with name/total_gb/free_gb")
        try:
            total = float(entry["total_gb"])
            free = float(entry.get("free_gb", total))
            processes = int(entry.get("processes", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise OptionError(f"{where}: $[{i}].total_gb must be a number of GiB ({exc})") from exc
        if not 0 < total <= MAX_DEVICE_GB or not 0 <= free <= total:
            raise OptionError(f"{where}: $[{i}] needs total_gb > 0 and 0 <= free_gb <= total_gb")
        out.append(
            GpuDevice(
                index=i,
                physical_index=i,
                name=str(entry.get("name", "Fake GPU")),
                total_mib=int(total * _MIB_PER_GB),
                free_mib=int(free * _MIB_PER_GB),
                processes=processes,
            )
        )
    return out


class NvmlInventory:
    """NVIDIA devices read through NVML; the constructor raises ``pynvml.NVMLError`` when NVML is unusable."""

    def __init__(
        self, memory_override_gb: float | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        import pynvml

        env = os.environ if environ is None else environ
        self._cap = memory_cap_from_env(memory_override_gb, env)
        pynvml.nvmlInit()
        self._handles: list[tuple[int, str, Any]] = []  # (physical index, visible id, handle)
        count = int(pynvml.nvmlDeviceGetCount())
        physical = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            self._handles = [(i, "", h) for i, h in enumerate(physical)]
        else:
            self._handles = self._map_visible(visible, physical)
        self._devices: list[GpuDevice] = []
        self.refresh()

    @staticmethod
    def _map_visible(visible: str, physical: list[Any]) -> list[tuple[int, str, Any]]:
        """Map ``CUDA_VISIBLE_DEVICES`` entries to NVML handles; like CUDA, stop at the first bad entry."""
        import pynvml

        uuids = [_text(pynvml.nvmlDeviceGetUUID(h)) for h in physical]
        out: list[tuple[int, str, Any]] = []
        for raw in visible.split(","):
            entry = raw.strip()
            if not entry:
                break
            if entry.isdigit():
                i = int(entry)
                if i >= len(physical):
                    break
                out.append((i, entry, physical[i]))
            elif entry.startswith("GPU-"):
                hits = [i for i, u in enumerate(uuids) if u.startswith(entry)]
                if len(hits) != 1:
                    break
                out.append((hits[0], entry, physical[hits[0]]))
            elif entry.startswith("MIG-"):
                try:
                    handle = pynvml.nvmlDeviceGetHandleByUUID(entry)
                    parent = pynvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(handle)
                    out.append((int(pynvml.nvmlDeviceGetIndex(parent)), entry, handle))
                except pynvml.NVMLError:
                    break
            else:
                break
        return out

    @property
    def mode(self) -> Mode:
        return "gpu" if self._handles else "cpu"

    def devices(self) -> list[GpuDevice]:
        return list(self._devices)

    def refresh(self) -> list[GpuDevice]:
        import pynvml

        devices: list[GpuDevice] = []
        for index, (phys, vid, handle) in enumerate(self._handles):
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                procs = len(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
            except pynvml.NVMLError:
                procs = 0  # not supported on some MIG/vGPU setups; the count is informational only
            dev = GpuDevice(
                index=index,
                physical_index=phys,
                name=_text(pynvml.nvmlDeviceGetName(handle)),
                total_mib=int(mem.total) // 2**20,
                free_mib=int(mem.free) // 2**20,
                processes=procs,
                visible_id=vid,
            )
            devices.append(_cap(dev, self._cap))
        self._devices = devices
        return list(devices)

    def describe(self) -> str:
        return _describe_devices(self._devices, "nvml")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def detect_inventory(
    memory_override_gb: float | None = None,
    warn: Callable[[str], None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> GpuInventory:
    """Pick the inventory for this session.

    ``PROOFPACK_FAKE_GPUS`` set → :class:`FakeInventory`; NVML usable with ≥ 1 visible device →
    :class:`NvmlInventory`; otherwise :class:`CpuInventory`, and ``warn`` is called once with a one-line
    reason. Raises :class:`OptionError` for a malformed ``PROOFPACK_FAKE_GPUS`` or ``GPU_MEMORY_PER_DEVICE``.
    """
    env = os.environ if environ is None else environ
    cap = memory_cap_from_env(memory_override_gb, env)
    fake = env.get(FAKE_ENV, "").strip()
    if fake:
        return FakeInventory.from_spec(fake, cap)
    reason: str
    try:
        import pynvml
    except ImportError:
        reason = "nvidia-ml-py is not installed"
    else:
        try:
            inv = NvmlInventory(cap, env)
        except pynvml.NVMLError as exc:
            reason = f"NVML unavailable: {exc}"
        else:
            if inv.mode == "gpu":
                return inv
            reason = f"no visible GPU (CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '')!r})"
    if warn is not None:
        warn(f"proofpack: running on CPU ({reason}); memory gating is off")
    return CpuInventory(reason)


def device_map_for_process(device: str) -> str | None:
    """``"auto"`` (transformers/accelerate spread the model over the visible devices) when this process is a
    reservation's subprocess (:data:`RESERVED_DEVICES_ENV` lists 2+ devices), loads on CUDA and sees more than
    one CUDA device; None otherwise (a one-device worker, a CPU run)."""
    reserved = [d for d in os.environ.get(RESERVED_DEVICES_ENV, "").split(",") if d.strip()]
    if len(reserved) < 2 or not device.startswith("cuda"):
        return None
    import torch

    return "auto" if torch.cuda.device_count() > 1 else None
