"""How much of its command line's plan a run (or a pack) covers, and the verdict that says so.

run.json records, beside the config digest (which the shards of one command line share):

``plan``
    the command line's plan: ``models`` (every model, all shards), ``scenario_suite``, ``clean_runs``,
    ``stress_runs``, ``cases`` and ``digest`` (:func:`plan_digest` of every case);
``shard``
    ``{index, count, models}`` of a shard run, else ``null``;
``merged``
    written by ``proofpack merge``: ``{count, shards, missing_shards, models}``.

``planned`` is what this run itself collected: the plan's cases of the models it covers (:func:`covered_models`).
A run that covers only part of its plan (one shard, or a merge given ``--allow-partial``) has the verdict
``PARTIAL`` where it would otherwise ``PASS``; a ``FAIL`` stays ``FAIL``. :func:`run_verdict` is what the
controller, ``proofpack report``, the pack builder and ``proofpack verify`` all compute.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from pytest_proofpack.catalog.expansion import plan_cases
from pytest_proofpack.verdict import LoadedRun, compute_verdict

__all__ = ["PARTIAL", "covered_models", "expected_planned", "partial_of", "plan_digest", "plan_of", "run_verdict"]

PARTIAL: Final = "PARTIAL"


def plan_digest(cases: Iterable[Sequence[Any]]) -> str:
    """sha256 of the sorted ``[model, scenario, run]`` cases as canonical JSON."""
    rows = sorted([str(m), str(s), int(r)] for m, s, r in cases)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def plan_of(run: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """run.json's ``plan`` object, or ``None`` (a run directory written before plans were recorded)."""
    plan = run.get("plan")
    return plan if isinstance(plan, Mapping) else None


def covered_models(run: Mapping[str, Any]) -> list[str]:
    """The models whose cases this run's ``planned`` must hold: a merge's, a shard's, else the plan's."""
    for section in ("merged", "shard"):
        block = run.get(section)
        if isinstance(block, Mapping) and isinstance(block.get("models"), list):
            return [str(m) for m in block["models"]]
    plan = plan_of(run) or {}
    models = plan.get("models")
    return [str(m) for m in models] if isinstance(models, list) else []


def expected_planned(run: Mapping[str, Any], scenarios: Sequence[Mapping[str, Any]],
                     models: Sequence[str] | None = None) -> list[tuple[str, str, int]]:
    """The cases the plan gives ``models`` (default :func:`covered_models`), from scenarios.json entries."""
    plan = plan_of(run) or {}
    return plan_cases(list(covered_models(run) if models is None else models), scenarios,
                      str(plan.get("scenario_suite")), int(plan.get("clean_runs", 0)),
                      int(plan.get("stress_runs", 0)))


def partial_of(run: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a run that covers part of its plan is missing (``None`` when it covers all of it)."""
    merged = run.get("merged")
    if isinstance(merged, Mapping):
        missing = list(merged.get("missing_shards") or [])
        if not missing:
            return None
        return {"shard_count": merged.get("count"), "shards": list(merged.get("shards") or []),
                "missing_shards": missing, "models": covered_models(run)}
    shard = run.get("shard")
    if isinstance(shard, Mapping) and int(shard.get("count", 1)) > 1:
        index = int(shard.get("index", 0))
        return {"shard_count": shard.get("count"), "shards": [index],
                "missing_shards": [k for k in range(1, int(shard["count"]) + 1) if k != index],
                "models": covered_models(run)}
    return None


def run_verdict(loaded: LoadedRun, *, stale_records: int = 0) -> dict[str, Any]:
    """The verdict of a run directory or pack: :func:`~pytest_proofpack.verdict.compute_verdict`, then
    ``PARTIAL`` (with a ``partial`` block) when the run covers only part of its plan."""
    verdict = compute_verdict(loaded.scenarios, loaded.planned, loaded.results, stale_records=stale_records)
    partial = partial_of(loaded.run)
    if partial is not None:
        verdict["partial"] = partial
        if verdict["verdict"] == "PASS":
            verdict["verdict"] = PARTIAL
    return verdict
