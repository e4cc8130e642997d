"""Cost of the RMT guard's per-module edge statistic (``_edge_and_mean_square``) on one CPU thread.

Times the statistic on activation-shaped inputs (tokens x features) and splits it into the standardisation plus
Gram product and the eigenvalue search (Lanczos since engine 5, 100 power iterations before). Shapes default to
SmolLM2-135M's guard capture: 4 windows x 256 tokens, 576 features at attention / MLP outputs, 1536 at the MLP
intermediate.

    python bench/rmt_edge_cost.py [--tokens 1024] [--features 1536 576] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from pytest_proofpack.engine.guards.rmt import _edge_and_mean_square


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--features", type=int, nargs="+", default=[1536, 576])
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for n in a.features:
        x = torch.randn(a.tokens, n)
        float(_edge_and_mean_square(x)[0])  # warm-up
        t = time.perf_counter()
        for _ in range(a.repeats):
            float(_edge_and_mean_square(x)[0])
        whole = (time.perf_counter() - t) / a.repeats
        t = time.perf_counter()
        for _ in range(a.repeats):
            z = x - x.sum(0, keepdim=True) / a.tokens  # as _edge_terms: centre, two-pass deviation, scale
            z.mul_(a.tokens**0.5 / torch.linalg.vector_norm(z, dim=0, keepdim=True))
            _ = z.t() @ z if n <= a.tokens else z @ z.t()
        gram = (time.perf_counter() - t) / a.repeats
        print(f"{a.tokens} x {n}: edge statistic {whole * 1e3:.1f} ms (standardise + Gram {gram * 1e3:.1f} ms, "
              f"eigenvalue search and the rest {(whole - gram) * 1e3:.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
