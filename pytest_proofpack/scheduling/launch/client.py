"""The worker's side of a reserved multi-GPU model: the subprocess that runs the model's items, and its handle.

A worker cannot change its own ``CUDA_VISIBLE_DEVICES`` once CUDA may have started, so the leader of a
reservation (:mod:`..reservations`) runs the model's items through :class:`ReservedLauncher`:

* it waits until the reservation is ``ready`` (every helper's process has exited), for at most
  :data:`~..reservations.READY_TIMEOUT_ENV` seconds;
* it starts ``python -m pytest_proofpack.scheduling.launch <launch.json>`` (:mod:`.server`) once per model, with
  ``CUDA_VISIBLE_DEVICES`` and :data:`~..gpus.RESERVED_DEVICES_ENV` = the reservation's devices, leader's first;
* per item it writes a request and reads the answer (:mod:`.protocol`).

A subprocess that dies is an error of class ``crash`` whose message ends with the tail of its stderr (kept in
``subprocess-<n>.log`` in the launcher's directory); the next item starts a fresh subprocess. Any exception in
the worker while an item runs (``--proofpack-timeout`` included) kills the subprocess, so a half-finished
scenario never keeps the devices. POSIX only (``select`` on pipes), like ``--proofpack-timeout``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from pytest_proofpack.errors import ProofpackError, RemoteScenarioError
from pytest_proofpack.results import atomic_write_text
from pytest_proofpack.scheduling.gpus import RESERVED_DEVICES_ENV
from pytest_proofpack.scheduling.launch.protocol import (
    ENTRY_MODULE,
    LAUNCH_SCHEMA,
    PROTOCOL_MARK,
    REQUEST_SCHEMA,
    RESULT_SCHEMA,
    dump_json,
    read_json,
)
from pytest_proofpack.scheduling.reservations import (
    Reservation,
    ReservationNotReadyError,
    device_list,
    ready_timeout_s,
    wait_until_ready,
)

if TYPE_CHECKING:
    import pytest

    from pytest_proofpack.catalog import Case

_TAIL_LINES: Final = 15
_TAIL_CHARS: Final = 1500


class ScenarioSubprocessError(ProofpackError):
    """A scenario subprocess crashed, or raised a :class:`ProofpackError` (re-raised with its class)."""

    def __init__(self, message: str, error_class: str) -> None:
        super().__init__(message)
        self.error_class = error_class


def hook_conftests(config: pytest.Config) -> list[str]:
    """Files of the conftest modules that implement a ``pytest_proofpack_*`` hook in this process."""
    out: list[str] = []
    for name in dir(config.hook):
        if not name.startswith("pytest_proofpack_"):
            continue
        for impl in getattr(config.hook, name).get_hookimpls():
            path = getattr(impl.plugin, "__file__", None)
            if isinstance(path, str) and Path(path).name == "conftest.py" and path not in out:
                out.append(path)
    return out


@dataclass
class LaunchAnswer:
    """A finished subprocess item: the report to judge and the user properties the in-process path adds;
    or ``skip``, the reason to skip the test with."""

    report: dict[str, Any] = field(default_factory=dict)
    properties: list[tuple[str, str]] = field(default_factory=list)
    skip: str | None = None


class _ProtocolLines:
    """Protocol lines from a subprocess's stdout, read with ``select`` so a dead subprocess is noticed even if
    something else still holds the pipe open."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def next(self) -> dict[str, Any] | None:
        """The next protocol message, or None once the subprocess has exited (or closed its stdout)."""
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                text = line.decode("utf-8", "replace")
                if text.startswith(PROTOCOL_MARK):
                    message = json.loads(text[len(PROTOCOL_MARK) :])
                    if isinstance(message, dict):
                        return message
            ready, _, _ = select.select([self.fd], [], [], 1.0)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return None
                self.buf += chunk
            elif self.proc.poll() is not None:
                return None


