"""FP8 round trip: ``w' = saturate(w).to(float8).to(float32)`` with no scaling.

Formats: ``e4m3fn`` (``torch.float8_e4m3fn``, max 448) and ``e5m2`` (``torch.float8_e5m2``, max 57344). Finite
values beyond the format's max are clamped to ±max before the cast: torch's CPU cast already saturates e4m3fn
but turns e5m2 overflow into ±inf, and a clean edit must never create non-finite weights. The number of
clamped elements is reported as ``saturated``; non-finite inputs pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def fp8_round_trip(w: torch.Tensor, fmt: str) -> tuple[torch.Tensor, int]:
    """Return ``(w', saturated_count)``."""
    import torch

    dtype = fp8_dtype(fmt)
    fmax = float(torch.finfo(dtype).max)
    finite = torch.isfinite(w)
    over = finite & (w.abs() > fmax)
    saturated = int(over.sum())
    src = torch.where(over, w.clamp(-fmax, fmax), w) if saturated else w
    return src.to(dtype).to(torch.float32), saturated


def fp8_edit(
    w: torch.Tensor, params: Mapping[str, Any], *, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Registry entry point for ``fp8_quant`` (deterministic: ``seed`` is unused)."""
    out, saturated = fp8_round_trip(w, str(params["format"]))
    return out, {"saturated": saturated}
