"""``all_finite``: whether a tensor holds no NaN or Inf, without a full-size temporary.

``torch.isfinite(t).all()`` materialises ``|t|`` in ``t``'s dtype and three boolean masks of ``t``'s size: for a
large matrix (an embedding, say) that is more memory than the tensor itself, for a check that only reads it, and
it raises a worker's peak. Checking :data:`CHUNK_ELEMENTS` elements at a time gives the same answer with a bounded
temporary.

On the CPU a sum comes first: one reduction pass with no temporary at all, much faster than the masks. A NaN or Inf
element makes an IEEE sum non-finite, and nothing makes a sum of finite values NaN, so a finite sum proves every
element finite; a non-finite sum (a NaN/Inf element, or finite values whose sum overflows) is settled by the exact
chunked check. On an accelerator that decision would need a host sync per tensor, so the chunked check runs
directly there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import torch

#: Elements checked per step (16 MiB of fp32).
CHUNK_ELEMENTS: Final = 1 << 22


def all_finite(t: torch.Tensor) -> torch.Tensor:
    """A 0-d boolean tensor on ``t``'s device: ``True`` iff every element of ``t`` is finite (no host sync)."""
    import torch

    flat = t.detach().reshape(-1)
    if flat.device.type == "cpu" and flat.is_floating_point():
        acc = torch.float64 if flat.dtype == torch.float64 else torch.float32  # fp16 sums overflow at 65504
        quick = torch.isfinite(flat.sum(dtype=acc))
        if bool(quick):
            return quick
    if flat.numel() <= CHUNK_ELEMENTS:
        return torch.isfinite(flat).all()
    return torch.stack([torch.isfinite(part).all() for part in torch.split(flat, CHUNK_ELEMENTS)]).all()
