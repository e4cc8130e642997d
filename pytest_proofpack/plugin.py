"""The pytest entry point: declares options, markers and hooks, and registers the session object. No logic here.

Nothing heavy is imported: torch, transformers and NVML load only inside fixtures and engine calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pytest_proofpack import hookspecs
from pytest_proofpack.options import add_options

if TYPE_CHECKING:
    from collections.abc import Sequence

MARKERS = (
    "clean: a clean edit scenario (tuned parameters; the detector must let it pass)",
    "stress: a stress edit scenario",
    "error_injection: a fault injection scenario",
    "must_pass: the evaluation must pass every gate",
    "must_fail: the evaluation must fail and its detectors must fire",
    "must_detect: the scenario's detectors must fire",
    "informational: the signal is recorded; the test always passes",
    "proofpack_model(key): the model a scenario runs on",
)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    from pytest_proofpack.scheduling.worker_env import auto_num_workers_for

    return auto_num_workers_for(config)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    from pytest_proofpack import engine_plugin, worker_role
    from pytest_proofpack.controller_role import ControllerRole
    from pytest_proofpack.progress_role import ProgressRole
    from pytest_proofpack.session import ProofpackSession
    from pytest_proofpack.worker_role import WorkerRole

    config.pluginmanager.register(engine_plugin, "proofpack-engine")
    session = ProofpackSession.from_config(config)
    config.pluginmanager.register(session, ProofpackSession.PLUGIN_NAME)
    config.pluginmanager.register(WorkerRole(session), WorkerRole.PLUGIN_NAME)
    config.pluginmanager.register(worker_role, "proofpack-worker-fixtures")  # its fixtures are plain functions
    if not session.is_worker:  # only the controller records, and writes the verdict and the pack
        config.pluginmanager.register(ControllerRole(session), "proofpack-controller")
    if session.ctx is not None:  # workers send their long phases, the controller shows them
        config.pluginmanager.register(ProgressRole(config, session.options.progress), "proofpack-progress")


def pytest_report_header(config: pytest.Config) -> Sequence[str] | None:
    from pytest_proofpack.session import ProofpackSession

    session = config.pluginmanager.get_plugin(ProofpackSession.PLUGIN_NAME)
    return session.header() if session is not None else None
