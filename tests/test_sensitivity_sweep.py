"""Sensitivity sweeps on tiny from-config models: the graded faults do what they say and restore exactly, a user's
fault registered through the hook gets the same curve, and the document of a real sweep passes its schema."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from test_metric import make_windows
from tinymodels import tiny_gpt2, tiny_llama

from pytest_proofpack import progress
from pytest_proofpack.engine.config import EngineConfig
from pytest_proofpack.errors import SpecError
from pytest_proofpack.faults.apply import apply_fault
from pytest_proofpack.faults.graded import graded_fault_registry
from pytest_proofpack.faults.registry import FaultRegistry
from pytest_proofpack.faults.types import FaultContext, FaultOutcome
from pytest_proofpack.models.adapters import matrix, weight_refs
from pytest_proofpack.registries import builtin_registries
from pytest_proofpack.sensitivity import SweepTarget, sweep_model
from pytest_proofpack.sensitivity_command import _families
from pytest_proofpack.sensitivity_families import builtin_families
from pytest_proofpack.sensitivity_summary import DETECTORS, check_document, document, merge_documents

CFG = EngineConfig(bootstrap_replicates=200, guard_windows=4, batch_size=4)


def _state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(model: Any, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _block_matrices(model: Any) -> list[tuple[str, torch.Tensor]]:
    return [(r.key, matrix(model, r).detach().clone()) for r in weight_refs(model) if r.layer is not None]


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2])
def test_weight_noise_is_relative_to_each_matrix(factory: Any) -> None:
    model = factory(seed=random.randrange(1000), hidden=64)
    before, state = _block_matrices(model), _state(model)
    std = random.choice([0.05, 0.2, 0.5])
    with apply_fault(model, "weight_noise", {"PROOFPACK_NOISE_STD": str(std)}, seed=random.randrange(1 << 20),
                     registry=graded_fault_registry()):
        for (key, old), ref in zip(before, [r for r in weight_refs(model) if r.layer is not None], strict=True):
            delta = matrix(model, ref).detach().float() - old.float()
            assert float(delta.std() / old.float().std()) == pytest.approx(std, rel=0.15), key
    assert _unchanged(model, state)


def test_exponent_flip_doubles_or_halves_a_fraction() -> None:
    model = tiny_llama(seed=random.randrange(1000), hidden=64)
    before, state = _block_matrices(model), _state(model)
    fraction = random.choice([0.02, 0.1, 0.3])
    with apply_fault(model, "exponent_flip", {"PROOFPACK_BITFLIP_FRACTION": str(fraction)}, seed=7,
                     registry=graded_fault_registry()) as change:
        refs = [r for r in weight_refs(model) if r.layer is not None]
        changed = total = 0
        for (_, old), ref in zip(before, refs, strict=True):
            new = matrix(model, ref).detach()
            moved = new != old
            ratio = (new[moved] / old[moved]).abs()
            assert bool(((ratio == 2.0) | (ratio == 0.5)).all())
            changed, total = changed + int(moved.sum()), total + old.numel()
        assert change.metadata["params"]["flipped_elements"] == changed
        assert changed / total == pytest.approx(fraction, rel=0.1)
    assert _unchanged(model, state)


def test_lowrank_energy_keeps_the_smallest_rank_with_enough_energy() -> None:
    model = tiny_llama(seed=random.randrange(1000), hidden=64)
    state = _state(model)
    discard = random.choice([0.05, 0.2, 0.5])
    with apply_fault(model, "lowrank_energy", {"PROOFPACK_LOWRANK_DISCARD": str(discard)},
                     registry=graded_fault_registry()):
        for ref in [r for r in weight_refs(model) if r.family == "ffn"]:
            new, old = matrix(model, ref).detach().double(), state[ref.name].double()
            s_old = torch.linalg.svdvals(old if ref.layout == "linear" else old.T)
            rank = int(torch.linalg.matrix_rank(new, rtol=1e-5))
            kept = float((s_old[:rank] ** 2).sum() / (s_old**2).sum())
            assert kept >= 1 - discard - 1e-6
            assert float((s_old[: rank - 1] ** 2).sum() / (s_old**2).sum()) < 1 - discard  # the smallest such rank
    assert _unchanged(model, state)


def _my_scale(model: Any, ctx: FaultContext) -> FaultOutcome:
    """A user's fault: the first FFN down-projection times MY_SCALE_FACTOR."""
    ref = next(r for r in weight_refs(model) if r.role == "ffn_down")
    view = matrix(model, ref)
    ctx.change.save_tensor(view)
    factor = ctx.env.number("MY_SCALE_FACTOR", 1.0, lo=0.0, lo_open=True)
    view.mul_(factor)
    SEEN.append(factor)
    return FaultOutcome("scale", {"factor": factor}, [ref.key], [ref.layer or 0])


SEEN: list[float] = []


def pytest_proofpack_register_faults(registry: FaultRegistry) -> None:
    """This module doubles as the user's plugin of ``--plugin``."""
    if "my_scale" not in registry:
        registry.register("my_scale", _my_scale, env_prefixes=("MY_",), env_keys={"MY_SCALE_FACTOR"})


