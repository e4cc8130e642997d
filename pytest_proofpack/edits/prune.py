"""Per-matrix magnitude pruning with an exact count.

``k = round(n * sparsity)`` elements with the smallest ``|w|`` become ``+0.0``, exactly ``k`` of them. Ties at the
threshold are broken by flat (row-major) index, lowest first, i.e. the first ``k`` positions of a *stable*
ascending sort of ``|w|``. NaN weights sort last (as in ``torch.sort``/``torch.kthvalue``) and are never the ones
zeroed unless ``k`` exceeds the non-NaN count; every kept element keeps its exact bits.

The threshold is found without sorting. The bits of an fp32 ``|w|`` read as an int32 (the sign bit cleared) order
exactly like the values, so a 2^15-bin histogram of the top 16 bits (``torch.bincount``: a count, hence exact)
names the bin that holds the k-th smallest, and ``torch.kthvalue`` runs only on that bin's elements (a fraction of
a percent of the matrix) instead of the whole matrix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple

if TYPE_CHECKING:
    import torch

_ABS_BITS: Final = 0x7FFFFFFF
_INF_KEY: Final = 0x7F800000  # |w| keys above this are NaN (any payload); +inf is exactly this key
_BIN_SHIFT: Final = 16  # top 16 bits of a non-negative int32: 2^15 bins (sign bit always clear)


class Selection(NamedTuple):
    """What prunes a flat fp32 tensor ``x``: every element whose ``|x|`` key is ``< threshold``, plus ``ties``.

    ``keys`` are the int32 keys of ``|x|`` (bit patterns, order-preserving); ``ties`` are flat indices (ascending)
    of the threshold-equal elements that are pruned too; ``zeros_after`` is the number of zeros (``±0.0``) left
    after pruning. When the threshold is NaN (``k`` > non-NaN count), ``nan_threshold`` is True: every non-NaN
    element is pruned and ``ties`` are the first NaN positions; ``threshold`` is then meaningless.
    """

    keys: torch.Tensor
    threshold: int
    ties: torch.Tensor
    zeros_after: int
    nan_threshold: bool


def abs_keys(flat: torch.Tensor) -> torch.Tensor:
    """Order-preserving int32 keys of ``|flat|`` for a contiguous fp32 tensor (``key(a) < key(b)`` iff
    ``|a| < |b|`` for non-NaN values; every NaN, whatever its payload or sign, has a key above ``+inf``'s)."""
    import torch

    if flat.dtype != torch.float32 or not flat.is_contiguous():
        raise ValueError(f"abs_keys needs a contiguous float32 tensor, got {flat.dtype}, {tuple(flat.stride())}")
    return flat.view(torch.int32) & _ABS_BITS


def kth_smallest_key(keys: torch.Tensor, k: int) -> tuple[int, torch.Tensor, torch.Tensor, int]:
    """The exact ``k``-th smallest (1-based) of 1-D non-negative int32 ``keys``.

    Returns ``(key, bin_index, bin_keys, below)``: ``bin_index`` are the flat positions (ascending) of the elements
    sharing the answer's top 16 bits, ``bin_keys`` their keys, ``below`` the number of elements in lower bins
    (all of them smaller than the answer). Raises ``ValueError`` unless ``1 <= k <= keys.numel()``.
    """
    import torch

    n = keys.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k={k} is outside 1..{n}")
    top = keys >> _BIN_SHIFT
    counts = torch.bincount(top, minlength=1 << (31 - _BIN_SHIFT))
    cum = torch.cumsum(counts, 0)
    b = int(torch.searchsorted(cum, torch.tensor([k], device=cum.device)).item())
    below = int(cum[b - 1]) if b > 0 else 0
    index = torch.nonzero(top == b).view(-1)
    bin_keys = keys[index]
    return int(torch.kthvalue(bin_keys, k - below).values), index, bin_keys, below


def kth_smallest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest (1-based) of ``|flat|`` for a 1-D float tensor, exactly as
    ``torch.kthvalue(flat.abs(), k).values`` gives it (a 0-d fp32 tensor; NaN when the answer is NaN)."""
    import torch

    keys = abs_keys(flat.detach().float().contiguous())
    key = kth_smallest_key(keys, k)[0]
    if key > _INF_KEY:
        return torch.tensor(float("nan"), device=flat.device)
    return torch.tensor([key], dtype=torch.int32, device=flat.device).view(torch.float32)[0]


def select(flat: torch.Tensor, k: int) -> Selection:
    """Which ``k`` elements (``1 <= k < n``) of a contiguous 1-D fp32 tensor pruning zeroes (see the module doc)."""
    import torch

    keys = abs_keys(flat)
    thr, index, bin_keys, below = kth_smallest_key(keys, k)
    if thr > _INF_KEY:
        # Rare (NaN weights and a sparsity beyond the non-NaN share), so a plain pass over everything is fine.
        nan = keys > _INF_KEY
        need = k - (keys.numel() - int(torch.count_nonzero(nan)))
        ties = torch.nonzero(nan).view(-1)[:need]
        return Selection(keys, thr, ties, k, True)  # what is kept is NaN, so the zeros are the k pruned
    # Everything in lower bins is below the threshold and everything in higher bins above it, so the counts
    # come from the (small) threshold bin alone.
    equal = bin_keys == thr
    need = k - below - int(torch.count_nonzero(bin_keys < thr))
    ties = index[equal][:need]
    # Kept elements are >= the threshold, so one is zero only when the threshold itself is zero.
    zeros = k + (int(torch.count_nonzero(equal)) - need if thr == 0 else 0)
    return Selection(keys, thr, ties, zeros, False)


def prune_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask (same shape as ``w``) of the exactly ``round(n * sparsity)`` elements to zero."""
    import torch

    flat = w.detach().float().reshape(-1).contiguous()
    n = flat.numel()
    k = round(n * sparsity)
    if k <= 0 or k >= n:
        return torch.full(w.shape, k >= n, dtype=torch.bool, device=w.device)
    sel = select(flat, k)
    mask = sel.keys <= _INF_KEY if sel.nan_threshold else sel.keys < sel.threshold
    mask[sel.ties] = True
    return mask.view(w.shape)


def prune_edit(
    w: torch.Tensor, params: Mapping[str, Any], *, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Registry entry point for ``magnitude_prune`` (deterministic: ``seed`` is unused).

    Returns a new contiguous fp32 tensor shaped like ``w`` (``w`` itself is not written) and the stats
    ``pruned`` (= k), ``zeros`` (zeros in the result) and ``numel``.
    """
    import torch

    flat = w.detach().float().reshape(-1).contiguous()
    n = flat.numel()
    k = round(n * float(params["sparsity"]))
    if k <= 0:
        out = flat.clone()
        zeros = n - int(torch.count_nonzero(out))
    elif k >= n:
        out = torch.zeros_like(flat)
        zeros = n
    else:
        sel = select(flat, k)
        keep = sel.keys > _INF_KEY if sel.nan_threshold else sel.keys >= sel.threshold
        # An int32 multiply by the keep mask zeroes the pruned elements to exactly +0.0 and keeps every other bit
        # pattern as it is (a float multiply would give -0.0 for negative weights and NaN for pruned infinities),
        # and is cheaper than masked_fill/where on CPU.
        bits = flat.view(torch.int32) * keep
        bits[sel.ties] = 0
        out = bits.view(torch.float32)
        zeros = sel.zeros_after
    return out.view(w.shape), {"pruned": k, "zeros": zeros, "numel": n}
