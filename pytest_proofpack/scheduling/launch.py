"""A reserved multi-GPU model's scenarios, run in a subprocess that sees the reservation's devices (issue 7).

The scheduler (:mod:`.xdist`) reserves ``k`` workers' devices for a model whose memory plan needs ``k > 1``
GPUs and writes the reservation to ``<controller basetemp>/``:data:`~.xdist.RESERVATIONS_FILE`. A worker
cannot change its own ``CUDA_VISIBLE_DEVICES`` once CUDA may have started, so the reservation's *leader*
runs the model's items through :class:`ReservedLauncher`:

* it waits until the reservation is ``ready`` (every helper's process has exited), polling the file for at
  most :data:`READY_TIMEOUT_ENV` seconds (default :data:`DEFAULT_READY_TIMEOUT_S`);
* it starts ``python -m pytest_proofpack.scheduling.launch <launch.json>`` once per model, with
  ``CUDA_VISIBLE_DEVICES`` and :data:`~.gpus.RESERVED_DEVICES_ENV` = the reservation's devices, leader's
  first, comma-joined. The subprocess rebuilds the worker's pytest configuration from ``launch.json`` (the
  worker's arguments, directory, ``sys.path`` and ``workerinput``, and the conftest files that implement
  proofpack hooks), so the same hooks, catalog and options apply. Its model load spreads over the visible
  devices (``device_map="auto"``, see :func:`~.gpus.device_map_for_process`); on CPU it simply runs;
* per item it writes a request (JSON, atomically) and sends its path on the subprocess's stdin; the
  subprocess runs :func:`pytest_proofpack.execute.run_case` — the same code as in the worker — writes the
  same evidence (``evaluation.report.json`` and sidecars) and answers with a result file (JSON, atomically;
  ``NaN`` kept so the worker judges exactly the report the engine returned) and a line on its stdout.

The baseline and the calibrated preset are computed in the subprocess too, by its own
:class:`~pytest_proofpack.runtime.ModelRuntime`, through the same FileLock disk cache
(``<cache>/baselines``, ``<cache>/presets``) every worker uses: the model is never loaded in the leader.

The worker reports each outcome as for an in-process item: the same user properties, an error with the same
``error_class`` and message, a skip as a skip. A subprocess that dies is an error of class ``crash`` whose
message ends with the tail of its stderr (kept in ``subprocess-<n>.log`` in the launcher's directory); the
next item starts a fresh subprocess. Any exception in the worker while an item runs (``--proofpack-timeout``
included) kills the subprocess, so a half-finished scenario never keeps the devices.

Every report records where it ran (``execution``: process kind, pid, worker, ``CUDA_VISIBLE_DEVICES``;
:func:`~pytest_proofpack.execute.execution_evidence`). POSIX only (``select`` on pipes), like ``--proofpack-timeout``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, NoReturn

from pytest_proofpack.errors import OptionError, ProofpackError, RemoteScenarioError
from pytest_proofpack.results import atomic_write_text
from pytest_proofpack.scheduling.gpus import RESERVED_DEVICES_ENV
from pytest_proofpack.scheduling.xdist import RESERVATIONS_FILE, Reservation, reservation_for

if TYPE_CHECKING:
    import pytest

    from pytest_proofpack.catalog import Case
    from pytest_proofpack.runtime import ModelRuntime

LAUNCH_SCHEMA: Final = "proofpack_launch_v1"
REQUEST_SCHEMA: Final = "proofpack_launch_request_v1"
RESULT_SCHEMA: Final = "proofpack_launch_result_v1"
READY_TIMEOUT_ENV: Final = "PROOFPACK_RESERVATION_TIMEOUT"
DEFAULT_READY_TIMEOUT_S: Final = 3600.0
_MARK: Final = "@proofpack-launch "  # prefix of protocol lines on the subprocess's private stdout
_TAIL_LINES: Final = 15
_TAIL_CHARS: Final = 1500


class ReservationNotReadyError(ProofpackError):
    """The reservation never became ready (a helper worker kept its device) within the timeout."""

    error_class = "timeout"


class ScenarioSubprocessError(ProofpackError):
    """A scenario subprocess crashed, or raised a :class:`ProofpackError` (re-raised with its class)."""

    def __init__(self, message: str, error_class: str) -> None:
        super().__init__(message)
        self.error_class = error_class


# ------------------------------------------------------------------------------------------------ helpers
def ready_timeout_s(environ: Mapping[str, str] | None = None) -> float:
    """:data:`READY_TIMEOUT_ENV` in seconds (> 0), else :data:`DEFAULT_READY_TIMEOUT_S`."""
    raw = (os.environ if environ is None else environ).get(READY_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_READY_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise OptionError(f"{READY_TIMEOUT_ENV}={raw!r}: must be a number of seconds > 0 (e.g. 3600)")
    return value


def device_list(devices: Sequence[str]) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value of a reservation: its devices, leader's first, comma-joined."""
    return ",".join(devices)


