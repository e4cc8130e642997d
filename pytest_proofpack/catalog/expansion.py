"""The loaded catalog, and its expansion into the cases a run collects.

:meth:`Catalog.expand` turns a suite (with model overrides, run counts and a shard) into the ordered list of
:class:`~pytest_proofpack.catalog.entries.Case` objects the plugin collects. It also checks what only the expansion
can see: unknown model keys. A clean edit whose model has no tuned entry keeps its ``clean`` sentinel: the model's
worker measures the entry (:mod:`pytest_proofpack.tuned`). Nothing is written anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pytest_proofpack.catalog.entries import Case, Scenario, Suite
from pytest_proofpack.catalog.files import read_document
from pytest_proofpack.catalog.tuned import TUNED_FIELDS
from pytest_proofpack.errors import CatalogError
from pytest_proofpack.models import AssetRef, ModelEntry
from pytest_proofpack.suggest import did_you_mean

__all__ = ["MAX_SHARDS", "MODEL_SLOTS", "Catalog", "catalog_digest", "in_scenario_suite", "parse_shard", "plan_cases",
           "runs_of", "shard_models"]

#: The most shards one command line may be split into.
MAX_SHARDS: Final = 1000

MODEL_SLOTS: Final = tuple(f"MODEL_{i}" for i in range(1, 9))
"""Environment variables that replace (or, past the end, append to) a suite's i-th model."""


@dataclass(frozen=True)
class Catalog:
    """The three files' validated content; ``paths`` names the files (``scenarios``, ``suites``, ``tuned``)."""

    scenarios: tuple[Scenario, ...]
    suites: Mapping[str, Suite]
    models: Mapping[str, ModelEntry]
    datasets: Mapping[str, Mapping[str, Any]]
    assets: Mapping[str, AssetRef]
    tuned: Mapping[str, Any]
    paths: Mapping[str, Path]

    def suite(self, name: str) -> Suite:
        """The suite ``name``; an unknown name is a :class:`CatalogError` naming ``--proofpack-suite``."""
        if name not in self.suites:
            raise CatalogError(
                f"--proofpack-suite: unknown suite {name!r}{did_you_mean(name, self.suites)}; "
                f"accepted: {', '.join(sorted(self.suites))} (from {self.paths['suites'].name})"
            )
        return self.suites[name]

    def digest(self) -> str:
        """sha256 over the three files' canonical JSON: changes whenever a scenario, suite or tuned value does."""
        return catalog_digest(self.paths)

    def tuned_entry(self, model: ModelEntry, edit_type: str) -> Mapping[str, Any] | None:
        """The tuned entry of ``edit_type`` for ``model`` (by key, then hub id), else the default, else ``None``."""
        models = self.tuned.get("models", {})
        defaults = self.tuned.get("defaults", {})
        for key in (model.key, model.hub_id):
            entry = models.get(key, {}).get(edit_type) if isinstance(models.get(key), Mapping) else None
            if entry is not None:
                return entry  # type: ignore[no-any-return]
        got = defaults.get(edit_type)
        return got if isinstance(got, Mapping) else None

    def resolve_models(self, suite: Suite, override: Sequence[str] | None = None,
                       env: Mapping[str, str] | None = None) -> list[ModelEntry]:
        """The suite's models after ``--proofpack-models`` and the ``MODEL_1``…``MODEL_8`` slots.

        ``--proofpack-models`` replaces the list. Otherwise each set slot ``MODEL_i`` replaces the i-th model
        (an empty value disables that slot); a slot past the end appends. A slot value is a model key or hub id.
        """
        env = os.environ if env is None else env
        if override:
            keys = [self._model_key(k, "--proofpack-models") for k in override]
        else:
            keys = self._apply_slots(list(suite.models), {i: env[s] for i, s in enumerate(MODEL_SLOTS) if s in env})
        return [self.models[k] for k in dict.fromkeys(keys)]

    def _apply_slots(self, keys: list[str], slots: Mapping[int, str]) -> list[str]:
        """``keys`` with slot ``i`` (0-based) replacing, disabling (empty value) or appending the i-th key."""
        if not slots:
            return keys
        merged: list[str] = []
        for i in range(max(len(keys), max(slots) + 1)):
            if i in slots:
                if slots[i].strip():
                    merged.append(self._model_key(slots[i].strip(), MODEL_SLOTS[i]))
            elif i < len(keys):
                merged.append(keys[i])
        return merged

    def _model_key(self, value: str, where: str) -> str:
        """The model key ``value`` names (a key or a hub id); ``where`` names the option or variable it came from."""
        if value in self.models:
            return value
        for key, model in self.models.items():
            if model.hub_id == value:
                return key
        raise CatalogError(f"{where}: unknown model {value!r}{did_you_mean(value, self.models)}; "
                           f"accepted: {', '.join(sorted(self.models))} "
                           f"or their hub ids (add new models to {self.paths['suites'].name})")

    def expand(self, suite_name: str, *, models: Sequence[str] | None = None, clean_runs: int = 3,
               stress_runs: int = 2, shard: tuple[int, int] | None = None,
               env: Mapping[str, str] | None = None) -> list[Case]:
        """All cases of a suite, ordered by model (as listed), scenario (file order), run.

        ``shard=(k, n)`` keeps the models whose position in the sorted key list is ``k-1`` modulo ``n``, so
        shards split by model deterministically and never share one.
        """
        suite = self.suite(suite_name)
        entries = self.resolve_models(suite, models, env)
        if shard is not None:
            kept = set(shard_models([e.key for e in entries], shard))
            entries = [e for e in entries if e.key in kept]
        scenarios = [s for s in self.scenarios if in_scenario_suite(s.suites, suite.scenario_suite)]
        cases: list[Case] = []
        for entry in entries:
            for scenario in scenarios:
                runs = runs_of(scenario.category, clean_runs, stress_runs)
                spec, skip = self._concrete_spec(entry, scenario)
                cases.extend(Case(entry, scenario, run, spec, skip) for run in range(1, runs + 1))
        return cases

    def _concrete_spec(self, model: ModelEntry, scenario: Scenario) -> tuple[str | None, str | None]:
        """``(edit spec, skip reason)`` of ``scenario`` on ``model``, with the clean sentinel resolved."""
        if scenario.kind != "edit":
            return None, None
        spec = str(scenario.generation["edit_spec"])
        if not scenario.is_clean_sentinel:
            return spec, None
        edit_type = spec.split(":", 1)[0]
        entry = self.tuned_entry(model, edit_type)
        if entry is None:
            return spec, None  # no tuned entry: the model's worker measures one (pytest_proofpack.tuned) and applies it
        if entry.get("status") == "skipped":
            return None, f"tuned params: {entry.get('reason') or 'skipped'}"
        values = [str(entry[f]) for f in TUNED_FIELDS[edit_type]]
        scope = str(entry.get("scope", spec.split(":")[-1]))
        return ":".join([edit_type, *values, scope]), None

    def untuned(self, cases: Sequence[Case]) -> dict[str, list[str]]:
        """``{model key: [edit kinds]}`` of the clean cases whose model has no tuned entry: tuned at run time."""
        found: dict[str, list[str]] = {}
        for case in cases:
            if case.edit_spec is not None and ":clean:" in case.edit_spec:
                kinds = found.setdefault(case.model.key, [])
                kind = case.edit_spec.split(":", 1)[0]
                if kind not in kinds:
                    kinds.append(kind)
        return found


