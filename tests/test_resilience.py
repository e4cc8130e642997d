"""Resilience as a user meets it: a worker killed mid-scenario, an out-of-memory engine, a scenario timeout,
custom edits/faults registered from a conftest, and per-model probe parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_support import ORACLE_CONFTEST, make_model_dir, write_suite

CRASH_CONFTEST = ORACLE_CONFTEST + r'''
import signal
_orig = _report
def _report(case, change):
    if case.scenario.id == os.environ.get("PROOFPACK_TEST_CRASH"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _orig(case, change)
'''

OOM_CONFTEST = r'''
import os
import torch
import pytest_proofpack.engine.evaluate as engine_evaluate

def fake_evaluate(model, baseline, preview, final, preset, cfg, *, context):
    with open(os.environ["PROOFPACK_TEST_LOG"], "a") as fh:
        fh.write(f"{context['scenario']} batch={cfg.batch_size}\n")
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

engine_evaluate.evaluate = fake_evaluate
'''


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("models"), 0)


def _args(pytester: pytest.Pytester, model_dir: Path, monkeypatch: pytest.MonkeyPatch, conftest: str) -> list[str]:
    pytester.makeconftest(conftest)
    monkeypatch.setenv("PROOFPACK_TEST_LOG", str(pytester.path / "calls.log"))
    return [a for a in write_suite(pytester.path, {"tiny-a": model_dir}) if a not in ("-p", "no:cacheprovider")]


def _record(pytester: pytest.Pytester, scenario: str) -> dict:  # type: ignore[type-arg]
    return json.loads((pytester.path / "run" / "records" / "tiny-a" / scenario / "run_1.json").read_text())


def test_killed_worker_is_an_error_records_survive_and_lf_completes(
    pytester: pytest.Pytester, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _args(pytester, model_dir, monkeypatch, CRASH_CONFTEST)
    monkeypatch.setenv("PROOFPACK_TEST_CRASH", "rank_collapse")
    result = pytester.runpytest_subprocess(*args, "-n", "2")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*crashed*rank_collapse*"])
    result.assert_outcomes(passed=19, errors=1)  # a dead worker's item is an error, as its record says
    result.stdout.fnmatch_lines(["ERROR *rank_collapse*"])
    rec = _record(pytester, "rank_collapse")
    assert (rec["outcome"], rec["error_class"]) == ("error", "crash")
    finished = list((pytester.path / "run" / "records" / "tiny-a").glob("*/run_1.json"))
    assert len(finished) == 20  # every other scenario's record is intact
    assert all(json.loads(p.read_text())["outcome"] == "passed" for p in finished if "rank_collapse" not in str(p))
    verdict = json.loads((pytester.path / "run" / "proof_pack" / "results" / "final_verdict.json").read_text())
    assert verdict["verdict"] == "FAIL"
    assert "rank_collapse[run1]" in json.dumps(verdict["missing"])
    monkeypatch.delenv("PROOFPACK_TEST_CRASH")
    (pytester.path / "calls.log").unlink()
    result = pytester.runpytest_subprocess(*args, "-n", "2", "--lf")
    result.assert_outcomes(passed=1)  # workers deselect under xdist; the controller reports no deselected count
    assert [line.split()[2] for line in (pytester.path / "calls.log").read_text().splitlines()] == ["rank_collapse"]
    assert result.ret == 0
    assert _record(pytester, "rank_collapse")["outcome"] == "passed"


def test_out_of_memory_is_retried_with_halved_batch_then_classified(
    pytester: pytest.Pytester, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = _args(pytester, model_dir, monkeypatch, OOM_CONFTEST)
    result = pytester.runpytest_subprocess(*args, "-k", "nan_injection", "--proofpack-presets", str(_preset(pytester)))
    result.assert_outcomes(errors=1, deselected=19)
    calls = (pytester.path / "calls.log").read_text().split()
    assert calls == ["nan_injection", "batch=4", "nan_injection", "batch=2", "nan_injection", "batch=1"]
    rec = _record(pytester, "nan_injection")
    assert rec["error_class"] == "oom" and "out of memory" in rec["error_message"]


def _preset(pytester: pytest.Pytester) -> Path:
    """A minimal valid preset directory, so the OOM test does not depend on calibration."""
    d = pytester.path / "presets"
    d.mkdir()
    (d / "calibrated_preset_tiny-a.json").write_text(json.dumps({"schema": "proofpack_preset_v1",
                                                                 "schema_version": 1, "source": "test"}))
    return d


def test_scenario_timeout_is_an_error(pytester: pytest.Pytester, model_dir: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    slow = ORACLE_CONFTEST + "\nimport time\n_o = _report\ndef _report(case, change):\n    time.sleep(30)\n"
    args = _args(pytester, model_dir, monkeypatch, slow)
    result = pytester.runpytest_subprocess(*args, "-k", "nan_injection", "--proofpack-timeout", "2",
                                           "--proofpack-presets", str(_preset(pytester)))
    result.assert_outcomes(errors=1, deselected=19)
    rec = _record(pytester, "nan_injection")
    assert rec["error_class"] == "timeout" and "--proofpack-timeout 2 s" in rec["error_message"]


def test_custom_edit_and_fault_from_conftest_with_env_by_model(
    pytester: pytest.Pytester, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conftest = ORACLE_CONFTEST + r'''
def _halve(args):
    return (("factor", float(args[0])),)

def _scale(matrix, params, *, seed):
    return matrix * params["factor"], {}

def _zero_head(model, ctx):
    raise NotImplementedError

def pytest_proofpack_register_edits(registry):
    registry.register("scale_all", _halve, _scale)
'''
    args = _args(pytester, model_dir, monkeypatch, conftest)
    scen = {"schema": "proof_pack_scenarios_v1", "schema_version": 1, "scenarios": [
        {"id": "scaled_clean", "category": "clean", "strictness": "must_pass", "intent": "clean_control",
         "primary_guard": "primary_metric", "generation": {"kind": "edit", "edit_spec": "scale_all:0.5:ffn"},
         "suites": ["subset"]},
        {"id": "ve_mlp_scale_skew", "category": "error_injection", "strictness": "must_detect",
         "intent": "fault_detection", "primary_guard": "variance",
         "generation": {"kind": "error", "error_type": "ve_mlp_scale_skew", "env": {"INVARLOCK_VE_SCALE_FACTOR": "0.9"},
                        "env_by_model": {"tiny-a": {"INVARLOCK_VE_SCALE_FACTOR": "0.25"}}},
         "requirements": {"detectors_any_of": [{"kind": "validation_flag", "flag": "primary_metric_acceptable",
                                                "expected": False}]},
         "suites": ["subset"]}]}
    (pytester.path / "scen.json").write_text(json.dumps(scen))
    result = pytester.runpytest_subprocess(*args, "--proofpack-scenarios", str(pytester.path / "scen.json"),
                                           "--proofpack-clean-runs", "1")
    result.assert_outcomes(passed=2)
    edit = json.loads((pytester.path / "run" / "reports" / "tiny-a" / "scaled_clean" / "run_1" /
                       "evaluation.report.json").read_text())["edit"]
    assert edit["kind"] == "scale_all" and edit["n_modules"] == 6  # 2 layers x gate/up/down
    fault = json.loads((pytester.path / "run" / "reports" / "tiny-a" / "ve_mlp_scale_skew" / "run_1" /
                        "evaluation.report.json").read_text())["edit"]
    assert float(fault["params"]["scale_factor"]) == 0.25


def test_a_failed_restore_reloads_the_model_for_the_next_scenario(
    pytester: pytest.Pytester, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore that raises leaves the weights edited: that scenario is an error and the next one, on the same
    worker, runs on a freshly loaded model instead of the damaged one."""
    conftest = ORACLE_CONFTEST + r'''
import torch
from pytest_proofpack.faults.types import FaultOutcome

def _broken_restore(model, ctx):
    w = model.model.layers[0].mlp.down_proj.weight
    ctx.change.save_tensor(w.data)
    with torch.no_grad():
        w.mul_(100.0)
    def fail():
        raise OSError("backup read failed (simulated)")
    ctx.change.on_restore(fail)  # undone first, so the weight's own restore never runs
    return FaultOutcome("scale", {}, ["model.layers.0.mlp.down_proj"], [0])

def pytest_proofpack_register_faults(registry):
    registry.register("broken_restore", _broken_restore)

_plain = _report

@pytest.hookimpl(tryfirst=True)
def pytest_proofpack_evaluate(case, runtime, change):
    w = runtime.model.model.layers[0].mlp.down_proj.weight
    with open(os.environ["PROOFPACK_TEST_LOG"], "a") as fh:
        fh.write(f"weight {case.scenario.id} {float(w.abs().sum())!r}\n")
    return _plain(case, change)
'''
    args = _args(pytester, model_dir, monkeypatch, conftest)
    scen = {"schema": "proof_pack_scenarios_v1", "schema_version": 1, "scenarios": [
        {"id": "broken_restore", "category": "error_injection", "strictness": "must_detect",
         "intent": "fault_detection", "primary_guard": "invariants",
         "generation": {"kind": "error", "error_type": "broken_restore"},
         "requirements": {"detectors_any_of": [{"kind": "validation_flag", "flag": "invariants_pass",
                                                "expected": False}]},
         "suites": ["subset"]},
        {"id": "quant_clean", "category": "clean", "strictness": "must_pass", "intent": "clean_control",
         "primary_guard": "primary_metric", "generation": {"kind": "edit", "edit_spec": "quant_rtn:8:32:attn"},
         "suites": ["subset"]}]}
    (pytester.path / "scen.json").write_text(json.dumps(scen))
    result = pytester.runpytest_subprocess(*args, "--proofpack-scenarios", str(pytester.path / "scen.json"),
                                           "--proofpack-presets", str(_preset(pytester)))
    result.assert_outcomes(passed=1, errors=1)
    assert "backup read failed (simulated)" in _record(pytester, "broken_restore")["error_message"]
    seen = [line.split() for line in (pytester.path / "calls.log").read_text().splitlines()
            if line.startswith("weight ")]
    assert [s[1] for s in seen] == ["broken_restore", "quant_clean"]
    broken, clean = float(seen[0][2]), float(seen[1][2])
    assert clean == pytest.approx(broken / 100.0, rel=1e-5)  # the clean scenario saw the reloaded, original weight