def leader_reservation(basetemp: Path, worker_id: str, model: str) -> tuple[Path, Reservation] | None:
    """The live multi-device reservation ``worker_id`` leads for ``model``, read from the file the controller
    writes in its basetemp (the parent of a worker's ``basetemp``), with the file's path; None if there is none."""
    path = Path(basetemp).parent / RESERVATIONS_FILE
    res = reservation_for(path, worker_id, model)
    if res is None or max(res.size, len(res.devices)) < 2:
        return None
    return path, res


def wait_until_ready(path: Path, worker_id: str, model: str, timeout_s: float, poll_s: float = 0.5) -> Reservation:
    """Poll ``path`` until ``worker_id``'s reservation of ``model`` is ready; return it.

    Raises :class:`ReservationNotReadyError` after ``timeout_s`` seconds, or at once if the reservation is gone
    (it can only go when its items are done or its leader is gone, so an item waiting for it is a bug).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        res = reservation_for(path, worker_id, model)
        if res is None:
            raise ReservationNotReadyError(
                f"{path}: no live reservation of model {model!r} led by {worker_id}; the scheduler released it "
                "while its items still run; rerun the session"
            )
        if res.ready:
            return res
        if time.monotonic() >= deadline:
            raise ReservationNotReadyError(
                f"{path}: the reservation of model {model!r} (devices {device_list(res.devices)}) was not ready "
                f"after {timeout_s:g} s; still waiting for worker(s) {', '.join(res.waiting_for) or '(none)'} to "
                f"free their device; raise {READY_TIMEOUT_ENV} (seconds) or lower the model's memory plan"
            )
        time.sleep(poll_s)


def _dump(data: Any) -> str:
    # NaN/Infinity stay (allow_nan): the worker must judge the very numbers the engine produced.
    return json.dumps(data, allow_nan=True, default=lambda o: o.item() if hasattr(o, "item") else str(o))


def _read_json(path: Path, schema: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProofpackError(f"{path}: cannot read the launch file: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != schema:
        raise ProofpackError(f"{path}: $.schema must be {schema!r}; the file was not written by this version")
    return data


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


# ------------------------------------------------------------------------------------------------ worker side
@dataclass
class LaunchAnswer:
    """A finished subprocess item: the report to judge and the user properties the in-process path adds;
    or ``skip``, the reason to skip the test with."""

    report: dict[str, Any] = field(default_factory=dict)
    properties: list[tuple[str, str]] = field(default_factory=list)
    skip: str | None = None


class _Lines:
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
                if text.startswith(_MARK):
                    message = json.loads(text[len(_MARK) :])
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
        self._lines: _Lines | None = None
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
            _dump(
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
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        self._stderr = self.workdir / f"subprocess-{self._starts}.log"
        with open(self._stderr, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pytest_proofpack.scheduling.launch", str(launch)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=str(params.dir),
            )
        self._lines = _Lines(self.proc)
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
            _dump(
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
        return self._answer(_read_json(result, RESULT_SCHEMA))

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


# ------------------------------------------------------------------------------------------------ subprocess side
class _Server:
    """The subprocess: the worker's configuration rebuilt, one :class:`ModelRuntime` per model, one request at
    a time."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        os.chdir(str(spec["cwd"]))
        sys.path[:] = [str(p) for p in spec["sys_path"]]
        self.config = _configure(spec)
        from pytest_proofpack.session import ProofpackSession

        self.session = ProofpackSession.get(self.config)
        self.cases = {c.key: c for c in self.session.cases}
        self.runtimes: dict[str, ModelRuntime] = {}

    def handle(self, request_path: Path) -> Path:
        """Run one request; write its result file (always, errors included) and return its path."""
        request = _read_json(request_path, REQUEST_SCHEMA)
        result_path = Path(str(request["result"]))
        try:
            body = self._run(request)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            body = _error_body(exc)
        atomic_write_text(result_path, _dump({"schema": RESULT_SCHEMA, "pid": os.getpid(), **body}))
        return result_path

    def _run(self, request: Mapping[str, Any]) -> dict[str, Any]:
        from pytest_proofpack.execute import run_and_record
        from pytest_proofpack.runtime import ModelRuntime
        from pytest_proofpack.session import calibrate_only_message

        key = (str(request["model"]), str(request["scenario"]), int(request["run"]))
        case = self.cases.get(key)
        ctx = self.session.ctx
        if case is None or ctx is None:
            raise ProofpackError(
                f"scenario {key[0]}:{key[1]}:run{key[2]} is not in this session's suite; the "
                "subprocess was started with other options than its worker"
            )
        runtime = self.runtimes.get(case.model.key)
        if runtime is None:
            runtime = self.runtimes[case.model.key] = ModelRuntime(ctx, case.model)
        if request.get("calibrate_only"):
            return {"skip": calibrate_only_message(runtime)}
        report, props = run_and_record(self.config, case, runtime, "subprocess", worker_pid=request.get("worker_pid"))
        return {"report": report, "properties": props}

    def close(self) -> None:
        for runtime in self.runtimes.values():
            runtime.close()
        self.config._ensure_unconfigure()


