"""Sensitivity results: the ``proofpack_sensitivity_v1`` document, its summaries and its schema check.

Pure Python (no torch): the pack builder validates and copies the document, the HTML section and the terminal read
it. A document holds, per model and fault family, the ladder of magnitudes (weakest first), one run per rung and
window sample with which detectors fired, and the summary computed from those runs by :func:`summarise_family`:

* per detector and rung, the detection rate with its exact two-sided 95 % Clopper–Pearson interval;
* per detector, the *threshold*: the weakest rung from which every stronger rung is detected in at least
  :data:`DETECTION_GOAL` of its runs, bracketed by the rung below it. ``below_ladder`` when even the weakest rung is
  detected that often (the threshold lies at or below the ladder), ``above_ladder`` when the strongest is not;
* per rung, the mean and largest primary-metric ratio, and the weakest rung whose mean ratio exceeds the tier's
  limit (``over_budget_from``): where the change stops being within the tier's budget.

:func:`document` assembles the document from the sweep's entries (:func:`~pytest_proofpack.sensitivity.sweep_model`)
and :func:`merge_documents` joins documents of disjoint window samples (shards), recomputing every summary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from pytest_proofpack.errors import CatalogError, SpecError
from pytest_proofpack.sensitivity import DETECTORS
from pytest_proofpack.sensitivity_families import DIRECTIONS, strength_order
from pytest_proofpack.verdict.binomial import clopper_pearson_lower, clopper_pearson_upper

if TYPE_CHECKING:
    from pytest_proofpack.engine.config import EngineConfig

__all__ = [
    "DETECTION_GOAL",
    "DETECTORS",
    "SCHEMA",
    "bracket",
    "check_document",
    "document",
    "family_line",
    "merge_documents",
    "rung_rates",
    "summarise_family",
    "summarise_model",
]

SCHEMA: Final = "proofpack_sensitivity_v1"
SCHEMA_VERSION: Final = 1
DETECTION_GOAL: Final = 0.95


def rung_rates(rungs: Sequence[float], runs: Sequence[Mapping[str, Any]], detector: str) -> list[dict[str, Any]]:
    """Per rung (in the order given): ``{magnitude, n, detected, rate, lower95, upper95}`` of ``detector`` over the
    runs at that magnitude that produced a report (runs with an ``error`` are not trials). ``rate`` is ``None``
    without trials."""
    out = []
    for m in rungs:
        trials = [r for r in runs if r["magnitude"] == m and not r.get("error")]
        k = sum(bool(r["fired"].get(detector)) for r in trials)
        n = len(trials)
        out.append({"magnitude": m, "n": n, "detected": k, "rate": k / n if n else None,
                    "lower95": clopper_pearson_lower(k, n), "upper95": clopper_pearson_upper(k, n)})
    return out


def bracket(rates: Sequence[Mapping[str, Any]], goal: float = DETECTION_GOAL) -> dict[str, Any]:
    """The threshold of one detector from its per-rung rates, the rungs ordered weakest first.

    ``{status, below, at}``: ``at`` is the weakest rung from which every stronger rung (with trials) is detected at a
    rate of at least ``goal``; ``below`` the rung before it. ``status`` is ``bracketed`` when both exist,
    ``below_ladder`` when ``at`` is the weakest rung, ``above_ladder`` when no rung qualifies (``at`` ``None``,
    ``below`` the strongest rung).
    Rungs without trials neither qualify nor break a run of detected rungs; ``no_trials`` when no rung has any.
    """
    if all(r["rate"] is None for r in rates):
        return {"status": "no_trials", "below": None, "at": None}
    first: int | None = None
    for i in range(len(rates) - 1, -1, -1):
        rate = rates[i]["rate"]
        if rate is None:
            continue
        if rate < goal:
            break
        first = i
    if first is None:
        return {"status": "above_ladder", "below": rates[-1]["magnitude"] if rates else None, "at": None}
    if first == 0:
        return {"status": "below_ladder", "below": None, "at": rates[0]["magnitude"]}
    return {"status": "bracketed", "below": rates[first - 1]["magnitude"], "at": rates[first]["magnitude"]}


def _ratios(rungs: Sequence[float], runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in rungs:
        values = [r["ratio"] for r in runs if r["magnitude"] == m and isinstance(r.get("ratio"), int | float)]
        finite = [v for v in values if math.isfinite(v)]
        out.append({"magnitude": m, "mean_ratio": sum(finite) / len(finite) if finite else None,
                    "max_ratio": max(values) if values else None, "non_finite": len(values) - len(finite)})
    return out


def summarise_family(
    rungs: Sequence[float], runs: Sequence[Mapping[str, Any]], ratio_limit: float | None,
    detectors: Sequence[str] = DETECTORS,
) -> dict[str, Any]:
    """The summary of one family: ``rates`` and ``thresholds`` per detector, ``ratios`` per rung and
    ``over_budget_from`` (the weakest rung whose mean ratio, or any non-finite ratio, exceeds ``ratio_limit``).
    ``rungs`` must be ordered weakest first (:func:`strength_order`)."""
    rates = {d: rung_rates(rungs, runs, d) for d in detectors}
    ratios = _ratios(rungs, runs)
    over = None
    if ratio_limit is not None:
        for row in ratios:
            if row["non_finite"] or (row["mean_ratio"] is not None and row["mean_ratio"] > ratio_limit):
                over = row["magnitude"]
                break
    errors = sum(bool(r.get("error")) for r in runs)
    return {"rates": rates, "thresholds": {d: bracket(rates[d]) for d in detectors}, "ratios": ratios,
            "over_budget_from": over, "runs": len(runs), "errors": errors}


def _fmt(value: object) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def family_line(name: str, family: Mapping[str, Any]) -> str:
    """One terminal line: the family, its ladder, then each detector's threshold (``det≤m`` below the ladder,
    ``det (a,b]`` bracketed, ``det>m`` above it) and where the change leaves the tier's budget."""
    summary = family["summary"]
    parts = []
    for det, t in summary["thresholds"].items():
        if t["status"] == "bracketed":
            parts.append(f"{det} {_fmt(t['below'])}..{_fmt(t['at'])}")
        elif t["status"] == "below_ladder":
            parts.append(f"{det}<={_fmt(t['at'])}")
        elif t["status"] == "no_trials":
            parts.append(f"{det} no runs")
        else:
            parts.append(f"{det} not by {_fmt(t['below'])}")
    ladder = ",".join(_fmt(float(m)) for m in family["rungs"])
    budget = summary.get("over_budget_from")
    return (f"{name} [{family.get('unit', '')}: {ladder}; stronger={family['stronger']}]: " + "; ".join(parts)
            + f"; over budget from {_fmt(budget)}")


