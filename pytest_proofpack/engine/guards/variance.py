"""Variance (VE) guard: a read-only detector of per-layer MLP output variance shifts.

From the RMT capture (hooks on each layer's ``ffn_down`` output, guard windows) it compares each layer's output
mean square ``v_now`` with the baseline's ``v_base`` and proposes ``alpha = sqrt(v_base / v_now)`` for layers with
``|alpha - 1| >= deadband`` (preset ``variance.deadband``, else the documented default).

The proposals are then *tested without touching the model*: one forward of the guard windows with temporary
forward hooks that multiply those modules' outputs by alpha (removed afterwards; parameters never change). The
paired unit is a chunk of consecutive predicted positions of a window; ``gain_c = l_c(no VE) - l_c(with VE)``.
``signal`` iff at least one scale is proposed and the BCa CI lower bound of the mean gain exceeds ``min_effect``
(preset ``variance.min_effect``, default 0.0, i.e. the CI excludes zero on the side of improvement).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pytest_proofpack.engine.bootstrap import bca_interval
from pytest_proofpack.engine.config import DEFAULT_VE_DEADBAND, DEFAULT_VE_MIN_EFFECT
from pytest_proofpack.engine.guards.rmt import chunk_means
from pytest_proofpack.engine.preset import preset_or_default, thresholds_source

VE_SEED_OFFSET = 211


def propose(
    base: Mapping[str, Mapping[str, Any]], now: Mapping[str, Mapping[str, Any]], deadband: float
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """``({module: alpha} for proposals, detail rows for every ffn_down module)`` sorted by ``|alpha - 1|``."""
    scales: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    for module, b in base.items():
        if b.get("role") != "ffn_down" or module not in now:
            continue
        vb, vn = b.get("mean_square"), now[module].get("mean_square")
        if vb is None or vn is None or vn <= 0.0 or vb <= 0.0:
            continue
        alpha = math.sqrt(float(vb) / float(vn))
        proposed = abs(alpha - 1.0) >= deadband
        rows.append(
            {
                "module": module,
                "layer": b.get("layer"),
                "v_base": vb,
                "v_now": vn,
                "alpha": alpha,
                "proposed": proposed,
            }
        )
        if proposed:
            scales[module] = alpha
    rows.sort(key=lambda r: -abs(r["alpha"] - 1.0))
    return scales, rows


def scaled_chunk_losses(
    model: Any, input_ids: Any, scales: Mapping[str, float], *, batch_size: int, device: str, n_chunks: int
) -> list[list[float | None]]:
    """Chunk losses of the guard windows with module outputs multiplied by ``scales`` through temporary hooks,
    chunked as the RMT capture chunks the unscaled pass."""
    import torch

    from pytest_proofpack.engine.metric import token_nll

    modules = dict(model.named_modules())

    def make_hook(alpha: float) -> Any:
        def hook(_mod: Any, _inp: Any, out: Any) -> Any:
            if isinstance(out, tuple):
                return (out[0] * alpha, *out[1:])
            return out * alpha

        return hook

    handles = [modules[m].register_forward_hook(make_hook(a)) for m, a in scales.items() if m in modules]
    rows: list[Any] = []
    try:
        with torch.inference_mode():
            for start in range(0, int(input_ids.shape[0]), batch_size):
                rows.append(token_nll(model, input_ids[start : start + batch_size].to(device)))
    finally:
        for h in handles:
            h.remove()
    return chunk_means(torch.cat(rows).double().cpu().numpy(), n_chunks)


def assess(
    model: Any,
    input_ids: Any,
    base: Mapping[str, Mapping[str, Any]],
    now: Mapping[str, Mapping[str, Any]],
    chunk_losses_now: list[list[float | None]],
    preset: Mapping[str, Any],
    *,
    batch_size: int,
    device: str,
    replicates: int,
    alpha: float,
    seed: int,
) -> dict[str, Any]:
    """The report's ``variance`` section (also the body of ``ve_probe.json``)."""
    deadband, deadband_source = preset_or_default(preset, ("variance", "deadband"), DEFAULT_VE_DEADBAND)
    min_effect, min_effect_source = preset_or_default(preset, ("variance", "min_effect"), DEFAULT_VE_MIN_EFFECT)
    scales, rows = propose(base, now, deadband)
    result: dict[str, Any] = {
        "proposed_scales": len(scales),
        "proposed_scales_detail": [r for r in rows if r["proposed"]][:20],
        "top_scales": rows[:6],
        "deadband": deadband,
        "min_effect": min_effect,
        "thresholds_source": thresholds_source((deadband_source, min_effect_source)),
        "ppl_no_ve": None,
        "ppl_with_ve": None,
        "ab_gain": None,
        "mean_gain": None,
        "gain_ci": None,
        "ratio_ci": None,
        "n_pairs": 0,
        "model_modified": False,
        "rule": "signal iff proposed_scales >= 1 and BCa CI lower bound of mean chunk log-loss gain > min_effect",
    }
    if not scales:
        reasons = ["insufficient_scales"]
    else:
        n_chunks = max((len(r) for r in chunk_losses_now), default=1)
        with_ve = scaled_chunk_losses(model, input_ids, scales, batch_size=batch_size, device=device, n_chunks=n_chunks)
        measured, reasons = _paired_gain(
            chunk_losses_now, with_ve, min_effect, replicates=replicates, alpha=alpha, seed=seed
        )
        result.update(measured)
    result["signal"] = not reasons
    result["signal_reasons"] = reasons
    return result


def _paired_gain(
    no_ve: list[list[float | None]],
    with_ve: list[list[float | None]],
    min_effect: float,
    *,
    replicates: int,
    alpha: float,
    seed: int,
) -> tuple[dict[str, Any], list[str]]:
    """The A/B test of the proposed scales over the chunks finite in both passes: the section's measured fields
    and the reasons there is no signal (none when the gain's CI lower bound exceeds ``min_effect``)."""
    without = [x for row in no_ve for x in row]
    scaled = [x for row in with_ve for x in row]
    pairs = [(a, b) for a, b in zip(without, scaled, strict=True) if a is not None and b is not None]
    if not pairs:
        return {}, ["missing_losses"]
    arr = np.asarray(pairs, dtype=np.float64)
    gains = arr[:, 0] - arr[:, 1]
    lo, hi = bca_interval(gains, replicates=replicates, alpha=alpha, seed=seed + VE_SEED_OFFSET)
    ppl_no, ppl_with = math.exp(float(arr[:, 0].mean())), math.exp(float(arr[:, 1].mean()))
    measured = {
        "ppl_no_ve": ppl_no,
        "ppl_with_ve": ppl_with,
        "ab_gain": (ppl_no - ppl_with) / ppl_no,
        "mean_gain": float(gains.mean()),
        "gain_ci": [lo, hi],
        "ratio_ci": [math.exp(-hi), math.exp(-lo)],
        "n_pairs": len(pairs),
    }
    return measured, ([] if lo > min_effect else ["gain_ci_not_above_min_effect"])