def _error_body(exc: BaseException) -> dict[str, Any]:
    import pytest

    from pytest_proofpack.runtime import describe_error

    if isinstance(exc, pytest.skip.Exception):
        return {"skip": str(exc.msg)}
    cls, msg = describe_error(exc)
    return {
        "error": {
            "class": cls,
            "message": msg,
            "proofpack": isinstance(exc, ProofpackError),
            "type": type(exc).__name__,
            "traceback": traceback.format_exc(),
        }
    }


def _configure(spec: Mapping[str, Any]) -> pytest.Config:
    """The worker's pytest config, rebuilt the way xdist builds a worker's (``xdist/remote.py``)."""
    import importlib.util

    from _pytest.config import _prepareconfig

    # No capturing: pytest's fd capture would swallow the subprocess's stderr (its log) and its stdin.
    config = _prepareconfig([*(str(a) for a in spec["args"]), "--capture=no"], None)
    # As xdist.remote.setup_config: a worker distributes nothing and has its own basetemp.
    for name, value in (
        ("dist", "no"),
        ("distload", False),
        ("numprocesses", None),
        ("maxprocesses", None),
        ("looponfail", False),
        ("usepdb", False),
        ("basetemp", spec["basetemp"]),
    ):
        setattr(config.option, name, value)
    config.workerinput = dict(spec["workerinput"])  # type: ignore[attr-defined]
    config.workeroutput = {}  # type: ignore[attr-defined]
    config._do_configure()
    # A conftest the worker loaded during collection (not at start-up) carries proofpack hooks too.
    loaded = {getattr(p, "__file__", None) for p in config.pluginmanager.get_plugins()}
    for i, path in enumerate(spec.get("conftests", [])):
        if path in loaded:
            continue
        module_spec = importlib.util.spec_from_file_location(f"_proofpack_launch_conftest_{i}", path)
        if module_spec is None or module_spec.loader is None:
            raise ProofpackError(f"{path}: cannot import this conftest in the scenario subprocess")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        config.pluginmanager.register(module, name=str(path))
    return config


@contextlib.contextmanager
def _protocol_stream() -> Iterator[IO[str]]:
    """The real stdout, private to the protocol; fd 1 becomes stderr so stray prints cannot corrupt it."""
    fd = os.dup(1)
    os.dup2(2, 1)
    with os.fdopen(fd, "w", encoding="utf-8", buffering=1) as stream:
        yield stream


def _send(stream: IO[str], message: Mapping[str, Any]) -> None:
    stream.write(_MARK + json.dumps(message) + "\n")
    stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pytest_proofpack.scheduling.launch LAUNCH_JSON``: serve requests named on stdin until EOF."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(
            "usage: python -m pytest_proofpack.scheduling.launch LAUNCH_JSON (started by a proofpack worker)",
            file=sys.stderr,
        )
        return 2
    try:
        spec = _read_json(Path(args[0]), LAUNCH_SCHEMA)
    except ProofpackError as exc:
        print(f"proofpack launch: {exc}", file=sys.stderr)
        return 2
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")  # before any plugin can replace sys.stdin
    with _protocol_stream() as proto, requests:
        server = _Server(spec)
        try:
            _send(proto, {"event": "ready", "pid": os.getpid()})
            for line in requests:
                if line.strip():
                    _send(proto, {"event": "done", "result": str(server.handle(Path(line.strip())))})
        finally:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
