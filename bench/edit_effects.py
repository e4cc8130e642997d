"""Edit and fault effects on a real model: perplexity ratio, parameters touched, apply/restore cost.

Usage (CPU, 2 cores)::

    proofpack fetch --suite smoke                      # once: SmolLM2-135M and the Shakespeare text into the cache
    python bench/edit_effects.py                       # ~15 min; --model DIR --tokens FILE.npy for another model
    nice -n 5 python bench/edit_effects.py --timing-only 3                                        # ~5 min

The full run applies every edit spec and every fault (the scenarios' env) in place, evaluates, restores and
checks that every parameter is bit-identical to the baseline again. ``ratio = exp(mean over windows of
(edited log-loss - base log-loss))`` on ``--windows`` contiguous, evenly spaced windows of ``--seq`` tokens.

``--timing-only N`` skips the perplexities: it applies and restores every change N times (restore checked
bit-exact), and compares the fastest apply+restore with one evaluation of the same windows, timed before and
after in the same process at the same thread count (the faster of the two is the denominator, so the
percentage errs high). It keeps the effects of the last full run and replaces the timing section of its thread count.
The process runs as a plugin worker does: glibc's mmap threshold pinned (``pytest_proofpack.malloc``; start it with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, as the plugin starts its workers), windows evaluated by the engine's
``token_nll``, and a change keeping its backups as a worker does: ``--backup-ram`` MiB in RAM (default 64, the
plugin's default), the rest in a scratch file in the system's temporary directory.

Both write ``--out`` (markdown) and its ``.json`` twin atomically. Timings are wall clock on a shared machine:
the load average before and after is recorded; compare columns of one run, not across runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_proofpack.edits import apply_edit, parse_edit_spec
from pytest_proofpack.edits.backup import BackupPolicy, set_backup_policy
from pytest_proofpack.engine.metric import token_nll
from pytest_proofpack.faults import apply_fault
from pytest_proofpack.malloc import pin_malloc_mmap_threshold
from pytest_proofpack.models.adapters import find_blocks

SCHEMA = "proofpack_edit_effects_v2"


def make_windows(tokens: np.ndarray[Any, Any], n: int, seq: int) -> torch.Tensor:
    starts = np.linspace(0, len(tokens) - seq - 1, n).astype(np.int64)
    return torch.from_numpy(np.stack([tokens[s : s + seq] for s in starts]).astype(np.int64))


@torch.inference_mode()
def window_losses(model: Any, windows: torch.Tensor, batch: int) -> torch.Tensor:
    """Mean NLL per window, ``batch`` windows per forward, through the engine's ``token_nll`` (what a worker's
    evaluation runs)."""
    out = [token_nll(model, windows[i : i + batch]).mean(1) for i in range(0, windows.shape[0], batch)]
    return torch.cat(out).double()


def snapshot(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_as(model: Any, snap: dict[str, torch.Tensor]) -> bool:
    sd = model.state_dict()
    return sd.keys() == snap.keys() and all(torch.equal(sd[k], snap[k]) for k in snap)


EDITS: list[tuple[str, str]] = [
    # (group, spec); {mid}/{last} become the middle and the last block index
    ("reference clean", "quant_rtn:4:32:ffn"),
    ("reference clean", "fp8_quant:e5m2:ffn"),
    ("reference clean", "magnitude_prune:0.12:ffn"),
    ("reference clean", "lowrank_svd:32:ffn@layer={last}"),
    ("reference stress", "magnitude_prune:0.5:all"),
    ("reference stress", "lowrank_svd:32:all"),
    ("reference stress", "quant_rtn:4:32:all"),
    ("reference stress", "quant_rtn:3:32:all"),
    ("reference stress", "fp8_quant:e5m2:all"),
    ("candidate", "quant_rtn:4:128:ffn"),
    ("candidate", "quant_rtn:5:32:ffn"),
    ("candidate", "quant_rtn:6:32:ffn"),
    ("candidate", "quant_rtn:8:128:ffn"),
    ("candidate", "fp8_quant:e4m3:ffn"),
    ("candidate", "magnitude_prune:0.05:ffn"),
    ("candidate", "magnitude_prune:0.10:ffn"),
    ("candidate", "magnitude_prune:0.20:ffn"),
    ("candidate", "lowrank_svd:32:ffn@layer={mid}"),
    ("candidate", "lowrank_svd:128:ffn@layer={mid}"),
    ("candidate", "lowrank_svd:256:ffn@layer={mid}"),
    ("candidate", "lowrank_svd:128:ffn@layer={last}"),
    ("candidate", "lowrank_svd:256:ffn@layer={last}"),
    ("candidate", "lowrank_svd:384:ffn@layer={mid}"),
    ("candidate", "lowrank_svd:448:ffn@layer={mid}"),
    ("candidate", "lowrank_svd:448:ffn@layer={last}"),
    ("candidate", "quant_rtn:4:32:ffn@layers=12-17"),
    ("tuned clean", "quant_rtn:4:32:ffn@layers=8-21"),
    ("tuned clean", "lowrank_svd:512:ffn@layer={mid}"),
]


def fault_list(scenarios: Path) -> list[tuple[str, dict[str, str]]]:
    data = json.loads(scenarios.read_text())
    return [
        (s["id"], dict(s["generation"].get("env") or {}))
        for s in data["scenarios"]
        if s["generation"]["kind"] == "error"
    ]


def fmt_ratio(r: float) -> str:
    if math.isnan(r):
        return "nan"
    if math.isinf(r):
        return "inf"
    return f"{r:.4f}" if r < 100 else f"{r:.3g}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF model directory (default: the smoke suite's SmolLM2 from the "
                    "fetched cache, converted by the plugin's loader; run `proofpack fetch --suite smoke` first)")
    ap.add_argument("--tokens", default=None, help=".npy token stream (default: the smoke suite's corpus through "
                    "its data provider, tokenized by the model's tokenizer)")
    ap.add_argument(
        "--scenarios", default=str(Path(__file__).resolve().parents[1] / "scenarios/scenarios.json")
    )
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma list of substrings; run only matching rows")
    ap.add_argument("--specs", default="", help="comma list of extra edit specs to evaluate (group 'extra')")
    ap.add_argument("--no-faults", action="store_true", help="skip the fault rows")
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    ap.add_argument(
        "--timing-only",
        type=int,
        default=0,
        metavar="N",
        help="skip perplexity; apply+restore each change N times and report min/median ms vs one evaluation",
    )
    ap.add_argument("--backup-ram", type=int, default=64, metavar="MIB",
                    help="RAM budget of a change's backups, the rest spilled to a scratch file, as the plugin's "
                         "--proofpack-backup-ram (default 64, the plugin's default); -1 keeps them all in RAM")
    ap.add_argument("--date", default=datetime.date.today().isoformat(), help="date recorded with the figures")
    ap.add_argument(
        "--machine", default=f"{os.cpu_count()}-core CPU", help="machine description recorded with the timings"
    )
    args = ap.parse_args()


    torch.set_num_threads(args.threads)
    pin_malloc_mmap_threshold()  # the malloc policy of a worker that holds a model (pytest_proofpack.malloc)
    set_backup_policy(BackupPolicy(None if args.backup_ram < 0 else args.backup_ram << 20))
    from smoke_assets import model_and_tokens  # bench/ is on sys.path when run as a script

    model, tokens, model_name = model_and_tokens(ap, args.model, args.tokens)
    n_layers = len(find_blocks(model)[1])
    windows = make_windows(tokens, args.windows, args.seq)
    snap = snapshot(model)

    t0 = time.perf_counter()
    base = window_losses(model, windows, args.batch)
    eval_s = time.perf_counter() - t0
    base_ppl = math.exp(float(base.mean()))
    print(f"base ppl {base_ppl:.3f}  eval {eval_s:.2f}s  layers {n_layers}", flush=True)

    rows: list[dict[str, Any]] = []
    only = [s for s in args.only.split(",") if s]
    if args.timing_only:
        return timing_only(model, snap, args, only, n_layers, eval_s, windows)
    jobs: list[tuple[str, str, dict[str, str] | None]] = [
        (g, s.format(mid=n_layers // 2, last=n_layers - 1), None) for g, s in EDITS
    ]
    jobs += [("extra", spec, None) for spec in args.specs.split(",") if spec]
    if not args.no_faults:
        jobs += [("fault", fid, env) for fid, env in fault_list(Path(args.scenarios))]
    for group, name, env in jobs:
        if only and not any(o in name for o in only):
            continue
        t = time.perf_counter()
        if env is None:
            change = apply_edit(model, parse_edit_spec(name), seed=0)
        else:
            change = apply_fault(model, name, env, seed=0)
        apply_ms = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        losses = window_losses(model, windows, args.batch)
        ev = time.perf_counter() - t
        t = time.perf_counter()
        change.restore()
        restore_ms = (time.perf_counter() - t) * 1e3
        exact = same_as(model, snap)
        md = change.metadata
        delta = float((losses - base).mean())
        ratio = math.exp(delta) if math.isfinite(delta) else float("nan")
        in_scope = md.get("params_in_scope")
        row = {
            "group": group,
            "name": name,
            "ratio": ratio,
            "params_changed": md.get("params_changed"),
            "params_in_scope": in_scope,
            "changed_pct": (100.0 * md["params_changed"] / in_scope) if in_scope else None,
            "n_modules": md.get("n_modules", md.get("modified_count")),
            "apply_ms": apply_ms,
            "restore_ms": restore_ms,
            "eval_s": ev,
            "cost_pct_of_eval": 100.0 * (apply_ms + restore_ms) / 1e3 / eval_s,
            "restore_exact": exact,
            "extra": {
                k: md[k] for k in ("actual_sparsity", "avg_energy_retained", "saturated", "mode") if k in md
            },
        }
        rows.append(row)
        print(
            f"{group:16s} {name:34s} ratio {fmt_ratio(ratio):>8s} changed {row['changed_pct'] or 0:6.2f}% "
            f"apply {apply_ms:8.1f}ms restore {restore_ms:6.1f}ms eval {ev:5.2f}s exact {exact}",
            flush=True,
        )
        if not exact:
            print("RESTORE NOT BIT-EXACT", file=sys.stderr)
            return 1

    data = load_results(Path(args.out))
    command = shlex.join(["python", "bench/edit_effects.py", *sys.argv[1:]])
    old = data.get("effects")
    if old and (only or args.specs):
        # A partial run updates its rows in the last full run's table and says so.
        names = {r["name"] for r in rows}
        fresh = {r["name"]: r for r in rows}
        merged = [fresh.pop(r["name"], r) for r in old["rows"]]
        old["rows"] = merged + list(fresh.values())
        old.setdefault("updates", []).append({"date": args.date, "command": command, "rows": sorted(names)})
    else:
        data["effects"] = {
            "command": command,
            "date": args.date,
            "model": f"{model_name} ({type(model).__name__}, {n_layers} layers)",
            "windows": args.windows,
            "seq": args.seq,
            "batch": args.batch,
            "threads": args.threads,
            "base_ppl": base_ppl,
            "eval_s": eval_s,
            "rows": rows,
        }
    write_results(Path(args.out), data)
    return 0


def load_results(out: Path) -> dict[str, Any]:
    """The results of earlier runs (``{"effects": ..., "timing": ...}``), or an empty dict."""
    path = out.with_suffix(".json")
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise SystemExit(f"{path}: not a {SCHEMA} file; move it away or delete it to start afresh")
    return data


def write_results(out: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``out``'s ``.json`` twin and render ``out`` (markdown), each atomically."""
    data["schema"] = SCHEMA
    for path, text in (
        (out, render_markdown(data)),
        (out.with_suffix(".json"), json.dumps(data, indent=1) + "\n"),
    ):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    print(f"wrote {out} and {out.with_suffix('.json')}")


