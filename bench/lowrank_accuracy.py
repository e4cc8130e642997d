"""Accuracy and cost of the low-rank edit's randomized truncation on SmolLM2's weight matrices (one CPU thread).

Accuracy: for the matrices of a few layers and a few seeds, how much of the exact rank-r truncation's energy
(``sum(S[:r]^2) / ||W||^2`` from a float64 SVD) the edit's truncation retains, with bf16 and with fp32 power
iterations, and with the previous algorithm (edits 3: four fp32 power iterations ending in ``B = Qᵀ W``, kept here
only as the baseline). Cost: ``lowrank_truncate`` over every matrix of the model, each variant alternating for
``--rounds`` rounds (the box's speed drifts; only alternated figures compare). The matrices are those that
``lowrank_svd:<rank>:all`` edits.

    python bench/lowrank_accuracy.py [--rank 32] [--layers 0 10 20 29] [--seeds 1 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from collections.abc import Callable

import torch

from pytest_proofpack.edits import parse_edit_spec
from pytest_proofpack.edits.lowrank import OVERSAMPLING, POWER_ITERATIONS, lowrank_truncate, native_bf16
from pytest_proofpack.edits.spec import scope_matches
from pytest_proofpack.models.adapters import matrix, weight_refs


def previous_truncate(w: torch.Tensor, rank: int, seed: int) -> tuple[torch.Tensor, float]:
    """The edits-3 algorithm: ``Q = orth(W Ω)``, four times ``Q = orth(W (Wᵀ Q))`` in fp32, then ``B = Qᵀ W``."""
    q = min(rank + OVERSAMPLING, min(w.shape))
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(w @ torch.randn(w.shape[1], q, generator=gen)).Q
    for _ in range(POWER_ITERATIONS):
        basis = torch.linalg.qr(w @ (w.T @ basis)).Q
    b = (basis.T @ w).double()
    evals, evecs = torch.linalg.eigh(b @ b.T)
    top = evecs[:, -rank:]
    total = float((torch.linalg.vector_norm(w, dim=1).double() ** 2).sum())
    out = (basis @ top.float()) @ (top.T @ b).float()
    return out, float(evals[-rank:].clamp_min(0.0).sum()) / total


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 10, 20, 29])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from smoke_assets import smoke_model_and_tokens  # bench/ is on sys.path when run as a script

    model, _tokens, name = smoke_model_and_tokens()
    scope = parse_edit_spec(f"lowrank_svd:{args.rank}:all").scope
    refs = [r for r in weight_refs(model) if scope_matches(scope, r)]  # the matrices lowrank_svd:<rank>:all edits
    views = [matrix(model, r) for r in refs]
    variants: dict[str, Callable[[torch.Tensor, int], tuple[torch.Tensor, float]]] = {
        "bf16 power iterations": lambda w, s: lowrank_truncate(w, args.rank, seed=s, low_precision=True)[:2],
        "fp32 power iterations": lambda w, s: lowrank_truncate(w, args.rank, seed=s, low_precision=False)[:2],
        "previous (edits 3)": lambda w, s: previous_truncate(w, args.rank, s),
    }
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, model {name}, "
          f"rank {args.rank}, native bf16: {native_bf16(torch.device('cpu'))}, load {os.getloadavg()[0]:.2f}")
    shortfall: dict[str, list[float]] = {k: [] for k in variants}
    sample = [v for r, v in zip(refs, views, strict=True) if r.layer in args.layers and min(v.shape) > args.rank]
    for w in sample:
        s = torch.linalg.svdvals(w.double())
        exact = float((s[: args.rank] ** 2).sum() / (s**2).sum())
        for label, fn in variants.items():
            for seed in args.seeds:
                shortfall[label].append((exact - fn(w, seed)[1]) / exact)
    print(f"retained energy short of the exact truncation's ({len(sample)} matrices x {len(args.seeds)} seeds):")
    for label, values in shortfall.items():
        print(f"  {label:24s} mean {statistics.mean(values) * 100:.3f} %  max {max(values) * 100:.3f} %")
    timings: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for label, fn in variants.items():
            t = time.perf_counter()
            for i, w in enumerate(views):
                if min(w.shape) > args.rank:
                    fn(w, i)
            timings[label].append(time.perf_counter() - t)
    print(f"truncation of the {len(views)} matrices of lowrank_svd:{args.rank}:all, {args.rounds} alternated rounds:")
    for label, values in timings.items():
        print(f"  {label:24s} median {statistics.median(values) * 1e3:.0f} ms  "
              f"({', '.join(f'{v * 1e3:.0f}' for v in values)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