def catalog_digest(paths: Mapping[str, Path]) -> str:
    """sha256 over the canonical JSON of the ``scenarios``, ``suites`` and ``tuned`` files of ``paths`` (a run's
    ``catalog_digest``; a pack recomputes it from its ``metadata/`` copies). Raises :class:`CatalogError`."""
    h = hashlib.sha256()
    for name in ("scenarios", "suites", "tuned"):
        h.update(json.dumps(read_document(paths[name]), sort_keys=True).encode())
    return h.hexdigest()


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` with 1 ≤ K ≤ N ≤ :data:`MAX_SHARDS` → ``(K, N)``; raises CatalogError naming the option otherwise."""
    try:
        k_text, n_text = text.split("/")
        if len(k_text.strip()) > 6 or len(n_text.strip()) > 6:
            raise ValueError(text)
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise CatalogError(f"--proofpack-shard: {text[:40]!r} is not K/N (e.g. 2/4)") from None
    if not 1 <= k <= n <= MAX_SHARDS:
        raise CatalogError(f"--proofpack-shard: {text!r} needs 1 <= K <= N <= {MAX_SHARDS}")
    return k, n


def shard_models(keys: Sequence[str], shard: tuple[int, int]) -> list[str]:
    """The model keys shard ``(k, n)`` runs: those whose position in the sorted key list is ``k-1`` modulo ``n``,
    in the order of ``keys``."""
    k, n = shard
    order = sorted(set(keys))
    return [key for key in keys if order.index(key) % n == k - 1]


def runs_of(category: str, clean_runs: int, stress_runs: int) -> int:
    """How many runs a scenario of ``category`` gets: ``clean_runs``, ``stress_runs``, or one (a fault)."""
    return {"clean": clean_runs, "stress": stress_runs}.get(category, 1)


def in_scenario_suite(suites: Sequence[str], scenario_suite: str) -> bool:
    """A scenario listing ``suites`` belongs to ``scenario_suite`` (a scenario listing none belongs to all)."""
    return not suites or scenario_suite in suites


def plan_cases(models: Sequence[str], scenarios: Sequence[Mapping[str, Any]], scenario_suite: str,
               clean_runs: int, stress_runs: int) -> list[tuple[str, str, int]]:
    """The sorted ``(model, scenario id, run)`` cases :meth:`Catalog.expand` makes of scenarios.json entries
    (``id``, ``category``, ``suites``) for ``models``: what a run directory or pack's plan must be."""
    cases: set[tuple[str, str, int]] = set()
    for scenario in scenarios:
        suites = scenario.get("suites") or []
        if not in_scenario_suite([str(s) for s in suites] if isinstance(suites, list) else [], scenario_suite):
            continue
        runs = runs_of(str(scenario.get("category")), clean_runs, stress_runs)
        cases.update((model, str(scenario.get("id")), run) for model in models for run in range(1, runs + 1))
    return sorted(cases)
