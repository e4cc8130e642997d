"""``proofpack report RUN_DIR``: the verdict and the detection matrix of a finished run, read back, nothing rerun.

By default the command only reads: ``results/final_verdict.json`` of a run directory (or of a proof pack), which
the pytest session wrote when it ended. Nothing is recomputed or re-signed, so looking at a run never touches its
pack. ``--rebuild`` is the other, writing mode: it recomputes ``results/`` from the run's records and rebuilds and
re-signs the pack (after ``proofpack merge`` by hand, a records directory edited, or a session killed before its
verdict).

Exit status: 0 when the verdict is PASS, 1 when it is FAIL or PARTIAL (one shard of a command line); 3 when
RUN_DIR is not a finished run (no verdict file), 4 when the verdict file is malformed (as ``proofpack verify``).
``--rebuild`` holds the run directory's lock while it writes, and refuses a run whose evidence changed after the
run (exit 6).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pytest_proofpack.bounded import MAX_TEXT_BYTES, BoundError, loads_json
from pytest_proofpack.errors import PackError

__all__ = ["add_report", "read_verdict"]

_VERDICT: Final = Path("results") / "final_verdict.json"


def add_report(subparsers: Any) -> None:
    """Register ``report`` on the ``proofpack`` parser's subparsers."""
    p = subparsers.add_parser(
        "report", help="print the verdict and detection matrix of a finished run (read only)",
        description="Print the verdict and the detection matrix that a finished run wrote to RUN_DIR/results/, "
        "without rerunning or rewriting anything. Exit status 0 PASS, 1 FAIL, 3 not a finished run, "
        "4 malformed verdict. --rebuild instead recomputes results/ from the records and rebuilds the pack.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (--proofpack-out) or its proof_pack")
    p.add_argument("--rebuild", action="store_true",
                   help="recompute results/ from the run's records and rebuild (and re-sign) the pack")
    p.add_argument("--sign-key", metavar="PEM", help="with --rebuild: Ed25519 private key (default: an ephemeral "
                   "key)")
    p.add_argument("--gpg", action="store_true", help="with --rebuild: also write a GPG detached signature")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    if not args.rebuild and (args.sign_key or args.gpg):
        raise PackError("--sign-key and --gpg sign a rebuilt pack: add --rebuild", exit_code=2)
    if args.rebuild:
        return _rebuild(run_dir, Path(args.sign_key) if args.sign_key else None, args.gpg)
    verdict = read_verdict(run_dir)
    from pytest_proofpack.verdict import render_matrix

    for line in render_matrix(verdict):
        print(line)
    _print_summary(verdict, run_dir / _VERDICT)
    pack = run_dir / "proof_pack"
    if (pack / "manifest.json").is_file():
        print(f"proof pack: {pack}  (check it: proofpack verify {pack} --strict)")
    newer = _records_newer_than_verdict(run_dir)
    if newer:
        print(f"note: {newer} record(s) changed after this verdict was written; `proofpack report --rebuild "
              f"{run_dir}` recomputes it", file=sys.stderr)
    return 0 if verdict.get("verdict") == "PASS" else 1


def read_verdict(run_dir: Path) -> dict[str, Any]:
    """The verdict a finished run (or a proof pack) holds in ``results/final_verdict.json``.

    Raises :class:`PackError`: exit code 3 when ``run_dir`` is missing or holds no verdict (the run never
    finished), 4 when the file is not a ``proofpack_verdict_v1`` object.
    """
    from pytest_proofpack.verdict import VERDICT_SCHEMA

    if not run_dir.is_dir():
        raise PackError(f"{run_dir}: no such run directory", exit_code=3)
    path = run_dir / _VERDICT
    if not path.is_file():
        what = "a run directory whose session never finished" if (run_dir / "run.json").is_file() else \
            "not a run directory (no run.json) nor a proof pack"
        raise PackError(f"{run_dir}: not a finished run: {_VERDICT} is missing ({what}); a pytest session writes "
                        f"it when it ends, `proofpack report --rebuild {run_dir}` computes it from the records",
                        exit_code=3)
    try:
        if path.stat().st_size > MAX_TEXT_BYTES:
            raise PackError(f"{path}: larger than {MAX_TEXT_BYTES >> 20} MiB; not a verdict file", exit_code=4)
        verdict = loads_json(path.read_text(encoding="utf-8"))
    except BoundError as exc:
        raise PackError(f"{path}: {exc}", exit_code=4) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackError(f"{path}: not valid JSON ({exc})", exit_code=4) from None
    if not isinstance(verdict, dict) or verdict.get("schema") != VERDICT_SCHEMA:
        raise PackError(f"{path}: schema must be {VERDICT_SCHEMA!r}", exit_code=4)
    if verdict.get("verdict") not in ("PASS", "FAIL", "PARTIAL"):
        raise PackError(f"{path}: $.verdict must be PASS, FAIL or PARTIAL, not {verdict.get('verdict')!r}",
                        exit_code=4)
    return verdict


def _print_summary(verdict: Mapping[str, Any], source: Path) -> None:
    failed = verdict.get("failed_requirements") or []
    print(f"verdict {verdict['verdict']}" + (f" ({len(failed)} failed requirements)" if failed else "")
          + f"; from {source}")
    for req in failed:
        print(f"  {req.get('requirement')}: {req.get('message')}")
    counts = verdict.get("counts") or {}
    if counts:
        shown = (("planned_total", "planned"), ("records_total", "recorded"), ("tests_wrong", "wrong"),
                 ("missing_total", "missing"))
        print("runs: " + ", ".join(f"{counts[k]} {label}" for k, label in shown if k in counts))
    alarms = verdict.get("false_alarm_rate") or {}
    if alarms.get("evaluations"):
        upper = alarms.get("upper_95_clopper_pearson")
        print(f"false alarms: {alarms.get('alarms')} of {alarms['evaluations']} clean evaluations"
              + (f" (95 % upper bound {upper:.3f})" if isinstance(upper, float | int) else ""))


def _records_newer_than_verdict(run_dir: Path) -> int:
    """How many record files were written after the verdict (a later session that stopped before its verdict)."""
    try:
        written = (run_dir / _VERDICT).stat().st_mtime
        return sum(1 for p in (run_dir / "records").glob("*/*/run_*.json") if p.stat().st_mtime > written)
    except OSError:
        return 0


def _rebuild(run_dir: Path, sign_key: Path | None, gpg: bool) -> int:
    from pytest_proofpack.pack import build_pack
    from pytest_proofpack.pack.coverage import run_verdict
    from pytest_proofpack.run_lock import lock_run_dir
    from pytest_proofpack.verdict import load_run, render_matrix, write_results

    if not (run_dir / "run.json").is_file():
        raise PackError(f"{run_dir}: not a run directory (no run.json)", exit_code=3)
    lock = lock_run_dir(run_dir, what="RUN_DIR")  # no session may write the run while it is rebuilt
    try:
        loaded = load_run(run_dir)
        verdict = run_verdict(loaded, stale_records=loaded.stale_records)
        write_results(run_dir / "results", verdict)
        pack = build_pack(run_dir, sign_key=sign_key, gpg=gpg)
    finally:
        lock.release()
    for line in render_matrix(verdict):
        print(line)
    print(f"verdict {verdict['verdict']}; results in {run_dir / 'results'}; pack {pack}")
    for failed in verdict["failed_requirements"]:
        print(f"  {failed['requirement']}: {failed['message']}")
    return 0 if verdict["verdict"] == "PASS" else 1
