"""A model's clean-edit parameters on a worker: the catalog's tuned entry, else the tuner's, measured once.

A model with no ``tuned_edit_params`` entry for a clean kind is tuned on first use (:mod:`pytest_proofpack.tuning`
on the tuning pool's windows). Each kind is one part of :func:`~pytest_proofpack.runtime.shared_parts`, so workers
that reach the model together split the kinds, and the result is cached on disk under a digest of everything that
determines it. The entries are published to ``metadata/tuning/<model>.json`` in the run directory, with their
evidence, so the pack shows where every clean setting came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pytest_proofpack import EDITS_VERSION, ENGINE_VERSION, progress
from pytest_proofpack.results import atomic_write_json
from pytest_proofpack.shared_cache import load_or_compute, shared_parts, stable_digest

if TYPE_CHECKING:
    from pytest_proofpack.catalog import Catalog, Suite
    from pytest_proofpack.data.windows import WindowSet
    from pytest_proofpack.edits.spec import EditSpec
    from pytest_proofpack.engine.config import EngineConfig
    from pytest_proofpack.models import ModelEntry
    from pytest_proofpack.models.loading import LoadedModel
    from pytest_proofpack.options import Options
    from pytest_proofpack.registries import Registries

TUNING_SCHEMA = "proofpack_tuning_v1"


class RunSettings(Protocol):
    """What tuning reads of the run: the catalog, the suite, the options, where to write and cache, and the
    registries its edits resolve in."""

    @property
    def catalog(self) -> Catalog: ...
    @property
    def suite(self) -> Suite: ...
    @property
    def options(self) -> Options: ...
    @property
    def run_dir(self) -> Path: ...
    @property
    def cache(self) -> Path: ...
    @property
    def registries(self) -> Registries: ...


class TuningHost(Protocol):
    """What tuning needs of a worker's model runtime (:class:`~pytest_proofpack.runtime.ModelRuntime`)."""

    @property
    def ctx(self) -> RunSettings: ...
    @property
    def entry(self) -> ModelEntry: ...
    @property
    def engine(self) -> EngineConfig: ...

    @property
    def loaded(self) -> LoadedModel: ...

    @property
    def model(self) -> Any: ...

    def make_windows(self, seed: int, pool: str = "evaluation") -> tuple[WindowSet, WindowSet]: ...


