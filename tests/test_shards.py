"""Shards as a user runs them: two real pytest sessions of one command line (``--proofpack-shard 1/2`` and
``2/2``, oracle engine, two tiny models), then ``proofpack merge`` and ``proofpack verify``.

Each shard's own verdict is PARTIAL (its job passes; the merge decides), both shards share one config digest and
one plan, the merge's verdict is the unsharded run's, and merge refuses a shard alone (unless
``--allow-partial``), a shard whose evidence changed after the run and a shard whose plan was cut.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from e2e_support import N_SCENARIOS, run_session, write_suite

from pytest_proofpack.cli import main


@pytest.fixture(scope="module")
def built_shards(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The run directories of shards 1/2 and 2/2 of one command line, run once for the module."""
    root = tmp_path_factory.mktemp("shards")
    args = write_suite(root, model_dirs)
    dirs = []
    for k in (1, 2):
        out = root / f"shard_{k}"
        proc = run_session(root, [*args, "--proofpack-shard", f"{k}/2", "--proofpack-out", str(out)])
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"{N_SCENARIOS} passed" in proc.stdout and "verdict: PARTIAL" in proc.stdout
        assert "proofpack merge" in proc.stdout
        dirs.append(out)
    return dirs


@pytest.fixture
def shards(built_shards: list[Path], tmp_path: Path) -> list[Path]:
    """A private copy of the module's shard run directories."""
    copies = [tmp_path / d.name for d in built_shards]
    for src, dst in zip(built_shards, copies, strict=True):
        shutil.copytree(src, dst)
    return copies


def _run(run_dir: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((run_dir / "run.json").read_text())


def test_two_real_shards_merge_into_one_passing_pack(
    shards: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two = (_run(d) for d in shards)
    assert one["config_digest"] == two["config_digest"]
    assert one["plan"] == two["plan"] and one["plan"]["models"] == ["tiny-a", "tiny-b"]
    assert (one["shard"]["models"], two["shard"]["models"]) == (["tiny-a"], ["tiny-b"])
    assert one["plan"]["cases"] == 2 * N_SCENARIOS and len(one["planned"]) == N_SCENARIOS
    shard_verdict = json.loads((shards[0] / "results" / "final_verdict.json").read_text())
    assert shard_verdict["verdict"] == "PARTIAL" and shard_verdict["partial"]["missing_shards"] == [2]
    assert main(["verify", str(shards[0] / "proof_pack"), "--strict"]) == 0  # a shard's own pack is genuine

    assert main(["merge", str(shards[0]), "--out", str(tmp_path / "alone")]) == 2
    assert "shard(s) 2/2 missing (models tiny-b)" in capsys.readouterr().err
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "merged")]) == 0
    assert main(["verify", str(tmp_path / "merged" / "proof_pack"), "--strict"]) == 0
    verdict = json.loads((tmp_path / "merged" / "proof_pack" / "results" / "final_verdict.json").read_text())
    assert verdict["verdict"] == "PASS", verdict["failed_requirements"]
    assert verdict["counts"]["models_total"] == 2 and "partial" not in verdict
    assert sorted(map(tuple, _run(tmp_path / "merged")["planned"])) == sorted(
        map(tuple, one["planned"] + two["planned"]))

    partial = tmp_path / "partial"
    assert main(["merge", str(shards[1]), "--out", str(partial), "--allow-partial"]) == 0
    assert json.loads((partial / "proof_pack" / "results" / "final_verdict.json").read_text())["verdict"] == "PARTIAL"


def test_merge_refuses_tampered_shards(shards: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flipped = tmp_path / "flipped"
    shutil.copytree(shards[1], flipped)
    report = next((flipped / "reports" / "tiny-b").glob("*stress*/run_1/evaluation.report.json"))
    data = json.loads(report.read_text())
    data["validation"] = {k: True for k in data["validation"]}  # a failing stress run made to look passing
    report.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["merge", str(shards[0]), str(flipped), "--out", str(tmp_path / "m1")]) == 2
    assert "was changed after the run" in capsys.readouterr().err

    cut = tmp_path / "cut"
    shutil.copytree(shards[1], cut)
    run = _run(cut)
    run["planned"] = run["planned"][:1]
    (cut / "run.json").write_text(json.dumps(run))
    assert main(["merge", str(shards[0]), str(cut), "--out", str(tmp_path / "m2")]) == 2
    assert "planned holds 1 cases, the plan gives 20" in capsys.readouterr().err

    dropped = tmp_path / "dropped"
    shutil.copytree(shards[1], dropped)
    catalog = json.loads((dropped / "metadata" / "scenarios.json").read_text())
    catalog["scenarios"] = [s for s in catalog["scenarios"] if s["id"] != "scale_explosion"]
    (dropped / "metadata" / "scenarios.json").write_text(json.dumps(catalog))
    assert main(["merge", str(shards[0]), str(dropped), "--out", str(tmp_path / "m3")]) == 2
    assert "a scenario, suite or tuned value was changed" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("m1", "m2", "m3"))


def test_a_second_session_on_a_locked_run_dir_fails_at_once(
    pytester: pytest.Pytester, model_dirs: dict[str, Path]
) -> None:
    from pytest_proofpack.run_lock import lock_run_dir

    args = write_suite(pytester.path, model_dirs)
    lock = lock_run_dir(pytester.path / "run")
    try:
        result = pytester.runpytest_subprocess(*args)
    finally:
        lock.release()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    result.stderr.fnmatch_lines([f"ERROR: --proofpack-out {pytester.path / 'run'}: the run directory is in use by "
                                 "pid *; wait for it to finish or choose another directory"])
    assert not (pytester.path / "run" / "run.json").exists()


def test_merge_carries_every_shards_sensitivity_curves(shards: list[Path], tmp_path: Path) -> None:
    from test_sensitivity import _document

    docs = [_document(random.randrange(1 << 30)) for _ in shards]
    for run_dir, doc, model in zip(shards, docs, ("tiny-a", "tiny-b"), strict=True):
        doc["models"] = {model: doc["models"].pop("m<1>")}
        (run_dir / "sensitivity.json").write_text(json.dumps(doc), encoding="utf-8")
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "merged")]) == 0
    pack = tmp_path / "merged" / "proof_pack"
    carried = json.loads((pack / "results" / "sensitivity.json").read_text())
    assert carried["models"] == {**docs[0]["models"], **docs[1]["models"]}
    assert main(["verify", str(pack), "--strict"]) == 0
    assert (pack / "index.html").read_text().count("<section class='sensitivity'>") == 1
    (shards[1] / "sensitivity.json").write_text(json.dumps({**docs[1], "schema_version": 9}), encoding="utf-8")
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "refused")]) == 2