def _need(cond: bool, where: str, path: str, fix: str) -> None:
    if not cond:
        raise CatalogError(f"{where}: {path}: {fix}")


def _check_family(family: Any, where: str, path: str) -> None:
    _need(isinstance(family, Mapping), where, path, "must be an object; rewrite it with proofpack sensitivity")
    for key in ("rungs", "stronger", "runs", "summary"):
        _need(key in family, where, f"{path}.{key}", "is missing; rewrite the file with proofpack sensitivity")
    rungs = family["rungs"]
    _need(isinstance(rungs, list) and bool(rungs) and all(isinstance(m, int | float) for m in rungs), where,
          f"{path}.rungs", "must be a non-empty list of numbers")
    _need(family["stronger"] in DIRECTIONS, where, f"{path}.stronger", f"must be one of {', '.join(DIRECTIONS)}")
    _need(strength_order(rungs, family["stronger"]) == rungs, where, f"{path}.rungs",
          "must run from the weakest to the strongest magnitude")
    _need(isinstance(family["runs"], list), where, f"{path}.runs", "must be a list")
    for i, run in enumerate(family["runs"]):
        ok = isinstance(run, Mapping) and run.get("magnitude") in rungs and isinstance(run.get("fired"), Mapping)
        _need(ok, where, f"{path}.runs[{i}]", "needs a magnitude of the ladder and a fired object")
    _need(isinstance(family["summary"], Mapping) and "thresholds" in family["summary"], where,
          f"{path}.summary", "must hold thresholds; rewrite the file with proofpack sensitivity")


