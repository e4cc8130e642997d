"""Cost of the RMT guard's per-module edge statistic (``edge_and_mean_square``) on one CPU thread.

Times the statistic on activation-shaped inputs (tokens x features) and splits off the eigenvalue search (Lanczos
since engine 5, 100 power iterations before; since engine 6, for a Gram matrix of size >= 768, on the Gram matrix
applied implicitly, so that the search includes what used to be the Gram product). Shapes default to
SmolLM2-135M's guard capture: 4 windows x 256 tokens, 576 features at attention / MLP outputs, 1536 at the MLP
intermediate.

    python bench/rmt_edge_cost.py [--tokens 1024] [--features 1536 576] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from pytest_proofpack.engine.guards.edge_statistic import edge_and_mean_square, lanczos_coefficients


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
        float(edge_and_mean_square(x)[0])  # warm-up
        t = time.perf_counter()
        for _ in range(a.repeats):
            float(edge_and_mean_square(x)[0])
        whole = (time.perf_counter() - t) / a.repeats
        z = torch.randn(a.tokens, n)  # any matrix of the activation's shape: Lanczos costs the same
        t = time.perf_counter()
        for _ in range(a.repeats):
            lanczos_coefficients(z)
        search = (time.perf_counter() - t) / a.repeats
        print(f"{a.tokens} x {n}: edge statistic {whole * 1e3:.1f} ms (eigenvalue search {search * 1e3:.1f} ms, "
              f"standardisation, any Gram product and the rest {(whole - search) * 1e3:.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
