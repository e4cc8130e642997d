"""BCa bootstrap: agreement with an independent float64 pure-Python reference, degenerate cases."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import numpy as np
import pytest

from pytest_proofpack.engine.bootstrap import bca_interval


def _quantile(sorted_vals: list[float], q: float) -> float:
    """numpy's default (linear) quantile, written out."""
    pos = q * (len(sorted_vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def _reference_bca(x: list[float], replicates: int, alpha: float, seed: int) -> tuple[float, float]:
    """Textbook BCa (Efron & Tibshirani ch. 14) with loops and math.fsum; same index stream as the engine."""
    n = len(x)
    theta = math.fsum(x) / n
    idx = np.random.default_rng(seed).integers(0, n, size=(replicates, n)).tolist()
    stars = [math.fsum(x[i] for i in row) / n for row in idx]
    less = sum(1 for s in stars if s < theta) + 0.5 * sum(1 for s in stars if s == theta)
    nd = NormalDist()
    z0 = nd.inv_cdf(min(max(less / replicates, 1e-6), 1 - 1e-6))
    total = math.fsum(x)
    jack = [(total - xi) / (n - 1) for xi in x]
    jbar = math.fsum(jack) / n
    num = math.fsum((jbar - j) ** 3 for j in jack)
    den = 6.0 * math.fsum((jbar - j) ** 2 for j in jack) ** 1.5
    a = num / den
    out = []
    for q in (alpha / 2, 1 - alpha / 2):
        zq = nd.inv_cdf(q)
        out.append(_quantile(sorted(stars), nd.cdf(z0 + (z0 + zq) / (1 - a * (z0 + zq)))))
    return out[0], out[1]


# n >= 20: a resample equal to the sample as a multiset (an exact tie at theta, where fsum and numpy
# rounding may disagree) then has probability < 1e-7 per replicate.
@pytest.mark.parametrize("n", [20, 37, 200])
def test_matches_float64_reference_on_fresh_data(n: int) -> None:
    seed = random.SystemRandom().randrange(2**31)
    rng = np.random.default_rng(seed)
    # skewed data so the acceleration and bias correction are far from zero
    x = (rng.lognormal(0.0, 1.0, size=n) * rng.choice([-1.0, 1.0], size=n) * 0.01).tolist()
    got = bca_interval(x, replicates=700, alpha=0.05, seed=seed)
    want = _reference_bca(x, 700, 0.05, seed)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-13)
    assert got[0] <= float(np.mean(x)) <= got[1]


def test_interval_covers_mean_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(random.SystemRandom().randrange(2**31))
    small = rng.normal(0.3, 1.0, size=20)
    big = rng.normal(0.3, 1.0, size=2000)
    lo_s, hi_s = bca_interval(small, replicates=1000, alpha=0.05, seed=1)
    lo_b, hi_b = bca_interval(big, replicates=1000, alpha=0.05, seed=1)
    assert hi_b - lo_b < hi_s - lo_s
    assert lo_b < big.mean() < hi_b


def test_all_equal_gives_degenerate_interval() -> None:
    v = random.SystemRandom().uniform(-1, 1)
    assert bca_interval([v] * 17, replicates=500, alpha=0.05, seed=3) == (v, v)
    assert bca_interval([0.0] * 8, replicates=500, alpha=0.05, seed=3) == (0.0, 0.0)
    assert bca_interval([v], replicates=500, alpha=0.05, seed=3) == (v, v)


def test_same_seed_same_interval_other_seed_differs() -> None:
    x = np.random.default_rng(random.SystemRandom().randrange(2**31)).normal(size=50)
    a = bca_interval(x, replicates=400, alpha=0.1, seed=11)
    assert a == bca_interval(x, replicates=400, alpha=0.1, seed=11)
    assert a != bca_interval(x, replicates=400, alpha=0.1, seed=12)


def test_rejects_empty_and_non_finite() -> None:
    with pytest.raises(ValueError):
        bca_interval([], replicates=10, alpha=0.05, seed=0)
    with pytest.raises(ValueError):
        bca_interval([1.0, math.nan], replicates=10, alpha=0.05, seed=0)
