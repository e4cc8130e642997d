"""Every planned case judged: a recorded run becomes a *judged record*, an absent one a *missing* entry.

A judged record is the flat, JSON-ready dict the rest of the verdict reads (rules, summaries, matrix): the
scenario's identity and strictness, the :class:`~pytest_proofpack.expectations.Judgement` of its report (gates,
detectors, guard flags, ratio) and the probe summaries. A planned case whose record is an error or a skip, or
that has no report, is missing; whether that gates the verdict depends on its scenario (:func:`is_gating`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, final

from pytest_proofpack.expectations import CORE_GUARDS, GATING_STRICTNESS, judge, ve_signal

__all__ = [
    "Case",
    "Catalog",
    "JudgedRecord",
    "RunResult",
    "edit_family",
    "is_gating",
    "judge_cases",
    "judged_record",
    "needs_primary_guard",
    "requirements_of",
]

#: Scenario id -> scenarios.json entry.
Catalog = Mapping[str, Mapping[str, Any]]
#: ``(model, scenario_id, run)``.
Case = tuple[str, str, int]
#: A dict made by :func:`judged_record`.
JudgedRecord = Mapping[str, Any]


@final
@dataclass(frozen=True)
class RunResult:
    """One recorded case. ``report`` is the evaluation report with probe sidecars merged, or ``None``."""

    model: str
    scenario: str
    run: int
    outcome: str
    report: Mapping[str, Any] | None
    error_class: str | None = None
    error_message: str | None = None
    path: str | None = None


def edit_family(scenario: Mapping[str, Any]) -> str:
    """The edit family of a scenario's ``generation.edit_spec``: quant, fp8, prune, svd or other."""
    generation = scenario.get("generation")
    spec = str(generation.get("edit_spec", "")) if isinstance(generation, Mapping) else ""
    head = spec.split(":", 1)[0]
    for prefix, family in (
        ("quant", "quant"),
        ("fp8", "fp8"),
        ("magnitude_prune", "prune"),
        ("prune", "prune"),
    ):
        if head.startswith(prefix):
            return family
    return "svd" if "svd" in head else "other"


def requirements_of(scenario: Mapping[str, Any]) -> Mapping[str, Any]:
    """The scenario's ``requirements`` object (empty when absent or malformed)."""
    requirements = scenario.get("requirements")
    return requirements if isinstance(requirements, Mapping) else {}


def needs_primary_guard(scenario: Mapping[str, Any]) -> bool:
    """``requirements.primary_guard_required``: every run must show its primary guard firing."""
    return bool(requirements_of(scenario).get("primary_guard_required"))


def is_gating(scenario: Mapping[str, Any]) -> bool:
    """A ``must_*`` scenario: its runs decide the verdict."""
    return scenario.get("strictness") in GATING_STRICTNESS


def _probe_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rmt = report.get("rmt_probe")
    if isinstance(rmt, Mapping):
        violations = rmt.get("violations")
        out["rmt_probe"] = {
            "stable": rmt.get("stable"),
            "violations": len(violations) if isinstance(violations, list) else violations,
        }
    ve = report.get("ve_probe")
    if isinstance(ve, Mapping):
        out["ve_probe"] = {k: ve.get(k) for k in ("signal", "would_enable", "proposed_scales", "ab_gain")}
    return out


def judged_record(scenario: Mapping[str, Any], result: RunResult, report: Mapping[str, Any]) -> dict[str, Any]:
    """The verdict's record of one run: ``report`` judged against ``scenario`` (see the module docstring)."""
    judgement = judge(scenario, report, model=result.model)
    path = result.path or f"reports/{result.model}/{result.scenario}/run_{result.run}/evaluation.report.json"
    record: dict[str, Any] = {
        "model": result.model,
        "category": scenario.get("category"),
        "name": result.scenario,
        "run_num": result.run,
        "strictness": scenario.get("strictness"),
        "intent": scenario.get("intent"),
        "primary_guard": scenario.get("primary_guard"),
        "failure_class": scenario.get("failure_class"),
        "family": edit_family(scenario),
        "outcome": result.outcome,
        "ok": judgement.ok,
        "passed": judgement.gates_passed,
        "reasons": list(judgement.reasons),
        "detectors_declared": judgement.detectors.declared,
        "detectors_hit": judgement.detectors_hit,
        "detectors": [row.to_dict() for row in judgement.detectors.rows],
        "primary_guard_required": needs_primary_guard(scenario),
        "catastrophic_required": bool(requirements_of(scenario).get("catastrophic_required")),
        "invariants_status": judgement.invariants_status,
        "guard_flags": dict(judgement.flags),
        "spectral_caps_applied": judgement.spectral_caps,
        "ve_signal": ve_signal(report),
        "primary_guard_hit": judgement.primary_guard_hit,
        "any_core_guard_flag": any(judgement.flags[g] for g in CORE_GUARDS),
        "signaled": judgement.signaled,
        "ratio": judgement.ratio,
        "ci": [judgement.ci_lo, judgement.ci_hi],
        **_windows_covered(report),
        "edit_spec": _applied_spec(report),
        "path": path,
    }
    record.update(_probe_summary(report))
    repeats = report.get("determinism_repeats")
    if isinstance(repeats, Mapping):
        record["determinism_repeats"] = dict(repeats)
    return record


