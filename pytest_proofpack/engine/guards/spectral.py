"""Spectral guard: each weight matrix's largest singular value against **its own** baseline value.

Estimator (seeded, deterministic on a given device): exact (``eigvalsh`` of the float64 Gram matrix) when
``min(shape) <= EXACT_MAX_DIM``; otherwise fp32 power iteration on ``W^T W`` from a Gaussian start seeded by
``seed + crc32(matrix key)``, at least ``MIN_ITERS`` iterations, stopping when the relative change of sigma drops
below ``TOL`` (at most ``MAX_ITERS``). The residual ``||W^T W v - sigma^2 v|| / sigma^2`` is recorded.

Statistic: ``s = |log(sigma_now / sigma_base)|`` per matrix. A matrix is *capped* when ``s`` exceeds its family's
threshold (preset ``spectral.family_thresholds``, else
:data:`~pytest_proofpack.engine.config.DEFAULT_SPECTRAL_THRESHOLD`). ``spectral_stable = caps_applied <= max_caps``
and no *fatal degeneracy*: a non-finite sigma, or a sigma ratio outside ``[1/SPECTRAL_FATAL_RATIO,
SPECTRAL_FATAL_RATIO]`` (zeroed, exploded or NaN matrices). Expert slices are their own family (``expert_ffn``);
LLaMA ``mlp.gate_proj`` is ``ffn`` (the adapter's classification).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pytest_proofpack.engine.config import DEFAULT_SPECTRAL_THRESHOLD, SPECTRAL_FATAL_RATIO
from pytest_proofpack.engine.finite import all_finite
from pytest_proofpack.engine.preset import preset_or_default, thresholds_source
from pytest_proofpack.models.adapters import matrix, weight_refs

EXACT_MAX_DIM: Final = 512
MIN_ITERS: Final = 20
MAX_ITERS: Final = 500
TOL: Final = 1e-4

ESTIMATOR: Final[dict[str, object]] = {
    "type": "exact_gram_or_power_iter",
    "dtype": "float32",
    "exact_max_dim": EXACT_MAX_DIM,
    "min_iters": MIN_ITERS,
    "max_iters": MAX_ITERS,
    "rel_tol": TOL,
    "init": "gaussian(seed + crc32(key))",
}


def sigma_max(w: Any, seed: int) -> dict[str, Any]:
    """``{sigma, method, iters, residual, converged}`` for one matrix ``w`` (any dtype; computed in fp32)."""
    import torch

    with torch.no_grad():
        a = w.detach().to(torch.float32)
        if not bool(all_finite(a)):
            return {"sigma": None, "method": "non_finite", "iters": 0, "residual": None, "converged": False}
        if min(a.shape) <= EXACT_MAX_DIM:
            # exact: top eigenvalue of the smaller float64 Gram matrix (faster and steadier than svdvals on CPU)
            d = a.double()
            gram = d @ d.t() if d.shape[0] <= d.shape[1] else d.t() @ d
            s = math.sqrt(max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0))
            return {
                "sigma": s,
                "method": "gram_eigvalsh_fp64",
                "iters": 0,
                "residual": 0.0,
                "converged": True,
            }
        gen = torch.Generator(device=a.device).manual_seed(seed)
        v = torch.randn(a.shape[1], generator=gen, device=a.device, dtype=torch.float32)
        v = v / v.norm()
        sigma, prev, it, converged = 0.0, 0.0, 0, False
        for it in range(1, MAX_ITERS + 1):
            u = a @ v
            v = a.t() @ u
            nv = float(v.norm())
            if nv == 0.0:
                return {"sigma": 0.0, "method": "power_iter", "iters": it, "residual": 0.0, "converged": True}
            v = v / nv
            sigma = math.sqrt(nv)
            if it >= MIN_ITERS and abs(sigma - prev) <= TOL * sigma:
                converged = True
                break
            prev = sigma
        r = a.t() @ (a @ v) - (sigma**2) * v
        residual = float(r.norm()) / (sigma**2) if sigma > 0 else 0.0
        return {
            "sigma": sigma,
            "method": "power_iter",
            "iters": it,
            "residual": residual,
            "converged": converged,
        }


#: σ estimates of matrices seen before in this process, keyed by (matrix key, content fingerprint, seed). An edit
#: touches a few matrices; every other matrix keeps its bytes, so its σ is reused instead of recomputed.
_MEMO: dict[tuple[str, str, int], dict[str, Any]] = {}
_MEMO_MAX: Final = 20_000


def fingerprint(w: Any) -> str:
    """A content digest of a matrix: the 128-bit XXH3 of its bytes on CPU; on an accelerator (where a host copy
    would cost more than the σ estimate) float64 sum, sum of squares and a column-weighted sum.

    XXH3 is not cryptographic, but this is a cache key, not a seal: it tells a matrix an edit changed from one it
    did not, and 128 bits make an accidental collision impossible in practice. Every report fingerprints every
    matrix, so the hash is chosen for speed: XXH3 is many times faster than a cryptographic hash."""
    import torch
    import xxhash

    if w.device.type == "cpu":
        raw = w.detach().contiguous().view(torch.uint8).numpy()
        return str(xxhash.xxh3_128_hexdigest(raw))
    x = w.detach().to(torch.float64)
    cols = torch.arange(1, x.shape[-1] + 1, dtype=torch.float64, device=x.device)
    parts = torch.stack([x.sum(), (x * x).sum(), (x * cols).sum()]).tolist()
    return "dev:" + ",".join(f"{v:.17g}" for v in parts)


def measure(model: Any, seed: int) -> dict[str, dict[str, Any]]:
    """``{matrix key: {family, sigma, method, iters, residual, converged}}`` for every weight matrix.

    Estimates are memoised by content fingerprint (see :data:`_MEMO`), so a matrix an edit did not touch is
    never re-estimated; the result is identical to a fresh estimate because the estimator is seeded.
    """
    out: dict[str, dict[str, Any]] = {}
    for ref in weight_refs(model):
        w = matrix(model, ref)
        mseed = seed + zlib.crc32(ref.key.encode()) % 1_000_003
        key = (ref.key, fingerprint(w), mseed)
        est = _MEMO.get(key)
        if est is None:
            est = sigma_max(w, mseed)
            if len(_MEMO) >= _MEMO_MAX:
                _MEMO.clear()
            _MEMO[key] = est
        out[ref.key] = {"family": ref.family, **est}
    return out


def family_threshold(preset: Mapping[str, Any], family: str) -> tuple[float, str]:
    """The family's threshold and its source (``preset`` or ``default``)."""
    return preset_or_default(preset, ("spectral", "family_thresholds", family), DEFAULT_SPECTRAL_THRESHOLD)


