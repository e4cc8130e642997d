"""Round-to-nearest symmetric integer quantization, per row, in groups along the input dimension.

For ``bits`` b: ``qmin = -2^(b-1)``, ``qmax = max(2^(b-1) - 1, 1)``. Each row is cut into groups of ``group``
consecutive input columns (``group <= 0`` or ``>= in`` means the whole row; the last group is zero-padded,
which cannot raise its max), ``scale = clamp(max|w_g| / qmax, 1e-10)`` and ``w' = clamp(round(w / scale),
qmin, qmax) * scale``. The result is computed in fp32 (the caller casts back to the parameter dtype).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def rtn_quantize(w: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(w_q, scales)`` for a 2-D ``w``; ``scales`` has shape ``[out, n_groups]``."""
    import torch
    import torch.nn.functional as F

    if w.dim() != 2:
        raise ValueError(f"rtn_quantize expects a 2-D matrix, got shape {tuple(w.shape)}")
    out, cols = w.shape
    qmax = max(2 ** (bits - 1) - 1, 1)
    qmin = -(2 ** (bits - 1))
    g = cols if group <= 0 or group >= cols else group
    pad = (-cols) % g
    wp = F.pad(w, (0, pad)) if pad else w
    wg = wp.reshape(out, -1, g)
    scale = (wg.abs().amax(dim=-1, keepdim=True) / qmax).clamp_min_(1e-10)
    q = torch.div(wg, scale).round_().clamp_(qmin, qmax).mul_(scale)
    return q.reshape(out, -1)[:, :cols], scale.squeeze(-1)


def rtn_edit(
    w: torch.Tensor, params: Mapping[str, Any], *, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Registry entry point for ``quant_rtn`` (deterministic: ``seed`` is unused)."""
    q, _ = rtn_quantize(w, int(params["bits"]), int(params["group_size"]))
    return q, {}
