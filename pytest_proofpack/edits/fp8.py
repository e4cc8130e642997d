"""FP8 round trip: ``w' = saturate(w).to(float8).to(float32)`` with no scaling.

Formats: ``e4m3fn`` (``torch.float8_e4m3fn``, max 448) and ``e5m2`` (``torch.float8_e5m2``, max 57344). Finite
values beyond the format's max are clamped to ±max before the cast: torch's CPU cast already saturates e4m3fn
but turns e5m2 overflow into ±inf, and a clean edit must never create non-finite weights. The number of
clamped elements is reported as ``saturated``; non-finite inputs pass through unchanged.

One ``aminmax`` decides whether anything needs clamping (almost never). On CPU the way back from ``e4m3fn``
reads a 256-entry table built by torch's own ``float8_e4m3fn -> float32`` cast (every fp8 value is exact in fp32,
so the result is bit-identical), because torch's CPU cast for that format is a scalar loop, slower than the
gather. ``e5m2`` (a bit shift) and GPU casts use torch directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def fp8_dtype(fmt: str) -> torch.dtype:
    import torch

    if fmt in ("e4m3fn", "e4m3"):
        return torch.float8_e4m3fn
    if fmt == "e5m2":
        return torch.float8_e5m2
    raise ValueError(f"unknown fp8 format {fmt!r}; accepted: e4m3fn, e5m2")


@lru_cache(maxsize=4)
def _decode_table(dtype: torch.dtype) -> torch.Tensor:
    """float32 value of every fp8 bit pattern of ``dtype`` (CPU), as torch's own cast gives it."""
    import torch

    return torch.arange(256, dtype=torch.uint8).view(dtype).to(torch.float32)


def fp8_to_float32(q: torch.Tensor) -> torch.Tensor:
    """``q.to(torch.float32)`` for an fp8 tensor, bit-identical, through the decode table where that is faster."""
    import torch

    if q.device.type != "cpu" or q.dtype != torch.float8_e4m3fn:
        return q.to(torch.float32)
    codes = q.contiguous().view(torch.uint8).reshape(-1).to(torch.int32)
    return torch.index_select(_decode_table(q.dtype), 0, codes).view(q.shape)


def fp8_round_trip(w: torch.Tensor, fmt: str) -> tuple[torch.Tensor, int]:
    """Return ``(w', saturated_count)`` for a float tensor ``w`` (``w'`` is a new fp32 tensor)."""
    import torch

    dtype = fp8_dtype(fmt)
    fmax = float(torch.finfo(dtype).max)
    saturated = 0
    src = w
    lo, hi = torch.aminmax(w)
    # NaN makes both comparisons false, so any non-finite or out-of-range input takes the exact slow path.
    if not (float(lo) >= -fmax and float(hi) <= fmax):
        over = torch.isfinite(w) & (w.abs() > fmax)
        saturated = int(torch.count_nonzero(over))
        if saturated:
            src = torch.where(over, w.clamp(-fmax, fmax), w)
    return fp8_to_float32(src.to(dtype)), saturated


def fp8_edit(
    w: torch.Tensor, params: Mapping[str, Any], *, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Registry entry point for ``fp8_quant`` (deterministic: ``seed`` is unused)."""
    out, saturated = fp8_round_trip(w, str(params["format"]))
    return out, {"saturated": saturated}