def _degeneracy(sigma_base: float | None, sigma_now: float | None) -> str | None:
    """Why the pair admits no log ratio (``non_finite_sigma``, ``zero_sigma``), or ``None`` when it does."""
    if sigma_base is None or sigma_now is None or not math.isfinite(sigma_now) or sigma_base <= 0.0:
        return "non_finite_sigma"
    if sigma_now <= 0.0:
        return "zero_sigma"
    return None


@dataclass
class _Findings:
    """The comparison so far: per-family tallies, one row per comparable matrix, the fatal degeneracies, the
    matrices missing from the current measurement and where the thresholds came from."""

    families: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    fatal: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)

    def add(self, key: str, base: Mapping[str, Any], now: Mapping[str, Any] | None, preset: Mapping[str, Any]) -> None:
        family = str(base["family"])
        threshold, source = family_threshold(preset, family)
        self.sources.add(source)
        tally = self.families.setdefault(
            family, {"count": 0, "max_abs_log_ratio": 0.0, "threshold": threshold, "violations": 0}
        )
        tally["count"] += 1
        if now is None:
            self.missing.append(key)  # structure is the invariants guard's business; nothing to compare here
            return
        sigma_base: Any = base.get("sigma")
        sigma_now: Any = now.get("sigma")
        reason = _degeneracy(sigma_base, sigma_now)
        if reason is not None:
            self._fatal(key, family, reason, sigma_base, sigma_now)
            tally["violations"] += 1
            return
        log_ratio = math.log(sigma_now / sigma_base)
        stat = abs(log_ratio)
        tally["max_abs_log_ratio"] = max(tally["max_abs_log_ratio"], stat)
        self.rows.append(
            {
                "module": key,
                "family": family,
                "sigma_base": sigma_base,
                "sigma_now": sigma_now,
                "log_ratio": log_ratio,
                "threshold": threshold,
                "capped": stat > threshold,
            }
        )
        if stat > threshold:
            tally["violations"] += 1
        if stat > math.log(SPECTRAL_FATAL_RATIO):
            self._fatal(key, family, "sigma_ratio_out_of_range", sigma_base, sigma_now)

    def _fatal(self, key: str, family: str, reason: str, sigma_base: float | None, sigma_now: float | None) -> None:
        self.fatal.append(
            {"module": key, "family": family, "reason": reason, "sigma_base": sigma_base, "sigma_now": sigma_now}
        )


def compare(
    base: Mapping[str, Mapping[str, Any]],
    now: Mapping[str, Mapping[str, Any]],
    preset: Mapping[str, Any],
    max_caps: int,
) -> dict[str, Any]:
    """The report's ``spectral`` section from baseline and current measurements."""
    found = _Findings()
    for key, entry in base.items():
        found.add(key, entry, now.get(key), preset)
    caps = sum(1 for r in found.rows if r["capped"]) + sum(
        1 for x in found.fatal if x["reason"] != "sigma_ratio_out_of_range"
    )
    found.rows.sort(key=lambda r: -abs(r["log_ratio"]))
    return {
        "caps_applied": caps,
        "max_caps": max_caps,
        "caps_exceeded": caps > max_caps,
        "stable": caps <= max_caps and not found.fatal,
        "statistic": "abs(log(sigma_now / sigma_base)) per matrix vs its own baseline",
        "modules_checked": len(base),
        "families": found.families,
        "fatal": found.fatal[:50],
        "fatal_count": len(found.fatal),
        "missing_modules": found.missing[:50],
        "top_modules": found.rows[:10],
        "estimator": ESTIMATOR,
        "max_residual": max(
            (float(v["residual"]) for v in now.values() if v.get("residual") is not None), default=0.0
        ),
        "unconverged": sum(1 for v in now.values() if not v.get("converged", True)),
        "thresholds_source": thresholds_source(found.sources),
    }
