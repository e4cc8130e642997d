"""Bring your own checkpoint: a ``checkpoint`` scenario and ``proofpack certify``, run as a user runs them.

The subject is a tiny LLaMA edited by the plugin itself and saved with ``--proofpack-save-models``: certified as a
checkpoint against the same baseline, it must give the ratio the in-memory edit gave. The real engine runs (no
oracle conftest); the model is the tiny local LLaMA of the end-to-end tests.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from e2e_support import write_suite

EDIT = {"id": "quant_8bit", "category": "clean", "failure_class": "quantization", "strictness": "informational",
        "intent": "clean_control", "primary_guard": "primary_metric",
        "generation": {"kind": "edit", "edit_spec": "quant_rtn:8:32:ffn", "version": "clean"}}


def _scenarios(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"schema": "proof_pack_scenarios_v1", "schema_version": 1, "scenarios": list(entries)}


def _checkpoint(sid: str, subject: dict[str, Any], strictness: str = "must_pass") -> dict[str, Any]:
    out: dict[str, Any] = {"id": sid, "category": "clean" if strictness == "must_pass" else "stress",
                           "failure_class": "checkpoint", "strictness": strictness,
                           "intent": "clean_control" if strictness == "must_pass" else "catastrophic_failure",
                           "primary_guard": "primary_metric",
                           "generation": {"kind": "checkpoint", "subject": subject, "version": "rc1"}}
    if strictness == "must_fail":
        out["requirements"] = {"detectors_any_of": [
            {"kind": "validation_flag", "flag": "invariants_pass", "expected": False}]}
    return out


def _report(run: Path, model: str, scenario: str) -> dict[str, Any]:
    path = run / "reports" / model / scenario / "run_1" / "evaluation.report.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


@pytest.fixture
def suite_args(pytester: pytest.Pytester, model_dirs: dict[str, Path]) -> list[str]:
    args = write_suite(pytester.path, {"tiny-a": model_dirs["tiny-a"]})
    return [*args, "--proofpack-presets", str(_presets(pytester, args))]


def _presets(pytester: pytest.Pytester, args: list[str]) -> Path:
    """A calibrated preset for tiny-a, made once by a calibrate-only run (both sessions then share it)."""
    scenarios = pytester.path / "edit_scenarios.json"
    scenarios.write_text(json.dumps(_scenarios(EDIT)))
    result = pytester.runpytest_subprocess(*args, "--proofpack-scenarios", str(scenarios),
                                           "--proofpack-out", str(pytester.path / "calib"),
                                           "--proofpack-calibrate-only")
    assert result.ret in (0, 1, 5), result.stdout.str()
    presets = pytester.path / "calib" / "metadata" / "presets"
    assert any(presets.glob("calibrated_preset_*.json")), result.stdout.str()
    return presets


def test_a_saved_edit_certified_as_a_checkpoint_gives_the_in_memory_ratio(
    pytester: pytest.Pytester, suite_args: list[str]
) -> None:
    scenarios = pytester.path / "edit_scenarios.json"
    edited = pytester.runpytest_subprocess(*suite_args, "--proofpack-scenarios", str(scenarios),
                                           "--proofpack-out", str(pytester.path / "edit"), "--proofpack-save-models")
    assert edited.ret == 0, edited.stdout.str()
    saved = pytester.path / "edit" / "models" / "tiny-a" / "quant_8bit"
    assert (saved / "config.json").is_file()
    in_memory = _report(pytester.path / "edit", "tiny-a", "quant_8bit")["primary_metric"]["ratio_vs_baseline"]

    result = pytester.run(sys.executable, "-m", "pytest_proofpack.cli", "certify", "--model", "tiny-a",
                          "--subject", str(saved), "--suites", str(pytester.path / "suites.yaml"),
                          "--tuned-params", str(pytester.path / "tuned.json"), "--out", str(pytester.path / "cert"),
                          "--cache", str(pytester.path / "cache"), "--",
                          "--proofpack-presets", suite_args[-1], "--proofpack-calibration-runs", "1")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == 0, out
    report = _report(pytester.path / "cert", "tiny-a", "certify")
    assert report["primary_metric"]["ratio_vs_baseline"] == pytest.approx(in_memory, abs=1e-6)
    assert report["primary_metric"]["ratio_vs_baseline"] != 1.0  # the edit did change the model
    subject = report["subject_provenance"]
    assert subject["source"] == "local" and subject["digest"].startswith("sha256:")
    assert set(subject["files"]) == {"config.json", "model.safetensors"}
    assert report["invariants"]["status"] == "pass" and report["edit"]["tensors_swapped"] > 0

    pack = pytester.path / "cert" / "proof_pack"
    manifest = json.loads((pack / "manifest.json").read_text())
    [claim] = manifest["checkpoints"]  # the pack names paths relative to the run directory or ~
    assert claim["source"].endswith("/models/tiny-a/quant_8bit") and claim["source"].startswith("local:")
    assert {k: claim[k] for k in ("model", "scenario", "run", "digest")} == {
        "model": "tiny-a", "scenario": "certify", "run": 1, "digest": subject["digest"]}
    envelope = json.loads((pack / "manifest.signature.json").read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["predicate"]["checkpoints"] == manifest["checkpoints"]
    verified = pytester.run(sys.executable, "-m", "pytest_proofpack.cli", "verify", str(pack), "--strict")
    assert verified.ret == 0, verified.stdout.str() + verified.stderr.str()


def test_a_checkpoint_missing_a_tensor_is_an_invariants_failure_and_the_baseline_comes_back(
    pytester: pytest.Pytester, suite_args: list[str], model_dirs: dict[str, Path]
) -> None:
    from safetensors.torch import load_file, save_file

    broken = pytester.path / "broken"
    shutil.copytree(model_dirs["tiny-a"], broken)
    tensors = load_file(str(broken / "model.safetensors"))
    dropped = "model.layers.1.mlp.down_proj.weight"
    del tensors[dropped]
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    same = _checkpoint("unchanged", {"source": "local", "path": str(model_dirs["tiny-a"])})
    scenarios = pytester.path / "ckpt.json"
    scenarios.write_text(json.dumps(_scenarios(
        _checkpoint("broken", {"source": "local", "path": "broken"}, "must_fail"), same)))

    result = pytester.runpytest_subprocess(*suite_args, "--proofpack-scenarios", str(scenarios))
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=2)
    bad = _report(pytester.path / "run", "tiny-a", "broken")
    assert bad["invariants"]["status"] == "fail"
    assert any(f["check"] == "missing_tensors" and dropped in f["detail"] for f in bad["invariants"]["failures"])
    assert bad["edit"]["missing_tensors"] == [dropped]
    # the scenario after it sees the baseline restored exactly: the unchanged checkpoint is a no-op
    good = _report(pytester.path / "run", "tiny-a", "unchanged")
    assert good["primary_metric"]["ratio_vs_baseline"] == pytest.approx(1.0, abs=1e-12)
    assert good["invariants"]["status"] == "pass"