def test_a_fault_registered_through_the_hook_is_swept(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook's function registers the fault in a session's registries; ``--plugin`` and ``--fault-family`` make
    it a family; the sweep applies each rung through its env key, evaluates, restores."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    registries = builtin_registries()
    args = argparse.Namespace(plugin=[Path(__file__).stem], fault_family=["mine=my_scale:MY_SCALE_FACTOR:4,1.01,30"],
                              families="scale_one_matrix")
    families = _families(args, registries)
    assert [f.name for f in families] == ["scale_one_matrix", "mine"]
    mine = families[1]
    typo = argparse.Namespace(plugin=[], fault_family=["t=my_scale:MY_SCALE_FACTR:1,2"], families=None)
    with pytest.raises(SpecError, match="did you mean 'MY_SCALE_FACTOR'"):
        _families(typo, registries)
    undeclared = argparse.Namespace(plugin=[], fault_family=["u=nan_injection:SOME_KEY:1,2"], families=None)
    with pytest.raises(SpecError, match="does not declare env key SOME_KEY"):
        _families(undeclared, registries)
    assert mine.rungs == (1.01, 4.0, 30.0) and mine.source["fault"] == "my_scale"
    model = tiny_llama(seed=random.randrange(1000))
    state = _state(model)
    target = SweepTarget(model, "tiny", {}, CFG,
                         lambda seed: (make_windows(6, 48, seed), make_windows(6, 48, seed + 1, offset=100_000)))
    module = sys.modules[Path(__file__).stem]
    module.SEEN.clear()
    events: list[dict[str, Any]] = []
    with progress.reporting(events.append):
        entry = sweep_model(target, [mine], [0, 1])
    assert module.SEEN == [1.01, 4.0, 30.0] * 2
    sweep = [(e["ev"], e["done"], e["total"]) for e in events if e["phase"] == "sweep"]
    assert sweep == [("start", 0, 6), *[("step", n, 6) for n in range(1, 7)], ("end", 6, 6)]  # reported live
    assert _unchanged(model, state)
    runs = entry["families"]["mine"]["runs"]
    assert [(r["sample"], r["magnitude"]) for r in runs] == [(s, m) for s in (0, 1) for m in (1.01, 4.0, 30.0)]
    assert all(r["error"] is None and set(r["fired"]) == set(DETECTORS) for r in runs)
    assert all(r["fired"]["spectral"] for r in runs if r["magnitude"] == 30.0)  # |log 30| far over any threshold
    doc = document({"tiny": entry}, engine=CFG, created_utc="2026-01-01T00:00:00Z")
    summary = doc["models"]["tiny"]["families"]["mine"]["summary"]
    assert summary["thresholds"]["spectral"]["at"] is not None
    assert check_document(json.loads(json.dumps(doc)), "doc") == json.loads(json.dumps(doc))


def test_every_builtin_family_sweeps_and_restores_on_a_tiny_model() -> None:
    model = tiny_llama(seed=random.randrange(1000))
    state = _state(model)
    families = [dataclasses.replace(f, rungs=f.rungs[-1:]) for f in builtin_families().values()]
    target = SweepTarget(model, "tiny", {}, CFG,
                         lambda seed: (make_windows(6, 48, seed), make_windows(6, 48, seed + 1, offset=100_000)))
    parts = [document({"tiny": sweep_model(target, families, [s])}, engine=CFG, created_utc="t") for s in (0, 1)]
    assert _unchanged(model, state)
    merged = merge_documents(parts)
    entry = merged["models"]["tiny"]
    assert entry["samples"] == [0, 1]
    for name, fam in entry["families"].items():
        assert len(fam["runs"]) == 2 * len(fam["rungs"]) and all(r["error"] is None for r in fam["runs"]), name
        assert [row["n"] for row in fam["summary"]["rates"]["any"]] == [2]
    check_document(merged, "merged")
    with pytest.raises(SpecError, match="share window samples"):
        merge_documents([parts[0], parts[0]])


def test_cli_sweeps_a_suite_model_and_writes_the_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``proofpack sensitivity`` as a user runs it on a suite's (tiny, local) model, a plugin's fault included."""
    from e2e_support import make_model_dir, write_suite

    from pytest_proofpack.cli import main as cli_main

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    write_suite(tmp_path, {"tiny-a": make_model_dir(tmp_path / "models")})
    out = tmp_path / "run"
    code = cli_main(["sensitivity", "--model", "tiny-a", "--suite", "tiny", "--suites", str(tmp_path / "suites.yaml"),
                     "--cache", str(tmp_path / "cache"), "--families", "scale_one_matrix", "--samples", "2",
                     "--tuned-params", str(tmp_path / "tuned.json"), "--calibration-runs", "1",
                     "--plugin", Path(__file__).stem, "--fault-family", "mine=my_scale:MY_SCALE_FACTOR:1.01,30",
                     "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    doc = check_document(json.loads((out / "sensitivity.json").read_text()), "sensitivity.json")
    entry = doc["models"]["tiny-a"]
    assert entry["samples"] == [0, 1] and list(entry["families"]) == ["scale_one_matrix", "mine"]
    assert all(len(f["runs"]) == 2 * len(f["rungs"]) for f in entry["families"].values())
    assert entry["families"]["mine"]["summary"]["rates"]["spectral"][-1]["rate"] == 1.0
    assert "<svg" in (out / "sensitivity.html").read_text() and "\n  mine [MY_SCALE_FACTOR: 1.01,30;" in printed
    assert "  sample 1 mine@30: ratio " in printed
