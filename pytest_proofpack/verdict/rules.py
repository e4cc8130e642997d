"""The suite-level requirements of a verdict: one function per requirement, applied in :data:`REQUIREMENTS` order.

The verdict is ``PASS`` iff no requirement fails:

- ``evidence_present`` — at least one planned case has a judged report.
- ``scenario_coverage`` — every planned case of a gating (``must_*``) or ``primary_guard_required``
  scenario has a report, for every planned model (a model with zero reports is *not* exempt) and every
  run. A case whose record is an error or a skip, or has no report, is "missing". Missing informational
  cases are listed, not failed.
- ``clean_all_pass`` — every ``must_pass`` run passed its gates.
- ``stress_required_fail`` / ``stress_expected_detectors`` — every ``must_fail`` run failed its gates /
  hit its detectors.
- ``error_injection_detected`` — every ``must_detect`` run hit its detectors (none declared = missed).
- ``scenario_primary_guard_signal`` / ``scenario_expected_detectors`` — every run (hence every model) of a
  ``primary_guard_required`` scenario shows its primary guard firing / hits its declared detectors.
- ``guard_primary_demonstrated`` — per core guard and model whose plan has primary-guard-required runs of that
  guard, at least one of them was judged and hit (a guard whose every such run errored fails).
- ``informational_stress_min_signal_fraction`` — at least half the *planned* informational stress runs signaled;
  an errored, skipped or unrun one counts as not signaled.

Deliberate departures from the reference (its weaknesses §13.5-6):

- Every run is judged, not only the highest-numbered one: repeats are evidence, not waste.
- Coverage is measured against the *planned* cases, so a model that produced nothing fails.
- ``primary_guard_required`` informational probes gate the verdict. "Informational" means the scenario's
  *pytest test* never fails on one report (a subtle probe may be quiet); but the probes are the only
  evidence that the RMT, spectral and variance guards detect anything at all, so a pack in which a
  required guard never fires must not PASS.
- Both primary-guard rules use one quantifier: every run of every model (the reference mixed any/all models).

Each failed requirement is a dict ``{requirement, message, failures?, ...}``; their order is part of the
verdict (``proofpack verify`` compares it), so the table's order and each function's order are fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, final

from pytest_proofpack.expectations import CORE_GUARDS
from pytest_proofpack.verdict.cases import Catalog, JudgedRecord, needs_primary_guard

__all__ = ["INFORMATIONAL_MIN_SIGNAL_FRACTION", "REQUIREMENTS", "Evidence", "failed_requirements"]

INFORMATIONAL_MIN_SIGNAL_FRACTION: Final = 0.5
#: The failed-requirement entries one check returns (empty when it holds).
Failed = list[dict[str, Any]]


@final
@dataclass(frozen=True)
class Evidence:
    """What the requirements are checked on: the catalog, the judged records and the missing cases."""

    catalog: Catalog
    records: Sequence[JudgedRecord]
    missing: Sequence[Mapping[str, Any]]


def _failure(record: JudgedRecord) -> dict[str, Any]:
    return {
        "model": record["model"],
        "scenario": record["name"],
        "run": record["run_num"],
        "passed": record["passed"],
        "detectors_hit": record["detectors_hit"],
        "reasons": record["reasons"],
        "path": record["path"],
    }


def _missing_failure(case: Mapping[str, Any]) -> dict[str, Any]:
    """A missing case in the shape of :func:`_failure`: no report, so nothing passed or hit."""
    return {"model": case["model"], "scenario": case["scenario"], "run": case["run"], "passed": None,
            "detectors_hit": None, "reasons": [str(case.get("reason"))], "path": None}


def _requirement(name: str, message: str, failures: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"requirement": name, "message": message, **extra}
    if failures:
        entry["failures"] = failures
    return entry


def _list_cases(records: Sequence[JudgedRecord], limit: int = 6) -> str:
    names = [f"{r['model']}/{r['name']}[run{r['run_num']}]" for r in records]
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _runs_failing(name: str, what: str, bad: Sequence[JudgedRecord]) -> Failed:
    """The requirement ``name`` failed by the runs ``bad`` (nothing when ``bad`` is empty)."""
    if not bad:
        return []
    return [_requirement(name, f"{what}: {_list_cases(bad)}", [_failure(r) for r in bad])]


def evidence_present(evidence: Evidence) -> Failed:
    if evidence.records:
        return []
    return [_requirement("evidence_present", "no planned case has an evaluation report", [])]


def scenario_coverage(evidence: Evidence) -> Failed:
    """One failure per model with gating cases missing."""
    by_model: dict[str, list[Mapping[str, Any]]] = {}
    for case in evidence.missing:
        if case["gating"]:
            by_model.setdefault(str(case["model"]), []).append(case)
    failed: Failed = []
    for model in sorted(by_model):
        cases = by_model[model]
        shown = ", ".join(f"{c['scenario']}[run{c['run']}] ({c['reason']})" for c in cases[:4])
        more = f" (+{len(cases) - 4} more)" if len(cases) > 4 else ""
        message = f"model {model}: {len(cases)} gating case(s) without a report: {shown}{more}"
        failed.append(_requirement("scenario_coverage", message, [dict(c) for c in cases], model=model))
    return failed


def clean_all_pass(evidence: Evidence) -> Failed:
    bad = [r for r in evidence.records if r["strictness"] == "must_pass" and not r["passed"]]
    return _runs_failing("clean_all_pass", "must_pass runs that failed a gate (false alarm)", bad)


def stress_required_fail(evidence: Evidence) -> Failed:
    bad = [r for r in evidence.records if r["strictness"] == "must_fail" and r["passed"]]
    return _runs_failing("stress_required_fail", "must_fail runs that passed every gate", bad)


def stress_expected_detectors(evidence: Evidence) -> Failed:
    bad = [r for r in evidence.records if r["strictness"] == "must_fail" and not r["detectors_hit"]]
    return _runs_failing("stress_expected_detectors", "must_fail runs whose declared detectors did not hit", bad)


def error_injection_detected(evidence: Evidence) -> Failed:
    bad = [r for r in evidence.records if r["strictness"] == "must_detect" and not r["detectors_hit"]]
    return _runs_failing("error_injection_detected", "must_detect runs not detected (or declaring no detectors)", bad)


def _primary_guard_runs(evidence: Evidence) -> list[JudgedRecord]:
    return [r for r in evidence.records if r["primary_guard_required"]]


def primary_guard_scenarios(evidence: Evidence) -> Failed:
    """``scenario_primary_guard_signal`` then ``scenario_expected_detectors``, scenario by scenario."""
    runs = _primary_guard_runs(evidence)
    failed: Failed = []
    for sid, scenario in evidence.catalog.items():
        if not needs_primary_guard(scenario):
            continue
        recs = [r for r in runs if r["name"] == sid]
        no_guard = [r for r in recs if not r["primary_guard_hit"]]
        if no_guard:
            message = f"{sid}: primary guard {scenario.get('primary_guard')} did not fire on {_list_cases(no_guard)}"
            failures = [_failure(r) for r in no_guard]
            failed.append(_requirement("scenario_primary_guard_signal", message, failures, scenario=sid))
        no_detector = [r for r in recs if r["detectors_declared"] and not r["detectors_hit"]]
        if no_detector:
            message = f"{sid}: declared detectors did not hit on {_list_cases(no_detector)}"
            failures = [_failure(r) for r in no_detector]
            failed.append(_requirement("scenario_expected_detectors", message, failures, scenario=sid))
    return failed


def _unjudged_primary_guard_runs(evidence: Evidence) -> list[Mapping[str, Any]]:
    """The missing cases (error, skip, not run) of primary-guard-required scenarios."""
    return [m for m in evidence.missing
            if str(m["scenario"]) in evidence.catalog and needs_primary_guard(evidence.catalog[str(m["scenario"])])]


def guard_primary_demonstrated(evidence: Evidence) -> Failed:
    """Per core guard and model whose plan has a primary-guard-required run of that guard: at least one such run
    was judged and hit. A guard whose every planned run errored, was skipped or did not run fails too."""
    judged: dict[tuple[str, str], list[JudgedRecord]] = {}
    for r in _primary_guard_runs(evidence):
        judged.setdefault((str(r["primary_guard"]), str(r["model"])), []).append(r)
    unjudged: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for m in _unjudged_primary_guard_runs(evidence):
        guard = str(evidence.catalog[str(m["scenario"])].get("primary_guard"))
        unjudged.setdefault((guard, str(m["model"])), []).append(m)
    failed: Failed = []
    for guard in CORE_GUARDS:
        for model in sorted({mdl for g, mdl in (*judged, *unjudged) if g == guard}):
            recs, miss = judged.get((guard, model), []), unjudged.get((guard, model), [])
            if any(r["primary_guard_hit"] for r in recs):
                continue
            if recs:
                message = f"guard {guard} never fired on model {model}'s primary_guard_required runs"
            else:
                message = (f"guard {guard} has no judged primary_guard_required run on model {model}: all "
                           f"{len(miss)} planned run(s) missing ({miss[0]['reason']})")
            failures = [_failure(r) for r in recs] + [_missing_failure(m) for m in miss]
            failed.append(_requirement("guard_primary_demonstrated", message, failures, guard=guard, model=model))
    return failed


def informational_stress_min_signal_fraction(evidence: Evidence) -> Failed:
    """At least half of the *planned* informational stress runs signaled: a run without a judged report (an
    error, a skip, not run) counts in the denominator as not signaled."""
    info = [r for r in evidence.records if r["category"] == "stress" and r["strictness"] == "informational"]
    unjudged = [m for m in evidence.missing
                if m.get("category") == "stress" and m.get("strictness") == "informational"]
    total = len(info) + len(unjudged)
    if not total:
        return []
    signaled = sum(1 for r in info if r["signaled"])
    fraction = signaled / total
    if fraction >= INFORMATIONAL_MIN_SIGNAL_FRACTION:
        return []
    message = (
        f"only {signaled}/{total} informational stress runs signaled (< {INFORMATIONAL_MIN_SIGNAL_FRACTION:.0%})"
        + (f"; {len(unjudged)} without a judged report count as not signaled" if unjudged else "")
    )
    failures = [_failure(r) for r in info if not r["signaled"]] + [_missing_failure(m) for m in unjudged]
    details = {"signaled": signaled, "total": total, "unjudged": len(unjudged), "fraction": fraction}
    return [_requirement("informational_stress_min_signal_fraction", message, failures, details=details)]


#: Every requirement check, in the order its failures appear in ``failed_requirements``.
REQUIREMENTS: Final[tuple[Callable[[Evidence], Failed], ...]] = (
    evidence_present,
    scenario_coverage,
    clean_all_pass,
    stress_required_fail,
    stress_expected_detectors,
    error_injection_detected,
    primary_guard_scenarios,
    guard_primary_demonstrated,
    informational_stress_min_signal_fraction,
)


def failed_requirements(evidence: Evidence) -> Failed:
    """The failed requirements (empty: the verdict is ``PASS``), in :data:`REQUIREMENTS` order."""
    return [entry for check in REQUIREMENTS for entry in check(evidence)]
