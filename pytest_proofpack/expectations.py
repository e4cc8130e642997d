"""The expectation of a scenario, judged on one evaluation report (DESIGN §2).

=================  =============================================================
strictness         the test passes when
=================  =============================================================
``must_pass``      the report passes every gate (:func:`report_gates`)
``must_fail``      the report fails its gates **and** its detectors hit
``must_detect``    its detectors hit
``informational``  always; whether it *signaled* is recorded
=================  =============================================================

Gates are fail-closed: a validation flag the report does not carry counts as failed and the reason says so.
Guard flags (:func:`guard_flags`) on the other hand need positive evidence — a guard "fired" only when the
report says so — so a malformed report can never inflate the signal counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, final

from pytest_proofpack.detectors import DetectorOutcome, as_bool, as_float, evaluate_detectors

__all__ = [
    "CORE_GUARDS",
    "GATING_STRICTNESS",
    "Judgement",
    "guard_flags",
    "judge",
    "primary_guard_hit",
    "report_gates",
    "spectral_caps",
    "ve_signal",
]

#: The guards the verdict tracks, in the reference's order.
CORE_GUARDS: Final = ("invariants", "spectral", "rmt", "variance", "primary_metric")
GATING_STRICTNESS: Final = frozenset({"must_pass", "must_fail", "must_detect"})

# (validation flag, reason code) checked by every report; missing counts as failed.
_REQUIRED_GATES: Final = (
    ("invariants_pass", "invariants_fail"),
    ("primary_metric_acceptable", "primary_metric_fail"),
    ("spectral_stable", "spectral_fail"),
    ("rmt_stable", "rmt_fail"),
    ("preview_final_drift_acceptable", "drift_fail"),
)


def _section(report: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = report.get(name)
    return value if isinstance(value, Mapping) else {}


def report_gates(report: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """Return ``(passed, reasons)``.

    ``passed`` needs these ``validation`` flags true: ``invariants_pass, primary_metric_acceptable,
    spectral_stable, rmt_stable, preview_final_drift_acceptable`` (and ``guard_overhead_acceptable`` when
    ``guard_overhead.evaluated``), and the primary metric neither degraded nor invalid. Reasons are codes
    (``spectral_fail`` …), suffixed with ``(validation.X missing)`` when the flag was absent."""
    validation = _section(report, "validation")
    reasons: list[str] = []
    gates = list(_REQUIRED_GATES)
    if as_bool(_section(report, "guard_overhead").get("evaluated"), default=False):
        gates.append(("guard_overhead_acceptable", "overhead_fail"))
    for flag, code in gates:
        if flag not in validation or validation[flag] is None:
            reasons.append(f"{code} (validation.{flag} missing)")
        elif not as_bool(validation[flag], default=False):
            reasons.append(code)
    pm = _section(report, "primary_metric")
    if as_bool(pm.get("degraded"), default=False) or as_bool(pm.get("invalid"), default=False):
        reason = pm.get("degraded_reason")
        detail = f" ({reason})" if isinstance(reason, str) and reason else ""
        reasons.insert(0, "primary_metric_degraded" + detail)
    return not reasons, reasons


def _explicit_false(section: Mapping[str, Any], key: str) -> bool:
    return key in section and section[key] is not None and not as_bool(section[key], default=True)


def spectral_caps(report: Mapping[str, Any]) -> int:
    """``spectral.caps_applied`` as a non-negative int (0 when absent or not a number)."""
    caps = as_float(_section(report, "spectral").get("caps_applied"))
    return max(0, int(caps)) if caps is not None and math.isfinite(caps) else 0


def ve_signal(report: Mapping[str, Any]) -> bool:
    """The VE probe proposes a correction: signal, would_enable, proposed scales or a positive gain."""
    ve = _section(report, "ve_probe")
    if as_bool(ve.get("signal")) or as_bool(ve.get("would_enable")):
        return True
    scales = as_float(ve.get("proposed_scales"))
    gain = as_float(ve.get("ab_gain"))
    return (scales is not None and scales > 0) or (gain is not None and math.isfinite(gain) and gain > 0)


def guard_flags(report: Mapping[str, Any]) -> dict[str, bool]:
    """Which guards fired on this report (positive evidence only; see the module docstring).

    Keys: ``invariants_fail``, ``invariants_warn``, ``invariants``, ``primary_metric``, ``spectral``, ``rmt``,
    ``variance``, ``drift``, ``overhead``.
    """
    validation = _section(report, "validation")
    status = _section(report, "invariants").get("status")
    status_l = status.strip().lower() if isinstance(status, str) else ""
    inv_fail = _explicit_false(validation, "invariants_pass") or status_l == "fail"
    inv_warn = status_l == "warn"
    pm = _section(report, "primary_metric")
    pm_flag = (
        _explicit_false(validation, "primary_metric_acceptable")
        or as_bool(pm.get("degraded"))
        or as_bool(pm.get("invalid"))
    )
    rmt_probe = _section(report, "rmt_probe")
    overhead = _section(report, "guard_overhead")
    return {
        "invariants_fail": inv_fail,
        "invariants_warn": inv_warn,
        "invariants": inv_fail or inv_warn,
        "primary_metric": pm_flag,
        "spectral": _explicit_false(validation, "spectral_stable"),
        "rmt": _explicit_false(validation, "rmt_stable") or _explicit_false(rmt_probe, "stable"),
        "variance": ve_signal(report),
        "drift": _explicit_false(validation, "preview_final_drift_acceptable"),
        "overhead": as_bool(overhead.get("evaluated"))
        and _explicit_false(validation, "guard_overhead_acceptable"),
    }


def primary_guard_hit(primary_guard: str, report: Mapping[str, Any], flags: Mapping[str, bool]) -> bool:
    """Did the scenario's primary guard fire? Its flag, or its intervention: spectral caps applied, an
    unstable RMT probe, a VE signal."""
    if flags.get(primary_guard, False):
        return True
    if primary_guard == "spectral":
        return spectral_caps(report) > 0
    if primary_guard == "rmt":
        return _explicit_false(_section(report, "rmt_probe"), "stable")
    if primary_guard == "variance":
        return ve_signal(report)
    return False


def _ratio(report: Mapping[str, Any]) -> tuple[float | None, float | None, float | None]:
    pm = _section(report, "primary_metric")
    ratio = as_float(pm.get("ratio_vs_baseline"))
    ci = pm.get("ci")
    lo = hi = None
    if isinstance(ci, list | tuple) and len(ci) == 2:
        lo, hi = as_float(ci[0]), as_float(ci[1])
    return ratio, lo, hi


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if math.isfinite(value) else str(value)


@final
@dataclass(frozen=True)
class Judgement:
    """One scenario judged on one report: ``ok`` is the pytest outcome, ``message`` explains it."""

    model: str
    scenario: str
    strictness: str
    ok: bool
    message: str
    signaled: bool
    detectors_hit: bool
    gates_passed: bool
    reasons: tuple[str, ...]
    flags: Mapping[str, bool]
    detectors: DetectorOutcome
    primary_guard_hit: bool
    ratio: float | None
    ci_lo: float | None
    ci_hi: float | None
    spectral_caps: int
    invariants_status: str | None

    def properties(self) -> list[tuple[str, str]]:
        """JUnit ``user_properties``: strings only, stable order."""
        props = [
            ("model", self.model),
            ("scenario", self.scenario),
            ("strictness", self.strictness),
            ("ratio", _fmt(self.ratio)),
            ("ci_lo", _fmt(self.ci_lo)),
            ("ci_hi", _fmt(self.ci_hi)),
            ("gates_passed", str(self.gates_passed).lower()),
            ("detectors_hit", str(self.detectors_hit).lower()),
            ("signaled", str(self.signaled).lower()),
            ("primary_guard_hit", str(self.primary_guard_hit).lower()),
            ("invariants_status", self.invariants_status or "n/a"),
            ("spectral_caps", str(self.spectral_caps)),
        ]
        props.extend((f"guard_{name}", str(value).lower()) for name, value in sorted(self.flags.items()))
        return props


def _report_summary(
    ratio: float | None,
    lo: float | None,
    hi: float | None,
    report: Mapping[str, Any],
    flags: Mapping[str, bool],
) -> str:
    pm = _section(report, "primary_metric")
    rule = pm.get("gate_rule")
    limit = as_float(pm.get("limit"))
    gate = f", gate {rule}" + (f" <= {limit:g}" if limit is not None else "") if isinstance(rule, str) else ""
    validation = _section(report, "validation")
    shown = ", ".join(
        f"{k}={str(as_bool(validation[k])).lower() if validation[k] is not None else 'missing'}"
        for k in sorted(validation)
    )
    shown_guards = ("invariants", "primary_metric", "spectral", "rmt", "variance", "drift")
    fired = [k for k in shown_guards if flags.get(k)]
    status = _section(report, "invariants").get("status")
    return (
        f"ratio {_fmt(ratio)} CI [{_fmt(lo)}, {_fmt(hi)}]{gate}; validation {{{shown or 'missing'}}}; "
        f"invariants {status if isinstance(status, str) else 'missing'}; caps {spectral_caps(report)}; "
        f"guards fired: {', '.join(fired) or 'none'}"
    )


def _model_key(report: Mapping[str, Any]) -> str:
    model = report.get("model")
    if isinstance(model, Mapping):
        model = model.get("key") or model.get("id") or model.get("hub_id")
    return str(model) if model is not None else ""


def _expectation(
    strictness: str, gates_passed: bool, reasons: list[str], detectors: DetectorOutcome, signaled: bool
) -> tuple[bool, str, str]:
    """``(ok, what was expected, what happened)`` for one strictness (see the module docstring)."""
    if strictness == "must_pass":
        ok = gates_passed
        return ok, "the report to pass every gate", "it passed" if ok else f"it failed: {', '.join(reasons)}"
    if strictness == "must_fail":
        expect = f"the report to fail its gates and detectors to hit ({detectors.describe()})"
        got = ("gates failed: " + ", ".join(reasons)) if not gates_passed else "but it passed every gate"
        got += "; detectors hit" if detectors.hit else "; detectors did not hit"
        return not gates_passed and detectors.hit, expect, got
    if strictness == "must_detect":
        got = "detected" if detectors.hit else "not detected"
        return detectors.hit, f"detectors to hit ({detectors.describe()})", got
    if strictness == "informational":
        expect = f"nothing (informational; detectors: {detectors.describe()})"
        return True, expect, "signaled" if signaled else "no signal"
    return False, f"a known strictness, got {strictness!r}", "cannot judge"


def judge(scenario: Mapping[str, Any], report: Mapping[str, Any], *, model: str | None = None) -> Judgement:
    """Judge ``report`` (sidecars merged) against ``scenario`` (a scenarios.json entry). ``model``
    defaults to the report's ``model`` (a string, or a dict's ``key``).

    Unknown strictness values are judged fail-closed (never ok), so a typo cannot turn a check into a no-op.
    """
    strictness = str(scenario.get("strictness", ""))
    sid = str(scenario.get("id", ""))
    requirements = scenario.get("requirements")
    detectors = evaluate_detectors(requirements if isinstance(requirements, Mapping) else None, report)
    gates_passed, reasons = report_gates(report)
    flags = guard_flags(report)
    core_flag = any(flags[g] for g in CORE_GUARDS)
    signaled = detectors.hit or core_flag
    pg_hit = primary_guard_hit(str(scenario.get("primary_guard", "")), report, flags)
    ratio, lo, hi = _ratio(report)
    ok, expect, got = _expectation(strictness, gates_passed, reasons, detectors, signaled)
    status = _section(report, "invariants").get("status")
    summary = _report_summary(ratio, lo, hi, report, flags)
    verdict = "as expected" if ok else "WRONG"
    message = f"{sid} [{strictness}] {verdict}: expected {expect}; {got}. Report: {summary}"
    return Judgement(
        model=model if model is not None else _model_key(report),
        scenario=sid,
        strictness=strictness,
        ok=ok,
        message=message,
        signaled=signaled,
        detectors_hit=detectors.hit,
        gates_passed=gates_passed,
        reasons=tuple(reasons),
        flags=flags,
        detectors=detectors,
        primary_guard_hit=pg_hit,
        ratio=ratio,
        ci_lo=lo,
        ci_hi=hi,
        spectral_caps=spectral_caps(report),
        invariants_status=status if isinstance(status, str) else None,
    )
