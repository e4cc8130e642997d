"""ProofpackSession: a run's shared state — options, catalog, cases, run context, result store — and collection.

Created in ``pytest_configure`` of every process (controller, each worker, a reservation's subprocess) from the
same options, so all of them expand the same catalog into the same cases and nodeids. With
``--proofpack-suite`` it adds the scenario anchor to pytest's arguments and parametrizes its test with one case
per scenario run. What each process then does with this state lives in its role:
:mod:`pytest_proofpack.worker_role` runs items, :mod:`pytest_proofpack.controller_role` (the controller only)
records them and writes the verdict and the pack.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import pytest

from pytest_proofpack import EDITS_VERSION, ENGINE_VERSION
from pytest_proofpack.errors import OptionError, ProofpackError
from pytest_proofpack.nodeid import TEST_NAME, CaseId
from pytest_proofpack.options import Options, read_options
from pytest_proofpack.registries import Registries, session_registries
from pytest_proofpack.results import ResultStore

if TYPE_CHECKING:
    from pytest_proofpack.catalog import Case, Catalog, Suite
    from pytest_proofpack.runtime import RunContext

ANCHOR: Final = Path(__file__).with_name("scenario_anchor.py")
ANCHOR_NODEID: Final = "proofpack"
#: The record format of this version (records carry their evidence digests), part of the run configuration.
RECORD_FORMAT: Final = "evidence-v1"
#: The most scenario runs one command line may expand into.
MAX_CASES: Final = 100_000


class ProofpackSession:
    """The plugin object registered in ``pytest_configure`` (state lives here, never in module globals)."""

    PLUGIN_NAME: ClassVar[str] = "proofpack-session"

    def __init__(self, config: pytest.Config, options: Options, registries: Registries) -> None:
        self.config = config
        self.options = options
        self.registries = registries  # this session's edits, faults and corpus providers, filled through hooks
        self.is_worker = hasattr(config, "workerinput")
        self.catalog: Catalog | None = None
        self.cases: list[Case] = []  # the cases this process collects (this shard's)
        self.plan_cases: list[Case] = []  # every case of the command line (all shards)
        self.ctx: RunContext | None = None
        self.store: ResultStore | None = None
        self.notes: list[str] = []  # shown in the controller's terminal summary

    # ------------------------------------------------------------------------------------------ set-up
    @classmethod
    def from_config(cls, config: pytest.Config) -> ProofpackSession:
        """The session of ``config``'s options, its suite loaded when one is given.

        Raises :class:`pytest.UsageError` for any :class:`ProofpackError` (a bad option, catalog or disk space).
        """
        registries = session_registries(config.hook)  # a hook's error propagates as it is, not as a usage error
        try:
            options = read_options(config)
            session = cls(config, options, registries)
            if options.suite:
                session._load_suite()
        except ProofpackError as exc:
            raise pytest.UsageError(str(exc)) from None
        return session

    @classmethod
    def get(cls, config: pytest.Config) -> ProofpackSession:
        """The session registered on ``config``."""
        plugin = config.pluginmanager.get_plugin(cls.PLUGIN_NAME)
        assert isinstance(plugin, ProofpackSession), "pytest-proofpack plugin is not configured"
        return plugin

    def _load_suite(self) -> None:
        from pytest_proofpack.catalog import load_catalog, parse_shard
        from pytest_proofpack.runtime import RunContext, parse_dataset_option

        options = self.options
        assert options.suite is not None
        catalog = load_catalog(options.scenarios, options.suites, options.tuned_params, registries=self.registries)
        suite = catalog.suite(options.suite)
        shard = parse_shard(options.shard) if options.shard else None
        self.plan_cases = catalog.expand(options.suite, models=options.models or None,
                                         clean_runs=options.clean_runs, stress_runs=options.stress_runs)
        self.cases = self._shard_cases(shard)
        from pytest_proofpack.preflight import check_layer_scopes

        check_layer_scopes(self.cases, catalog.paths["scenarios"].name, assets=catalog.assets,
                           cache=options.cache_root(), suite=suite.name)
        dataset = parse_dataset_option(options.dataset, catalog.datasets) if options.dataset else \
            dict(catalog.datasets[suite.dataset])
        config = run_config(options, catalog, suite, self.plan_cases, dataset)
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        run_dir = (options.out or Path("proof_pack_runs") / suite.name).resolve()
        worker = os.environ.get("PYTEST_XDIST_WORKER", "master")
        self.ctx = RunContext(options, catalog, suite, run_dir, options.cache_root(), config, digest, dataset, worker,
                              registries=self.registries)
        self.store = ResultStore(run_dir, digest)
        self.catalog = catalog
        self.config.args = [*([] if self.config.args_source != pytest.Config.ArgsSource.ARGS
                              else self.config.args), str(ANCHOR)]
        self.config.addinivalue_line("python_functions", TEST_NAME)
        if not self.is_worker:
            self._register_scheduler()
            if not self.config.option.collectonly:
                if not options.skip_disk_check:
                    from pytest_proofpack.preflight import check_disk

                    check_disk(self.cases, self.ctx.cache, run_dir, save_models=options.save_models)
                from pytest_proofpack.run_lock import lock_run_dir

                self.config.add_cleanup(lock_run_dir(run_dir).release)

    def _shard_cases(self, shard: tuple[int, int] | None) -> list[Case]:
        """The plan's cases this shard runs; raises :class:`ProofpackError` when there are too many cases or the
        shard would run none."""
        if len(self.plan_cases) > MAX_CASES:
            raise OptionError(f"--proofpack-suite {self.options.suite}: {len(self.plan_cases)} scenario runs; at "
                              f"most {MAX_CASES}: lower --proofpack-clean-runs / --proofpack-stress-runs or the models")
        if shard is None:
            return list(self.plan_cases)
        from pytest_proofpack.catalog.expansion import shard_models

        keys = list(dict.fromkeys(c.model.key for c in self.plan_cases))
        kept = set(shard_models(keys, shard))
        if not kept:
            raise OptionError(f"--proofpack-shard {shard[0]}/{shard[1]}: the suite runs {len(keys)} model(s), so "
                              f"shard {shard[0]} would run nothing; use at most {len(keys)} shards")
        return [c for c in self.plan_cases if c.model.key in kept]

    def _register_scheduler(self) -> None:
        """Controller only: the GPU-aware xdist scheduler and per-worker device pinning (no-ops without -n)."""
        from pytest_proofpack.scheduling.gpus import detect_inventory
        from pytest_proofpack.scheduling.plan import PlanSettings
        from pytest_proofpack.scheduling.xdist_plugin import SchedulingPlugin

        assert self.ctx is not None
        eval_settings = self.ctx.suite.eval
        inventory = detect_inventory(self.options.gpu_memory, warn=self.notes.append)
        settings = PlanSettings(batch_size=eval_settings.get("batch_size", 8),
                                seq_len=eval_settings.get("seq_len", 512),
                                dtype_bytes=2 if inventory.mode == "gpu" else 4)
        models = {c.model.key: c.model for c in self.cases}
        self.config.pluginmanager.register(SchedulingPlugin(self.config, models, settings, inventory),
                                           "proofpack-scheduling")

    def header(self) -> list[str] | None:
        """The line ``pytest_report_header`` shows (None without a suite)."""
        if self.ctx is None:
            return None
        models = ", ".join(dict.fromkeys(c.model.key for c in self.cases))
        lines = [f"proofpack: suite {self.ctx.suite.name} ({len(self.cases)} scenario runs; models {models}); "
                 f"run dir {self.ctx.run_dir}; config {self.ctx.config_digest[:12]}"]
        assert self.catalog is not None
        for model, kinds in self.catalog.untuned(self.cases).items():
            lines.append(f"proofpack: tuning {model} ({', '.join(kinds)}): no tuned_edit_params entry, so its first "
                         f"worker measures one (evidence: metadata/tuning/{model}.json)")
        return lines

    # ------------------------------------------------------------------------------------------ collection
    @pytest.hookimpl(tryfirst=True)
    def pytest_pycollect_makemodule(self, module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
        if Path(module_path) == ANCHOR:
            return pytest.Module.from_parent(parent, path=Path(module_path), nodeid=ANCHOR_NODEID)
        return None

    def parametrize(self, metafunc: pytest.Metafunc) -> None:
        """Parametrize the anchor's test with one ``(model key, case)`` per scenario run, with its markers."""
        if "proofpack_case" not in metafunc.fixturenames:
            return
        params = []
        for case in self.cases:
            marks = [getattr(pytest.mark, m) for m in case.scenario.markers]
            marks.append(pytest.mark.proofpack_model(case.model.key))
            if case.skip_reason:
                marks.append(pytest.mark.skip(reason=case.skip_reason))
            cid = CaseId(case.model.key, case.scenario.id, case.run)
            params.append(pytest.param(case.model.key, case, id=cid.param_id(), marks=marks))
        metafunc.parametrize(["proofpack_model_key", "proofpack_case"], params, indirect=["proofpack_model_key"],
                             scope="session")


def run_config(options: Options, catalog: Catalog, suite: Suite, cases: Sequence[Case],
               dataset: dict[str, Any]) -> dict[str, Any]:
    """What determines a scenario run's numbers; its digest keys the records a later session may reuse.

    ``cases`` are every case of the command line, so the shards of one command line share one digest (the shard
    split and run counts are recorded beside it in run.json, not in it)."""
    return {
        "suite": suite.name, "catalog_digest": catalog.digest(), "engine_version": ENGINE_VERSION,
        "edits_version": EDITS_VERSION, "models": sorted({c.model.key for c in cases}), "dataset": dataset,
        "tier": options.tier, "gate_rule": options.gate_rule, "seed": options.seed,
        "calibration_runs": options.calibration_runs if options.calibration_runs is not None
        else suite.eval.get("calibration_runs", 5),
        "presets": str(options.presets) if options.presets else None, "dtype": options.dtype, "bos": options.bos,
        "eval": dict(suite.eval),
        "determinism": options.determinism,  # strict changes numerics (no TF32, fp32 power iterations): not reused
        "records": RECORD_FORMAT,  # records without evidence digests (older versions) are stale, never reused
    }
