"""The embedded default, end to end: the smoke suite on the real SmolLM2-135M and Shakespeare, on the CPU, with
two xdist workers, as `ci/demo.sh` runs it (one run per edit scenario to fit CI's time).

It asserts what the proof pack must show on a real model: every report comes from real forward passes, the
catastrophic edits fail the primary metric with their detectors hit, every must_detect fault is detected, every
planned case is covered, and the pack verifies in strict mode. The complete verdict (including the clean-edit
and probe requirements) is recorded in the pack and printed; it is asserted by the requirement list below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MUST_HOLD = ("evidence_present", "scenario_coverage", "stress_required_fail", "stress_expected_detectors",
             "error_injection_detected")


def _assets_present() -> bool:
    from pytest_proofpack.assets import cache_root, require_asset
    from pytest_proofpack.catalog import load_catalog
    from pytest_proofpack.errors import MissingAssetError

    catalog = load_catalog()
    try:
        for asset in catalog.assets.values():
            require_asset(asset, cache_root(), "smoke")
    except MissingAssetError:
        return False
    return True


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    if not _assets_present():
        pytest.skip("smoke assets not fetched: run `proofpack fetch --suite smoke` (ci/test.sh does)")
    out = tmp_path_factory.mktemp("smoke") / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--proofpack-suite", "smoke", "-n", "2", "-p", "no:cacheprovider",
         "--proofpack-out", str(out), "--proofpack-clean-runs", "1", "--proofpack-stress-runs", "1",
         "--junitxml", str(out.parent / "junit.xml"), "-q", "-W", "ignore"],
        cwd=out.parent, env=env, capture_output=True, text=True, timeout=3600, check=False,
    )
    sys.stdout.write(proc.stdout[-6000:])
    return out, proc


def _reports(run: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    return {p.parent.parent.name: json.loads(p.read_text())
            for p in run.glob("reports/smollm2-135m/*/run_1/evaluation.report.json")}


def test_smoke_reports_come_from_real_forward_passes(smoke_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run, proc = smoke_run
    reports = _reports(run)
    assert len(reports) == 23, proc.stdout[-3000:]
    for sid, rep in reports.items():
        pm = rep["primary_metric"]
        assert pm["n_tokens"] == 16 * 255, sid
        assert rep["provenance"]["windows"]["seq_len"] == 256
    prune = reports["prune_50pct_stress"]["primary_metric"]
    assert prune["ratio_vs_baseline"] > 2 and prune["ci"][0] > 1
    assert reports["prune_50pct_stress"]["validation"]["primary_metric_acceptable"] is False
    revisions = json.loads((run / "metadata" / "model_revisions.json").read_text())["models"]["smollm2-135m"]
    assert revisions["resolved_revision"].startswith("gguf-sha256:")


def test_smoke_verdict_and_detection_matrix(smoke_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run, proc = smoke_run
    verdict = json.loads((run / "results" / "final_verdict.json").read_text())
    failed = {r["requirement"] for r in verdict["failed_requirements"]}
    assert not failed & set(MUST_HOLD), verdict["failed_requirements"]
    assert proc.returncode == (0 if verdict["verdict"] == "PASS" else 1), proc.stdout[-3000:]
    matrix = json.loads((run / "results" / "detection_matrix.json").read_text())
    assert "smollm2-135m" in json.dumps(matrix)
    far = verdict["false_alarm_rate"]
    assert far["evaluations"] == 7 and 0 <= far["alarms"] <= 7
    assert "verdict:" in proc.stdout


def test_smoke_pack_verifies_strict(smoke_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run, _ = smoke_run
    proc = subprocess.run([sys.executable, "-m", "pytest_proofpack.cli", "verify", str(run / "proof_pack"), "--strict"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
