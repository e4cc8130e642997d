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

__all__ = ["MODEL_SLOTS", "Catalog", "parse_shard"]

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
        h = hashlib.sha256()
        for name in ("scenarios", "suites", "tuned"):
            h.update(json.dumps(read_document(self.paths[name]), sort_keys=True).encode())
        return h.hexdigest()

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
            k, n = shard
            order = sorted(e.key for e in entries)
            entries = [e for e in entries if order.index(e.key) % n == k - 1]
        scenarios = [s for s in self.scenarios if not s.suites or suite.scenario_suite in s.suites]
        cases: list[Case] = []
        for entry in entries:
            for scenario in scenarios:
                runs = {"clean": clean_runs, "stress": stress_runs}.get(scenario.category, 1)
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


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` with 1 ≤ K ≤ N → ``(K, N)``; raises CatalogError naming the option otherwise."""
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise CatalogError(f"--proofpack-shard: {text!r} is not K/N (e.g. 2/4)") from None
    if not 1 <= k <= n:
        raise CatalogError(f"--proofpack-shard: {text!r} needs 1 <= K <= N")
    return k, n
