"""The subprocess of a reserved multi-GPU model: the worker's pytest configuration rebuilt, serving its items.

Started by :class:`~.client.ReservedLauncher` as ``python -m pytest_proofpack.scheduling.launch LAUNCH_JSON``
with the reservation's devices visible. It rebuilds the worker's configuration from ``launch.json`` (arguments,
directory, ``sys.path``, ``workerinput`` and the conftest files that implement proofpack hooks), so the same
hooks, catalog and options apply, then serves one request at a time (:mod:`.protocol`) until its stdin closes.

Each request runs :func:`pytest_proofpack.execute.run_and_record`, the same code as in a worker, with this
process's own :class:`~pytest_proofpack.runtime.ModelRuntime`: the model loads here, spread over the visible
devices (:func:`~pytest_proofpack.scheduling.gpus.device_map_for_process`), and the baseline and preset come
from the same FileLock disk cache every worker uses. The model is never loaded in the leader worker.

This module is a process entry point, the top of the subprocess's stack: it imports the session, like the
pytest plugin does in a worker.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

from pytest_proofpack.calibrate_only import calibrate_only_message
from pytest_proofpack.errors import ProofpackError
from pytest_proofpack.execute import run_and_record
from pytest_proofpack.pytest_private import configure, prepare_config, unconfigure
from pytest_proofpack.results import atomic_write_text
from pytest_proofpack.runtime import ModelRuntime, describe_error
from pytest_proofpack.scheduling.launch.protocol import (
    ENTRY_MODULE,
    LAUNCH_SCHEMA,
    PROTOCOL_MARK,
    REQUEST_SCHEMA,
    RESULT_SCHEMA,
    dump_json,
    read_json,
)
from pytest_proofpack.session import ProofpackSession


class ScenarioServer:
    """The worker's configuration rebuilt from ``spec`` (a ``launch.json``), one :class:`ModelRuntime` per
    model, one request at a time. Changes the process's directory and ``sys.path`` to the worker's."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        os.chdir(str(spec["cwd"]))
        sys.path[:] = [str(p) for p in spec["sys_path"]]
        self.config = rebuild_worker_config(spec)
        self.session = ProofpackSession.get(self.config)
        self.cases = {c.key: c for c in self.session.cases}
        self.runtimes: dict[str, ModelRuntime] = {}

    def handle(self, request_path: Path) -> Path:
        """Run one request; write its result file (always, errors included) and return its path."""
        request = read_json(request_path, REQUEST_SCHEMA)
        result_path = Path(str(request["result"]))
        try:
            body = self._run(request)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            body = _error_body(exc)
        atomic_write_text(result_path, dump_json({"schema": RESULT_SCHEMA, "pid": os.getpid(), **body}))
        return result_path

    def _run(self, request: Mapping[str, Any]) -> dict[str, Any]:
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
        """Free every model and unconfigure pytest."""
        for runtime in self.runtimes.values():
            runtime.close()
        unconfigure(self.config)


def _error_body(exc: BaseException) -> dict[str, Any]:
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


def rebuild_worker_config(spec: Mapping[str, Any]) -> pytest.Config:
    """The worker's pytest config, rebuilt the way xdist builds a worker's (``xdist/remote.py``), configured.

    Raises :class:`ProofpackError` when a conftest file of ``spec["conftests"]`` cannot be imported.
    """
    # No capturing: pytest's fd capture would swallow the subprocess's stderr (its log) and its stdin.
    config = prepare_config([*(str(a) for a in spec["args"]), "--capture=no"])
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
    configure(config)
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
    stream.write(PROTOCOL_MARK + json.dumps(message) + "\n")
    stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pytest_proofpack.scheduling.launch LAUNCH_JSON``: serve requests named on stdin until EOF.

    Returns 2 (a message on stderr) for a wrong command line or launch file, else 0 once stdin closes.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print(f"usage: python -m {ENTRY_MODULE} LAUNCH_JSON (started by a proofpack worker)", file=sys.stderr)
        return 2
    try:
        spec = read_json(Path(args[0]), LAUNCH_SCHEMA)
    except ProofpackError as exc:
        print(f"proofpack launch: {exc}", file=sys.stderr)
        return 2
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")  # before any plugin can replace sys.stdin
    with _protocol_stream() as proto, requests:
        server = ScenarioServer(spec)
        try:
            _send(proto, {"event": "ready", "pid": os.getpid()})
            for line in requests:
                if line.strip():
                    _send(proto, {"event": "done", "result": str(server.handle(Path(line.strip())))})
        finally:
            server.close()
    return 0
