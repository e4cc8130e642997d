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


def _gguf_with_blocks(path: Path, blocks: int) -> Path:
    from test_sources import _write_gguf

    return _write_gguf(path, None, blocks)


def _entry(**fields: Any) -> Any:
    from pytest_proofpack.models import ModelEntry

    return ModelEntry(**{"key": "m", "hub_id": "", "params_b": 0.1, "family": "llama", **fields})


def test_layer_count_is_read_without_loading_from_each_kind_of_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_proofpack.preflight import layer_count

    local = tmp_path / "local"
    local.mkdir()
    (local / "config.json").write_text('{"num_hidden_layers": 5}')
    gguf_file = _gguf_with_blocks(tmp_path / "m.gguf", 7)
    snapshot = tmp_path / "hub" / "models--org--m" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"n_layer": 9}')
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    count = {
        "local": layer_count(_entry(source="local", path=str(local)), {}, tmp_path, "s"),
        "gguf": layer_count(_entry(source="gguf", path=str(gguf_file)), {}, tmp_path, "s"),
        "hub": layer_count(_entry(hub_id="org/m", revision="a" * 40), {}, tmp_path, "s"),
        "hub not cached": layer_count(_entry(hub_id="org/other", revision="b" * 40), {}, tmp_path, "s"),
        "gguf missing": layer_count(_entry(source="gguf", path=str(tmp_path / "none.gguf")), {}, tmp_path, "s"),
    }
    assert count == {"local": 5, "gguf": 7, "hub": 9, "hub not cached": None, "gguf missing": None}


def test_out_of_range_scope_of_a_gguf_model_is_refused_before_loading(tmp_path: Path) -> None:
    from dataclasses import replace

    from pytest_proofpack.errors import ProofpackError
    from pytest_proofpack.preflight import check_layer_scopes

    model = _entry(key="g", source="gguf", path=str(_gguf_with_blocks(tmp_path / "g.gguf", 4)))
    cases = [replace(c, model=model) for c in load_catalog().expand("smoke") if c.edit_spec and "@" not in c.edit_spec]
    assert cases
    check_layer_scopes(cases, "scenarios.json", assets={}, cache=tmp_path, suite="smoke")
    bad = [replace(cases[0], edit_spec=cases[0].edit_spec.rsplit(":", 1)[0] + ":ffn@layer=4")]
    with pytest.raises(ProofpackError, match=r"names layer 4, but model g has 4 layers \(0-3\)"):
        check_layer_scopes(bad, "scenarios.json", assets={}, cache=tmp_path, suite="smoke")
