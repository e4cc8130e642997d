"""The plugin as a user runs it: pytester sessions with -n 2, -k, -m, --lf, --junitxml, verdict and exit codes.

These use a tiny real LLaMA saved as a local model directory and a local text corpus; the evaluation comes from
the oracle engine of :mod:`e2e_support` so every outcome is known in advance.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from e2e_support import N_SCENARIOS, ORACLE_CONFTEST, write_suite


@pytest.fixture
def suite_args(pytester: pytest.Pytester, model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    pytester.makeconftest(ORACLE_CONFTEST)
    monkeypatch.setenv("PROOFPACK_TEST_LOG", str(pytester.path / "calls.log"))
    for name in ("PROOFPACK_TEST_MISS", "PROOFPACK_TEST_GUARD_RAISES", "PROOFPACK_TEST_GUARD_ERROR_STATUS"):
        monkeypatch.delenv(name, raising=False)
    return write_suite(pytester.path, model_dirs)


def _calls(pytester: pytest.Pytester) -> list[list[str]]:
    path = pytester.path / "calls.log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def _verdict(pytester: pytest.Pytester) -> dict:  # type: ignore[type-arg]
    return json.loads((pytester.path / "run" / "results" / "final_verdict.json").read_text())


def test_full_run_passes_writes_verdict_pack_and_junit(pytester: pytest.Pytester, suite_args: list[str]) -> None:
    from junitparser.xunit2 import JUnitXml

    result = pytester.runpytest_subprocess(*suite_args, "-n", "2", "--junitxml", "junit.xml")
    result.assert_outcomes(passed=2 * N_SCENARIOS)
    assert result.ret == 0
    verdict = _verdict(pytester)
    assert verdict["verdict"] == "PASS", verdict["failed_requirements"]
    workers = {c[0] for c in _calls(pytester)}
    assert workers == {"gw0", "gw1"}
    assert (pytester.path / "run" / "proof_pack" / "manifest.json").is_file()
    result.stdout.fnmatch_lines(["*verdict: PASS*"])
    # what was run: each model's baseline and the tuned clean setting, in the terminal and in the JSON alike
    result.stdout.fnmatch_lines(["legend:", "  P * pass: *", "baselines:", "  tiny-a: local:*; evaluated in float32",
                                 "edits as run:", "  svd_rank32_l31_clean: all models: lowrank_svd:16:ffn@layer=1"])
    matrix = json.loads((pytester.path / "run" / "results" / "detection_matrix.json").read_text())
    assert {m: b["source"] for m, b in matrix["baselines"].items()} == {"tiny-a": "local", "tiny-b": "local"}
    assert matrix["cells"]["tiny-b"]["svd_rank32_l31_clean"]["edit_specs"] == ["lowrank_svd:16:ffn@layer=1"]
    xml = JUnitXml.fromfile(str(pytester.path / "junit.xml"))
    suite = next(iter(xml))
    suite_props = {p.name: p.value for p in suite.properties()}
    assert suite_props["proofpack_verdict"] == "PASS"
    assert suite_props["proofpack_suite"] == "tiny"
    cases = list(suite)
    assert len(cases) == 2 * N_SCENARIOS
    props = {q.name: q.value for q in cases[0].properties()}
    assert props["proofpack_model"] in ("tiny-a", "tiny-b")
    assert {"proofpack_ratio", "proofpack_ci_lo", "proofpack_strictness", "proofpack_detectors_hit"} <= set(props)


def test_missed_detection_fails_the_test_and_the_verdict_then_lf_resumes(
    pytester: pytest.Pytester, suite_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROOFPACK_TEST_MISS", "scale_explosion")
    args = [a for a in suite_args if a != "no:cacheprovider" and a != "-p"]
    result = pytester.runpytest_subprocess(*args, "-k", "tiny-a")
    result.assert_outcomes(passed=N_SCENARIOS - 1, failed=1, deselected=N_SCENARIOS)
    result.stdout.fnmatch_lines(["*scale_explosion*expected*"])
    assert result.ret == 1
    assert _verdict(pytester)["verdict"] == "FAIL"
    # The detector is fixed: --lf reruns only the failed scenario, the verdict covers every stored record.
    monkeypatch.delenv("PROOFPACK_TEST_MISS")
    (pytester.path / "calls.log").unlink()
    result = pytester.runpytest_subprocess(*args, "--lf", "-k", "tiny-a")
    result.assert_outcomes(passed=1, deselected=2 * N_SCENARIOS - 1)
    assert [c[2] for c in _calls(pytester)] == ["scale_explosion"]
    verdict = _verdict(pytester)
    # tiny-b never ran: coverage must fail the verdict even though every test passed, and none of its guards is
    # demonstrated.
    assert verdict["verdict"] == "FAIL"
    failed = {(r["requirement"], r.get("model")) for r in verdict["failed_requirements"]}
    assert {requirement for requirement, _ in failed} == {"scenario_coverage", "guard_primary_demonstrated"}
    assert {model for _, model in failed} == {"tiny-b"}
    assert result.ret == 1


def test_a_guard_error_is_an_internal_error_never_a_detection(
    pytester: pytest.Pytester, suite_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROOFPACK_TEST_GUARD_RAISES", "nan_injection")
    monkeypatch.setenv("PROOFPACK_TEST_GUARD_ERROR_STATUS", "inf_injection")
    result = pytester.runpytest_subprocess(*suite_args, "-k", "tiny-a and (nan_injection or inf_injection or shape_m)")
    result.assert_outcomes(passed=1, errors=2, deselected=2 * N_SCENARIOS - 3)
    records = pytester.path / "run" / "records" / "tiny-a"
    messages = {
        "nan_injection": "guard spectral raised RuntimeError: oracle guard exploded",
        "inf_injection": "guard invariants raised an error: the engine's report gives invariants.status 'error'",
    }
    for sid, message in messages.items():
        record = json.loads((records / sid / "run_1.json").read_text())
        assert (record["outcome"], record["error_class"], record["error_message"]) == ("error", "internal", message)
    verdict = _verdict(pytester)
    assert verdict["counts"]["error_injection_detected"] == 1  # shape_mismatch only
    missing = {c["scenario"]: c["reason"] for c in verdict["missing"]["cases"] if c["model"] == "tiny-a"}
    assert missing["nan_injection"] == f"error: internal: {messages['nan_injection']}"
    assert verdict["detection_matrix"]["cells"]["tiny-a"]["inf_injection"]["outcome"] == "missing"


def test_selection_by_marker_and_keyword(pytester: pytest.Pytester, suite_args: list[str]) -> None:
    result = pytester.runpytest_subprocess(*suite_args, "--collect-only", "-q", "-m", "must_detect")
    result.stdout.fnmatch_lines(["*18/40 tests collected (22 deselected)*"])
    result = pytester.runpytest_subprocess(*suite_args, "--collect-only", "-q", "-k", "tiny-b and quant and clean")
    result.stdout.fnmatch_lines(["proofpack::test_scenario[[]tiny-b:quant_4bit_clean:run1]", "*1/40 tests*"])
    assert not (pytester.path / "run").exists(), "--collect-only must not write the run directory"


def test_passed_records_are_reused_unless_rerun(pytester: pytest.Pytester, suite_args: list[str]) -> None:
    assert pytester.runpytest_subprocess(*suite_args, "-k", "tiny-a and clean").ret == 1  # coverage fails
    assert len(_calls(pytester)) == 4
    (pytester.path / "calls.log").unlink()
    pytester.runpytest_subprocess(*suite_args, "-k", "tiny-a and clean")
    assert _calls(pytester) == []
    record = json.loads((pytester.path / "run" / "records" / "tiny-a" / "quant_4bit_clean" / "run_1.json").read_text())
    assert record["reused"] is True and record["outcome"] == "passed"
    pytester.runpytest_subprocess(*suite_args, "-k", "tiny-a and clean", "--proofpack-rerun")
    assert len(_calls(pytester)) == 4


def test_config_change_makes_records_stale(pytester: pytest.Pytester, suite_args: list[str]) -> None:
    pytester.runpytest_subprocess(*suite_args, "-k", "tiny-a and clean")
    result = pytester.runpytest_subprocess(*suite_args, "-k", "tiny-a and clean", "--proofpack-tier", "conservative")
    result.stdout.fnmatch_lines(["*stale records ignored: tier 'balanced' -> 'conservative'*"])
    assert len(_calls(pytester)) == 8


def test_invalid_catalog_is_a_usage_error_and_writes_nothing(pytester: pytest.Pytester, suite_args: list[str]) -> None:
    bad = pytester.path / "bad.json"
    bad.write_text(json.dumps({"schema": "proof_pack_scenarios_v1", "schema_version": 1, "scenarios": [
        {"id": "x", "category": "clean", "strictness": "must_passs", "intent": "clean_control",
         "primary_guard": "primary_metric", "generation": {"kind": "edit", "edit_spec": "quant_rtn:4:32:ffn"}}]}))
    result = pytester.runpytest_subprocess(*suite_args, "--proofpack-scenarios", str(bad))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bad.json: $.scenarios[[]0[]] (x).strictness: 'must_passs' is not accepted "
                                 "(did you mean 'must_pass'?)*"])
    assert "Traceback" not in result.stderr.str()
    assert not (pytester.path / "run").exists()


#: pytest >= 9.1 warns (PytestRemovedIn10Warning) when a fixture of a wider scope than a function is a method bound
#: to an instance, as a plugin object's fixture is; this conftest makes older pytests warn the same way.
BOUND_FIXTURE_WARNING = r'''

import warnings


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    bound = getattr(fixturedef.func, "__self__", None)
    if fixturedef.scope != "function" and bound is not None and not isinstance(bound, type):
        warnings.warn(pytest.PytestRemovedIn10Warning(
            f"{fixturedef.scope.capitalize()}-scoped fixtures defined as instance methods are deprecated "
            f"({fixturedef.argname})"))
    return (yield)
'''


def test_a_default_run_shows_no_warnings(pytester: pytest.Pytester, suite_args: list[str]) -> None:
    pytester.makeconftest(ORACLE_CONFTEST + BOUND_FIXTURE_WARNING)
    result = pytester.runpytest_subprocess(*suite_args, "-n", "2", "-k", "quant_4bit_clean or nan_injection",
                                           "-W", "default")
    result.assert_outcomes(passed=4)
    assert "warnings" not in result.parseoutcomes()
    out = result.stdout.str() + result.stderr.str()
    assert "warnings summary" not in out and re.search(r"\w+Warning\b", out) is None, out
