"""The primary metric's comparison with the baseline: pairing, ratio, confidence interval, gate and drift.

Contract (``ppl_causal``, on the per-window losses of :mod:`pytest_proofpack.engine.metric`):

* the subject's windows must equal the baseline's, id by id and hash by hash, else :class:`PairingError`;
* a non-finite window loss (``None``) marks the metric degraded;
* ``ratio_vs_baseline = exp(mean_i (l_i^subject - l_i^baseline))`` over the final windows (equal token counts, so
  this is also ``ppl_subject / ppl_baseline``); the CI is the seeded BCa interval of the mean paired difference;
* gate ``point``: ratio <= limit + hysteresis; gate ``upper``: exp(CI upper bound) <= limit. Either also needs a
  finite, non-degraded metric;
* drift: both arms are paired against the baseline on the *same* windows; acceptable iff
  ``|log(preview_ratio) - log(final_ratio)| <= drift_band``. A noop has both logs exactly 0, so it always passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from pytest_proofpack.engine.bootstrap import bca_interval
from pytest_proofpack.engine.config import HYSTERESIS_RATIO, EngineConfig
from pytest_proofpack.errors import ProofpackError

if TYPE_CHECKING:
    from pytest_proofpack.data.windows import WindowSet

#: Offset added to ``EngineConfig.seed`` for the final arm's bootstrap, so it never shares a stream with the
#: variance guard's (:data:`~pytest_proofpack.engine.guards.variance.VE_SEED_OFFSET`).
FINAL_CI_SEED_OFFSET = 503


class PairingError(ProofpackError):
    """The subject's evaluation windows are not the baseline's (id or token hash differ)."""

    error_class = "bad_input"


def check_pairing(windows: WindowSet, ids: Sequence[str], hashes: Sequence[str], arm: str) -> None:
    """Raise :class:`PairingError` unless ``windows`` are exactly the baseline's windows of ``arm``."""
    if tuple(windows.ids) != tuple(ids) or tuple(windows.hashes) != tuple(hashes):
        bad = next(
            (
                i
                for i, (a, b, c, d) in enumerate(zip(windows.ids, ids, windows.hashes, hashes, strict=False))
                if a != b or c != d
            ),
            min(len(windows.ids), len(ids)),
        )
        raise PairingError(
            f"{arm} window {bad} does not match the baseline (id/hash differ or counts {len(windows)} vs "
            f"{len(ids)}); rebuild the baseline for these windows or pass the baseline's window set"
        )


def _finite_deltas(
    subject: Sequence[float | None], baseline: Sequence[float | None]
) -> tuple[np.ndarray, int]:
    """Paired differences of the windows finite in both, and the count of subject windows that are not."""
    deltas = [s - b for s, b in zip(subject, baseline, strict=True) if s is not None and b is not None]
    return np.asarray(deltas, dtype=np.float64), sum(1 for s in subject if s is None)


def _ppl(losses: Sequence[float | None]) -> float | None:
    """``exp(mean loss)`` when every loss is finite, else ``None``."""
    finite = [v for v in losses if v is not None]
    if not finite or len(finite) != len(losses):
        return None
    return math.exp(float(np.mean(np.asarray(finite, dtype=np.float64))))


def _safe_exp(x: float) -> float | None:
    """``exp(x)``, or ``None`` where it overflows or is not finite."""
    try:
        v = math.exp(x)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


def paired_primary_metric(
    subject_preview: Sequence[float | None],
    subject_final: Sequence[float | None],
    base_preview: Sequence[float | None],
    base_final: Sequence[float | None],
    cfg: EngineConfig,
    *,
    seq_len: int,
    drift_band: float,
    forward_error: str | None = None,
) -> tuple[dict[str, object], bool, bool]:
    """The report's ``primary_metric`` section plus ``(primary_metric_acceptable, drift_acceptable)``."""
    d_final, bad_final = _finite_deltas(subject_final, base_final)
    d_prev, bad_prev = _finite_deltas(subject_preview, base_preview)
    reasons = _degraded_reasons(forward_error, bad_final + bad_prev, paired=bool(d_final.size))
    log_ratio, ratio, log_ci = _final_ratio(d_final, cfg)
    invalid = ratio is None
    if invalid and "degenerate_delta:no_pairs" not in reasons:
        reasons.append("non_finite_ratio")
    degraded = invalid or bool(reasons)
    within, gate_fields = _gate(cfg, ratio, log_ci)
    acceptable = bool(within and not degraded)
    drift_ok, drift = _drift(d_prev, d_final, log_ratio, ratio, drift_band, all_finite=not (bad_final or bad_prev))
    section: dict[str, object] = {
        "kind": "ppl_causal",
        "preview": _ppl(subject_preview),
        "final": _ppl(subject_final),
        "baseline_preview": _ppl(base_preview),
        "baseline_final": _ppl(base_final),
        "ratio_vs_baseline": ratio,
        "log_ratio": log_ratio if math.isfinite(log_ratio) else None,
        "ci": [_safe_exp(log_ci[0]), _safe_exp(log_ci[1])] if log_ci is not None else None,
        "log_ci": log_ci,
        **gate_fields,
        "degraded": degraded,
        "invalid": invalid,
        "degraded_reason": ";".join(reasons) if reasons else None,
        "n_windows": len(subject_final),
        "n_preview_windows": len(subject_preview),
        "n_tokens": len(subject_final) * max(seq_len - 1, 0),
        "non_finite_windows": bad_final + bad_prev,
        "bootstrap": {
            "method": "bca_uniform_pairs",
            "replicates": cfg.bootstrap_replicates,
            "alpha": cfg.alpha,
            "seed": cfg.seed + FINAL_CI_SEED_OFFSET,
        },
        "drift": drift,
    }
    return section, acceptable, drift_ok


