"""Device inventories: fake specs and files, memory caps, detection fallbacks, worker env and -n auto."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_proofpack.errors import OptionError
from pytest_proofpack.scheduling.gpus import CpuInventory, FakeInventory, detect_inventory
from pytest_proofpack.scheduling.worker_env import auto_num_workers, worker_device_env


def test_fake_spec_gives_uniform_devices() -> None:
    n, gb = random.randint(1, 9), random.choice([24, 40, 80, 141])
    inv = detect_inventory(environ={"PROOFPACK_FAKE_GPUS": f"{n}x{gb}"})
    assert inv.mode == "gpu"
    devs = inv.devices()
    assert [d.index for d in devs] == list(range(n))
    assert all(d.total_mib == gb * 1024 and d.free_mib == gb * 1024 for d in devs)


def test_fake_free_memory_is_settable() -> None:
    inv = FakeInventory.uniform(2, 80)
    free = random.uniform(1, 79)
    inv.set_free_gb(1, free)
    assert inv.refresh()[1].free_mib == int(free * 1024)
    assert inv.refresh()[0].free_mib == 80 * 1024


def test_fake_json_file(tmp_path: Path) -> None:
    f = tmp_path / "gpus.json"
    f.write_text(json.dumps([{"name": "A", "total_gb": 80, "free_gb": 10}, {"total_gb": 141}]))
    devs = detect_inventory(environ={"PROOFPACK_FAKE_GPUS": str(f)}).devices()
    assert [(d.name, d.total_mib, d.free_mib) for d in devs] == [
        ("A", 80 * 1024, 10 * 1024),
        ("Fake GPU", 141 * 1024, 141 * 1024),
    ]


@pytest.mark.parametrize("spec", ["4", "x80", "0x80", "4x", "four", "/nonexistent/gpus.json"])
def test_bad_fake_spec_names_variable(spec: str) -> None:
    with pytest.raises(OptionError, match=r"PROOFPACK_FAKE_GPUS.*NxG"):
        detect_inventory(environ={"PROOFPACK_FAKE_GPUS": spec})


def test_bad_fake_file_content(tmp_path: Path) -> None:
    f = tmp_path / "gpus.json"
    f.write_text(json.dumps([{"name": "A", "total_gb": 80, "free_gb": 90}]))
    with pytest.raises(OptionError, match=r"PROOFPACK_FAKE_GPUS file .*\$\[0\]"):
        detect_inventory(environ={"PROOFPACK_FAKE_GPUS": str(f)})


def test_memory_cap_shrinks_total_and_free() -> None:
    inv = FakeInventory.from_spec("2x80", cap_gb=40)
    assert all(d.total_mib == 40 * 1024 and d.free_mib == 40 * 1024 for d in inv.devices())
    capped = detect_inventory(environ={"PROOFPACK_FAKE_GPUS": "1x80", "GPU_MEMORY_PER_DEVICE": "24"})
    assert capped.devices()[0].total_mib == 24 * 1024
    with pytest.raises(OptionError, match="GPU_MEMORY_PER_DEVICE"):
        detect_inventory(environ={"PROOFPACK_FAKE_GPUS": "1x80", "GPU_MEMORY_PER_DEVICE": "lots"})


def test_no_nvml_falls_back_to_cpu_and_warns_once() -> None:
    warnings: list[str] = []
    inv = detect_inventory(warn=warnings.append, environ={})
    assert inv.mode == "cpu" and inv.devices() == [] and isinstance(inv, CpuInventory)
    assert len(warnings) == 1 and "\n" not in warnings[0] and "CPU" in warnings[0]


def test_worker_env_gpu_mode_honours_parent_list() -> None:
    inv = FakeInventory.uniform(3, 80)
    env = worker_device_env(2, inv, 3, environ={"CUDA_VISIBLE_DEVICES": "5,GPU-abc,7"}, cores=12)
    assert env["CUDA_VISIBLE_DEVICES"] == "7"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["PROOFPACK_WORKER_GPU"] == "2"
    assert env["OMP_NUM_THREADS"] == "4"
    plain = worker_device_env(1, inv, 3, environ={}, cores=12)
    assert plain["CUDA_VISIBLE_DEVICES"] == "1"
    # More workers than devices share them round-robin.
    assert worker_device_env(4, inv, 6, environ={}, cores=12)["CUDA_VISIBLE_DEVICES"] == "1"


def test_worker_env_cpu_mode_threads() -> None:
    cores, workers = random.randint(1, 64), random.randint(1, 8)
    env = worker_device_env(0, CpuInventory(), workers, environ={}, cores=cores)
    expect = str(max(1, cores // workers))
    assert env == {"OMP_NUM_THREADS": expect, "MKL_NUM_THREADS": expect, "PROOFPACK_TORCH_THREADS": expect}
    kept = worker_device_env(0, CpuInventory(), workers, environ={"OMP_NUM_THREADS": "3"}, cores=cores)
    assert "OMP_NUM_THREADS" not in kept


def test_auto_num_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    config = SimpleNamespace(option=SimpleNamespace(numprocesses="auto"))
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    n = random.randint(1, 8)
    assert auto_num_workers(config, FakeInventory.uniform(n, 80)) == n  # type: ignore[arg-type]
    assert auto_num_workers(config, CpuInventory()) >= 1  # type: ignore[arg-type, operator]
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "3")
    assert auto_num_workers(config, FakeInventory.uniform(n, 80)) is None  # type: ignore[arg-type]