def render_markdown(data: dict[str, Any]) -> str:
    """The effects table of the last full run and the timing table of the last ``--timing-only`` run."""
    lines: list[str] = []
    eff = data.get("effects")
    if eff:
        lines += [
            f"# Edit and fault effects on {eff['model']}",
            "",
            f"Command: `{eff['command']}`{' — ' + eff['date'] if eff.get('date') else ''}  ",
            f"{eff['windows']} windows x {eff['seq']} tokens, batch {eff['batch']}, fp32, {eff['threads']} threads. "
            f"Base ppl {eff['base_ppl']:.3f}. Every restore checked bit-exact. Apply/restore cost: see the timing "
            "section (the effects run's own timings were taken with older code under heavy load and are kept "
            "in the JSON only).",
            *([f"{eff['note']}  "] if eff.get("note") else []),
            *(f"Rows {', '.join(f'`{n}`' for n in u['rows'])} re-measured {u['date']}: `{u['command']}`.  "
              for u in eff.get("updates", [])),
            "",
            "| group | spec / fault | ratio | changed % of scope | matrices | notes |",
            "|---|---|---|---|---|---|",
        ]
        for r in eff["rows"]:
            pct = f"{r['changed_pct']:.2f}" if r["changed_pct"] is not None else "-"
            notes = ", ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r["extra"].items()
            )
            lines.append(
                f"| {r['group']} | `{r['name']}` | {fmt_ratio(r['ratio'])} | {pct} | {r['n_modules']} | {notes} |"
            )
    for tim in data.get("timings", []):
        lines += [
            "",
            f"## Apply + restore vs one evaluation, {tim['threads']} torch thread(s) ({tim['date']})",
            "",
            f"Command: `{tim['command']}`  ",
            f"Machine: {tim['machine']}; torch {tim['torch']}, {tim['threads']} torch threads for the edits and the "
            f"evaluation alike. Load average (1 min) {tim['load_before']:.2f} before, {tim['load_after']:.2f} after.  ",
            f"One evaluation ({tim['windows']} x {tim['seq']} tokens, batch {tim['batch']}): "
            f"{tim['eval_before_s']:.2f} s before, {tim['eval_after_s']:.2f} s after; the percentages divide by "
            f"the faster, {tim['eval_s']:.2f} s. Fastest and median of {tim['reps']} apply+restore cycles; "
            "every restore checked bit-exact.",
            "",
            "| spec / fault | apply ms | restore ms | apply+restore min ms | median ms | % of one eval | < 10 % |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in tim["rows"]:
            lines.append(
                f"| `{r['name']}` | {r['apply_ms']:.1f} | {r['restore_ms']:.1f} | {r['min_ms']:.1f} "
                f"| {r['median_ms']:.1f} | {r['pct_of_eval']:.1f}% | {'yes' if r['pct_of_eval'] < 10 else '**no**'} |"
            )
        worst = max(tim["rows"], key=lambda r: r["pct_of_eval"])
        lines += ["", f"Worst: `{worst['name']}` at {worst['pct_of_eval']:.1f}% of one evaluation."]
    return "\n".join(lines) + "\n"


def timing_only(
    model: Any,
    snap: dict[str, torch.Tensor],
    args: argparse.Namespace,
    only: list[str],
    n_layers: int,
    eval_s: float,
    windows: torch.Tensor,
) -> int:
    """Apply+restore each change ``--timing-only`` times (no perplexity); record min and median cost."""
    load_before = os.getloadavg()[0]
    jobs: list[tuple[str, dict[str, str] | None]] = [
        (s.format(mid=n_layers // 2, last=n_layers - 1), None) for _, s in EDITS
    ]
    jobs += [(spec, None) for spec in args.specs.split(",") if spec]
    if not args.no_faults:
        jobs += list(fault_list(Path(args.scenarios)))
    rows: list[dict[str, Any]] = []
    for name, env in jobs:
        if only and not any(o in name for o in only):
            continue
        cycles: list[tuple[float, float]] = []
        for _ in range(args.timing_only):
            t = time.perf_counter()
            change = (
                apply_edit(model, parse_edit_spec(name)) if env is None else apply_fault(model, name, env)
            )
            t_apply = time.perf_counter()
            change.restore()
            cycles.append(((t_apply - t) * 1e3, (time.perf_counter() - t_apply) * 1e3))
        if not same_as(model, snap):
            print(f"RESTORE NOT BIT-EXACT after {name}", file=sys.stderr)
            return 1
        totals = sorted(a + r for a, r in cycles)
        best = min(cycles, key=lambda c: c[0] + c[1])
        rows.append(
            {
                "name": name,
                "apply_ms": best[0],
                "restore_ms": best[1],
                "min_ms": totals[0],
                "median_ms": totals[len(totals) // 2],
            }
        )
        print(f"{name:40s} apply+restore min {totals[0]:9.1f} ms  median {rows[-1]['median_ms']:9.1f} ms", flush=True)
    t0 = time.perf_counter()
    window_losses(model, windows, args.batch)
    eval_after = time.perf_counter() - t0
    denom = min(eval_s, eval_after)
    for r in rows:
        r["pct_of_eval"] = 100.0 * r["min_ms"] / 1e3 / denom
        print(f"{r['name']:40s} {r['pct_of_eval']:6.2f} % of one evaluation ({denom:.2f} s)")
    data = load_results(Path(args.out))
    niceness = os.nice(0)  # recorded so that the command line can be rerun as it was
    block = {
        "command": shlex.join([*(["nice", "-n", str(niceness)] if niceness else []), "python", *sys.argv]),
        "date": args.date,
        "machine": args.machine,
        "torch": torch.__version__,
        "threads": args.threads,
        "windows": args.windows,
        "seq": args.seq,
        "batch": args.batch,
        "reps": args.timing_only,
        "eval_before_s": eval_s,
        "eval_after_s": eval_after,
        "eval_s": denom,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "rows": rows,
    }
    # One block per thread count: a new run replaces the block measured at its own thread count.
    data["timings"] = sorted(
        [t for t in data.get("timings", []) if t["threads"] != args.threads] + [block], key=lambda t: t["threads"]
    )
    write_results(Path(args.out), data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
