"""The ``proofpack`` console script as a user runs it: verify / merge / report, exit codes, output."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_pack import make_run_dir, restamp

from pytest_proofpack.cli import build_parser, main


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = make_run_dir(tmp_path_factory.mktemp("cli") / "run", models=("m1",))
    assert main(["report", "--rebuild", str(run_dir)]) == 0
    return run_dir / "proof_pack"


def test_verify_ok_human_and_json(pack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "verify.json"
    assert main(["verify", str(pack), "--strict", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "[ok] signature" in text and "[ok] verdict" in text and "result: OK" in text
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["exit_code"] == 0 and data["verdict"] == "PASS"
    assert {c["check"] for c in data["checks"]} >= {"layout", "signature", "schema", "checksums", "verdict"}


def test_verify_failure_exit_code_and_json(
    pack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    (copy / "extra.bin").write_bytes(b"\x00")
    out = tmp_path / "v.json"
    assert main(["verify", str(copy), "--strict", "--json", str(out)]) == 6
    err = capsys.readouterr().err
    assert "FAILED (integrity, exit 6)" in err and "extra.bin" in err
    data = json.loads(out.read_text())
    assert (data["exit_code"], data["failure_class"], data["ok"]) == (6, "integrity", False)
    assert main(["verify", str(copy)]) == 0  # non-strict: a warning only
    assert "warning: 1 file(s) not covered" in capsys.readouterr().out


def test_json_inside_pack_is_usage_error(pack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(pack), "--json", str(pack / "results" / "v.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must be written outside the pack" in err
    assert not (pack / "results" / "v.json").exists()


def test_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main([]) == 2
    assert main(["verify"]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["verify", str(tmp_path / "missing")]) == 3
    capsys.readouterr()
    assert main(["verify", str(tmp_path), "--public-key", str(tmp_path / "nokey.pem")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("proofpack verify: error: --public-key") and "Traceback" not in err


def test_merge_and_report_subcommands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = make_run_dir(tmp_path / "a", shard=(1, 2))
    b = make_run_dir(tmp_path / "b", shard=(2, 2))
    capsys.readouterr()
    assert main(["merge", str(a), "--out", str(tmp_path / "a_only")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shard(s) 2/2 missing (models m2)" in err and "--allow-partial" in err
    assert main(["merge", str(a), str(b), "--out", str(tmp_path / "ab")]) == 0
    assert main(["verify", str(tmp_path / "ab" / "proof_pack"), "--strict"]) == 0
    verdict = json.loads((tmp_path / "ab/proof_pack/results/final_verdict.json").read_text())
    assert verdict["counts"]["models_total"] == 2 and verdict["verdict"] == "PASS"
    c = make_run_dir(tmp_path / "c", shard=(2, 2), config_extra={"seed": 7})
    capsys.readouterr()
    assert main(["merge", str(a), str(c), "--out", str(tmp_path / "ac")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config_digest differs" in err and "Traceback" not in err
    a = make_run_dir(tmp_path / "a_full", models=("m1",))
    # report --rebuild on a failing run: exit 1, results/ written in the run dir, matrix printed
    report = json.loads((a / "reports/m1/fp8_e5m2_clean/run_1/evaluation.report.json").read_text())
    report["validation"]["spectral_stable"] = False
    (a / "reports/m1/fp8_e5m2_clean/run_1/evaluation.report.json").write_text(json.dumps(report))
    restamp(a)  # as if the run had written this report
    assert main(["report", "--rebuild", str(a)]) == 1
    out = capsys.readouterr().out
    assert "verdict FAIL" in out and "clean_all_pass" in out
    assert any(line.startswith("fp8_e5m2_clean") and " F " in line for line in out.splitlines())
    assert json.loads((a / "results/final_verdict.json").read_text())["verdict"] == "FAIL"
    assert main(["verify", str(a / "proof_pack"), "--strict"]) == 0  # a FAIL pack can still be authentic
    out = capsys.readouterr().out
    assert "signer: signed by key " in out and "an ephemeral key" in out and "no key pinned" in out


def test_subcommand_registry() -> None:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"verify", "merge", "report"} <= set(action.choices)


def test_console_entry_runs_as_module(pack: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pytest_proofpack.cli import main; sys.exit(main())",
            "verify",
            str(pack),
            "--strict",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr
    assert "result: OK" in proc.stdout
    # verify must not import torch (it runs on a reviewer's laptop)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, pytest_proofpack.cli as c; c.main(['verify', sys.argv[1]]); "
            "print('torch' in sys.modules)",
            str(pack),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert probe.stdout.strip().splitlines()[-1] == "False"


def test_report_refuses_a_locked_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_proofpack.run_lock import lock_run_dir

    run_dir = make_run_dir(tmp_path / "run", models=("m1",))
    lock = lock_run_dir(run_dir)
    try:
        assert main(["report", "--rebuild", str(run_dir)]) == 2
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"RUN_DIR {run_dir}: the run directory is in use by pid " in err
    assert not (run_dir / "proof_pack").exists()
    assert main(["report", "--rebuild", str(run_dir)]) == 0
    assert main(["report", "--rebuild", str(tmp_path / "nowhere")]) == 3
