"""The detection matrix: one cell per planned (model, scenario), summarising all its runs.

A cell's ``outcome`` is ``fail`` when any run was judged wrong or a primary-guard requirement failed on it,
``missing`` when a run has no report, ``signal``/``quiet`` for informational scenarios, ``pass`` otherwise; it
also carries the guards that fired on any run, the detectors that decided a hit, the worst finite ratio, the most
spectral caps of a run and the change each run actually applied (``edit_specs``). The matrix also says what each
model's baseline is (``baselines``: source, GGUF quantization type, dequantized and evaluation dtypes) and what
every mark of its terminal form means (``legend``, printed by :func:`pytest_proofpack.verdict.render.render_matrix`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from pytest_proofpack.expectations import CORE_GUARDS
from pytest_proofpack.verdict.cases import Case, Catalog, JudgedRecord, RunResult

__all__ = ["LEGEND", "detection_matrix", "model_baselines"]

#: ``[mark, meaning]`` of every mark in a terminal matrix cell, in the order a cell shows them.
LEGEND: Final = (
    ("P", "pass: every run judged as its scenario expects"),
    ("F", "fail: a run judged wrong, or a required probe's primary guard or detectors missed"),
    ("M", "missing: a run without a judged report (error, skip or not run; see missing)"),
    ("S", "signal: informational, and on some run its detectors hit or a core guard fired (see signals)"),
    (".", "quiet: informational, and no signal on any run"),
    ("1.234", "worst (highest) finite primary-metric ratio of the runs against the baseline; - none"),
    ("~k/nw", "degraded ratio: the mean over only the k of n final windows whose loss stayed finite"),
    ("[isrvm]", "core guards that fired on any run: i invariants s spectral r RMT v variance m primary metric; - none"),
    ("cN", "most spectral caps applied in one run"),
)

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
        "detectors_hit": sorted({d for r in recs for d in _deciding_detectors(r)}),
        "caps": max((r["spectral_caps_applied"] for r in recs), default=0),
        "invariants_status": next((r["invariants_status"] for r in recs if r["invariants_status"]), None),
    }


def _deciding_detectors(record: JudgedRecord) -> list[str]:
    """The detectors that made a run's detectors hit: its any_of detectors that hit (the all_of ones are conditions
    that held), else its all_of ones; none when its detectors did not hit."""
    if not record["detectors_hit"]:
        return []
    rows = [d for d in record["detectors"] if d["hit"]]
    any_of = [d for d in rows if d["group"] == "any_of"]
    return [str(d["description"]) for d in (any_of or rows)]


def _worst_coverage(recs: Sequence[JudgedRecord]) -> dict[str, Any]:
    """``degraded`` when any run's ratio is degraded, with the fewest final windows a run's ratio covered."""
    covered = [(int(r["windows_covered"]), r.get("windows_total")) for r in recs
               if isinstance(r.get("windows_covered"), int)]
    fewest: tuple[int | None, Any] = min(covered, key=lambda c: c[0]) if covered else (None, None)
    return {"degraded": any(r.get("degraded") for r in recs), "windows_covered": fewest[0],
            "windows_total": fewest[1]}


def model_baselines(models: Sequence[str], results: Sequence[RunResult]) -> dict[str, dict[str, Any] | None]:
    """Each model's ``baseline_provenance`` as its first report (in case order) gives it; ``None`` when none does."""
    out: dict[str, dict[str, Any] | None] = {m: None for m in models}
    for r in sorted(results, key=lambda r: (r.model, r.scenario, r.run)):
        provenance = (r.report or {}).get("baseline_provenance")
        if r.model in out and out[r.model] is None and isinstance(provenance, Mapping):
            out[r.model] = dict(provenance)
    return out


def detection_matrix(
    catalog: Catalog,
    planned: Sequence[Case],
    records: Sequence[JudgedRecord],
    missing: Sequence[Mapping[str, Any]],
    failed: Sequence[Mapping[str, Any]],
    results: Sequence[RunResult] = (),
) -> dict[str, Any]:
    """``{models, scenarios, cells, baselines, legend}``: scenarios in catalog order (unknown ids last, sorted),
    ``cells[model][id]`` for every planned pair that has a record or a missing case, ``baselines[model]`` from
    ``results``' reports."""
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
        "baselines": model_baselines(models, results),
        "legend": [list(entry) for entry in LEGEND],
    }
