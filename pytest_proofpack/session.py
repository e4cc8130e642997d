"""ProofpackSession: wires catalog → items → results → verdict and pack, in the controller and in each worker.

Roles. With ``-n N`` the controller (no ``workerinput``) validates the catalog, writes ``run.json``, receives
every test report, writes one record per scenario run and, at the end, the verdict and the pack. Workers collect
the same items, run them, write their report directories and send the evidence back on their reports'
``user_properties``. Without xdist one process plays both roles.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import pytest

from pytest_proofpack import EDITS_VERSION, ENGINE_VERSION, __version__
from pytest_proofpack.calibrate_only import calibrate_only_message
from pytest_proofpack.deadline import scenario_timeout
from pytest_proofpack.errors import ProofpackError
from pytest_proofpack.nodeid import TEST_NAME, CaseId, parse_nodeid
from pytest_proofpack.options import Options, read_options
from pytest_proofpack.results import (
    Record,
    ResultStore,
    planned_keys,
    read_run_json,
    report_relpath,
    stale_reason,
    write_run_json,
)

if TYPE_CHECKING:
    from pytest_proofpack.catalog import Case, Catalog
    from pytest_proofpack.runtime import ModelRuntime, RunContext
    from pytest_proofpack.scheduling.launch import ReservedLauncher

ANCHOR: Final = Path(__file__).with_name("scenario_anchor.py")
ANCHOR_NODEID: Final = "proofpack"
_PROP = "proofpack_"


@dataclass
class ScenarioOutcome:
    """What the test asserts: ``ok`` and the message shown when it is not."""

    ok: bool
    message: str
    report: dict[str, Any] = field(default_factory=dict)


def auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one worker per usable GPU, or per physical core on a CPU machine (see scheduling)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    from pytest_proofpack.scheduling.gpus import detect_inventory
    from pytest_proofpack.scheduling.worker_env import auto_num_workers as _auto

    gb = config.getoption("proofpack_gpu_memory", default=None)
    return _auto(config, detect_inventory(float(gb) if gb else None))


class ProofpackSession:
    """The plugin object registered in ``pytest_configure`` (state lives here, never in module globals)."""

    PLUGIN_NAME: ClassVar[str] = "proofpack-session"

    def __init__(self, config: pytest.Config, options: Options) -> None:
        self.config = config
        self.options = options
        self.is_worker = hasattr(config, "workerinput")
        self.catalog: Catalog | None = None
        self.cases: list[Case] = []
        self.ctx: RunContext | None = None
        self.store: ResultStore | None = None
        self.verdict: dict[str, Any] | None = None
        self.pack_path: Path | None = None
        self.notes: list[str] = []
        self._started = time.time()
        self._launcher: ReservedLauncher | None = None  # the live reserved-model subprocess handle (issue 7)

    # ------------------------------------------------------------------------------------------ set-up
    @classmethod
    def from_config(cls, config: pytest.Config) -> ProofpackSession:
        try:
            options = read_options(config)
            self = cls(config, options)
            if options.suite:
                self._load_suite()
        except ProofpackError as exc:
            raise pytest.UsageError(str(exc)) from None
        return self

    @classmethod
    def get(cls, config: pytest.Config) -> ProofpackSession:
        plugin = config.pluginmanager.get_plugin(cls.PLUGIN_NAME)
        assert isinstance(plugin, ProofpackSession), "pytest-proofpack plugin is not configured"
        return plugin

    def _load_suite(self) -> None:
        from pytest_proofpack.catalog import load_catalog, parse_shard
        from pytest_proofpack.runtime import RunContext, parse_dataset_option

        o = self.options
        assert o.suite is not None
        catalog = load_catalog(o.scenarios, o.suites, o.tuned_params)
        suite = catalog.suite(o.suite)
        shard = parse_shard(o.shard) if o.shard else None
        self.cases = catalog.expand(o.suite, models=o.models or None, clean_runs=o.clean_runs,
                                    stress_runs=o.stress_runs, shard=shard)
        dataset = parse_dataset_option(o.dataset, catalog.datasets) if o.dataset else \
            dict(catalog.datasets[suite.dataset])
        config = {
            "suite": suite.name, "catalog_digest": catalog.digest(), "engine_version": ENGINE_VERSION,
            "edits_version": EDITS_VERSION, "models": sorted({c.model.key for c in self.cases}), "dataset": dataset,
            "tier": o.tier, "gate_rule": o.gate_rule, "seed": o.seed,
            "calibration_runs": o.calibration_runs if o.calibration_runs is not None
            else suite.eval.get("calibration_runs", 5),
            "presets": str(o.presets) if o.presets else None, "dtype": o.dtype, "eval": dict(suite.eval),
            "determinism": o.determinism,  # strict changes numerics (no TF32, fp32 power iterations): not reused
        }
        import hashlib

        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        run_dir = (o.out or Path("proof_pack_runs") / suite.name).resolve()
        self.catalog = catalog
        worker = os.environ.get("PYTEST_XDIST_WORKER", "master")
        self.ctx = RunContext(o, catalog, suite, run_dir, o.cache_root(), config, digest, dataset, worker)
        self.store = ResultStore(run_dir, digest)
        self.catalog = catalog
        self.config.args = [*([] if self.config.args_source != pytest.Config.ArgsSource.ARGS
                              else self.config.args), str(ANCHOR)]
        self.config.addinivalue_line("python_functions", TEST_NAME)
        if not self.is_worker:
            self._register_scheduler()
            if not (o.skip_disk_check or self.config.option.collectonly):
                from pytest_proofpack.preflight import check_disk

                check_disk(self.cases, self.ctx.cache, run_dir, save_models=o.save_models)

    def _register_scheduler(self) -> None:
        """Controller only: the GPU-aware xdist scheduler and per-worker device pinning (no-ops without -n)."""
        from pytest_proofpack.scheduling.gpus import detect_inventory
        from pytest_proofpack.scheduling.plan import PlanSettings
        from pytest_proofpack.scheduling.xdist_plugin import SchedulingPlugin

        assert self.ctx is not None
        ev = self.ctx.suite.eval
        inventory = detect_inventory(self.options.gpu_memory, warn=self.notes.append)
        settings = PlanSettings(batch_size=ev.get("batch_size", 8), seq_len=ev.get("seq_len", 512),
                                dtype_bytes=2 if inventory.mode == "gpu" else 4)
        models = {c.model.key: c.model for c in self.cases}
        self.config.pluginmanager.register(SchedulingPlugin(self.config, models, settings, inventory),
                                           "proofpack-scheduling")

    def header(self) -> list[str] | None:
        if self.ctx is None:
            return None
        models = ", ".join(self.ctx.config["models"])
        return [f"proofpack: suite {self.ctx.suite.name} ({len(self.cases)} scenario runs; models {models}); "
                f"run dir {self.ctx.run_dir}; config {self.ctx.config_digest[:12]}"]

    # ------------------------------------------------------------------------------------------ collection
    @pytest.hookimpl(tryfirst=True)
    def pytest_pycollect_makemodule(self, module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
        if Path(module_path) == ANCHOR:
            return pytest.Module.from_parent(parent, path=Path(module_path), nodeid=ANCHOR_NODEID)
        return None

    def parametrize(self, metafunc: pytest.Metafunc) -> None:
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

    # ------------------------------------------------------------------------------------------ fixtures
    @pytest.fixture(scope="session")
    def proofpack_model_key(self, request: pytest.FixtureRequest) -> str:
        """The model key of the current parametrization; session-scoped so items group by model."""
        return str(request.param)

    @pytest.fixture(scope="session")
    def proofpack_runtime(self, proofpack_model_key: str) -> Iterator[ModelRuntime]:
        """The model's runtime on this worker: model, windows, baseline and preset, loaded lazily, freed after."""
        from pytest_proofpack.runtime import ModelRuntime

        assert self.ctx is not None
        entry = self.ctx.catalog.models[proofpack_model_key]
        runtime = ModelRuntime(self.ctx, entry)
        yield runtime
        runtime.close()

    @pytest.fixture
    def proofpack_outcome(self, request: pytest.FixtureRequest, proofpack_model_key: str,
                          proofpack_case: Case) -> ScenarioOutcome:
        """Run the scenario (setup phase: infrastructure trouble is an error) and judge its expectation."""
        from pytest_proofpack.expectations import judge
        from pytest_proofpack.runtime import describe_error

        node = request.node
        case = proofpack_case
        t0 = time.perf_counter()
        try:
            with scenario_timeout(self.options.timeout):
                report = self._execute(request, case)
        except BaseException as exc:
            if isinstance(exc, pytest.skip.Exception | KeyboardInterrupt):
                raise
            cls, msg = describe_error(exc)
            node.user_properties += [(_PROP + "error_class", cls), (_PROP + "error_message", msg)]
            if isinstance(exc, ProofpackError):
                raise pytest.fail.Exception(f"[{cls}] {msg}", pytrace=False) from None
            raise
        finally:
            node.user_properties.append((_PROP + "duration_s", f"{time.perf_counter() - t0:.3f}"))
        judgement = judge(case.scenario.raw, report, model=case.model.key)
        node.user_properties += [(k if k.startswith(_PROP) else _PROP + k, v) for k, v in judgement.properties()]
        return ScenarioOutcome(judgement.ok, judgement.message, report)

    def _execute(self, request: pytest.FixtureRequest, case: Case) -> dict[str, Any]:
        assert self.ctx is not None and self.store is not None
        node = request.node
        rel = report_relpath(case.model.key, case.scenario.id, case.run)
        if not self.options.rerun:
            stored = self.store.reusable_report(*case.key)
            if stored is not None:
                node.user_properties += [(_PROP + "report", rel), (_PROP + "reused", "true")]
                return stored
        reserved = self._reserved_execute(request, case)  # issue 7: a multi-GPU model runs in a subprocess
        if reserved is not None:
            return reserved
        runtime: ModelRuntime = request.getfixturevalue("proofpack_runtime")
        if self.options.calibrate_only:
            pytest.skip(calibrate_only_message(runtime))
        from pytest_proofpack.execute import run_and_record

        report, props = run_and_record(self.config, case, runtime, "worker")
        node.user_properties += [(_PROP + k, v) for k, v in props]
        return report

    # ------------------------------------------------------------------------------------------ reservations
    # Issue 7 (scheduling/launch.py): the leader of a multi-GPU reservation runs the model's items in a
    # subprocess that sees the reserved devices; the model is never loaded in the worker itself.
    @pytest.fixture(scope="session")
    def proofpack_launcher(self, proofpack_model_key: str,
                           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReservedLauncher]:
        """The subprocess handle of a reserved model on its leader worker; ended when the worker moves on."""
        from pytest_proofpack.scheduling.launch import ReservedLauncher
        from pytest_proofpack.scheduling.reservations import RESERVATIONS_FILE

        basetemp = tmp_path_factory.getbasetemp()
        launcher = ReservedLauncher(self.config, proofpack_model_key, basetemp / f"launch-{proofpack_model_key}",
                                    basetemp.parent / RESERVATIONS_FILE, self.ctx.worker_id if self.ctx else "")
        self._launcher = launcher
        yield launcher
        self._launcher = None
        launcher.close()

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """End the subprocess after the reserved model's last item here, *before* this item's completion reaches
        the controller: that completion releases the helpers, whose next model must find their devices free (the
        fixture's own teardown would only come with the next item's setup)."""
        launcher = self._launcher
        if launcher is None:
            return
        callspec = getattr(nextitem, "callspec", None)
        if callspec is None or callspec.params.get("proofpack_model_key") != launcher.model:
            launcher.close()

    def _reserved_execute(self, request: pytest.FixtureRequest, case: Case) -> dict[str, Any] | None:
        """The report of ``case`` run by the reservation's subprocess when this worker leads a multi-GPU
        reservation of its model; None otherwise (the item runs in this process)."""
        if not self.is_worker or self.ctx is None:
            return None
        worker = self.ctx.worker_id
        from pytest_proofpack.scheduling.reservations import leader_reservation

        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        found = leader_reservation(factory.getbasetemp(), worker, case.model.key)
        if found is None:
            return None
        launcher: ReservedLauncher = request.getfixturevalue("proofpack_launcher")
        answer = launcher.run(case, found[1], calibrate_only=self.options.calibrate_only)
        if answer.skip is not None:
            pytest.skip(answer.skip)
        request.node.user_properties += [(_PROP + k, v) for k, v in answer.properties]
        return answer.report

    # ------------------------------------------------------------------------------------------ controller
    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.is_worker or self.ctx is None or self.config.option.collectonly:
            return
        from pytest_proofpack.metadata import write_metadata

        ctx = self.ctx
        previous = read_run_json(ctx.run_dir)
        if previous and previous.get("config_digest") != ctx.config_digest:
            self.notes.append("stale records ignored: " + stale_reason(previous.get("config", {}), ctx.config))
        write_run_json(ctx.run_dir, {
            "suite": ctx.suite.name, "config_digest": ctx.config_digest, "config": ctx.config,
            "scenarios_digest": ctx.config["catalog_digest"], "engine_version": ENGINE_VERSION,
            "plugin_version": __version__, "shard": self.options.shard,
            "models": [{"key": m.key, "hub_id": m.hub_id, "revision": m.revision}
                       for m in {c.model.key: c.model for c in self.cases}.values()],
            "planned": planned_keys(self.cases),
        })
        write_metadata(ctx, self.cases)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.is_worker or self.store is None:
            return
        cid = parse_nodeid(report.nodeid)
        if cid is None:
            return
        props = {k[len(_PROP):]: str(v) for k, v in report.user_properties
                 if isinstance(k, str) and k.startswith(_PROP)}
        if report.when == "setup" and report.passed:
            return
        if report.when == "teardown" and (report.passed or report.skipped):
            return
        if report.when == "setup":
            outcome = "skipped" if report.skipped else "error"
        elif report.when == "call":
            outcome = "passed" if report.passed else ("skipped" if report.skipped else "failed")
        else:
            outcome = "error"
        message = props.get("error_message")
        if report.when == "call" and outcome == "failed" and "gates_passed" not in props:
            message = message or (report.longreprtext.strip().splitlines() or ["error"])[-1][:500]
        if outcome == "error" and not message:
            message = str(report.longreprtext).strip().splitlines()[-1][:500] if report.longreprtext else "error"
        if report.when == "call" and outcome == "failed" and "gates_passed" not in props:
            outcome = "error"  # the test body died before a judgement: not a detector mistake
        crashed = report.when not in ("setup", "call", "teardown")  # xdist's crash report ('???')
        error_class = props.get("error_class") or (
            ("crash" if crashed else "internal") if outcome == "error" else None)
        if report.when == "call" and outcome == "skipped":
            message = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else message
        if props.get("model_revision"):
            from pytest_proofpack.metadata import record_revision

            record_revision(self.store.run_dir, cid.model, props["model_revision"], props.get("model_source", ""))
        self.store.write(Record(
            cid.model, cid.scenario, cid.run, self.store.config_digest, outcome, error_class,
            message if outcome in ("error", "skipped") else None,
            props.get("report"), float(props.get("duration_s", report.duration) or 0.0), report.nodeid,
            props.get("reused") == "true",
        ))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.is_worker or self.ctx is None or self.options.calibrate_only or self.config.option.collectonly:
            return
        if exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.USAGE_ERROR):
            return
        from pytest_proofpack.verdict import compute_verdict, load_run, write_results

        try:
            run = load_run(self.ctx.run_dir)
            verdict = compute_verdict(run.scenarios, run.planned, run.results, stale_records=run.stale_records)
            write_results(self.ctx.run_dir / "results", verdict)
            self.verdict = verdict
            if not self.options.no_pack:
                from pytest_proofpack.pack import build_pack

                self.pack_path = build_pack(self.ctx.run_dir, sign_key=self.options.sign_key, gpg=self.options.gpg)
        except ProofpackError as exc:
            self.notes.append(f"verdict/pack not written: {exc}")
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
            return
        self._junit_properties(session)
        if verdict.get("verdict") != "PASS" and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _junit_properties(self, session: pytest.Session) -> None:
        """Suite-level JUnit properties, written by the controller (record_testsuite_property is silent under
        xdist, pytest #7767)."""
        from _pytest.junitxml import xml_key

        xml = session.config.stash.get(xml_key, None)
        if xml is None or self.ctx is None or self.verdict is None:
            return
        counts = self.verdict.get("counts", {})
        props = {
            "proofpack_suite": self.ctx.suite.name, "proofpack_verdict": self.verdict.get("verdict", ""),
            "proofpack_config_digest": self.ctx.config_digest, "proofpack_engine_version": ENGINE_VERSION,
            "proofpack_records_total": counts.get("records_total", 0),
            "proofpack_failed_requirements": ",".join(
                r.get("requirement", "") for r in self.verdict.get("failed_requirements", [])),
            "proofpack_pack": str(self.pack_path) if self.pack_path else "",
        }
        for k, v in props.items():
            xml.add_global_property(k, str(v))

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if self.is_worker or self.ctx is None or config.option.collectonly:
            return
        tr = terminalreporter
        tr.section("proofpack")
        for note in self.notes:
            tr.write_line(note)
        if self.options.calibrate_only:
            tr.write_line(f"presets: {self.ctx.run_dir / 'metadata' / 'presets'}")
            return
        if self.verdict is None:
            return
        from pytest_proofpack.verdict import render_matrix

        for line in render_matrix(self.verdict):
            tr.write_line(line)
        failed = self.verdict.get("failed_requirements", [])
        verdict = self.verdict.get("verdict")
        tr.write_line(f"verdict: {verdict}" + (f" ({len(failed)} failed requirements)" if failed else ""),
                      green=verdict == "PASS", red=verdict != "PASS", bold=True)
        for req in failed[:10]:
            tr.write_line(f"  - {req.get('requirement')}: {req.get('message')}")
        tr.write_line(f"results: {self.ctx.run_dir / 'results' / 'final_verdict.json'}")
        if self.pack_path:
            tr.write_line(f"proof pack: {self.pack_path}  (check it: proofpack verify {self.pack_path} --strict)")


def environment() -> dict[str, Any]:
    """The machine this run used: recorded in metadata/environment.json and the manifest."""
    env: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0],
                           "machine": platform.machine()}
    try:
        import torch
        import transformers

        env.update(torch=torch.__version__, transformers=transformers.__version__,
                   cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
            env["gpus"] = [{"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1)} for p in props]
    except ImportError:  # pragma: no cover - declared dependencies
        pass
    return env
