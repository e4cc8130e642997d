"""Disk preflight and determinism settings: estimates, the refusal message, and the torch switches."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from pytest_proofpack.catalog import load_catalog
from pytest_proofpack.preflight import DiskSpaceError, check_disk, estimate


def test_estimate_counts_conversion_and_cases(tmp_path: Path) -> None:
    cases = load_catalog().expand("smoke")
    cache_need, run_need = estimate(cases, tmp_path, save_models=False)
    # fp32 GGUF conversion + token/baseline cache + the spilled backups of one change of every matrix
    assert cache_need == int((0.135e9 * 4 + 64 * 2**20 + 0.135e9 * 4) * 1.10)
    assert run_need == int(2 * 2 * 2**20 * len(cases) * 1.10)
    _, with_models = estimate(cases, tmp_path, save_models=True)
    edits = sum(1 for c in cases if c.scenario.kind == "edit")
    assert with_models - run_need == pytest.approx(int(0.135e9 * 4) * edits * 1.10, rel=1e-6)


def test_short_disk_is_refused_with_the_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = load_catalog().expand("full")
    real = shutil.disk_usage

    def tiny(path: Any) -> Any:
        usage = real(path)
        return type(usage)(usage.total, usage.total - 2**30, 2**30)  # 1 GiB free

    monkeypatch.setattr(shutil, "disk_usage", tiny)
    with pytest.raises(DiskSpaceError) as err:
        check_disk(cases, tmp_path / "cache", tmp_path / "run", save_models=False)
    msg = str(err.value)
    assert "has 1.0 GiB free but this run needs about" in msg and "--proofpack-skip-disk-check" in msg
    assert "\n" not in msg
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_determinism_modes_set_torch_switches() -> None:
    import torch

    from pytest_proofpack.determinism import apply_determinism
    from pytest_proofpack.edits.lowrank import lowrank_truncate, native_bf16

    try:
        strict = apply_determinism("strict")
        assert strict["deterministic_algorithms"] and torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.benchmark
        w = torch.randn(300, 200, generator=torch.Generator().manual_seed(0))
        assert lowrank_truncate(w, 8)[2] == "randomized-fp32" and not strict["lowrank_bf16_power_iterations"]
        fast = apply_determinism("throughput")
        assert not fast["deterministic_algorithms"] and not torch.are_deterministic_algorithms_enabled()
        native = native_bf16(w.device)
        assert lowrank_truncate(w, 8)[2] == ("randomized-bf16" if native else "randomized-fp32")
    finally:
        apply_determinism("throughput")
