"""The embedded default, end to end: the smoke suite on the real SmolLM2-135M and Shakespeare, on the CPU, with
two xdist workers, as `ci/demo.sh` runs it (one run per edit scenario to fit CI's time).

It asserts what the proof pack must show on a real model: every report comes from real forward passes; the verdict
is PASS (every clean and benign edit passes, the catastrophic edits fail the primary metric with their detectors
hit, every must_detect fault is detected, the three probes signal through their primary guard); the detection matrix
says which guard fired where; no benign evaluation raised a false alarm; and the pack verifies in strict mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MUST_DETECT = ("nan_injection", "inf_injection", "shape_mismatch", "missing_tensors", "extreme_quant",
               "scale_explosion", "rank_collapse", "norm_collapse", "weight_tying_break")
BENIGN = ("quant_4bit_clean", "fp8_e5m2_clean", "prune_12pct_clean", "svd_rank32_l31_clean",
          "quant_8bit_benign", "prune_2pct_benign", "svd_rank256_benign")


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
    assert verdict["verdict"] == "PASS", json.dumps(verdict["failed_requirements"], indent=1)[:4000]
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "verdict:" in proc.stdout
    cells = json.loads((run / "results" / "detection_matrix.json").read_text())["cells"]["smollm2-135m"]
    for sid in MUST_DETECT:
        assert cells[sid]["guards"], (sid, cells[sid])
    for sid in ("prune_50pct_stress", "svd_rank32_stress"):
        assert "primary_metric" in cells[sid]["guards"], (sid, cells[sid])
    # each probe is signalled by its own guard (the verdict's PASS already says nothing else failed)
    assert "rmt" in cells["rmt_norm_noise"]["guards"], cells["rmt_norm_noise"]
    assert cells["spectral_moderate_scale"]["caps"] >= 3, cells["spectral_moderate_scale"]
    assert "variance" in cells["ve_mlp_scale_skew"]["guards"], cells["ve_mlp_scale_skew"]
    assert "primary_metric" not in cells["ve_mlp_scale_skew"]["guards"], cells["ve_mlp_scale_skew"]
    for sid in BENIGN:
        assert cells[sid]["guards"] == [] and cells[sid]["outcome"] == "pass", (sid, cells[sid])


def test_smoke_benign_false_alarm_rate(smoke_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """Every benign evaluation here uses a window sample the calibration never saw (run 1's seed, 42)."""
    run, _ = smoke_run
    far = json.loads((run / "results" / "false_alarm_rate.json").read_text())
    assert far["evaluations"] == len(BENIGN)
    assert far["alarms"] == 0, far["alarmed_cases"]
    # two-sided 95 % Clopper-Pearson bound for 0 alarms in n: 1 - 0.025 ** (1 / n) (0.4096 for n = 7)
    assert far["upper_95_clopper_pearson"] == pytest.approx(1 - 0.025 ** (1 / len(BENIGN)), abs=1e-5)
    preset = json.loads((run / "metadata" / "presets" / "calibrated_preset_smollm2-135m.json").read_text())
    calibration_seeds = {w["seed"] for w in preset["calibration"]["windows"]}
    assert 42 not in calibration_seeds


def test_smoke_pack_verifies_strict(smoke_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run, _ = smoke_run
    proc = subprocess.run([sys.executable, "-m", "pytest_proofpack.cli", "verify", str(run / "proof_pack"), "--strict"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
