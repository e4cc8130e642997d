"""The detection matrix: one cell per planned (model, scenario), summarising all its runs.

A cell's ``outcome`` is ``fail`` when any run was judged wrong or a primary-guard requirement failed on it,
``missing`` when a run has no report, ``signal``/``quiet`` for informational scenarios, ``pass`` otherwise; it
also carries the guards that fired on any run, the worst finite ratio and the most spectral caps of a run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_proofpack.expectations import CORE_GUARDS
from pytest_proofpack.verdict.cases import Case, Catalog, JudgedRecord

__all__ = ["detection_matrix"]

#: Requirements whose failures mark a matrix cell ``fail`` even when each run was judged as expected.
_PRIMARY_GUARD_REQUIREMENTS = ("scenario_primary_guard_signal", "scenario_expected_detectors")


def _outcome(
    scenario: Mapping[str, Any], recs: Sequence[JudgedRecord], miss: Sequence[Mapping[str, Any]], pgr_failed: bool
) -> str:
    if any(not r["ok"] for r in recs) or pgr_failed:
        return "fail"
    if miss:
        return "missing"
    if scenario.get("strictness") == "informational":
        return "signal" if any(r["signaled"] for r in recs) else "quiet"
    return "pass"


def _cell(
    scenario: Mapping[str, Any],
    recs: Sequence[JudgedRecord],
    miss: Sequence[Mapping[str, Any]],
    pgr_failed: bool,
) -> dict[str, Any]:
    fired = sorted({g for r in recs for g in CORE_GUARDS if r["guard_flags"][g]})
    if any(r["spectral_caps_applied"] > 0 for r in recs) and "spectral" not in fired:
        fired.append("spectral_caps")
    ratios = [r["ratio"] for r in recs if isinstance(r["ratio"], float) and math.isfinite(r["ratio"])]
    return {
        "outcome": _outcome(scenario, recs, miss, pgr_failed),
        "runs_judged": len(recs),
        "runs_missing": len(miss),
        "runs_ok": sum(1 for r in recs if r["ok"]),
        "guards": fired,
        "ratio": max(ratios) if ratios else None,
        **_worst_coverage(recs),
        "edit_specs": sorted({str(r["edit_spec"]) for r in recs if r.get("edit_spec")}),
        "caps": max((r["spectral_caps_applied"] for r in recs), default=0),
        "invariants_status": next((r["invariants_status"] for r in recs if r["invariants_status"]), None),
    }


def _worst_coverage(recs: Sequence[JudgedRecord]) -> dict[str, Any]:
    """``degraded`` when any run's ratio is degraded, with the fewest final windows a run's ratio covered."""
    covered = [(int(r["windows_covered"]), r.get("windows_total")) for r in recs
               if isinstance(r.get("windows_covered"), int)]
    fewest: tuple[int | None, Any] = min(covered, key=lambda c: c[0]) if covered else (None, None)
    return {"degraded": any(r.get("degraded") for r in recs), "windows_covered": fewest[0],
            "windows_total": fewest[1]}


def detection_matrix(
    catalog: Catalog,
    planned: Sequence[Case],
    records: Sequence[JudgedRecord],
    missing: Sequence[Mapping[str, Any]],
    failed: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """``{models, scenarios, cells}``: scenarios in catalog order (unknown ids last, sorted), ``cells[model][id]``
    for every planned pair that has a record or a missing case."""
    models = sorted({m for m, _, _ in planned})
    planned_ids = {s for _, s, _ in planned}
    scenario_ids = [s for s in catalog if s in planned_ids] + sorted(planned_ids - set(catalog))
    pgr_bad = {
        (f["model"], f["scenario"])
        for req in failed
        if req["requirement"] in _PRIMARY_GUARD_REQUIREMENTS
        for f in req.get("failures", [])
    }
    cells: dict[str, dict[str, Any]] = {}
    for model in models:
        row: dict[str, Any] = {}
        for sid in scenario_ids:
            recs = [r for r in records if r["model"] == model and r["name"] == sid]
            miss = [m for m in missing if m["model"] == model and m["scenario"] == sid]
            if not recs and not miss:
                continue
            row[sid] = _cell(catalog.get(sid, {}), recs, miss, (model, sid) in pgr_bad)
        cells[model] = row
    return {
        "models": models,
        "scenarios": [
            {
                "id": s,
                "category": catalog.get(s, {}).get("category"),
                "strictness": catalog.get(s, {}).get("strictness"),
            }
            for s in scenario_ids
        ],
        "cells": cells,
    }