def _windows_covered(report: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the ratio is degraded, and how many of the final windows it covers (finite on both sides)."""
    pm = report.get("primary_metric")
    pm = pm if isinstance(pm, Mapping) else {}
    total = pm.get("n_windows")
    bad = pm.get("non_finite_windows")
    covered = total - min(int(bad), total) if isinstance(total, int) and isinstance(bad, int) else None
    return {"degraded": bool(pm.get("degraded")), "windows_total": total, "windows_covered": covered}


def _applied_spec(report: Mapping[str, Any]) -> str | None:
    """The change as applied, when the report says: an edit's spec (the tuned setting of a clean scenario, not its
    id's name), or a fault's type, mode and scalar parameters (relative strengths already resolved)."""
    edit = report.get("edit")
    if not isinstance(edit, Mapping):
        return None
    if edit.get("spec"):
        return str(edit["spec"])
    if not edit.get("error_type"):
        return None
    params = edit.get("params")
    shown = [f"{k}={text}" for k, v in sorted((params if isinstance(params, Mapping) else {}).items())
             if (text := _short(v)) is not None]
    text = str(edit["error_type"]) + (f":{edit['mode']}" if edit.get("mode") else "")
    text += f"({', '.join(shown)})" if shown else ""
    count = edit.get("modified_count")
    return text + (f", {count} modified" if isinstance(count, int) and not isinstance(count, bool) else "")


def _short(value: object) -> str | None:
    """A parameter value as short text, or ``None`` when it is too long to show in one line."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) or (isinstance(value, str) and len(value) <= 32):
        return str(value)
    if isinstance(value, list | tuple) and len(value) <= 4:
        items = [item for v in value if (item := _short(v)) is not None]
        return "[" + ", ".join(items) + "]" if len(items) == len(value) else None
    return None


def _missing_reason(result: RunResult | None) -> str:
    if result is None:
        return "not run"
    if result.outcome in ("error", "skipped"):
        return f"{result.outcome}: {result.error_class or 'unknown'}: {result.error_message or ''}".rstrip(": ")
    return f"{result.outcome}: no evaluation report"


def _missing_entry(case: Case, scenario: Mapping[str, Any] | None, result: RunResult | None) -> dict[str, Any]:
    model, sid, run = case
    base = {"model": model, "scenario": sid, "run": run}
    if scenario is None:
        return {**base, "gating": True, "category": None, "reason": "scenario not in scenarios.json"}
    return {
        **base,
        "gating": is_gating(scenario) or needs_primary_guard(scenario),
        "category": scenario.get("category"),
        "strictness": scenario.get("strictness"),
        "intent": scenario.get("intent"),
        "reason": _missing_reason(result),
    }


def judge_cases(
    catalog: Catalog, planned: Sequence[Case], results: Sequence[RunResult]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """``(judged records, missing entries, unplanned count)`` over the planned cases, in sorted case order.

    A result for a case that was not planned is only counted.
    """
    by_case = {(r.model, r.scenario, int(r.run)): r for r in results}
    planned_set = set(planned)
    unplanned = sum(1 for key in by_case if key not in planned_set)
    records: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    for case in sorted(planned_set):
        scenario = catalog.get(case[1])
        result = by_case.get(case)
        if scenario is None or result is None or result.report is None or result.outcome in ("error", "skipped"):
            missing.append(_missing_entry(case, scenario, result))
            continue
        records.append(judged_record(scenario, result, result.report))
    return records, missing, unplanned
