"""Seeded BCa bootstrap confidence interval of a mean (uniform pair resampling).

The interval is computed in float64 with numpy. Replicate ``b`` resamples indices
``numpy.random.default_rng(seed).integers(0, n, size=(replicates, n))[b]``, so any implementation drawing from the
same generator reproduces it exactly (the tests do so with a pure-Python reference).

* all values equal (including ``n == 1``) -> ``(mean, mean)``: there is nothing to resample;
* bias correction ``z0 = Phi^-1((#{theta* < theta} + 0.5 #{theta* == theta}) / B)``, clipped to
  ``(1e-6, 1 - 1e-6)``; the half-count for ties fixes the reference's tie-blind z0;
* acceleration from the jackknife of the mean; undefined (zero spread) -> 0, i.e. the BC percentile interval;
* bounds are linear-interpolated quantiles (numpy's default) of the replicates at the adjusted levels.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import numpy.typing as npt

_ND = NormalDist()


def bca_interval(values: npt.ArrayLike, *, replicates: int, alpha: float, seed: int) -> tuple[float, float]:
    """Two-sided ``1 - alpha`` BCa interval of ``mean(values)``. Raises ``ValueError`` on empty or non-finite
    input."""
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        raise ValueError("bca_interval needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError("bca_interval needs finite values")
    if n == 1 or bool(np.all(x == x[0])):
        # all equal: the mean is x[0] exactly (np.mean of 17 copies of v can round 1 ulp away from v)
        return float(x[0]), float(x[0])
    theta = float(x.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(replicates, n))
    stars = x[idx].mean(axis=1)
    below = float(np.count_nonzero(stars < theta)) + 0.5 * float(np.count_nonzero(stars == theta))
    p0 = min(max(below / replicates, 1e-6), 1.0 - 1e-6)
    z0 = _ND.inv_cdf(p0)
    jack = (x.sum() - x) / (n - 1)
    dev = jack.mean() - jack
    den = float(np.sum(dev**2)) ** 1.5
    a = float(np.sum(dev**3)) / (6.0 * den) if den > 0.0 else 0.0
    levels = []
    for q in (alpha / 2.0, 1.0 - alpha / 2.0):
        zq = _ND.inv_cdf(q)
        adj = z0 + (z0 + zq) / (1.0 - a * (z0 + zq))
        levels.append(_ND.cdf(adj))
    lo, hi = np.quantile(stars, levels)
    return float(lo), float(hi)
