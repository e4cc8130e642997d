"""Provenance: a run's run.json agrees with its own catalog and plan.

A run directory or pack carries the catalog it ran (``metadata/scenarios.json``, ``suites.yaml``,
``tuned_edit_params.json``) and, in run.json, the digest it recorded of that catalog, the config digest and the
plan (see :mod:`.coverage`). :func:`provenance_problem` recomputes all three from the files and names the first
disagreement, so a scenario dropped from the catalog, a config value changed after the run or a ``planned`` list
cut short is caught even when the files were re-sealed with another key. (A complete, consistent rewrite of every
digest is caught only by a pinned signing key.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from pytest_proofpack.catalog.expansion import catalog_digest, plan_cases, shard_models
from pytest_proofpack.errors import ProofpackError
from pytest_proofpack.pack.coverage import covered_models, expected_planned, plan_digest, plan_of

#: Bounds a plan must respect before it is expanded (the options' own bounds, and a generous model count).
MAX_RUNS: Final = 1000
MAX_PLAN_MODELS: Final = 1000

__all__ = ["config_digest_of", "metadata_catalog_digest", "provenance_problem"]


def config_digest_of(config: Mapping[str, Any]) -> str:
    """The digest the plugin records for a run's ``config`` (sorted-key JSON, sha256)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def metadata_catalog_digest(root: Path) -> str:
    """The catalog digest of ``root/metadata``'s catalog copies; :class:`ProofpackError` when one is unreadable."""
    meta = root / "metadata"
    return catalog_digest({"scenarios": meta / "scenarios.json", "suites": meta / "suites.yaml",
                           "tuned": meta / "tuned_edit_params.json"})


def _first_difference(got: Sequence[Any], want: Sequence[Any]) -> str:
    extra = sorted(set(got) - set(want))
    lacking = sorted(set(want) - set(got))
    if lacking:
        return f"it lacks {list(lacking[0])}" + (f" and {len(lacking) - 1} more" if len(lacking) > 1 else "")
    if extra:
        return f"it adds {list(extra[0])}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
    return "it repeats a case"


def _digest_problem(run: Mapping[str, Any], catalog: str) -> str | None:
    config = run.get("config")
    if not isinstance(config, Mapping):
        return "run.json has no config object"
    if not run.get("config_scrubbed") and run.get("config_digest") != config_digest_of(config):
        return "config_digest is not the digest of run.json's config (the config was edited after the run)"
    if config.get("catalog_digest") != catalog:
        return (f"the catalog in metadata/ has digest {catalog[:16]}…, the run recorded "
                f"{str(config.get('catalog_digest'))[:16]}…: a scenario, suite or tuned value was changed")
    if run.get("scenarios_digest") != catalog:
        return "scenarios_digest differs from the catalog's digest"
    return None


def _plan_problem(run: Mapping[str, Any], scenarios: Sequence[Mapping[str, Any]]) -> str | None:
    plan = plan_of(run)
    if plan is None or not isinstance(plan.get("models"), list):
        return "run.json has no plan (written before plans were recorded: rerun, or rebuild with this version)"
    models = [str(m) for m in plan["models"]]
    counts = [plan.get("clean_runs"), plan.get("stress_runs")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_RUNS for n in counts) or \
            len(models) > MAX_PLAN_MODELS:
        return f"the plan's run counts must be integers from 1 to {MAX_RUNS} and its models at most {MAX_PLAN_MODELS}"
    config = run.get("config") or {}
    if sorted(models) != sorted(config.get("models") or []):
        return "the plan's models differ from the config's"
    full = plan_cases(models, scenarios, str(plan.get("scenario_suite")), int(plan.get("clean_runs", 0)),
                      int(plan.get("stress_runs", 0)))
    if plan.get("digest") != plan_digest(full) or plan.get("cases") != len(full):
        return f"the plan's digest does not match the {len(full)} cases its catalog and run counts give"
    shard = run.get("shard")
    if isinstance(shard, Mapping):
        index, count = int(shard.get("index", 0)), int(shard.get("count", 0))
        if not 1 <= index <= count or shard.get("models") != shard_models(models, (index, count)):
            return f"shard {index}/{count} does not hold the models that shard of the plan holds"
    expected = expected_planned(run, scenarios)
    planned = [(str(m), str(s), int(r)) for m, s, r in run.get("planned") or []]
    if sorted(planned) != expected:
        return (f"planned holds {len(planned)} cases, the plan gives {len(expected)} for models "
                f"{', '.join(covered_models(run))}: {_first_difference(planned, expected)}")
    return None


def provenance_problem(run: Mapping[str, Any], scenarios: Sequence[Mapping[str, Any]], root: Path) -> str | None:
    """The first way ``run`` (run.json of ``root``) disagrees with the catalog copies under ``root/metadata`` and
    with its plan, or ``None``. ``scenarios`` are the entries of ``root/metadata/scenarios.json``."""
    try:
        catalog = metadata_catalog_digest(root)
    except ProofpackError as exc:
        return f"the catalog in metadata/ cannot be read: {exc}"
    return _digest_problem(run, catalog) or _plan_problem(run, scenarios)
