"""Out-of-sample false-alarm study: benign edits on window samples that no calibration and no threshold choice used.

Per model of the suite, the script loads the model once, takes its calibrated preset (calibrating on the
calibration pool if no preset is cached) and its tuned clean settings, then evaluates ``--samples`` fresh window
samples drawn from the *evaluation* pool with seeds no scenario run uses (``SEED_OFFSET``). Each sample gets its own
baseline and three benign evaluations:

* two **calibrated kinds**: the model's tuned clean settings, cycling through the kinds (the same edits as the
  clean scenarios; calibration saw them, on other windows);
* one **held-out edit**, of a kind or magnitude calibration never applied, chosen before any run (a priori, not by
  looking at results): RTN at group size 64 with the tuned bits (calibration uses the tuned group size and its
  ladder neighbours), FP8 e4m3fn on the attention projections (calibration quantises the FFN only), and magnitude
  pruning at half the tuned sparsity of every matrix (calibration prunes the FFN only).

An evaluation alarms when the report fails a gate that a ``must_pass`` scenario needs (``expectations.report_gates``);
alarms are counted per gate. The bound is the exact two-sided 95 % Clopper-Pearson upper bound (beta quantile).
An evaluation whose ratio exceeds the tier's limit is not benign after all: it is listed, and counted both ways.

Cost: one baseline and three evaluations per sample, plus the calibration when no preset is cached (measured
times: ``bench/RESULTS.md``). The last line is ``fpr_upper95=<float>`` for the worst model.

Usage: ``python bench/false_alarms.py --suite smoke [--models K] [--samples 24] [--out bench/false_alarms.json]
[--shard K/N]``. With ``--shard K/N`` a process evaluates the samples ``i`` with ``i % N == K - 1`` (run N processes
to use N cores; the preset's calibration runs are shared through the cache), stores its evaluations under the
shard's key in ``--out``, and prints the summary over every shard stored so far.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

SEED_OFFSET = 500_009  #: far from the scenario runs' seeds (seed + 7919 * (run - 1)) and calibration's (+1000 * r)
SEED_STRIDE = 104_729


def held_out_specs(tuned: dict[str, str]) -> list[str]:
    """The a-priori held-out benign edits, derived from the tuned specs (see the module docstring)."""
    specs: list[str] = []
    if "quant_rtn" in tuned:
        _, bits, group, scope = tuned["quant_rtn"].split(":", 3)
        specs.append(f"quant_rtn:{bits}:{64 if int(group) != 64 else 32}:{scope}")
    specs.append("fp8_quant:e4m3fn:attn")
    if "magnitude_prune" in tuned:
        sparsity = float(tuned["magnitude_prune"].split(":")[1])
        specs.append(f"magnitude_prune:{round(sparsity / 2, 4)}:all")
    return specs


def model_runtime(suite_name: str, model_key: str, run_dir: Path) -> Any:
    """A runtime of one model of a suite with the default options, its reports under ``run_dir`` (benches)."""
    from pytest_proofpack.catalog import load_catalog
    from pytest_proofpack.options import default_options
    from pytest_proofpack.registries import default_registries
    from pytest_proofpack.runtime import ModelRuntime, RunContext

    catalog = load_catalog(None, None, None)
    suite = catalog.suite(suite_name)
    entry = catalog.resolve_models(suite, [model_key], env={})[0]
    options = default_options(suite=suite_name, out=run_dir)
    ctx = RunContext(options, catalog, suite, run_dir, options.cache_root(), {}, "bench",
                     dict(catalog.datasets[suite.dataset]), registries=default_registries())
    return ModelRuntime(ctx, entry)


def _evaluate(runtime: Any, state: Any, windows: tuple[Any, Any], spec: str, index: int) -> dict[str, Any]:
    from pytest_proofpack.edits.apply import apply_edit
    from pytest_proofpack.edits.spec import parse_edit_spec
    from pytest_proofpack.engine.evaluate import evaluate
    from pytest_proofpack.expectations import report_gates

    preview, final = windows
    ctx = {"model": runtime.entry.key, "scenario": "false_alarm_study", "run": index, "edit": spec, "probes": []}
    with apply_edit(runtime.model, parse_edit_spec(spec, registry=runtime.ctx.registries.edits), seed=index,
                    registry=runtime.ctx.registries.edits):
        report = evaluate(runtime.model, state, preview, final, runtime.preset, state_cfg(runtime, index),
                          context=ctx).report
    passed, reasons = report_gates(report)
    return {"spec": spec, "ratio": report["primary_metric"].get("ratio_vs_baseline"), "passed": passed,
            "reasons": reasons, "rmt_shift": report["rmt"].get("shift_by_family"),
            "spectral_caps": report["spectral"].get("caps_applied")}


def state_cfg(runtime: Any, index: int) -> Any:
    import dataclasses

    return dataclasses.replace(runtime.engine, seed=runtime.engine.seed + SEED_OFFSET + SEED_STRIDE * index)


def study_model(suite: str, model_key: str, samples: list[int], run_dir: Path) -> dict[str, Any]:
    from pytest_proofpack.engine.evaluate import prepare_baseline

    runtime = model_runtime(suite, model_key, run_dir)
    try:
        preset = runtime.preset
        tuned = dict(runtime.benign_plan().describe().get("tuned", {}))
        calibrated, held_out = sorted(tuned.values()), held_out_specs(tuned)
        print(f"{model_key}: calibrated kinds {calibrated}; held out {held_out}", flush=True)
        evaluations: list[dict[str, Any]] = []
        for i in samples:
            t0 = time.perf_counter()
            windows = runtime.make_windows(runtime.ctx.options.seed + SEED_OFFSET + SEED_STRIDE * i, "evaluation")
            state = prepare_baseline(runtime.model, *windows, state_cfg(runtime, i))
            plan = [(calibrated[(2 * i) % len(calibrated)], "calibrated"),
                    (calibrated[(2 * i + 1) % len(calibrated)], "calibrated"),
                    (held_out[i % len(held_out)], "held_out")]
            for spec, group in plan:
                row = {**_evaluate(runtime, state, windows, spec, i), "group": group, "sample": i}
                evaluations.append(row)
            marks = " ".join(f"{r['spec']}={r['ratio']:.3f}{'' if r['passed'] else '!' + ','.join(r['reasons'])}"
                             for r in evaluations[-3:])
            print(f"  sample {i + 1} ({time.perf_counter() - t0:.0f} s): {marks}", flush=True)
        return {"model": model_key, "preset_thresholds": {k: preset.get(k) for k in ("rmt", "spectral")},
                "calibrated_specs": calibrated, "held_out_specs": held_out, "evaluations": evaluations,
                "ratio_limit": runtime.engine.ratio_limit}
    finally:
        runtime.close()


def summarise(evaluations: list[dict[str, Any]], ratio_limit: float) -> dict[str, Any]:
    from pytest_proofpack.verdict.binomial import clopper_pearson_upper

    n = len(evaluations)
    alarms = [e for e in evaluations if not e["passed"]]
    per_gate = Counter(reason.split(" ")[0] for e in alarms for reason in e["reasons"])
    over_budget = [e for e in evaluations if e["ratio"] is None or e["ratio"] > ratio_limit]
    by_group = {g: {"n": sum(e["group"] == g for e in evaluations),
                    "alarms": sum(e["group"] == g and not e["passed"] for e in evaluations)}
                for g in ("calibrated", "held_out")}
    return {"n": n, "alarms": len(alarms), "alarms_per_gate": dict(per_gate), "by_group": by_group,
            "over_budget": [f"{e['spec']}@{e['sample']}" for e in over_budget],
            "rate": len(alarms) / n if n else None,
            "upper95_clopper_pearson": clopper_pearson_upper(len(alarms), n) if n else 1.0,
            "sample_kind": "out-of-sample: evaluation-pool windows no calibration or threshold choice used"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--suite", default="smoke")
    ap.add_argument("--models", help="comma-separated model keys (default: the suite's)")
    ap.add_argument("--samples", type=int, default=24, help="window samples per model (3 evaluations each)")
    ap.add_argument("--out", type=Path, default=Path("bench/false_alarms.json"))
    ap.add_argument("--shard", default="1/1", help="K/N: this process evaluates samples i with i %% N == K - 1")
    ap.add_argument("--run-dir", type=Path, default=Path("/tmp/proofpack_false_alarms"))
    args = ap.parse_args(argv)
    from pytest_proofpack.catalog import load_catalog

    catalog = load_catalog(None, None, None)
    suite = catalog.suite(args.suite)
    keys = args.models.split(",") if args.models else [m.key for m in catalog.resolve_models(suite, None, env={})]
    shard, shards = (int(x) for x in args.shard.split("/"))
    samples = [i for i in range(args.samples) if i % shards == shard - 1]
    worst = 0.0
    for key in keys:
        result = study_model(args.suite, key, samples, args.run_dir)
        stored = json.loads(args.out.read_text()) if args.out.exists() else {}
        entry = stored.setdefault(key, {"shards": {}})
        entry["shards"][f"{shard}/{shards}"] = result
        union = [e for part in entry["shards"].values() for e in part["evaluations"]]
        entry.update({k: v for k, v in result.items() if k != "evaluations"})
        entry["summary"] = summary = summarise(union, result["ratio_limit"])
        args.out.write_text(json.dumps(stored, indent=1) + "\n")
        worst = max(worst, summary["upper95_clopper_pearson"])
        print(f"{key} (shards {sorted(entry['shards'])}): {summary['alarms']}/{summary['n']} alarms "
              f"{summary['alarms_per_gate']}; by group {summary['by_group']}; over budget {summary['over_budget']}; "
              f"upper95={summary['upper95_clopper_pearson']:.4f}", flush=True)
    print(f"fpr_upper95={worst:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
