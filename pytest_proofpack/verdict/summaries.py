"""The verdict's summaries of the judged records: counts, per category / guard / scenario, false alarms, repeats.

Each function is pure over the judged records (:func:`pytest_proofpack.verdict.cases.judged_record`) and the
missing cases; the verdict stores each result under its own key and ``write_results`` one file per key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from pytest_proofpack.expectations import CORE_GUARDS
from pytest_proofpack.verdict.binomial import clopper_pearson_upper
from pytest_proofpack.verdict.cases import Case, Catalog, JudgedRecord, needs_primary_guard, requirements_of

__all__ = ["CATEGORIES", "clopper_pearson_upper", "counts", "determinism_repeats", "false_alarm_rate", "summaries"]

CATEGORIES: Final = ("clean", "stress", "error_injection")


def counts(
    catalog: Catalog,
    planned: Sequence[Case],
    records: Sequence[JudgedRecord],
    missing: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The verdict's ``counts``: totals of planned, judged and missing cases, by category and requirement.

    Every ``*_total`` counts the planned runs, judged or not, so a run that errored (or was skipped, or did not run)
    stays in the denominator of the fraction it belongs to and counts as not passed, detected or signaled; the
    ``*_present``/``*_records`` counts are the judged ones.
    """

    def in_category(category: str) -> list[JudgedRecord]:
        return [r for r in records if r["category"] == category]

    def unjudged(category: str, strictness: str | None = None) -> int:
        return sum(1 for m in missing if m.get("category") == category
                   and (strictness is None or m.get("strictness") == strictness))

    info = [r for r in in_category("stress") if r["strictness"] == "informational"]
    pgr_ids = sorted({s for _, s, _ in planned if s in catalog and needs_primary_guard(catalog[s])})
    pgr = [r for r in records if r["primary_guard_required"]]
    pgr_missing = {str(m["scenario"]) for m in missing if m["scenario"] in pgr_ids}
    catastrophic = [r for r in records if r["catastrophic_required"]]
    return {
        "models_total": len({m for m, _, _ in planned}),
        "planned_total": len(set(planned)),
        "records_total": len(records),
        "missing_total": len(missing),
        "missing_gating": sum(1 for m in missing if m["gating"]),
        "tests_ok": sum(1 for r in records if r["ok"]),
        "tests_wrong": sum(1 for r in records if not r["ok"]),
        "clean_total": len(in_category("clean")) + unjudged("clean"),
        "clean_pass": sum(1 for r in in_category("clean") if r["passed"]),
        "stress_total": len(in_category("stress")) + unjudged("stress"),
        "stress_fail": sum(1 for r in in_category("stress") if not r["passed"]),
        "catastrophic_required_total": sum(
            1
            for _, s, _ in set(planned)
            if s in catalog and requirements_of(catalog[s]).get("catastrophic_required")
        ),
        "catastrophic_required_present": len(catastrophic),
        "catastrophic_required_fail": sum(1 for r in catastrophic if not r["passed"]),
        "error_injection_total": len(in_category("error_injection")) + unjudged("error_injection"),
        "error_injection_detected": sum(1 for r in in_category("error_injection") if r["detectors_hit"]),
        "informational_stress_total": len(info) + unjudged("stress", "informational"),
        "informational_stress_fail": sum(1 for r in info if not r["passed"]),
        "informational_stress_signaled": sum(1 for r in info if r["signaled"]),
        "primary_guard_required_scenarios": len(pgr_ids),
        "primary_guard_required_total": len(pgr) + sum(1 for m in missing if m["scenario"] in pgr_ids),
        "primary_guard_required_records": len(pgr),
        "primary_guard_required_hits": sum(1 for r in pgr if r["primary_guard_hit"]),
        "primary_guard_required_scenarios_hit": sum(
            1
            for s in pgr_ids
            if s not in pgr_missing
            and (rs := [r for r in pgr if r["name"] == s])
            and all(r["primary_guard_hit"] for r in rs)
        ),
    }


