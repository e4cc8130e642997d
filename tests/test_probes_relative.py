"""Probes defined relative to the model: the shipped spectral probe meets its own spectral detector at any depth
and threshold, relative env values resolve from the model's preset, relative layer ranges scale with depth."""

from __future__ import annotations

from typing import Any

import pytest
from test_guards import CFG, CTX, _setup
from tinymodels import tiny_llama, tiny_qwen2

from pytest_proofpack.catalog import load_catalog
from pytest_proofpack.detectors import evaluate_detectors
from pytest_proofpack.engine.evaluate import evaluate
from pytest_proofpack.errors import SpecError
from pytest_proofpack.faults import apply_fault
from pytest_proofpack.faults.env import EnvReader
from pytest_proofpack.faults.relative import resolve_relative
from pytest_proofpack.faults.targets import target_layers


def _shipped(scenario_id: str) -> Any:
    return next(s for s in load_catalog().scenarios if s.id == scenario_id)


@pytest.mark.parametrize(("build", "layers", "threshold"), [
    (tiny_llama, 4, 0.05), (tiny_llama, 9, 0.21), (tiny_qwen2, 6, 0.12),
])
def test_the_spectral_probe_meets_its_detectors_whatever_the_depth_and_threshold(
    build: Any, layers: int, threshold: float
) -> None:
    scenario = _shipped("spectral_moderate_scale")
    assert "env_by_model" not in scenario.generation
    model = build(layers=layers)
    base, preview, final = _setup(model)
    preset = {"spectral": {"family_thresholds": {f: {"value": threshold} for f in ("attn", "ffn")}}}
    env, resolved = resolve_relative(scenario.generation["env"], preset)
    assert resolved["INVARLOCK_SPECTRAL_SCALE_FACTOR"]["threshold"] == threshold
    with apply_fault(model, scenario.id, env, seed=1):
        report = evaluate(model, base, preview, final, preset, CFG, context=CTX).report
    # What the probe's construction guarantees on any model: exactly its 3 matrices capped, within every tier's
    # budget. Whether the other guards and the gate stay quiet is the model's answer (smoke runs, not tiny ones).
    assert report["spectral"]["caps_applied"] == 3
    assert report["validation"]["spectral_stable"] is True
    rows = evaluate_detectors(scenario.requirements, report).rows
    assert [row.hit for row in rows if row.group == "any_of"] == [True]


def test_relative_values_need_a_threshold_and_a_number() -> None:
    env = {"INVARLOCK_SPECTRAL_SCALE_FACTOR": "spectral_threshold*2", "INVARLOCK_SPECTRAL_TARGET_FAMILY": "mlp"}
    out, resolved = resolve_relative(env, {"spectral": {"family_thresholds": {"ffn": {"value": 0.1}}}})
    assert float(out["INVARLOCK_SPECTRAL_SCALE_FACTOR"]) == pytest.approx(1.2214, abs=1e-4)
    assert resolved["INVARLOCK_SPECTRAL_SCALE_FACTOR"]["family"] == "ffn"
    with pytest.raises(SpecError, match="no spectral threshold for family 'ffn'"):
        resolve_relative(env, {})
    with pytest.raises(SpecError, match="write spectral_threshold\\*K"):
        resolve_relative({"INVARLOCK_SPECTRAL_SCALE_FACTOR": "spectral_threshold+2"}, {})
    assert resolve_relative({"INVARLOCK_SPECTRAL_SCALE_FACTOR": "1.5"}, {}) == (
        {"INVARLOCK_SPECTRAL_SCALE_FACTOR": "1.5"}, {})


@pytest.mark.parametrize(("spec", "n", "expected"), [
    ("33%-67%", 30, list(range(10, 21))), ("50%-100%", 4, [2, 3]), ("0%-10%", 4, [0]), ("90%-95%", 3, [2]),
])
def test_relative_layer_ranges_scale_with_depth(spec: str, n: int, expected: list[int]) -> None:
    env = EnvReader({"K": spec}, "probe")
    assert target_layers(env, "K", list(range(n)), 4) == expected


