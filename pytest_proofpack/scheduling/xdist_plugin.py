"""The controller-side pytest-xdist plugin: installs the scheduler and pins each worker to its device.

Registered by the session in the controller only (no-ops without ``-n``). Its hooks, in the order xdist calls
them: ``pytest_xdist_setupnodes`` (each worker's start-up environment, :func:`.worker_env.worker_device_env`),
``pytest_configure_node`` (the worker's device in ``workerinput``), ``pytest_xdist_make_scheduler``
(:class:`.scheduler.ProofpackScheduling`, writing its reservations into the controller's basetemp).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pytest

from pytest_proofpack.pytest_private import controller_basetemp
from pytest_proofpack.scheduling.gpus import GpuInventory
from pytest_proofpack.scheduling.plan import PlanSettings
from pytest_proofpack.scheduling.reservations import RESERVATIONS_FILE
from pytest_proofpack.scheduling.scheduler import ProofpackScheduling
from pytest_proofpack.scheduling.worker_env import WORKER_GPU_ENV, gateway_number, worker_device_env

if TYPE_CHECKING:
    import execnet
    from xdist.remote import Producer
    from xdist.workermanage import WorkerController

    from pytest_proofpack.models import ModelEntry


class SchedulingPlugin:
    """Controller-side plugin: the scheduler, per-worker env and ``workerinput``; register it there.

    ``models``: the suite's models by key; ``plan_settings``: what their memory plans are made from;
    ``inventory``: the devices workers are pinned to.
    """

    def __init__(
        self,
        config: pytest.Config,
        models: Mapping[str, ModelEntry],
        plan_settings: PlanSettings,
        inventory: GpuInventory,
    ) -> None:
        self.config = config
        self.models = models
        self.plan_settings = plan_settings
        self.inventory = inventory
        self.scheduler: ProofpackScheduling | None = None
        self._saved_tunables: tuple[str | None] | None = None

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Producer) -> ProofpackScheduling:
        extra = {k: m.extra.get("hf_config") for k, m in self.models.items()}
        basetemp = controller_basetemp(self.config)
        self.scheduler = ProofpackScheduling(
            config,
            log,
            models=self.models,
            settings=self.plan_settings,
            inventory=self.inventory,
            model_configs={k: v for k, v in extra.items() if isinstance(v, Mapping)},
            reservations_path=basetemp / RESERVATIONS_FILE if basetemp is not None else None,
        )
        return self.scheduler

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_setupnodes(self, config: pytest.Config, specs: Sequence[execnet.XSpec]) -> None:
        from pytest_proofpack.malloc import worker_glibc_tunables

        # glibc reads its tunables when a process starts, before execnet applies ``spec.env``: the workers
        # (spawned after this hook) inherit the controller's environment, so it goes there.
        # Put back in pytest_unconfigure (an in-process pytester run must not leak it into the caller).
        tunables = worker_glibc_tunables(os.environ)
        if tunables is not None:
            self._saved_tunables = (os.environ.get("GLIBC_TUNABLES"),)
            os.environ["GLIBC_TUNABLES"] = tunables
        for i, spec in enumerate(specs):
            env = worker_device_env(i, self.inventory, len(specs))
            # execnet applies ``spec.env`` in the fresh worker interpreter before any conftest runs.
            spec.env.update(env)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._saved_tunables is not None:
            (previous,) = self._saved_tunables
            if previous is None:
                os.environ.pop("GLIBC_TUNABLES", None)
            else:
                os.environ["GLIBC_TUNABLES"] = previous
            self._saved_tunables = None

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: WorkerController) -> None:
        env: Mapping[str, str] = getattr(node.gateway.spec, "env", None) or {}
        gpu = env.get(WORKER_GPU_ENV)
        if gpu is None and self.inventory.mode == "gpu" and self.inventory.devices():
            number = gateway_number(str(node.gateway.id))
            gpu = str(int(number) % len(self.inventory.devices())) if number is not None else "0"
        node.workerinput["proofpack_gpu"] = gpu