class ModelTuning:
    """The clean-edit entries of one model (see the module docstring)."""

    def __init__(self, runtime: TuningHost, *, measure_all: bool = False) -> None:
        """``measure_all`` measures every clean kind of the suite, entries in the catalog or not (``proofpack
        tune``)."""
        self.runtime = runtime
        self.measure_all = measure_all
        self._measured: dict[str, dict[str, Any]] | None = None

    def clean_scopes(self) -> dict[str, str]:
        """``{kind: scope}`` of the suite's clean-sentinel scenarios (``quant_rtn:clean:ffn`` gives ``ffn``).

        A suite without any (a ``proofpack certify`` run holds one checkpoint scenario) takes the kinds its
        model's tuned entries name, in edit-type order, so its calibration's benign edits, and so its preset, are
        the ones the model's full suite calibrates with."""
        suite, catalog = self.runtime.ctx.suite, self.runtime.ctx.catalog
        scopes: dict[str, str] = {}
        for scenario in catalog.scenarios:
            if scenario.is_clean_sentinel and (not scenario.suites or suite.scenario_suite in scenario.suites):
                kind, _, scope = str(scenario.generation["edit_spec"]).partition(":clean:")
                scopes.setdefault(kind, scope or "ffn")
        if not scopes and not self.measure_all:
            from pytest_proofpack.catalog.tuned import EDIT_TYPES

            for kind in EDIT_TYPES:
                found = catalog.tuned_entry(self.runtime.entry, kind)
                if found is not None:
                    scopes[kind] = str(found.get("scope", "ffn")).split("@", 1)[0]
        return scopes

    def untuned_kinds(self) -> list[str]:
        """The suite's clean kinds that the catalog has no entry for: the tuner measures these."""
        catalog, entry = self.runtime.ctx.catalog, self.runtime.entry
        return [k for k in self.clean_scopes() if self.measure_all or catalog.tuned_entry(entry, k) is None]

    def entry(self, kind: str) -> Mapping[str, Any]:
        """The tuned entry of ``kind``: the catalog's when it has one, else the measured one."""
        found = None if self.measure_all else self.runtime.ctx.catalog.tuned_entry(self.runtime.entry, kind)
        if found is not None:
            return found
        measured = self.measured()
        if kind not in measured:
            raise KeyError(f"{kind}: not a clean kind of suite {self.runtime.ctx.suite.name!r}")
        return measured[kind]

    def entries(self) -> dict[str, Mapping[str, Any]]:
        """Every clean kind of the suite with its entry (catalog or measured)."""
        return {kind: self.entry(kind) for kind in self.clean_scopes()}

    def concrete(self, spec: EditSpec) -> EditSpec:
        """``spec`` with a clean sentinel resolved from this model's entry; a non-clean spec as it is."""
        from pytest_proofpack.edits.spec import resolve_clean

        if not spec.clean:
            return spec
        return resolve_clean(spec, self.entry(spec.kind), registry=self.runtime.ctx.registries.edits)

    def measured(self) -> dict[str, dict[str, Any]]:
        """The tuner's entries for :meth:`untuned_kinds`, measured once across workers and published."""
        if self._measured is None:
            kinds = self.untuned_kinds()
            self._measured = dict(zip(kinds, self._measure(kinds), strict=True)) if kinds else {}
            if kinds:
                self._publish(self._measured)
        return self._measured

    def digest(self) -> str:
        """What determines the tuner's result on this model: model, windows, engine, rule, edits."""
        from pytest_proofpack.tuning import TUNING_RULE

        windows = self.windows()
        loaded = self.runtime.loaded
        return stable_digest("tuning", ENGINE_VERSION, EDITS_VERSION, TUNING_RULE, loaded.fingerprint, loaded.dtype,
                             windows.digest, self.runtime.engine.digest(), self.clean_scopes())

    def windows(self) -> WindowSet:
        """The tuning windows: the final set of a draw from the tuning pool."""
        return self.runtime.make_windows(self.runtime.ctx.options.seed, "tuning")[1]

    def _measure(self, kinds: list[str]) -> list[dict[str, Any]]:
        from pytest_proofpack.engine.metric import window_losses
        from pytest_proofpack.tuning import tune_kind

        runtime, windows, scopes = self.runtime, self.windows(), self.clean_scopes()
        cfg, edits = runtime.engine, runtime.ctx.registries.edits
        directory = runtime.ctx.cache / "tuning" / self.digest()
        directory.mkdir(parents=True, exist_ok=True)
        with progress.phase("tune", subject=runtime.entry.key, total=len(kinds)) as phase:
            base = load_or_compute(directory / "baseline.json", lambda: {
                "losses": window_losses(runtime.model, windows, batch_size=cfg.batch_size, device=cfg.device)})
            assert base is not None, "a blocking load_or_compute returns or raises"

            def tune(i: int) -> dict[str, Any]:
                return tune_kind(runtime.model, kinds[i], windows, base["losses"], cfg,
                                 base_scope=scopes[kinds[i]], registry=edits)

            return shared_parts(directory, len(kinds), tune, phase.advance)

    def _publish(self, measured: Mapping[str, Any]) -> None:
        runtime = self.runtime
        path = runtime.ctx.run_dir / "metadata" / "tuning" / f"{runtime.entry.key}.json"
        atomic_write_json(path, {"schema": TUNING_SCHEMA, "schema_version": 1, "model": runtime.entry.key,
                                 "hub_id": runtime.entry.hub_id, "models": {runtime.entry.key: dict(measured)}})
