"""Issue 7: a model whose memory plan needs 2 GPUs runs its items in a subprocess that sees both devices.

CPU only: ``PROOFPACK_FAKE_GPUS=2x80`` gives the scheduler two 80 GiB devices; ``tiny-b`` declares 40 B
parameters, so its plan (bf16 weights alone 74.5 GiB) needs both. The evaluation comes from the oracle engine
of :mod:`e2e_support`, wrapped by a hook that logs the process and devices each evaluation really ran in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from e2e_support import N_SCENARIOS, ORACLE_CONFTEST, write_suite

from pytest_proofpack.errors import OptionError
from pytest_proofpack.scheduling.reservations import (
    READY_TIMEOUT_ENV,
    RESERVATIONS_FILE,
    Reservation,
    ReservationNotReadyError,
    leader_reservation,
    ready_timeout_s,
    wait_until_ready,
)

WHERE_CONFTEST = r"""
import json, os, sys, time

@pytest.hookimpl(wrapper=True, specname="pytest_proofpack_evaluate")
def pytest_proofpack_log_where(case, runtime, change):  # pytest only reads "pytest_*" names
    sc = case.scenario.id
    if os.environ.get("PROOFPACK_RESERVED_DEVICES") and sc == os.environ.get("PROOFPACK_TEST_CRASH"):
        marker = os.path.join(os.environ["PROOFPACK_TEST_DIR"], "crashed")
        if not os.path.exists(marker):  # crash once; the rerun of the session must succeed
            open(marker, "w").close()
            print("about to die: simulated segfault in", sc, file=sys.stderr, flush=True)
            os._exit(139)
    if os.environ.get("PROOFPACK_RESERVED_DEVICES") and sc == os.environ.get("PROOFPACK_TEST_HANG"):
        with open(os.path.join(os.environ["PROOFPACK_TEST_DIR"], "hung.pid"), "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(600)
    if os.environ.get("PROOFPACK_RESERVED_DEVICES") and sc == os.environ.get("PROOFPACK_TEST_RAISE"):
        raise RuntimeError(f"engine bug in {sc}")
    with open(os.environ["PROOFPACK_TEST_WHERE"], "a") as fh:
        fh.write(json.dumps({"model": case.model.key, "scenario": sc, "pid": os.getpid(), "ppid": os.getppid(),
                             "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
                             "worker": os.environ.get("PYTEST_XDIST_WORKER")}) + "\n")
    return (yield)
"""


@pytest.fixture
def suite_args(pytester: pytest.Pytester, model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    pytester.makeconftest(ORACLE_CONFTEST + WHERE_CONFTEST)
    for name, value in (("PROOFPACK_TEST_LOG", "calls.log"), ("PROOFPACK_TEST_WHERE", "where.log")):
        monkeypatch.setenv(name, str(pytester.path / value))
    monkeypatch.setenv("PROOFPACK_TEST_DIR", str(pytester.path))
    monkeypatch.setenv("PROOFPACK_FAKE_GPUS", "2x80")
    for name in (
        "PROOFPACK_TEST_MISS",
        "PROOFPACK_TEST_CRASH",
        "PROOFPACK_TEST_RAISE",
        "PROOFPACK_TEST_HANG",
        "CUDA_VISIBLE_DEVICES",
        "PYTEST_XDIST_AUTO_NUM_WORKERS",
        "GPU_MEMORY_PER_DEVICE",
    ):
        monkeypatch.delenv(name, raising=False)
    args = write_suite(pytester.path, model_dirs)
    suites = pytester.path / "suites.yaml"
    text = suites.read_text()
    assert "params_b: 0.002" in text
    suites.write_text(text.replace("params_b: 0.002", "params_b: 40"))  # tiny-b: a 2-GPU memory plan
    return [*args, "--proofpack-skip-disk-check"]


def _reports(pytester: pytest.Pytester, model: str) -> dict[str, dict[str, Any]]:
    root = pytester.path / "run" / "reports" / model
    return {p.parent.parent.name: json.loads(p.read_text()) for p in root.glob("*/run_1/evaluation.report.json")}


def _records(pytester: pytest.Pytester, model: str) -> dict[str, dict[str, Any]]:
    root = pytester.path / "run" / "records" / model
    return {p.parent.name: json.loads(p.read_text()) for p in root.glob("*/run_1.json")}


def _where(pytester: pytest.Pytester) -> list[dict[str, Any]]:
    path = pytester.path / "where.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_gpu_model_runs_in_a_subprocess_seeing_both_devices(
    pytester: pytest.Pytester, suite_args: list[str]
) -> None:
    result = pytester.runpytest_subprocess(*suite_args, "-n", "auto")
    result.stdout.fnmatch_lines(["*created: 2/2 workers*"])
    result.assert_outcomes(passed=2 * N_SCENARIOS)
    assert result.ret == 0
    verdict = json.loads((pytester.path / "run" / "results" / "final_verdict.json").read_text())
    assert verdict["verdict"] == "PASS", verdict["failed_requirements"]

    big = _reports(pytester, "tiny-b")
    assert len(big) == N_SCENARIOS
    execs = [r["execution"] for r in big.values()]
    leader = execs[0]["worker"]
    expected = f"{leader[2:]},{1 - int(leader[2:])}"  # the leader's device first, then the helper's
    assert {e["process"] for e in execs} == {"subprocess"}
    assert {e["worker"] for e in execs} == {leader}
    assert {e["cuda_visible_devices"] for e in execs} == {expected}
    assert {e["reserved_devices"] for e in execs} == {expected}
    assert len({e["pid"] for e in execs}) == 1, "one subprocess per model, not one per item"
    assert all(e["pid"] != e["worker_pid"] for e in execs)
    assert {r["outcome"] for r in _records(pytester, "tiny-b").values()} == {"passed"}

    small = _reports(pytester, "tiny-a")
    assert len(small) == N_SCENARIOS
    for report in small.values():
        ex = report["execution"]
        assert ex["process"] == "worker" and ex["cuda_visible_devices"] == ex["worker"][2:]
        assert 50 < ex["peak_rss_mib"] < 64 * 1024  # a worker with torch loaded, in MiB

    # Independent evidence from inside the evaluation hook: where the engine really ran.
    where = _where(pytester)
    assert len(where) == 2 * N_SCENARIOS
    for row in where:
        report = (big if row["model"] == "tiny-b" else small)[row["scenario"]]["execution"]
        assert row["pid"] == report["pid"] and row["cvd"] == report["cuda_visible_devices"]
        if row["model"] == "tiny-b":
            assert row["ppid"] == report["worker_pid"]  # a child of the leader worker
        else:
            assert row["cvd"] in ("0", "1")


def test_subprocess_crash_failure_and_error_are_reported_as_in_process(
    pytester: pytest.Pytester, suite_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROOFPACK_TEST_CRASH", "nan_injection")
    monkeypatch.setenv("PROOFPACK_TEST_RAISE", "inf_injection")
    monkeypatch.setenv("PROOFPACK_TEST_MISS", "scale_explosion")
    monkeypatch.setenv("PROOFPACK_TEST_HANG", "ve_mlp_scale_skew")  # the last item: the others run well within 40 s
    result = pytester.runpytest_subprocess(*suite_args, "-n", "2", "-k", "tiny-b", "--proofpack-timeout", "40")
    result.assert_outcomes(passed=N_SCENARIOS - 4, failed=1, errors=3)  # xdist does not count deselected
    result.stdout.fnmatch_lines(["*scale_explosion*expected*"])
    records = _records(pytester, "tiny-b")
    crash = records["nan_injection"]
    assert crash["outcome"] == "error" and crash["error_class"] == "crash"
    assert "exited with code 139" in crash["error_message"]
    assert "about to die: simulated segfault in nan_injection" in crash["error_message"]  # the stderr tail
    raised = records["inf_injection"]
    assert (raised["outcome"], raised["error_class"]) == ("error", "internal")
    assert raised["error_message"] == "RuntimeError: engine bug in inf_injection"  # as describe_error in-process
    assert records["scale_explosion"]["outcome"] == "failed"
    hung = records["ve_mlp_scale_skew"]
    assert (hung["outcome"], hung["error_class"]) == ("error", "timeout")
    assert "exceeded --proofpack-timeout 40 s" in hung["error_message"]
    with pytest.raises(ProcessLookupError):  # the worker killed the subprocess that ran over its time
        os.kill(int((pytester.path / "hung.pid").read_text()), 0)
    # After the crash a fresh subprocess ran the remaining items: two subprocess pids in the reports.
    pids = {r["execution"]["pid"] for r in _reports(pytester, "tiny-b").values()}
    assert len(pids) == 2


# -- unit tests of the worker-side helpers ------------------------------------------------------------------
def _write_reservations(path: Path, **fields: Any) -> None:
    res = {
        "model": "big",
        "leader": "gw1",
        "devices": ["1", "0"],
        "size": 2,
        "helpers": ["gw0"],
        "waiting_for": ["gw0"],
        "ready": False,
        "done": False,
        **fields,
    }
    path.write_text(json.dumps({"schema": "proofpack_reservations_v1", "reservations": {"big": res}}))


def test_leader_reservation_reads_the_controller_file(tmp_path: Path) -> None:
    basetemp = tmp_path / "gw1"
    _write_reservations(tmp_path / RESERVATIONS_FILE)
    found = leader_reservation(basetemp, "gw1", "big")
    assert found is not None and found[0] == tmp_path / RESERVATIONS_FILE
    assert isinstance(found[1], Reservation) and found[1].devices == ["1", "0"]
    assert leader_reservation(basetemp, "gw0", "big") is None  # a helper is not the leader
    assert leader_reservation(basetemp, "gw1", "other") is None
    _write_reservations(tmp_path / RESERVATIONS_FILE, size=1, devices=["1"], helpers=[])
    assert leader_reservation(basetemp, "gw1", "big") is None  # a one-device reservation runs in-process


def test_wait_until_ready_times_out_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / RESERVATIONS_FILE
    _write_reservations(path)
    with pytest.raises(ReservationNotReadyError, match=r"proofpack-reservations\.json.*not ready after 0\.2 s.*gw0"):
        wait_until_ready(path, "gw1", "big", timeout_s=0.2, poll_s=0.05)
    _write_reservations(path, ready=True, waiting_for=[])
    assert wait_until_ready(path, "gw1", "big", timeout_s=0.2).ready
    _write_reservations(path, done=True)
    with pytest.raises(ReservationNotReadyError, match="no live reservation"):
        wait_until_ready(path, "gw1", "big", timeout_s=0.2)


def test_ready_timeout_env_is_validated() -> None:
    assert ready_timeout_s({}) == 3600.0
    assert ready_timeout_s({READY_TIMEOUT_ENV: "90"}) == 90.0
    with pytest.raises(OptionError, match=f"{READY_TIMEOUT_ENV}='soon': must be a number of seconds > 0"):
        ready_timeout_s({READY_TIMEOUT_ENV: "soon"})
    with pytest.raises(OptionError, match=READY_TIMEOUT_ENV):
        ready_timeout_s({READY_TIMEOUT_ENV: "0"})


def test_subprocess_entry_point_rejects_a_bad_launch_file(tmp_path: Path) -> None:
    bad = tmp_path / "launch.json"
    bad.write_text(json.dumps({"schema": "something_else"}))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_proofpack.scheduling.launch", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "launch.json: $.schema must be 'proofpack_launch_v1'" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
