"""The worker's role: the fixtures that run one scenario item, attach its evidence and judge its expectation.

A scenario item (:mod:`pytest_proofpack.scenario_anchor`) asks for ``proofpack_outcome``. Its setup runs the
scenario — or reuses the stored report of an earlier session — and judges the expectation (DESIGN §2);
infrastructure trouble raised there is an error of the item, not a failure. The evidence goes on the item's
``user_properties`` (:mod:`pytest_proofpack.scenario_records`), which xdist sends to the controller.

Where the scenario runs: in this process, on the model's :class:`~pytest_proofpack.runtime.ModelRuntime`
(``proofpack_runtime``, one per model and worker); or, when this worker leads a multi-GPU reservation of the
model, in the reservation's subprocess (``proofpack_launcher``, :mod:`pytest_proofpack.scheduling.launch`), so the
model is never loaded in the worker itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from pytest_proofpack.calibrate_only import calibrate_only_message
from pytest_proofpack.deadline import scenario_timeout
from pytest_proofpack.errors import ProofpackError
from pytest_proofpack.results import report_relpath
from pytest_proofpack.scenario_records import PROPERTY_PREFIX

if TYPE_CHECKING:
    from pytest_proofpack.catalog import Case
    from pytest_proofpack.runtime import ModelRuntime
    from pytest_proofpack.scheduling.launch import ReservedLauncher
    from pytest_proofpack.session import ProofpackSession


@dataclass
class ScenarioOutcome:
    """What the test asserts: ``ok`` and the message shown when it is not."""

    ok: bool
    message: str
    report: dict[str, Any] = field(default_factory=dict)


# The fixtures are module-level functions, registered with this module as a plugin: a fixture of a wider scope than
# a function defined as a method of a plugin object is deprecated (PytestRemovedIn10Warning from pytest 9.1 on).
@pytest.fixture(scope="session")
def proofpack_model_key(request: pytest.FixtureRequest) -> str:
    """The model key of the current parametrization; session-scoped so items group by model."""
    return str(request.param)


@pytest.fixture(scope="session")
def proofpack_runtime(request: pytest.FixtureRequest, proofpack_model_key: str) -> Iterator[ModelRuntime]:
    """The model's runtime on this worker: model, windows, baseline and preset, loaded lazily, freed after."""
    from pytest_proofpack.runtime import ModelRuntime

    ctx = WorkerRole.of(request.config).session.ctx
    assert ctx is not None
    runtime = ModelRuntime(ctx, ctx.catalog.models[proofpack_model_key])
    yield runtime
    runtime.close()


@pytest.fixture
def proofpack_outcome(request: pytest.FixtureRequest, proofpack_model_key: str,
                      proofpack_case: Case) -> ScenarioOutcome:
    """Run the scenario (setup phase: infrastructure trouble is an error) and judge its expectation."""
    return WorkerRole.of(request.config).outcome(request, proofpack_case)


@pytest.fixture(scope="session")
def proofpack_launcher(request: pytest.FixtureRequest, proofpack_model_key: str,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReservedLauncher]:
    """The subprocess handle of a reserved model on its leader worker; ended when the worker moves on."""
    yield from WorkerRole.of(request.config).launcher(proofpack_model_key, tmp_path_factory)


