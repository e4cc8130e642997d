"""The suite verdict: every planned case and every run judged, by the requirements of :mod:`.rules`.

:func:`compute_verdict` is pure and deterministic (no clock, sorted output), so ``proofpack verify`` can
recompute it from a pack and compare. ``verdict`` is ``PASS`` iff ``failed_requirements`` is empty.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from pytest_proofpack.expectations import CORE_GUARDS
from pytest_proofpack.verdict.cases import RunResult, judge_cases
from pytest_proofpack.verdict.matrix import detection_matrix
from pytest_proofpack.verdict.rules import INFORMATIONAL_MIN_SIGNAL_FRACTION, Evidence, failed_requirements
from pytest_proofpack.verdict.summaries import counts, determinism_repeats, false_alarm_rate, summaries

__all__ = ["VERDICT_SCHEMA", "compute_verdict"]

VERDICT_SCHEMA: Final = "proofpack_verdict_v1"
#: The verdict's own statement of how it judged (constant: the rules are not configurable).
_CRITERIA: Final = {
    "clean_all_pass": True,
    "stress_required_fail": True,
    "error_injection_detected": True,
    "informational_stress_min_signal_fraction": INFORMATIONAL_MIN_SIGNAL_FRACTION,
    "primary_guard_signal_required": True,
    "runs_judged": "every",
    "primary_guard_quantifier": "every_run_every_model",
    "coverage": "planned_gating_and_primary_guard_required",
}


def _json_safe(value: Any) -> Any:
    """A copy in which non-finite floats are ``null``, so the verdict is strict JSON everywhere."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _missing_by_model(missing: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """model -> ``gating`` or ``<category>_informational`` -> ``<scenario>[run<n>]`` of its missing cases."""
    by_model: dict[str, dict[str, list[str]]] = {}
    for m in missing:
        key = "gating" if m["gating"] else f"{m['category']}_informational"
        by_model.setdefault(str(m["model"]), {}).setdefault(key, []).append(f"{m['scenario']}[run{m['run']}]")
    return by_model


def compute_verdict(
    scenarios: Sequence[Mapping[str, Any]],
    planned: Sequence[tuple[str, str, int]],
    results: Sequence[RunResult],
    *,
    stale_records: int = 0,
) -> dict[str, Any]:
    """Judge every planned case (see :mod:`pytest_proofpack.verdict.rules`) and return the verdict dict.

    ``scenarios`` are scenarios.json entries; ``planned`` the ``(model, scenario_id, run)`` cases of the run;
    ``results`` what was recorded (unplanned results are counted, not judged). Pure and deterministic.
    """
    catalog = {str(s["id"]): s for s in scenarios if isinstance(s, Mapping) and "id" in s}
    plan = sorted({(str(m), str(s), int(r)) for m, s, r in planned})
    records, missing, unplanned = judge_cases(catalog, plan, results)
    failed = failed_requirements(Evidence(catalog, records, missing))
    verdict_counts = counts(catalog, plan, records, missing)
    verdict_counts["unplanned_results"] = unplanned
    verdict_counts["stale_records"] = stale_records
    verdict: dict[str, Any] = {
        "schema": VERDICT_SCHEMA,
        "schema_version": 1,
        "verdict": "FAIL" if failed else "PASS",
        "criteria": dict(_CRITERIA),
        "counts": verdict_counts,
        "core_guard_order": list(CORE_GUARDS),
        **summaries(catalog, records, missing),
        "detection_matrix": detection_matrix(catalog, plan, records, missing, failed, results),
        "false_alarm_rate": false_alarm_rate(records, missing),
        "determinism_repeats": determinism_repeats(records),
        "records": records,
        "missing": {"total": len(missing), "by_model": _missing_by_model(missing), "cases": missing},
        "failed_requirements": failed,
    }
    json_safe: dict[str, Any] = _json_safe(verdict)
    return json_safe