class ReservedLauncher:
    """The worker's handle on the subprocess that runs one reserved model's items (see the module docstring).

    ``config``: the worker's pytest config. ``model``: the model key. ``workdir``: a private directory for
    requests, results and subprocess logs. ``reservations``: the reservations file; ``worker_id``: this
    worker's gateway id (the reservation's leader). The subprocess starts on the first :meth:`run`;
    :meth:`close` ends it.
    """

    def __init__(self, config: pytest.Config, model: str, workdir: Path, reservations: Path, worker_id: str) -> None:
        self.config = config
        self.model = model
        self.workdir = Path(workdir)
        self.reservations = reservations
        self.worker_id = worker_id
        self.proc: subprocess.Popen[bytes] | None = None
        self._lines: _ProtocolLines | None = None
        self._stderr: Path | None = None
        self._starts = 0
        self._requests = 0

    # -- public
    def run(self, case: Case, reservation: Reservation, *, calibrate_only: bool = False) -> LaunchAnswer:
        """Run ``case`` in the subprocess (starting it first if needed) and return its answer.

        Raises :class:`ReservationNotReadyError`, :class:`ScenarioSubprocessError` (crash, or a ProofpackError
        in the subprocess, with the same class and message) or :class:`RemoteScenarioError` (any other error).
        """
        try:
            if self.proc is None:
                self._start(reservation)
            return self._exchange(case, calibrate_only)
        except (ScenarioSubprocessError, RemoteScenarioError, ReservationNotReadyError):
            raise
        except BaseException:
            self._kill()  # a timeout or an interrupt: the half-run scenario must not keep the devices
            raise

    def close(self, timeout_s: float = 120.0) -> None:
        """End the subprocess: EOF on its stdin lets it free the model and exit; killed after ``timeout_s``."""
        proc, self.proc, self._lines = self.proc, None, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    # -- internals
    def _start(self, reservation: Reservation) -> None:
        if not reservation.ready:
            reservation = wait_until_ready(self.reservations, self.worker_id, self.model, ready_timeout_s())
        self._starts += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        devices = device_list(reservation.devices)
        launch = self.workdir / f"launch-{self._starts}.json"
        params = self.config.invocation_params
        atomic_write_text(
            launch,
            dump_json(
                {
                    "schema": LAUNCH_SCHEMA,
                    "model": self.model,
                    "args": [str(a) for a in params.args],
                    "cwd": str(params.dir),
                    "sys_path": list(sys.path),
                    "workerinput": dict(getattr(self.config, "workerinput", {})),
                    "basetemp": str(self.workdir / f"basetemp-{self._starts}"),
                    "conftests": hook_conftests(self.config),
                }
            ),
        )
        env = dict(os.environ)
        env.update({"CUDA_VISIBLE_DEVICES": devices, RESERVED_DEVICES_ENV: devices, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
        # ``-m`` must find this package even when the worker found it through a path pytest added.
        package_root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        self._stderr = self.workdir / f"subprocess-{self._starts}.log"
        with open(self._stderr, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", ENTRY_MODULE, str(launch)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=str(params.dir),
            )
        self._lines = _ProtocolLines(self.proc)
        message = self._lines.next()
        if message is None or message.get("event") != "ready":
            self._crashed("while starting")

    def _exchange(self, case: Case, calibrate_only: bool) -> LaunchAnswer:
        assert self.proc is not None and self.proc.stdin is not None and self._lines is not None
        self._requests += 1
        request = self.workdir / f"request-{self._requests}.json"
        result = self.workdir / f"result-{self._requests}.json"
        model, scenario, run = case.key
        atomic_write_text(
            request,
            dump_json(
                {
                    "schema": REQUEST_SCHEMA,
                    "model": model,
                    "scenario": scenario,
                    "run": run,
                    "calibrate_only": calibrate_only,
                    "worker_pid": os.getpid(),
                    "result": str(result),
                }
            ),
        )
        try:
            self.proc.stdin.write(f"{request}\n".encode())
            self.proc.stdin.flush()
        except OSError:
            self._crashed(f"before running {scenario} run {run}")
        message = self._lines.next()
        if message is None or message.get("event") != "done":
            self._crashed(f"while running {scenario} run {run}")
        return self._answer(read_json(result, RESULT_SCHEMA))

    def _answer(self, data: Mapping[str, Any]) -> LaunchAnswer:
        pid = int(data.get("pid", 0))
        error = data.get("error")
        if isinstance(error, Mapping):
            described = (str(error.get("class", "internal")), str(error.get("message", "")))
            if error.get("proofpack"):
                raise ScenarioSubprocessError(described[1], described[0])
            raise RemoteScenarioError(described, str(error.get("traceback", "")), pid)
        if data.get("skip") is not None:
            return LaunchAnswer(skip=str(data["skip"]))
        props = [(str(k), str(v)) for k, v in data.get("properties", [])]
        return LaunchAnswer(dict(data["report"]), props)

    def _crashed(self, when: str) -> NoReturn:
        proc = self.proc
        code: int | None = None
        if proc is not None:
            try:
                code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # it closed its stdout but lives on: end it
                proc.kill()
                code = proc.wait()
        pid = proc.pid if proc is not None else 0
        self.close(timeout_s=0)
        raise ScenarioSubprocessError(
            f"the scenario subprocess of model {self.model!r} (pid {pid}) exited with code {code} {when}; "
            f"stderr ({self._stderr}) ends: {self._stderr_tail()}",
            "crash",
        )

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.close(timeout_s=10)

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        try:
            with open(self._stderr, "rb") as fh:
                fh.seek(max(0, fh.seek(0, os.SEEK_END) - 8192))
                text = fh.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"(unreadable: {exc})"
        lines = [line.rstrip() for line in text.splitlines() if line.strip()][-_TAIL_LINES:]
        return " | ".join(lines)[-_TAIL_CHARS:] or "(empty)"
