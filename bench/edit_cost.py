"""What applying and restoring each change costs a plugin worker, against the evaluation it is made for.

The script does in one process what a plugin worker does for each scenario run of a one-model suite, through the
plugin's own code: the runtime (``runtime.ModelRuntime``: model, windows, baseline and calibrated preset from the
cache, glibc's mmap threshold pinned, weight backups kept as ``--proofpack-backup-ram`` says), ``execute.apply_change``,
``engine.evaluate`` (the guards and the paired primary metric: DESIGN's "one evaluation" of an edited model) and the
change's ``restore``. Like a scheduled CPU worker it runs with one torch thread (``--threads``) and the glibc tunables
a worker starts with (it starts itself again with them).

Per scenario run (default: run 1 of every scenario of the suite, edits and faults):

* ``first``: the first apply + restore. On a freshly loaded model it includes the page faults of the first write to
  the weights (the model is a private mapping of the cached safetensors file), which a worker pays once per model;
* ``best``: the fastest apply + restore of ``--reps`` cycles made after it (restore checked bit-exact each time);
* ``evaluate``: one ``engine.evaluate`` of the changed model, and ``metric`` the part of it spent in the model's
  forward over the evaluation windows (``window_losses``);
* ``% eval`` = best ÷ evaluate, and ``% metric`` = best ÷ metric (the stricter figure).

    python bench/edit_cost.py [--suite smoke] [--runs SCENARIO:RUN,...] [--reps 3] [--threads 1] [--json OUT]

The cache must hold the suite's baseline and preset (a default run makes them); without them they are computed
first (minutes), outside the timed cycles. Timings are wall clock on a shared machine: compare columns of one run.
The last line is ``max_pct_of_evaluation=<float>`` (the largest ``% eval``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout: the working tree's package

from worker_memory import (  # noqa: E402  (bench/ is on sys.path)
    build_runtime,
    parse_runs,
    start_as_worker,
    worker_threads,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--suite", default="smoke", help="a one-model suite of suites.yaml (default smoke)")
    ap.add_argument("--runs", default="", help="SCENARIO:RUN,... (default: run 1 of every scenario of the suite)")
    ap.add_argument("--reps", type=int, default=3, help="apply+restore cycles after the first (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a plugin worker's share; default 1)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--machine", default=platform.processor() or platform.machine(), help="recorded with the rows")
    a = ap.parse_args(argv)
    if a.threads < 1 or a.reps < 1:
        ap.error("--threads and --reps must be >= 1")
    start_as_worker(__file__, sys.argv[1:] if argv is None else argv)
    worker_threads(a.threads)

    from edit_effects import same_as, snapshot  # imports torch: after the thread settings

    import pytest_proofpack.engine.evaluate as engine_evaluate
    from pytest_proofpack.assets import cache_root
    from pytest_proofpack.execute import apply_change, probes_for

    runtime, cases = build_runtime(a.suite, cache_root(), Path(tempfile.mkdtemp(prefix="edit_cost_run_")))
    by_key = {(c.scenario.id, c.run): c for c in cases}
    if a.runs:
        pairs = parse_runs(ap, a.runs)
        missing = [f"{s}:{r}" for s, r in pairs if (s, r) not in by_key]
        if missing:
            ap.error(f"--runs: {', '.join(missing)} not in suite {a.suite!r}")
        wanted = [by_key[pair] for pair in pairs]
    else:
        wanted = [c for c in cases if c.run == 1]
    forward = {"s": 0.0}
    losses = engine_evaluate.window_losses

    def timed_losses(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return losses(*args, **kwargs)
        finally:
            forward["s"] += time.perf_counter() - t

    engine_evaluate.window_losses = timed_losses  # type: ignore[assignment]
    model = runtime.model
    runtime.baseline(1)
    runtime.preset  # noqa: B018
    snap = snapshot(model)
    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    print(f"{'scenario:run':<36} {'first s':>8} {'best s':>7} {'eval s':>7} {'metric s':>8} {'% eval':>7} "
          f"{'% metric':>8}", flush=True)
    for case in wanted:
        preview, final = runtime.windows(case.run)
        baseline = runtime.baseline(case.run)
        cycles: list[float] = []
        evaluate_s = metric_s = 0.0
        for rep in range(a.reps + 1):
            t = time.perf_counter()
            change = apply_change(case, runtime)
            applied = time.perf_counter() - t
            if rep == 0:  # the evaluation the change is made for, once
                forward["s"] = 0.0
                t = time.perf_counter()
                context = {"model": case.model.key, "scenario": case.scenario.id, "run": case.run,
                           "edit": dict(change.metadata), "probes": probes_for(case)}
                engine_evaluate.evaluate(model, baseline, preview, final, runtime.preset, runtime.engine,
                                         context=context)
                evaluate_s, metric_s = time.perf_counter() - t, forward["s"]
            t = time.perf_counter()
            change.restore()
            cycles.append(applied + time.perf_counter() - t)
            if not same_as(model, snap):
                print(f"RESTORE NOT BIT-EXACT after {case.scenario.id}", file=sys.stderr)
                return 1
        best = min(cycles[1:])
        row = {"scenario": case.scenario.id, "run": case.run, "change": case.edit_spec or
               str(case.scenario.generation.get("error_type")), "first_s": cycles[0], "best_s": best,
               "evaluate_s": evaluate_s, "metric_s": metric_s, "pct_of_evaluation": 100 * best / evaluate_s,
               "pct_of_metric": 100 * best / metric_s if metric_s else None}
        rows.append(row)
        print(f"{case.scenario.id + ':' + str(case.run):<36} {cycles[0]:8.3f} {best:7.3f} {evaluate_s:7.2f} "
              f"{metric_s:8.2f} {row['pct_of_evaluation']:6.2f}% {row['pct_of_metric'] or 0:7.2f}%", flush=True)
    worst = max(rows, key=lambda r: r["pct_of_evaluation"])
    if a.json:
        import torch

        a.json.write_text(json.dumps({
            "command": shlex.join(["python", "bench/edit_cost.py", *(sys.argv[1:] if argv is None else argv)]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
            "machine": a.machine, "torch": torch.__version__, "threads": a.threads, "reps": a.reps,
            "load_before": load_before, "load_after": os.getloadavg()[0], "rows": rows}, indent=2) + "\n",
            encoding="utf-8")
    print(f"worst: {worst['scenario']} ({worst['change']}) {worst['pct_of_evaluation']:.2f} % of the evaluation")
    print(f"max_pct_of_evaluation={worst['pct_of_evaluation']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