def check_document(doc: Any, where: str) -> dict[str, Any]:
    """``doc`` when it is a valid ``proofpack_sensitivity_v1`` document; else :class:`CatalogError` naming
    ``where`` (the file), the JSON path and the fix."""
    _need(isinstance(doc, Mapping), where, "$", "must be a JSON object written by proofpack sensitivity")
    _need(doc.get("schema") == SCHEMA, where, "$.schema", f"must be {SCHEMA!r}, found {doc.get('schema')!r}")
    _need(doc.get("schema_version") == SCHEMA_VERSION, where, "$.schema_version",
          f"must be {SCHEMA_VERSION}; rewrite the file with this version of proofpack sensitivity")
    models = doc.get("models")
    if not isinstance(models, Mapping):
        raise CatalogError(f"{where}: $.models: must be an object of model keys")
    for key, model in models.items():
        families = model.get("families") if isinstance(model, Mapping) else None
        if not isinstance(families, Mapping):
            raise CatalogError(f"{where}: $.models.{key}.families: must be an object of families")
        for name, family in families.items():
            _check_family(family, where, f"$.models.{key}.families.{name}")
    return dict(doc)


def summarise_model(entry: Mapping[str, Any], ratio_limit: float | None) -> dict[str, Any]:
    """``entry`` with each family's ``summary`` (re)computed from its runs."""
    families = {name: {**fam, "summary": summarise_family(fam["rungs"], fam["runs"], ratio_limit, DETECTORS)}
                for name, fam in entry["families"].items()}
    return {**entry, "families": families}


def document(models: Mapping[str, Mapping[str, Any]], *, engine: EngineConfig, created_utc: str,
             extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ``proofpack_sensitivity_v1`` document over ``models`` (entries of :func:`sweep_model`), summarised under
    ``engine``'s tier."""
    from pytest_proofpack import ENGINE_VERSION

    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "engine_version": ENGINE_VERSION,
            "created_utc": created_utc, "tier": engine.tier, "ratio_limit": engine.ratio_limit,
            "gate_rule": engine.gate_rule, "detectors": list(DETECTORS), **dict(extra or {}),
            "models": {key: summarise_model(entry, engine.ratio_limit) for key, entry in models.items()}}


def merge_documents(docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One document from several over disjoint window samples of the same families (runs concatenated, summaries
    recomputed). :class:`SpecError` when they disagree on a family's ladder or share a sample."""
    if not docs:
        raise SpecError("no sensitivity document to merge")
    merged: dict[str, Any] = {k: v for k, v in docs[0].items() if k != "models"}
    models: dict[str, dict[str, Any]] = {}
    for doc in docs:
        for key, entry in doc["models"].items():
            into = models.setdefault(key, {"samples": [], "families": {}})
            if set(into["samples"]) & set(entry["samples"]):
                raise SpecError(f"sensitivity documents of {key} share window samples; run disjoint --shard parts")
            into["samples"] = sorted([*into["samples"], *entry["samples"]])
            for name, fam in entry["families"].items():
                have = into["families"].setdefault(name, {**fam, "runs": []})
                if have["rungs"] != fam["rungs"]:
                    raise SpecError(f"sensitivity family {name} of {key}: ladders differ between documents")
                have["runs"] = [*have["runs"], *fam["runs"]]
    limit = merged.get("ratio_limit")
    merged["models"] = {k: summarise_model(e, limit if isinstance(limit, int | float) else None)
                        for k, e in models.items()}
    return merged