def _category_summary(records: Sequence[JudgedRecord], missing: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    summary = {}
    for category in CATEGORIES:
        recs = [r for r in records if r["category"] == category]
        summary[category] = {
            "scenarios": len({r["name"] for r in recs}),
            "reports": len(recs),
            "missing": sum(1 for m in missing if m.get("category") == category),
            "primary_metric_fail": sum(1 for r in recs if r["guard_flags"]["primary_metric"]),
            "invariants_fail": sum(1 for r in recs if r["guard_flags"]["invariants_fail"]),
            "invariants_warn": sum(1 for r in recs if r["guard_flags"]["invariants_warn"]),
            "any_flag": sum(1 for r in recs if r["any_core_guard_flag"]),
        }
    return summary


def _guard_signals(records: Sequence[JudgedRecord]) -> dict[str, Any]:
    signals = {}
    for guard in CORE_GUARDS:
        flagged = [r for r in records if r["guard_flags"][guard]]
        unique = [r for r in flagged if sum(r["guard_flags"][h] for h in CORE_GUARDS) == 1]
        signals[guard] = {"flagged": len(flagged), "unique": len(unique)}
    return signals


def _interventions(records: Sequence[JudgedRecord]) -> dict[str, Any]:
    caps = {(r["model"], r["name"], r["run_num"]) for r in records if r["spectral_caps_applied"] > 0}
    ves = {(r["model"], r["name"], r["run_num"]) for r in records if r["ve_signal"]}
    return {
        "spectral_caps": {"flagged": len(caps), "unique": len(caps - ves)},
        "ve_signal": {"flagged": len(ves), "unique": len(ves - caps)},
    }


def _scenario_summary(
    catalog: Catalog, records: Sequence[JudgedRecord], missing: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    summary = []
    for category in CATEGORIES:
        for sid in sorted(s for s in catalog if catalog[s].get("category") == category):
            recs = [r for r in records if r["name"] == sid]
            miss = [m for m in missing if m["scenario"] == sid]
            if not recs and not miss:
                continue
            scenario = catalog[sid]
            summary.append(
                {
                    "id": sid,
                    "category": category,
                    "strictness": scenario.get("strictness"),
                    "intent": scenario.get("intent"),
                    "primary_guard": scenario.get("primary_guard"),
                    "primary_guard_required": needs_primary_guard(scenario),
                    "reports": len(recs),
                    "missing": len(miss),
                    "passed": sum(1 for r in recs if r["passed"]),
                    "failed": sum(1 for r in recs if not r["passed"]),
                    "ok": sum(1 for r in recs if r["ok"]),
                    "detector_hits": sum(1 for r in recs if r["detectors_hit"]),
                    "signaled": sum(1 for r in recs if r["signaled"]),
                    "primary_guard_hits": sum(1 for r in recs if r["primary_guard_hit"]),
                }
            )
    return summary


def summaries(
    catalog: Catalog, records: Sequence[JudgedRecord], missing: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """The category, guard signal, guard intervention and scenario signal summaries, keyed as in the verdict."""
    return {
        "category_summary": _category_summary(records, missing),
        "guard_signal_summary": {"records_total": len(records), "signals": _guard_signals(records)},
        "guard_intervention_summary": {"records_total": len(records), "signals": _interventions(records)},
        "scenario_signal_summary": _scenario_summary(catalog, records, missing),
    }


#: Whether the pack's false-alarm figure is in-sample: its runs are scored on evaluation-pool windows that neither
#: calibration (calibration pool) nor tuning (tuning pool) saw, so the thresholds were not fitted to them; their edits
#: are the calibrated kinds (the tuned settings) and the catalog's benign scenarios. The out-of-sample study with
#: held-out edit kinds is ``bench/false_alarms.py``.
SAMPLE_KIND: Final = {
    "windows": "out-of-sample: evaluation pool, disjoint from the calibration and tuning pools",
    "edits": "in-sample kinds: the tuned clean settings that calibration also applies (on other windows)",
    "held_out_study": "bench/false_alarms.py",
}


def false_alarm_rate(records: Sequence[JudgedRecord], missing: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """False alarms on benign edits: must_pass clean-control runs whose report failed a gate.

    A planned benign run without a judged report (an error, a skip) is no evaluation: it is left out of the rate,
    neither an alarm nor a quiet run, and listed under ``unjudged_cases``.
    """

    def benign(case: Mapping[str, Any]) -> bool:
        return case.get("strictness") == "must_pass" and case.get("intent") == "clean_control"

    evaluated = [r for r in records if benign(r)]
    alarms = [f"{r['model']}:{r['name']}[run{r['run_num']}]" for r in evaluated if not r.get("passed")]
    unjudged = [f"{m['model']}:{m['scenario']}[run{m['run']}] ({m['reason']})" for m in missing if benign(m)]
    n = len(evaluated)
    return {
        "evaluations": n, "alarms": len(alarms), "rate": (len(alarms) / n) if n else None,
        "upper_95_clopper_pearson": round(clopper_pearson_upper(len(alarms), n), 6) if n else None,
        "alarmed_cases": alarms,
        "unjudged": len(unjudged),
        "unjudged_cases": unjudged,
        "definition": "must_pass clean_control evaluations (clean and benign edits) that failed any gate; each run "
                      "uses its own window sample, distinct from the calibration samples; planned runs without a "
                      "judged report are not evaluations and are listed as unjudged",
        "sample": SAMPLE_KIND,
    }


def determinism_repeats(records: Sequence[JudgedRecord]) -> dict[str, Any]:
    """``--proofpack-repeats``: the spread of repeated evaluations of one scenario, per judged run."""
    out: dict[str, Any] = {}
    for r in records:
        repeats = r.get("determinism_repeats")
        if isinstance(repeats, Mapping):
            out[f"{r['model']}:{r['name']}[run{r['run_num']}]"] = dict(repeats)
    return out
