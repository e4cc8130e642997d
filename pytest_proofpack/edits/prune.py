"""Per-matrix magnitude pruning with an exact count.

``k = round(n * sparsity)`` elements with the smallest ``|w|`` become zero, exactly ``k`` of them. Ties at the
threshold are broken by flat (row-major) index, lowest first, i.e. the first ``k`` positions of a *stable*
ascending sort of ``|w|``; computed in O(n) with ``torch.kthvalue`` instead of a full sort. NaN weights sort
last and are never the ones zeroed unless ``k`` exceeds the finite count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def kth_smallest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The exact ``k``-th smallest value (1-based) of a 1-D tensor, as ``torch.kthvalue`` gives it.

    Large inputs first bracket the answer with quantiles of a strided sample, then select inside the bracket
    only; the bracket is verified by counting, and a miss falls back to a full ``kthvalue``, so the result is
    exact and deterministic either way (several times faster on big matrices).
    """
    import math

    import torch

    n = flat.numel()
    if n < 65536:
        return torch.kthvalue(flat, k).values
    sample = flat[:: n // 4096]
    q = k / n
    margin = 6.0 * math.sqrt(q * (1.0 - q) / sample.numel()) + 2.0 / sample.numel()
    bounds = torch.quantile(
        sample, torch.tensor([max(q - margin, 0.0), min(q + margin, 1.0)], dtype=flat.dtype)
    )
    lo, hi = bounds[0], bounds[1]
    below = int(torch.count_nonzero(flat < lo))
    inside = flat[(flat >= lo) & (flat <= hi)]
    rank = k - below
    if 1 <= rank <= inside.numel():
        return torch.kthvalue(inside, rank).values
    return torch.kthvalue(flat, k).values


def prune_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask (same shape as ``w``) of the exactly ``round(n * sparsity)`` elements to zero."""
    import torch

    flat = w.detach().abs().reshape(-1)
    n = flat.numel()
    k = round(n * sparsity)
    if k <= 0:
        return torch.zeros_like(w, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(w, dtype=torch.bool)
    thr = kth_smallest(flat, k)  # NaN sorts last, so it is the threshold only if k > #finite
    if bool(torch.isnan(thr)):
        mask = ~torch.isnan(flat)
        thr_hits = torch.isnan(flat)
    else:
        mask = flat < thr
        thr_hits = None
    need = k - int(mask.sum())
    if need > 0:
        hits = flat == thr if thr_hits is None else thr_hits
        mask[torch.nonzero(hits).reshape(-1)[:need]] = True
    return mask.view_as(w)


def prune_edit(
    w: torch.Tensor, params: Mapping[str, Any], *, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Registry entry point for ``magnitude_prune`` (deterministic: ``seed`` is unused)."""
    import torch

    mask = prune_mask(w, float(params["sparsity"]))
    out = w.masked_fill(mask, 0.0)
    zeros = out.numel() - int(torch.count_nonzero(out))
    pruned = round(out.numel() * float(params["sparsity"]))
    return out, {"pruned": pruned, "zeros": zeros, "numel": out.numel()}