def _degraded_reasons(forward_error: str | None, non_finite: int, *, paired: bool) -> list[str]:
    """Why the metric is degraded before its ratio is known: the subject's forward failed, some windows'
    losses are not finite, or no final window pairs."""
    reasons: list[str] = []
    if forward_error is not None:
        reasons.append(f"forward_error:{forward_error}")
    if non_finite:
        reasons.append(f"non_finite_windows:{non_finite}")
    if not paired:
        reasons.append("degenerate_delta:no_pairs")
    return reasons


def _final_ratio(d_final: np.ndarray, cfg: EngineConfig) -> tuple[float, float | None, list[float] | None]:
    """``(log ratio, ratio, BCa CI of the log ratio)`` of the final arm's paired differences; ``(nan, None,
    None)`` without pairs, and a ratio of ``None`` when it overflows."""
    if not d_final.size:
        return math.nan, None, None
    log_ratio = float(d_final.mean())
    lo, hi = bca_interval(
        d_final,
        replicates=cfg.bootstrap_replicates,
        alpha=cfg.alpha,
        seed=cfg.seed + FINAL_CI_SEED_OFFSET,
    )
    return log_ratio, _safe_exp(log_ratio), [lo, hi]


def _gate(cfg: EngineConfig, ratio: float | None, log_ci: list[float] | None) -> tuple[bool, dict[str, Any]]:
    """The gate rule applied: whether the gate value is within the limit, and the section's gate fields."""
    limit = cfg.ratio_limit
    if cfg.gate_rule == "point":
        gate_value = ratio
        within = gate_value is not None and gate_value <= limit + HYSTERESIS_RATIO
    else:
        gate_value = _safe_exp(log_ci[1]) if log_ci is not None else None
        within = gate_value is not None and gate_value <= limit
    fields: dict[str, Any] = {
        "gate_rule": cfg.gate_rule,
        "gate_value": gate_value,
        "limit": limit,
        "hysteresis": HYSTERESIS_RATIO if cfg.gate_rule == "point" else 0.0,
        "hysteresis_applied": bool(
            cfg.gate_rule == "point" and ratio is not None and limit < ratio <= limit + HYSTERESIS_RATIO
        ),
    }
    return within, fields


#: A preview/final gap beyond this many standard errors is drift: two-sided 0.1 % under a normal difference.
DRIFT_Z: Final = 3.29


def _drift(
    d_prev: np.ndarray,
    d_final: np.ndarray,
    log_ratio: float,
    ratio: float | None,
    drift_band: float,
    *,
    all_finite: bool,
) -> tuple[bool, dict[str, Any]]:
    """Whether the preview and final arms agree (both paired, every window finite), and the ``drift`` fields.

    The gap between the two arms' mean log ratios must lie within ``drift_band`` (the calibrated band) or within
    ``DRIFT_Z`` standard errors of the difference of two window means, whichever is wider: the preview arm has few
    windows, and a gap that sampling alone explains is not drift. The standard error pools both arms' per-window
    deltas (under no drift they come from one distribution), so it does not rest on the preview's few windows.
    """
    log_prev = float(d_prev.mean()) if d_prev.size else math.nan
    gap = abs(log_prev - log_ratio) if d_prev.size and d_final.size else math.nan
    se = _gap_standard_error(d_prev, d_final)
    band = max(drift_band, DRIFT_Z * se) if math.isfinite(se) else drift_band
    drift_ok = bool(math.isfinite(gap) and gap <= band and all_finite)
    return drift_ok, {
        "rule": "abs(log(preview_ratio) - log(final_ratio)) <= max(band, z * se); both ratios paired vs baseline",
        "preview_ratio": _safe_exp(log_prev) if d_prev.size else None,
        "final_ratio": ratio,
        "log_gap": gap if math.isfinite(gap) else None,
        "band": drift_band,
        "z": DRIFT_Z,
        "se": se if math.isfinite(se) else None,
        "band_used": band,
    }


def _gap_standard_error(d_prev: np.ndarray, d_final: np.ndarray) -> float:
    """Standard error of ``mean(d_prev) - mean(d_final)`` from the pooled variance of both arms (NaN if < 3)."""
    n_prev, n_final = d_prev.size, d_final.size
    if n_prev < 1 or n_final < 1 or n_prev + n_final < 3:
        return math.nan
    pooled = np.concatenate([d_prev - d_prev.mean(), d_final - d_final.mean()])
    variance = float(np.sum(pooled * pooled)) / (n_prev + n_final - 2)
    return math.sqrt(variance * (1.0 / n_prev + 1.0 / n_final))
