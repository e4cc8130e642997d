"""Reduced sensitivity sweep on SmolLM2-135M: how small a change each detector catches (issue 22).

The model is loaded once with the smoke suite's settings (256-token windows, 4 preview/guard windows, 16 final
windows, 1000 bootstrap replicates: the windows and the calibrated preset of the scenarios, nothing reduced per
evaluation). Each window sample (drawn from the evaluation pool with seeds no scenario, calibration or false-alarm
run uses: ``sensitivity.sample_seed``) gets its own baseline; every family is then applied at every rung in place,
evaluated by the real engine against it and restored bit for bit.

Reduced sweep (ladders fixed before the run, around the shipped tuned clean edits; ``--families`` picks others,
at the 3-rung ladders of ``OTHERS``): 4 families x 3 rungs x ``--samples`` samples (default 2), i.e. 24
evaluations and 2 baselines:

* ``noise_all_blocks`` 0.05, 0.1, 0.2 (Gaussian noise, times each matrix's std, every block matrix);
* ``scale_one_matrix`` 1.02, 1.05, 1.1 (the middle block's FFN down-projection);
* ``magnitude_prune`` 0.1, 0.2, 0.3 (every block matrix);
* ``rtn_bits`` 6, 4, 3 (group 128, every block matrix).

CPU budget: about 50 CPU-seconds per evaluation and 120 per baseline, ~1500 CPU-seconds in all. On the contended
2-core box (each process got about a quarter of a core: ~250 s of wall time per evaluation) that is about an hour
as two processes (``--shard 1/2`` and ``--shard 2/2``, one sample each); on an idle 2-core machine about 12
minutes. With 2 samples a rung counts as detected in >= 95 % of runs only when both runs detect it, and its exact
95 % lower bound is then 0.16: the thresholds say where detection became reliable on these samples, not a tight
estimate. Every run is also appended to ``<out>.runs.jsonl`` as it finishes.

Usage: ``python bench/sensitivity.py [--samples 2] [--families a,b] [--shard K/N] [--out bench/sensitivity.json]``.
With ``--shard K/N`` a process sweeps the samples ``i`` with ``i % N == K - 1``, stores its document under the shard's
key in ``--out`` and prints the thresholds of every shard stored so far (merged). The last line is
``sensitivity_families=<families with at least one detector's threshold bracketed by the ladder>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from false_alarms import model_runtime  # bench/ is on sys.path

REDUCED = {
    "noise_all_blocks": (0.05, 0.1, 0.2),
    "scale_one_matrix": (1.02, 1.05, 1.1),
    "magnitude_prune": (0.1, 0.2, 0.3),
    "rtn_bits": (6, 4, 3),
}
#: Reduced ladders of the other built-in families, for ``--families`` (not swept by default).
OTHERS = {
    "exponent_flip": (1e-3, 1e-2, 1e-1),
    "lowrank_energy": (0.001, 0.003, 0.01),  # 0.03, 0.1, 0.3 were all detected (bench/RESULTS.md, sensitivity sweep)
    "noise_one_block": (0.1, 0.2, 0.5),
}


def bracketed_families(doc: dict[str, Any]) -> int:
    """Families (over every model) with at least one detector's threshold bracketed by the ladder."""
    return sum(any(t["status"] == "bracketed" for t in fam["summary"]["thresholds"].values())
               for entry in doc["models"].values() for fam in entry["families"].values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--suite", default="smoke")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--families", default=",".join(REDUCED), help="comma-separated built-in families (default: the "
                    "four above; also exponent_flip, lowrank_energy, noise_one_block at the OTHERS ladders)")
    ap.add_argument("--shard", default="1/1", help="K/N: this process sweeps samples i with i %% N == K - 1")
    ap.add_argument("--out", type=Path, default=Path("bench/sensitivity.json"))
    ap.add_argument("--run-dir", type=Path, default=Path("/tmp/proofpack_sensitivity"))
    args = ap.parse_args(argv)
    from pytest_proofpack.sensitivity import SweepTarget, sweep_model
    from pytest_proofpack.sensitivity_families import builtin_families
    from pytest_proofpack.sensitivity_summary import document, family_line, merge_documents

    known = builtin_families()
    names = [n.strip() for n in args.families.split(",") if n.strip()]
    families = [dataclasses.replace(known[n], rungs={**REDUCED, **OTHERS}.get(n, known[n].rungs)) for n in names]
    shard, shards = (int(x) for x in args.shard.split("/"))
    samples = [i for i in range(args.samples) if i % shards == shard - 1]
    runtime = model_runtime(args.suite, args.model, args.run_dir)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        target = SweepTarget(runtime.model, args.model, runtime.preset, runtime.engine,
                             lambda seed: runtime.make_windows(seed, "evaluation"))

        def show(name: str, row: dict[str, Any]) -> None:
            with open(str(args.out) + ".runs.jsonl", "a", encoding="utf-8") as log:
                log.write(json.dumps({"shard": args.shard, "family": name, **row}) + "\n")
            hits = ",".join(d for d, v in row["fired"].items() if v and d != "any") or "-"
            ratio = f"{row['ratio']:.4f}" if isinstance(row["ratio"], float) else row["ratio"]
            print(f"  sample {row['sample']} {name}@{row['magnitude']:g}: ratio {ratio} fired {hits}"
                  f"{' ERROR ' + row['error'] if row['error'] else ''} ({row['seconds']:.0f} s)", flush=True)

        entry = sweep_model(target, families, samples, on_run=show)
        doc = document({args.model: entry}, engine=runtime.engine, created_utc=started,
                       extra={"suite": args.suite, "shard": args.shard})
    finally:
        runtime.close()
    from filelock import FileLock

    with FileLock(str(args.out) + ".lock"):  # the shards finish independently
        stored = json.loads(args.out.read_text()) if args.out.exists() else {}
        stored[args.shard] = doc
        args.out.write_text(json.dumps(stored, indent=1) + "\n")
    merged = merge_documents(list(stored.values()))
    print(f"thresholds over shards {sorted(stored)} (samples {merged['models'][args.model]['samples']}; "
          f"tier {merged['tier']}, ratio limit {merged['ratio_limit']}):")
    for name, fam in merged["models"][args.model]["families"].items():
        print("  " + family_line(name, fam))
    print(f"sensitivity_families={bracketed_families(merged)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
