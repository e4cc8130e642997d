"""Edit and fault effects on a real model: perplexity ratio, parameters touched, apply/restore cost.

Usage (CPU, ~10 minutes on 2 cores)::

    python bench/edit_effects.py --model /tmp/smol/hf --tokens /tmp/smol/shakespeare_tokens.npy \
        --out bench/edit_effects.md

For every edit spec and every fault (the scenarios' env) it applies the change in place, evaluates, restores
and checks that every parameter is bit-identical to the baseline again. ``ratio = exp(mean over windows of
(edited log-loss - base log-loss))`` on ``--windows`` contiguous, evenly spaced windows of ``--seq`` tokens.
Timings are wall clock on a shared machine: compare columns of one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_proofpack.edits import apply_edit, parse_edit_spec
from pytest_proofpack.faults import apply_fault
from pytest_proofpack.models.adapters import find_blocks


def make_windows(tokens: np.ndarray[Any, Any], n: int, seq: int) -> torch.Tensor:
    starts = np.linspace(0, len(tokens) - seq - 1, n).astype(np.int64)
    return torch.from_numpy(np.stack([tokens[s : s + seq] for s in starts]).astype(np.int64))


@torch.inference_mode()
def window_losses(model: Any, windows: torch.Tensor, batch: int) -> torch.Tensor:
    out = []
    for i in range(0, windows.shape[0], batch):
        x = windows[i : i + batch]
        logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none"
        )
        out.append(ce.view(x.shape[0], -1).mean(1))
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
    ap.add_argument("--model", default="/tmp/smol/hf")
    ap.add_argument("--tokens", default="/tmp/smol/shakespeare_tokens.npy")
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
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    model: Any = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    n_layers = len(find_blocks(model)[1])
    windows = make_windows(np.load(args.tokens), args.windows, args.seq)
    snap = snapshot(model)

    t0 = time.perf_counter()
    base = window_losses(model, windows, args.batch)
    eval_s = time.perf_counter() - t0
    base_ppl = math.exp(float(base.mean()))
    print(f"base ppl {base_ppl:.3f}  eval {eval_s:.2f}s  layers {n_layers}", flush=True)

    rows: list[dict[str, Any]] = []
    only = [s for s in args.only.split(",") if s]
    if args.timing_only:
        return timing_only(model, snap, args, only, n_layers, eval_s)
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

    lines = [
        f"# Edit and fault effects on {Path(args.model).name} ({type(model).__name__}, {n_layers} layers)",
        "",
        f"Command: `python bench/edit_effects.py --model {args.model} --tokens {args.tokens}`  ",
        f"{args.windows} windows x {args.seq} tokens, batch {args.batch}, fp32, {args.threads} threads. "
        f"Base ppl {base_ppl:.3f}; one evaluation {eval_s:.2f} s. Every restore checked bit-exact.",
        "",
        "| group | spec / fault | ratio | changed % of scope | matrices | apply ms | restore ms "
        "| (apply+restore) / eval | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pct = f"{r['changed_pct']:.2f}" if r["changed_pct"] is not None else "-"
        notes = ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r["extra"].items()
        )
        lines.append(
            f"| {r['group']} | `{r['name']}` | {fmt_ratio(r['ratio'])} | {pct} | {r['n_modules']} "
            f"| {r['apply_ms']:.1f} | {r['restore_ms']:.1f} | {r['cost_pct_of_eval']:.1f}% | {notes} |"
        )
    out = Path(args.out)
    for path, text in (
        (out, "\n".join(lines) + "\n"),
        (out.with_suffix(".json"), json.dumps(rows, indent=1)),
    ):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    print(f"wrote {out}")
    return 0


def timing_only(
    model: Any,
    snap: dict[str, torch.Tensor],
    args: argparse.Namespace,
    only: list[str],
    n_layers: int,
    eval_s: float,
) -> int:
    """Apply+restore each change ``--timing-only`` times (no evaluation); print min and median cost."""
    jobs: list[tuple[str, dict[str, str] | None]] = [
        (s.format(mid=n_layers // 2, last=n_layers - 1), None) for _, s in EDITS
    ]
    jobs += list(fault_list(Path(args.scenarios)))
    print(f"| spec / fault | apply+restore min ms | median ms | min as % of one eval ({eval_s:.2f} s) |")
    print("|---|---|---|---|")
    for name, env in jobs:
        if only and not any(o in name for o in only):
            continue
        costs = []
        for _ in range(args.timing_only):
            t = time.perf_counter()
            change = (
                apply_edit(model, parse_edit_spec(name)) if env is None else apply_fault(model, name, env)
            )
            change.restore()
            costs.append((time.perf_counter() - t) * 1e3)
        if not same_as(model, snap):
            print(f"RESTORE NOT BIT-EXACT after {name}", file=sys.stderr)
            return 1
        costs.sort()
        print(
            f"| `{name}` | {costs[0]:.1f} | {costs[len(costs) // 2]:.1f} | {costs[0] / 10 / eval_s:.1f}% |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
