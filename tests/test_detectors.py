"""Detector semantics (each kind, any/all, none declared) and catalog validation messages."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pytest_proofpack.detectors import (
    DETECTOR_FIELDS,
    as_bool,
    evaluate_detector,
    evaluate_detectors,
    validate_detector,
)
from pytest_proofpack.errors import CatalogError, ProofpackError
from pytest_proofpack.expectations import guard_flags, judge, primary_guard_hit, report_gates


def _report(**over: Any) -> dict[str, Any]:
    rng = random.Random()
    ratio = 1.0 + rng.uniform(-0.01, 0.01)
    report: dict[str, Any] = {
        "schema": "proofpack_report_v1",
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
            "ci": [ratio - 0.01, ratio + 0.01],
            "degraded": False,
            "invalid": False,
            "gate_rule": "ci_upper",
            "limit": 1.1,
        },
        "invariants": {"status": "pass", "failures": []},
        "spectral": {"caps_applied": 0, "max_caps": 5},
        "rmt": {"stable": True},
    }
    for dotted, value in over.items():
        section, _, key = dotted.partition("__")
        if key:
            report.setdefault(section, {})[key] = value
        else:
            report[section] = value
    return report


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [
        (None, True, True),
        (None, False, False),
        (0, True, False),
        (2, False, True),
        (0.0, True, False),
        ("YES", False, True),
        (" pass ", False, True),
        ("fail", True, False),
        ("0", True, False),
        ([], True, True),
        ({}, False, False),
    ],
)
def test_as_bool(value: object, default: bool, expected: bool) -> None:
    assert as_bool(value, default=default) is expected


def test_validation_flag_needs_the_flag_to_exist() -> None:
    det = {"kind": "validation_flag", "flag": "spectral_stable", "expected": False}
    assert evaluate_detector(det, _report(validation__spectral_stable=False)) == (True, False)
    assert evaluate_detector(det, _report(validation__spectral_stable="false")) == (True, "false")
    assert evaluate_detector(det, _report())[0] is False
    report = _report()
    del report["validation"]["spectral_stable"]
    assert evaluate_detector(det, report) == (False, "<missing>")
    assert evaluate_detector(det, {"validation": None}) == (False, "<missing>")


def test_primary_metric_detector() -> None:
    det = {"kind": "primary_metric", "field": "degraded", "expected": True}
    assert evaluate_detector(det, _report(primary_metric__degraded=True))[0] is True
    assert evaluate_detector(det, _report(primary_metric__degraded=1))[0] is True
    assert evaluate_detector(det, _report())[0] is False


def test_invariants_status_is_case_insensitive() -> None:
    det = {"kind": "invariants_status", "allowed": ["FAIL", "warn"]}
    assert evaluate_detector(det, _report(invariants__status="Fail")) == (True, "Fail")
    assert evaluate_detector(det, _report(invariants__status="WARN"))[0] is True
    assert evaluate_detector(det, _report(invariants__status="pass"))[0] is False
    assert evaluate_detector(det, _report(invariants={}))[0] is False


@pytest.mark.parametrize("spelling", ["error", "ERROR", " Error "])
def test_a_guard_error_status_is_never_a_detection(spelling: str) -> None:
    """A guard that raises makes the run an error; a detector may not name its status, and never hits on it."""
    det = {"kind": "invariants_status", "allowed": ["fail", spelling]}
    where = f"scenarios.json: $.scenarios[{random.randint(0, 30)}] (nan_injection).requirements.detectors_any_of[0]"
    with pytest.raises(CatalogError) as info:
        validate_detector(det, where)
    assert str(info.value) == (
        f"{where}: invariants_status.allowed names 'error', the guard's error status; a guard that raises makes "
        "the run an error (class internal), never a detection, so detect the change by the guard's own verdict: "
        "allowed ['fail']"
    )
    assert evaluate_detector(det, _report(invariants__status="error")) == (False, "error")
    report = _report(invariants__status="error", validation__invariants_pass=False)
    scenario = {"id": "nan_injection", "strictness": "must_detect", "primary_guard": "invariants",
                "requirements": {"detectors_any_of": [det]}}
    judgement = judge(scenario, report)
    assert not judgement.detectors_hit and not judgement.ok


def test_invariants_status_fail_only() -> None:
    det = {"kind": "invariants_status", "allowed": ["fail"]}
    assert evaluate_detector(det, _report(invariants__status="fail"))[0] is True
    assert evaluate_detector(det, _report(invariants__status="warn"))[0] is False
    assert evaluate_detector(det, _report(invariants={}))[0] is False


def test_spectral_caps_threshold() -> None:
    rng = random.Random()
    minimum = rng.randint(1, 6)
    det = {"kind": "spectral_caps_applied", "min": minimum}
    assert evaluate_detector(det, _report(spectral__caps_applied=minimum)) == (True, minimum)
    assert evaluate_detector(det, _report(spectral__caps_applied=minimum - 1))[0] is False
    assert evaluate_detector(det, _report(spectral__caps_applied=float(minimum) + 0.7))[0] is True
    assert evaluate_detector(det, _report(spectral={}))[0] is False


def test_probe_detectors() -> None:
    rmt = {"kind": "rmt_probe", "field": "stable", "expected": False}
    assert evaluate_detector(rmt, _report(rmt_probe={"stable": False}))[0] is True
    assert evaluate_detector(rmt, _report(rmt_probe={"stable": True}))[0] is False
    assert evaluate_detector(rmt, _report())[0] is False  # no sidecar: not a hit
    ve_min = {"kind": "ve_probe", "field": "proposed_scales", "min": 1}
    assert evaluate_detector(ve_min, _report(ve_probe={"proposed_scales": 3}))[0] is True
    assert evaluate_detector(ve_min, _report(ve_probe={"proposed_scales": 0}))[0] is False
    assert evaluate_detector(ve_min, _report(ve_probe={"proposed_scales": "x"}))[0] is False
    ve_sig = {"kind": "ve_probe", "field": "signal", "expected": True}
    assert evaluate_detector(ve_sig, _report(ve_probe={"signal": True}))[0] is True
    assert evaluate_detector(ve_sig, _report(ve_probe={"signal": False}))[0] is False


def test_any_all_semantics_and_none_declared() -> None:
    pm_bad = {"kind": "validation_flag", "flag": "primary_metric_acceptable", "expected": False}
    inv_ok = {"kind": "validation_flag", "flag": "invariants_pass", "expected": True}
    caps = {"kind": "spectral_caps_applied", "min": 2}
    failing = _report(validation__primary_metric_acceptable=False)
    assert evaluate_detectors({}, failing).hit is False
    assert evaluate_detectors(None, failing).declared is False
    assert evaluate_detectors({"detectors_any_of": []}, failing).hit is False
    any_only = evaluate_detectors({"detectors_any_of": [caps, pm_bad]}, failing)
    assert (any_only.hit, any_only.any_hit, any_only.all_hit) == (True, True, None)
    assert [r.hit for r in any_only.rows] == [False, True]
    both = evaluate_detectors({"detectors_any_of": [pm_bad], "detectors_all_of": [inv_ok, caps]}, failing)
    assert (both.hit, both.any_hit, both.all_hit) == (False, True, False)
    capped = _report(validation__primary_metric_acceptable=False, spectral__caps_applied=2)
    assert evaluate_detectors({"detectors_any_of": [pm_bad], "detectors_all_of": [inv_ok, caps]}, capped).hit
    assert evaluate_detectors({"detectors_all_of": [inv_ok]}, _report()).hit is True
    assert (
        evaluate_detectors({"detectors_all_of": [inv_ok]}, _report(validation__invariants_pass=0)).hit
        is False
    )


@pytest.mark.parametrize(
    ("detector", "needle"),
    [
        ("nope", "must be an object"),
        (
            {"kind": "validation_flags", "flag": "x", "expected": False},
            "unknown detector kind 'validation_flags'",
        ),
        ({"flag": "x", "expected": False}, "unknown detector kind None"),
        ({"kind": "validation_flag", "flag": "x"}, "lacks field 'expected'"),
        (
            {"kind": "validation_flag", "flag": "", "expected": False},
            "validation_flag.flag must be a non-empty",
        ),
        ({"kind": "validation_flag", "flag": "x", "expected": "false"}, "expected must be true or false"),
        ({"kind": "validation_flag", "flag": "x", "expected": False, "expect": 1}, "unknown field(s) expect"),
        ({"kind": "invariants_status", "allowed": []}, "non-empty list of strings"),
        ({"kind": "invariants_status", "allowed": "fail"}, "non-empty list of strings"),
        ({"kind": "spectral_caps_applied", "min": True}, "min must be a finite number"),
        ({"kind": "spectral_caps_applied", "min": float("nan")}, "min must be a finite number"),
        ({"kind": "ve_probe", "field": "signal"}, "exactly one of 'expected' or 'min'"),
        ({"kind": "ve_probe", "field": "signal", "expected": True, "min": 1}, "exactly one of"),
    ],
)
def test_validate_detector_messages(detector: object, needle: str) -> None:
    where = f"scenarios.json: scenarios[{random.randint(0, 30)}].requirements.detectors_any_of[0]"
    with pytest.raises(CatalogError) as info:
        validate_detector(detector, where)
    message = str(info.value)
    assert isinstance(info.value, ProofpackError)
    assert "\n" not in message
    assert message.startswith(where + ": ")
    assert needle in message
    for kind in DETECTOR_FIELDS:
        assert kind in message  # the accepted kinds are listed


def test_validate_detector_accepts_reference_shapes() -> None:
    for det in (
        {"kind": "validation_flag", "flag": "primary_metric_acceptable", "expected": False},
        {"kind": "primary_metric", "field": "degraded", "expected": True},
        {"kind": "invariants_status", "allowed": ["warn", "fail"]},
        {"kind": "rmt_probe", "field": "stable", "expected": False},
        {"kind": "spectral_caps_applied", "min": 3},
        {"kind": "ve_probe", "field": "proposed_scales", "min": 1},
        {"kind": "ve_probe", "field": "signal", "expected": True, "description": "VE proposes a fix"},
    ):
        validate_detector(det, "where")


def test_report_gates_fail_closed_and_reasons() -> None:
    assert report_gates(_report()) == (True, [])
    report = _report(validation__spectral_stable=False)
    del report["validation"]["rmt_stable"]
    passed, reasons = report_gates(report)
    assert passed is False
    assert reasons == ["spectral_fail", "rmt_fail (validation.rmt_stable missing)"]
    degraded = _report(primary_metric__degraded=True, primary_metric__degraded_reason="non_finite_windows")
    assert report_gates(degraded) == (False, ["primary_metric_degraded (non_finite_windows)"])
    overhead = _report(guard_overhead={"evaluated": True})
    assert report_gates(overhead) == (False, ["overhead_fail (validation.guard_overhead_acceptable missing)"])
    assert report_gates(_report(guard_overhead={"evaluated": False})) == (True, [])


def test_guard_flags_need_positive_evidence() -> None:
    report = _report()
    report["validation"] = {}
    flags = guard_flags(report)
    assert not any(flags.values())
    flags = guard_flags(_report(invariants__status="warn", validation__rmt_stable=False))
    assert flags["invariants_warn"] and flags["invariants"] and not flags["invariants_fail"]
    assert flags["rmt"] and not flags["spectral"]
    assert guard_flags(_report(rmt_probe={"stable": False}))["rmt"] is True
    assert guard_flags(_report(ve_probe={"signal": False, "ab_gain": 0.01}))["variance"] is True
    assert guard_flags(_report(ve_probe={"signal": False, "ab_gain": 0.0}))["variance"] is False
    capped = _report(spectral__caps_applied=2)
    assert primary_guard_hit("spectral", capped, guard_flags(capped)) is True
    assert primary_guard_hit("invariants", capped, guard_flags(capped)) is False


def _scenario(strictness: str, reqs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": f"s_{strictness}",
        "category": "stress",
        "strictness": strictness,
        "primary_guard": "primary_metric",
        "requirements": reqs or {},
    }


def test_judge_per_strictness() -> None:
    pm_bad = {"kind": "validation_flag", "flag": "primary_metric_acceptable", "expected": False}
    good, bad = _report(), _report(validation__primary_metric_acceptable=False)
    must_fail = _scenario("must_fail", {"detectors_any_of": [pm_bad]})
    assert judge(_scenario("must_pass"), good).ok is True
    assert judge(_scenario("must_pass"), bad).ok is False
    assert judge(must_fail, bad).ok is True
    assert judge(must_fail, good).ok is False
    # fails its gates, but not the way the scenario declares
    assert judge(must_fail, _report(validation__spectral_stable=False)).ok is False
    assert judge(_scenario("must_detect", {"detectors_any_of": [pm_bad]}), bad).ok is True
    assert judge(_scenario("must_detect"), bad).ok is False  # nothing declared, nothing detected
    info = judge(_scenario("informational"), bad)
    assert (info.ok, info.signaled) == (True, True)
    assert judge(_scenario("informational"), good).signaled is False
    assert judge(_scenario("must_passs"), good).ok is False


def test_judge_message_and_properties() -> None:
    pm_bad = {"kind": "validation_flag", "flag": "primary_metric_acceptable", "expected": False}
    report = _report(spectral__caps_applied=4)
    ratio = report["primary_metric"]["ratio_vs_baseline"]
    j = judge(_scenario("must_fail", {"detectors_any_of": [pm_bad]}), report, model="tiny")
    assert j.ok is False
    assert "WRONG" in j.message
    assert "validation.primary_metric_acceptable=false [miss, observed true]" in j.message
    assert f"ratio {ratio:.4f}" in j.message
    assert "caps 4" in j.message and "invariants pass" in j.message
    props = dict(j.properties())
    assert props["model"] == "tiny" and props["scenario"] == "s_must_fail"
    assert props["ratio"] == f"{ratio:.4f}"
    assert props["ci_lo"] == f"{ratio - 0.01:.4f}"
    assert props["gates_passed"] == "true" and props["detectors_hit"] == "false"
    assert props["spectral_caps"] == "4"
    assert props["guard_spectral"] == "false"
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in j.properties())


def test_validate_requirements() -> None:
    from pytest_proofpack.detectors import validate_requirements

    pm_bad = {"kind": "validation_flag", "flag": "primary_metric_acceptable", "expected": False}
    validate_requirements(
        {"catastrophic_required": True, "detectors_any_of": [pm_bad]}, "s", strictness="must_fail"
    )
    validate_requirements(None, "s", strictness="informational")
    cases = [
        (
            {"detectors_any_of": [pm_bad], "detector_any_of": []},
            None,
            "unknown requirement key(s) detector_any_of",
        ),
        ({"primary_guard_required": "yes"}, None, "s.primary_guard_required: must be true or false"),
        ({"detectors_all_of": pm_bad}, None, "s.detectors_all_of: must be a list"),
        (
            {"detectors_any_of": [pm_bad, {"kind": "x"}]},
            None,
            "s.detectors_any_of[1]: unknown detector kind 'x'",
        ),
        ({}, "must_detect", "a must_detect scenario needs detectors_any_of or detectors_all_of"),
        ([], None, "requirements must be an object"),
    ]
    for reqs, strictness, needle in cases:
        with pytest.raises(CatalogError) as info:
            validate_requirements(reqs, "s", strictness=strictness)
        assert needle in str(info.value) and "\n" not in str(info.value)
