"""Bring your own checkpoint: a ``checkpoint`` scenario and ``proofpack certify``, run as a user runs them.

The subject is a tiny LLaMA edited by the plugin itself and saved with ``--proofpack-save-models``: certified as a
checkpoint against the same baseline, it must give the ratio the in-memory edit gave. The real engine runs (no
oracle conftest); the model is the tiny local LLaMA of the end-to-end tests.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
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


def _arg(args: list[str], option: str) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith(option + "="))


def _report(run: Path, model: str, scenario: str) -> dict[str, Any]:
    path = run / "reports" / model / scenario / "run_1" / "evaluation.report.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def suite_args(tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]) -> list[str]:
    """The tiny suite's arguments with a calibrated preset for tiny-a, made once by a calibrate-only run (every
    session of this module then shares it, and the baseline cache)."""
    root = tmp_path_factory.mktemp("certify")
    args = write_suite(root, {"tiny-a": model_dirs["tiny-a"]})
    (root / "edit_scenarios.json").write_text(json.dumps(_scenarios(EDIT)))
    done = subprocess.run([sys.executable, "-m", "pytest", *args, f"--proofpack-scenarios={root}/edit_scenarios.json",
                           f"--proofpack-out={root}/calib", "--proofpack-calibrate-only"],
                          cwd=root, capture_output=True, text=True, check=False, timeout=900)
    presets = root / "calib" / "metadata" / "presets"
    assert any(presets.glob("calibrated_preset_*.json")), done.stdout[-3000:] + done.stderr[-3000:]
    return [*args, f"--proofpack-scenarios={root}/edit_scenarios.json", f"--proofpack-presets={presets}"]


def test_a_saved_edit_certified_as_a_checkpoint_gives_the_in_memory_ratio(
    pytester: pytest.Pytester, suite_args: list[str]
) -> None:
    edited = pytester.runpytest_subprocess(*suite_args, f"--proofpack-out={pytester.path / 'edit'}",
                                           "--proofpack-save-models")
    assert edited.ret == 0, edited.stdout.str()
    saved = pytester.path / "edit" / "models" / "tiny-a" / "quant_8bit"
    assert (saved / "config.json").is_file()
    in_memory = _report(pytester.path / "edit", "tiny-a", "quant_8bit")["primary_metric"]["ratio_vs_baseline"]

    result = pytester.run(sys.executable, "-m", "pytest_proofpack.cli", "certify", "--model", "tiny-a",
                          "--subject", str(saved), "--suites", _arg(suite_args, "--proofpack-suites"),
                          "--tuned-params", _arg(suite_args, "--proofpack-tuned-params"),
                          "--out", str(pytester.path / "cert"), "--cache", _arg(suite_args, "--proofpack-cache"), "--",
                          suite_args[-1], "--proofpack-calibration-runs", "1")
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
    _forgeries_fail(pack, pytester.path, claim)


def _forgeries_fail(pack: Path, tmp: Path, claim: dict[str, Any]) -> None:
    """Re-signed packs that claim another checkpoint digest, in the manifest and the statement alike, or that drop
    the statement's claim, fail verify's provenance check (exit 8)."""
    from test_tamper import _edit_manifest, _write_key

    from pytest_proofpack.pack import verify_pack

    forged_claim = [{**claim, "digest": "sha256:" + "0" * 64}]

    def other_digest(manifest: dict[str, Any]) -> None:
        manifest["checkpoints"] = forged_claim

    for name, edit, predicate in (("other-digest", other_digest, {"checkpoints": forged_claim}),
                                  ("claim-dropped", lambda m: None, {"checkpoints": []})):
        forged = tmp / f"forged-{name}"
        shutil.copytree(pack, forged)
        _edit_manifest(forged, _write_key(tmp / f"{name}.pem"), edit, **predicate)
        result = verify_pack(forged)
        assert result.exit_code == 8, result.human()
        assert any("checkpoints are not the subjects the pack's reports judged" in line for line in result.human())


def test_a_checkpoint_missing_a_tensor_is_an_invariants_failure_and_the_baseline_comes_back(
    pytester: pytest.Pytester, suite_args: list[str], model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file, save_file

    broken = pytester.path / "broken"
    shutil.copytree(model_dirs["tiny-a"], broken)
    tensors = load_file(str(broken / "model.safetensors"))
    dropped = "model.layers.1.mlp.down_proj.weight"
    del tensors[dropped]
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    same = _checkpoint("unchanged", {"source": "local", "path": str(model_dirs["tiny-a"])})
    # the same weights as a hub snapshot at a pinned revision, in an offline Hugging Face cache
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model_dirs["tiny-a"], pytester.path / "hf" / "models--me--tiny" / "snapshots" / revision)
    hub = _checkpoint("from_hub", {"source": "hub", "hub_id": "me/tiny", "revision": revision})
    scenarios = pytester.path / "ckpt.json"
    scenarios.write_text(json.dumps(_scenarios(
        _checkpoint("broken", {"source": "local", "path": "broken"}, "must_fail"), same, hub)))

    monkeypatch.setenv("HF_HUB_CACHE", str(pytester.path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = pytester.runpytest_subprocess(*suite_args, f"--proofpack-scenarios={scenarios}",
                                           f"--proofpack-out={pytester.path / 'run'}")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=3)
    bad = _report(pytester.path / "run", "tiny-a", "broken")
    assert bad["invariants"]["status"] == "fail"
    assert any(f["check"] == "missing_tensors" and dropped in f["detail"] for f in bad["invariants"]["failures"])
    assert bad["edit"]["missing_tensors"] == [dropped]
    # the scenario after it sees the baseline restored exactly: the unchanged checkpoint is a no-op
    good = _report(pytester.path / "run", "tiny-a", "unchanged")
    assert good["primary_metric"]["ratio_vs_baseline"] == pytest.approx(1.0, abs=1e-12)
    assert good["invariants"]["status"] == "pass"
    from_hub = _report(pytester.path / "run", "tiny-a", "from_hub")
    assert from_hub["subject_provenance"]["digest"] == f"hub:me/tiny@{revision}"
    assert from_hub["subject_provenance"]["files"] == good["subject_provenance"]["files"]
    assert from_hub["primary_metric"]["ratio_vs_baseline"] == pytest.approx(1.0, abs=1e-12)
