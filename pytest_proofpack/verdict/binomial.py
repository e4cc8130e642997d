"""Exact binomial confidence bounds in the standard library: the Clopper–Pearson upper and lower bounds.

The upper bound of ``k`` successes in ``n`` trials is the ``1 - alpha/2`` quantile of Beta(k+1, n-k). It is found by
bisection on the log of the binomial CDF, ``log P(X <= k; n, p) = log I_{1-p}(n-k, k+1)``, whose regularized
incomplete beta function is evaluated by its continued fraction with the prefactor in log space: no term over- or
underflows, so the bound is exact to double precision from n = 1 to n = 10^6 and beyond (summing the binomial
terms, as before, overflowed past n of about 1000).
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["binomial_log_cdf", "clopper_pearson_lower", "clopper_pearson_upper", "log_beta_cdf"]

_EPS: Final = 1e-16
_TINY: Final = 1e-300


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of ``I_x(a, b)`` (modified Lentz), for ``x < (a + 1) / (a + b + 2)``."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 100_000 + 40 * int(math.sqrt(a + b))):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + aa / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def log_beta_cdf(x: float, a: float, b: float) -> float:
    """``log I_x(a, b)``, the log of the regularized incomplete beta function (``-inf`` at ``x = 0``)."""
    if x <= 0.0:
        return -math.inf
    if x >= 1.0:
        return 0.0
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    if x < (a + 1.0) / (a + b + 2.0):
        return log_front - math.log(a) + math.log(_continued_fraction(a, b, x))
    tail = math.exp(log_front - math.log(b) + math.log(_continued_fraction(b, a, 1.0 - x)))  # 1 - I_x(a, b)
    return math.log1p(-tail) if tail < 1.0 else -math.inf


def binomial_log_cdf(k: int, n: int, p: float) -> float:
    """``log P(X <= k)`` for ``X ~ Binomial(n, p)``."""
    if k >= n:
        return 0.0
    if k < 0:
        return -math.inf
    return log_beta_cdf(1.0 - p, n - k, k + 1)


def clopper_pearson_upper(successes: int, n: int, alpha: float = 0.05) -> float:
    """The exact two-sided ``1 - alpha`` Clopper–Pearson upper bound of a binomial proportion: the ``1 - alpha/2``
    quantile of Beta(successes + 1, n - successes). ``1.0`` when ``n <= 0`` or every trial succeeded."""
    if n <= 0 or successes >= n:
        return 1.0
    target = math.log(alpha / 2)
    if successes <= 0:
        return -math.expm1(target / n)  # P(X = 0) = (1 - p)^n = alpha / 2
    lo, hi = successes / n, 1.0  # the CDF at p = k/n is about 1/2, above alpha/2; at p = 1 it is 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if binomial_log_cdf(successes, n, mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def clopper_pearson_lower(successes: int, n: int, alpha: float = 0.05) -> float:
    """The exact two-sided ``1 - alpha`` Clopper–Pearson lower bound: the ``alpha/2`` quantile of
    Beta(successes, n - successes + 1), by symmetry one minus the upper bound of the failures. ``0.0`` when
    ``n <= 0`` or no trial succeeded."""
    if n <= 0 or successes <= 0:
        return 0.0
    return 1.0 - clopper_pearson_upper(n - min(successes, n), n, alpha)
