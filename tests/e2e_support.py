"""Support for end-to-end plugin tests: a tiny local model, a local corpus, suite files and a test engine.

The test engine (:data:`ORACLE_CONFTEST`) is a ``pytest_proofpack_evaluate`` implementation that returns
schema-complete report dictionaries describing an ideal detector, except for the scenario ids listed in
``PROOFPACK_TEST_MISS`` (comma-separated), which it gets wrong, in ``PROOFPACK_TEST_GUARD_RAISES``, whose guard
raises, and in ``PROOFPACK_TEST_GUARD_ERROR_STATUS``, whose report gives the invariants guard's error status. It
lets the plugin's mechanics (collection, xdist, ``-k``, ``--lf``, JUnit, verdict, pack) be tested exactly,
independently of the engine's numerics; the real engine is tested on real models elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from tinymodels import save_tiny, tiny_llama, tiny_tokenizer  # noqa: E402

N_SCENARIOS = 20  # the "subset" scenario suite of suites_yaml: 4 clean + 4 stress + 12 faults

CORPUS = " ".join(
    f"line {i}: the quick brown fox jumps over the lazy dog; to be or not to be, that is the question."
    for i in range(400)
)

TUNED = {
    "_meta": {"schema": "tuned_edit_params_v1", "schema_version": 1},
    "defaults": {
        "quant_rtn": {"status": "selected", "bits": 8, "group_size": 32, "scope": "ffn"},
        "fp8_quant": {"status": "selected", "format": "e4m3", "scope": "ffn"},
        "magnitude_prune": {"status": "selected", "sparsity": 0.05, "scope": "ffn"},
        "lowrank_svd": {"status": "selected", "rank": 16, "scope": "ffn@layer=1"},
    },
}


def make_model_dir(root: Path, seed: int = 0) -> Path:
    out = root / f"tiny-llama-{seed}"
    if not (out / "config.json").is_file():
        save_tiny(tiny_llama(seed, layers=2, hidden=32), tiny_tokenizer(), out)
    return out


def suites_yaml(model_dirs: dict[str, Path], corpus: Path) -> str:
    models = "\n".join(
        f"  {key}:\n    hub_id: local/{key}\n    params_b: {0.001 * (i + 1)}\n    family: llama\n"
        f"    source: local\n    path: {path}\n"
        for i, (key, path) in enumerate(model_dirs.items())
    )
    keys = ", ".join(model_dirs)
    return (
        "schema: proofpack_suites_v1\nschema_version: 1\n"
        f"datasets:\n  text: {{provider: local_text, path: {corpus}}}\n"
        f"models:\n{models}"
        "suites:\n"
        f"  tiny:\n    models: [{keys}]\n    dataset: text\n    scenario_suite: subset\n"
        "    eval: {seq_len: 16, n_preview: 2, n_final: 6, batch_size: 4, bootstrap_replicates: 200}\n"
    )


def write_suite(dest: Path, model_dirs: dict[str, Path]) -> list[str]:
    """Write corpus, suites.yaml and tuned params into ``dest``; return the pytest arguments that use them (paths in
    the one-word form, ``--proofpack-out=DIR``, so a session run from another directory keeps its rootdir)."""
    corpus = dest / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    (dest / "suites.yaml").write_text(suites_yaml(model_dirs, corpus), encoding="utf-8")
    (dest / "tuned.json").write_text(json.dumps(TUNED), encoding="utf-8")
    return ["--proofpack-suite", "tiny", f"--proofpack-suites={dest / 'suites.yaml'}",
            f"--proofpack-tuned-params={dest / 'tuned.json'}", f"--proofpack-out={dest / 'run'}",
            f"--proofpack-cache={dest / 'cache'}", "--proofpack-calibration-runs", "1",
            "--proofpack-clean-runs", "1", "--proofpack-stress-runs", "1", "-p", "no:cacheprovider"]


ORACLE_CONFTEST = r'''
import os
import pytest

def _ids(name):
    return set(filter(None, os.environ.get(name, "").split(",")))

def _report(case, change):
    sc = case.scenario
    if sc.id in _ids("PROOFPACK_TEST_GUARD_RAISES"):
        from pytest_proofpack.errors import GuardError
        raise GuardError.wrapping("spectral", RuntimeError("oracle guard exploded"))
    miss = _ids("PROOFPACK_TEST_MISS")
    ok = sc.id not in miss
    v = {"primary_metric_acceptable": True, "preview_final_drift_acceptable": True, "invariants_pass": True,
         "spectral_stable": True, "rmt_stable": True}
    pm = {"kind": "ppl_causal", "ratio_vs_baseline": 1.01, "ci": [1.0, 1.02], "degraded": False,
          "invalid": False, "gate_rule": "point", "limit": 1.10}
    inv = {"status": "pass", "failures": []}
    spectral = {"caps_applied": 0, "max_caps": 5}
    extra = {}
    if sc.strictness == "must_fail" and ok:
        v["primary_metric_acceptable"] = False
        pm.update(ratio_vs_baseline=3.0, ci=[2.8, 3.2])
    elif sc.strictness == "must_detect" and ok:
        if sc.primary_guard == "invariants":
            v["invariants_pass"] = False
            inv = {"status": "fail", "failures": [{"check": "test", "severity": "fatal", "detail": sc.id}]}
        elif sc.primary_guard == "spectral":
            v["spectral_stable"] = False
            spectral["caps_applied"] = 9
        else:
            v["primary_metric_acceptable"] = False
            pm.update(ratio_vs_baseline=50.0, ci=[40.0, 60.0])
    elif sc.strictness == "informational" and ok:
        spectral["caps_applied"] = 3
        extra = {"rmt_probe": {"stable": False}, "ve_probe": {"signal": True, "proposed_scales": 1}}
    elif sc.strictness == "must_pass" and not ok:
        v["primary_metric_acceptable"] = False
        pm.update(ratio_vs_baseline=1.5, ci=[1.4, 1.6])
    report = {"schema": "proofpack_report_v1", "validation": v, "primary_metric": pm, "invariants": inv,
              "spectral": spectral, "rmt": {"stable": v["rmt_stable"]}, "variance": {}, "edit": change}
    report.update(extra)
    if sc.id in _ids("PROOFPACK_TEST_GUARD_ERROR_STATUS"):
        report["invariants"] = {"status": "error", "failures": []}
    with open(os.environ["PROOFPACK_TEST_LOG"], "a") as fh:
        fh.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'master')} {case.model.key} {sc.id} {case.run}\n")
    return report

@pytest.hookimpl(tryfirst=True)
def pytest_proofpack_evaluate(case, runtime, change):
    assert change is not None and change.get("n_modules", change.get("modified_count", 1)) is not None
    return _report(case, change)
'''


def run_session(dest: Path, args: list[str], *, env: dict[str, str] | None = None,
                timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run ``pytest ARGS`` in a fresh interpreter in ``dest`` with the oracle engine as its conftest (for fixtures
    wider than pytester's function scope, e.g. a pack built once per module). ``dest`` gets a pytest.ini, so it is
    the rootdir; ``PROOFPACK_TEST_LOG`` defaults to ``dest/calls.log``."""
    (dest / "conftest.py").write_text(ORACLE_CONFTEST, encoding="utf-8")
    (dest / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    full_env = {**os.environ, "PROOFPACK_TEST_LOG": str(dest / "calls.log"), **(env or {})}
    full_env.pop("PROOFPACK_TEST_MISS", None) if "PROOFPACK_TEST_MISS" not in (env or {}) else None
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=dest, env=full_env, capture_output=True,
                          text=True, timeout=timeout, check=False)