class WorkerRole:
    """The scenario work over ``session``'s run context and result store, and the hook that ends a reserved model's
    subprocess (registered in every process; the fixtures above find it with :meth:`of`)."""

    PLUGIN_NAME = "proofpack-worker"

    def __init__(self, session: ProofpackSession) -> None:
        self.session = session
        self._launcher: ReservedLauncher | None = None  # the live reserved-model subprocess handle

    @classmethod
    def of(cls, config: pytest.Config) -> WorkerRole:
        """The role registered for ``config``."""
        role = config.pluginmanager.get_plugin(cls.PLUGIN_NAME)
        assert isinstance(role, cls)
        return role

    def outcome(self, request: pytest.FixtureRequest, case: Case) -> ScenarioOutcome:
        """Run ``case`` (or reuse its stored report), attach its evidence to the item and judge its expectation."""
        from pytest_proofpack.expectations import judge
        from pytest_proofpack.runtime import describe_error

        node = request.node
        t0 = time.perf_counter()
        try:
            with scenario_timeout(self.session.options.timeout):
                report = self._execute(request, case)
        except BaseException as exc:
            if isinstance(exc, pytest.skip.Exception | KeyboardInterrupt):
                raise
            cls, msg = describe_error(exc)
            node.user_properties += [(PROPERTY_PREFIX + "error_class", cls), (PROPERTY_PREFIX + "error_message", msg)]
            if isinstance(exc, ProofpackError):
                raise pytest.fail.Exception(f"[{cls}] {msg}", pytrace=False) from None
            raise
        finally:
            node.user_properties.append((PROPERTY_PREFIX + "duration_s", f"{time.perf_counter() - t0:.3f}"))
        judgement = judge(case.scenario.raw, report, model=case.model.key)
        node.user_properties += [(k if k.startswith(PROPERTY_PREFIX) else PROPERTY_PREFIX + k, v)
                                 for k, v in judgement.properties()]
        return ScenarioOutcome(judgement.ok, judgement.message, report)

    def _execute(self, request: pytest.FixtureRequest, case: Case) -> dict[str, Any]:
        """The scenario's report: stored (unless ``--proofpack-rerun``), from the reservation's subprocess, or run
        here. Skips the item under ``--proofpack-calibrate-only``."""
        store = self.session.store
        assert self.session.ctx is not None and store is not None
        node = request.node
        rel = report_relpath(case.model.key, case.scenario.id, case.run)
        if not self.session.options.rerun:
            stored = store.reusable_report(*case.key)
            if stored is not None:
                node.user_properties += [(PROPERTY_PREFIX + "report", rel), (PROPERTY_PREFIX + "reused", "true")]
                return stored
        reserved = self._reserved_execute(request, case)
        if reserved is not None:
            return reserved
        runtime: ModelRuntime = request.getfixturevalue("proofpack_runtime")
        if self.session.options.calibrate_only:
            pytest.skip(calibrate_only_message(runtime))
        from pytest_proofpack.execute import run_and_record

        report, props = run_and_record(self.session.config, case, runtime, "worker")
        node.user_properties += [(PROPERTY_PREFIX + k, v) for k, v in props]
        return report

    # -- a model reserved on several devices: its items run in the reservation's subprocess -----------------------
    def launcher(self, model_key: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReservedLauncher]:
        """The ``proofpack_launcher`` fixture's body: start the reserved model's subprocess handle, end it after."""
        from pytest_proofpack.scheduling.launch import ReservedLauncher
        from pytest_proofpack.scheduling.reservations import RESERVATIONS_FILE

        ctx = self.session.ctx
        basetemp = tmp_path_factory.getbasetemp()
        launcher = ReservedLauncher(self.session.config, model_key, basetemp / f"launch-{model_key}",
                                    basetemp.parent / RESERVATIONS_FILE, ctx.worker_id if ctx else "")
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
        if not self.session.is_worker or self.session.ctx is None:
            return None
        from pytest_proofpack.scheduling.reservations import leader_reservation

        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        found = leader_reservation(factory.getbasetemp(), self.session.ctx.worker_id, case.model.key)
        if found is None:
            return None
        launcher: ReservedLauncher = request.getfixturevalue("proofpack_launcher")
        answer = launcher.run(case, found[1], calibrate_only=self.session.options.calibrate_only)
        if answer.skip is not None:
            pytest.skip(answer.skip)
        request.node.user_properties += [(PROPERTY_PREFIX + k, v) for k, v in answer.properties]
        return answer.report
