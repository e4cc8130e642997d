"""Backups beyond the RAM budget go to an unlinked scratch file and come back bit for bit (edits and faults)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tinymodels import tiny_gpt2, tiny_llama, tiny_mixtral

from pytest_proofpack.edits import apply_edit, parse_edit_spec
from pytest_proofpack.edits.backup import BackupPolicy, set_backup_policy
from pytest_proofpack.edits.change import AppliedChange
from pytest_proofpack.edits.registry import EditRegistry
from pytest_proofpack.faults import apply_fault

FACTORIES = {"llama": tiny_llama, "gpt2": tiny_gpt2, "mixtral": tiny_mixtral}
SPECS = ("quant_rtn:4:16:all", "fp8_quant:e4m3:all", "magnitude_prune:0.3:all", "lowrank_svd:4:all")


def _bits(model: Any) -> dict[str, torch.Tensor]:
    """Every parameter and buffer as raw bytes (NaN payloads and signed zeros included)."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {n: t.detach().reshape(-1).view(torch.uint8).clone() for n, t in named}


def _assert_bits(model: Any, before: dict[str, torch.Tensor]) -> None:
    now = _bits(model)
    assert now.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(now[name], value), name


@pytest.fixture
def spill_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "scratch"
    set_backup_policy(BackupPolicy())


@pytest.mark.parametrize("arch", sorted(FACTORIES))
@pytest.mark.parametrize("budget", [0, 6000])  # everything spilled; the first few matrices in RAM, the rest spilled
def test_spilled_edit_backups_restore_bit_exactly(arch: str, budget: int, spill_dir: Path) -> None:
    model = FACTORIES[arch](seed=13, layers=2)
    before = _bits(model)
    for spec in SPECS:
        set_backup_policy(BackupPolicy(budget, spill_dir))
        change = apply_edit(model, parse_edit_spec(spec), seed=5)
        held = change.backup_bytes
        assert held["ram"] <= budget and held["spilled"] > 0, (spec, held)
        in_scope = change.metadata["params_in_scope"]
        # every touched matrix's original is held exactly once, in RAM or in the file
        touched_bytes = held["ram"] + held["spilled"]
        if change.metadata["skipped"]:  # a rank-4 truncation leaves the [4, 32] MoE router alone: no backup
            assert 0 < touched_bytes < in_scope * 4, (spec, held)
        else:
            assert touched_bytes == in_scope * 4, (spec, held)  # fp32 models
        assert list(spill_dir.iterdir()) == []  # the scratch file is unlinked: nothing left behind, even on a kill
        now = _bits(model)
        assert any(not torch.equal(now[k], v) for k, v in before.items()), spec
        change.restore()
        _assert_bits(model, before)


def test_spilled_metadata_equals_in_ram_metadata_around_nan_and_inf(spill_dir: Path) -> None:
    metas = []
    for policy in (BackupPolicy(), BackupPolicy(0, spill_dir)):
        set_backup_policy(policy)
        model = tiny_llama(seed=4)
        with torch.no_grad():
            model.model.layers[0].mlp.up_proj.weight[0, :3] = torch.tensor([float("nan"), float("inf"), -1e30])
        before = _bits(model)
        with apply_edit(model, parse_edit_spec("fp8_quant:e4m3:ffn"), seed=1) as change:
            metas.append({k: v for k, v in change.metadata.items() if k != "seconds"})
        _assert_bits(model, before)
    assert metas[0] == metas[1]


def test_spilled_metadata_of_an_edit_writing_into_its_input_equals_in_ram_metadata(spill_dir: Path) -> None:
    reg = EditRegistry()

    def triple_in_place(matrix: torch.Tensor, params: Any, *, seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
        return matrix.mul_(3.0), {}  # the new values are the (overwritten) input itself

    reg.register("triple_in_place", lambda args: (), triple_in_place, param_names=())
    metas = []
    for policy in (BackupPolicy(), BackupPolicy(0, spill_dir)):
        set_backup_policy(policy)
        model = tiny_llama(seed=4)
        before = _bits(model)
        with apply_edit(model, parse_edit_spec("triple_in_place:ffn", registry=reg), registry=reg) as change:
            metas.append({k: v for k, v in change.metadata.items() if k != "seconds"})
        _assert_bits(model, before)
    assert metas[0] == metas[1]
    assert metas[1]["avg_relative_error"] == pytest.approx(2.0) and metas[1]["changed_fraction"] == 1.0


@pytest.mark.parametrize("thread_safe", [False, True])
def test_an_edit_failing_midway_rolls_back_spilled_matrices(thread_safe: bool, spill_dir: Path) -> None:
    reg = EditRegistry()
    seen: list[int] = []

    def flaky(matrix: torch.Tensor, params: Any, *, seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
        seen.append(seed)
        if len(seen) == 5:
            raise RuntimeError("edit kind failed on its fifth matrix")
        return matrix.mul_(2.0), {}  # writes into its input too

    reg.register("flaky", lambda args: (), flaky, param_names=(), thread_safe=thread_safe)
    model = tiny_llama(seed=6, layers=2)
    before = _bits(model)
    set_backup_policy(BackupPolicy(0, spill_dir))
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(2)  # thread-safe kinds then edit on two worker threads
    try:
        with pytest.raises(RuntimeError, match="fifth matrix"):
            apply_edit(model, parse_edit_spec("flaky:all", registry=reg), registry=reg)
    finally:
        torch.set_num_threads(torch_threads)
    _assert_bits(model, before)


@pytest.mark.parametrize(
    ("error_type", "env"),
    [("extreme_quant", {}), ("rank_collapse", {}), ("nan_injection", {}), ("scale_explosion", {}),
     ("weight_tying_break", {}), ("missing_tensors", {})],
)
def test_spilled_fault_backups_restore_bit_exactly(error_type: str, env: dict[str, str], spill_dir: Path) -> None:
    set_backup_policy(BackupPolicy(0, spill_dir))
    for factory in (tiny_llama, tiny_gpt2):
        model = factory(seed=17, layers=3)
        before = _bits(model)
        change = apply_fault(model, error_type, env, seed=2)
        change.restore()
        _assert_bits(model, before)


def test_save_tensor_returns_the_callers_copy_when_spilled(spill_dir: Path) -> None:
    set_backup_policy(BackupPolicy(0, spill_dir))
    w = torch.randn(8, 6, dtype=torch.bfloat16)
    original = w.clone()
    change = AppliedChange()
    saved = change.save_tensor(w.t())  # a transposed (non-contiguous) view, as GPT-2's Conv1D weights are seen
    assert torch.equal(saved, original.t()) and change.backup_bytes == {"ram": 0, "spilled": 8 * 6 * 2}
    saved.zero_()  # the caller's copy is its own: the backup is not affected
    w.mul_(3)
    change.restore()
    assert torch.equal(w.view(torch.int16), original.view(torch.int16))
