"""The primary metric: batched, unpadded per-window log-loss, paired with the baseline by window id and hash.

Contract (``ppl_causal``):

* a window is one full ``seq_len`` row of real tokens; its loss is the mean next-token NLL over its
``seq_len - 1``
  predicted positions, computed from fp32 logits; windows are evaluated ``batch_size`` rows at a time, no
  padding;
* a non-finite window loss keeps its slot (``None`` in JSON) and marks the metric degraded;
* the subject's windows must equal the baseline's, id by id and hash by hash, else :class:`PairingError`;
* ``ratio_vs_baseline = exp(mean_i (l_i^subject - l_i^baseline))`` over the final windows (equal token
counts, so
  this is also ``ppl_subject / ppl_baseline``); the CI is the seeded BCa interval of the mean paired
  difference;
* gate ``point``: ratio <= limit + hysteresis; gate ``upper``: exp(CI upper bound) <= limit. Either also
needs a
  finite, non-degraded metric;
* drift: both arms are paired against the baseline on the *same* windows; acceptable iff
  ``|log(preview_ratio) - log(final_ratio)| <= drift_band``. A noop has both logs exactly 0, so it always
  passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_proofpack.engine.bootstrap import bca_interval
from pytest_proofpack.engine.config import HYSTERESIS_RATIO, EngineConfig
from pytest_proofpack.errors import ProofpackError

if TYPE_CHECKING:
    import torch

    from pytest_proofpack.data.windows import WindowSet

#: Offsets added to ``EngineConfig.seed`` so the two bootstraps of one report never share a stream.
FINAL_CI_SEED_OFFSET = 503
PREVIEW_CI_SEED_OFFSET = 7


class PairingError(ProofpackError):
    """The subject's evaluation windows are not the baseline's (id or token hash differ)."""

    error_class = "bad_input"


def token_nll(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-position next-token NLL ``[b, seq_len - 1]`` in fp32 for full (unpadded) rows ``input_ids [b,
    L]``."""
    import torch
    import torch.nn.functional as F

    out = model(input_ids=input_ids, use_cache=False)
    logits = out.logits[:, :-1, :].float()
    target = input_ids[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    return nll.view(target.shape).to(torch.float32)


def window_losses(model: Any, windows: WindowSet, *, batch_size: int, device: str) -> list[float | None]:
    """Mean NLL of every window, in order; ``None`` where the loss is not finite.

    Losses stay on the device until the end (one host transfer per call).
    """
    import torch

    chunks: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            ids = windows.input_ids[start : start + batch_size].to(device)
            chunks.append(token_nll(model, ids).mean(dim=1))
    if not chunks:
        return []
    values = torch.cat(chunks).double().cpu().numpy()
    return [float(v) if math.isfinite(float(v)) else None for v in values]


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
    finite = [v for v in losses if v is not None]
    if not finite or len(finite) != len(losses):
        return None
    return math.exp(float(np.mean(np.asarray(finite, dtype=np.float64))))


def _safe_exp(x: float) -> float | None:
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
    reasons: list[str] = []
    if forward_error is not None:
        reasons.append(f"forward_error:{forward_error}")
    if bad_final or bad_prev:
        reasons.append(f"non_finite_windows:{bad_final + bad_prev}")
    if d_final.size == 0:
        reasons.append("degenerate_delta:no_pairs")
    log_ratio = float(d_final.mean()) if d_final.size else math.nan
    ratio = _safe_exp(log_ratio) if d_final.size else None
    log_ci: list[float] | None = None
    if d_final.size:
        lo, hi = bca_interval(
            d_final,
            replicates=cfg.bootstrap_replicates,
            alpha=cfg.alpha,
            seed=cfg.seed + FINAL_CI_SEED_OFFSET,
        )
        log_ci = [lo, hi]
    invalid = ratio is None
    if invalid and "degenerate_delta:no_pairs" not in reasons:
        reasons.append("non_finite_ratio")
    degraded = invalid or bool(reasons)
    limit = cfg.ratio_limit
    if cfg.gate_rule == "point":
        gate_value = ratio
        within = gate_value is not None and gate_value <= limit + HYSTERESIS_RATIO
    else:
        gate_value = _safe_exp(log_ci[1]) if log_ci is not None else None
        within = gate_value is not None and gate_value <= limit
    acceptable = bool(within and not degraded)

    log_prev = float(d_prev.mean()) if d_prev.size else math.nan
    gap = abs(log_prev - log_ratio) if d_prev.size and d_final.size else math.nan
    drift_ok = bool(math.isfinite(gap) and gap <= drift_band and not (bad_final or bad_prev))
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
        "gate_rule": cfg.gate_rule,
        "gate_value": gate_value,
        "limit": limit,
        "hysteresis": HYSTERESIS_RATIO if cfg.gate_rule == "point" else 0.0,
        "hysteresis_applied": bool(
            cfg.gate_rule == "point" and ratio is not None and limit < ratio <= limit + HYSTERESIS_RATIO
        ),
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
        "drift": {
            "rule": "abs(log(preview_ratio) - log(final_ratio)) <= band; both ratios paired vs baseline",
            "preview_ratio": _safe_exp(log_prev) if d_prev.size else None,
            "final_ratio": ratio,
            "log_gap": gap if math.isfinite(gap) else None,
            "band": drift_band,
        },
    }
    return section, acceptable, drift_ok