def test_a_variance_probe_relative_to_the_deadband_scales_by_one_over_one_plus_k_d() -> None:
    env = {"INVARLOCK_VE_SCALE_FACTOR": "ve_deadband*2"}
    out, resolved = resolve_relative(env, {"variance": {"deadband": {"value": 0.25}}})
    assert float(out["INVARLOCK_VE_SCALE_FACTOR"]) == pytest.approx(1 / 1.5)
    assert resolved["INVARLOCK_VE_SCALE_FACTOR"]["threshold"] == 0.25
    with pytest.raises(SpecError, match="no variance deadband"):
        resolve_relative(env, {"variance": {}})


def _required_probes() -> list[Any]:
    """Every scenario of every shipped suite that requires its primary guard to fire (the subtle probes)."""
    catalog = load_catalog()
    shipped = {suite.scenario_suite for suite in catalog.suites.values()}
    return [s for s in catalog.scenarios
            if s.requirements.get("primary_guard_required") and (not s.suites or shipped & set(s.suites))]


def _rmt_preset_under_the_probe(model: Any, scenario: Any, base: Any, preview: Any, final: Any) -> dict[str, Any]:
    """A preset whose ``ffn_act`` epsilon is half the probe's own change, after checking that the change is a rise
    at the module the probe targets: on random weights the row blend's size is the model's answer to a fixed
    strength, so what a tiny model can pin is the targeting, the direction and the wiring from the guard's verdict
    to the scenario's detectors."""
    env = scenario.generation["env"]
    with apply_fault(model, scenario.id, env, seed=1) as change:
        rmt = evaluate(model, base, preview, final, {}, CFG, context=CTX).report["rmt"]
    # "model.layers.3.mlp.up_proj.weight" -> "model.layers.3.mlp"
    targeted = {str(p).rsplit(".", 2)[0] for p in change.metadata["modified_params"]}
    top = max((m for m in rmt["top_modules"] if m["family"] == "ffn_act"), key=lambda m: m["log_ratio"])
    assert top["module"].rsplit(".", 1)[0] in targeted and top["log_ratio"] > 0.0, (targeted, top)
    return {"rmt": {"epsilon_by_family": {"ffn_act": {"value": top["log_ratio"] / 2}}}}


@pytest.mark.parametrize("scenario", _required_probes(), ids=lambda s: s.id)
@pytest.mark.parametrize("build", [tiny_llama, tiny_qwen2])
def test_every_required_probe_of_the_shipped_suites_can_meet_its_primary_guard(scenario: Any, build: Any) -> None:
    """The shipped catalog, as is (no ``env_by_model``), on small models of two architectures: the probe's
    primary-guard detectors (``detectors_any_of``) hit. The quiet-elsewhere requirements (``detectors_all_of``) are
    each model's own answer and are checked by the real smoke run, not on random weights."""
    assert "env_by_model" not in scenario.generation
    model = build(layers=6)
    base, preview, final = _setup(model, seq_len=64)
    preset: dict[str, Any] = {"spectral": {"family_thresholds": {f: {"value": 0.1} for f in ("attn", "ffn")}},
                              "variance": {"deadband": {"value": 0.02}}}
    if scenario.primary_guard == "rmt":
        preset |= _rmt_preset_under_the_probe(model, scenario, base, preview, final)
    env, _ = resolve_relative(scenario.generation.get("env", {}), preset)
    with apply_fault(model, scenario.id, env, seed=1):
        report = evaluate(model, base, preview, final, preset, CFG, context=CTX).report
    rows = evaluate_detectors(scenario.requirements, report).rows
    any_of = [row for row in rows if row.group == "any_of"]
    assert any_of and any(row.hit for row in any_of), [(row.describe(), row.hit) for row in rows]
