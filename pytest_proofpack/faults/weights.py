"""Weight-value faults: ``extreme_quant``, ``scale_explosion``, ``rank_collapse``, ``norm_collapse``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pytest_proofpack.faults.targets import block_refs, require
from pytest_proofpack.faults.types import FaultContext, FaultOutcome
from pytest_proofpack.models.adapters import WeightRef, matrix, weight_refs

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pytest_proofpack.faults.registry import FaultRegistry

SCALE_EXPLOSION_FACTOR: Final = 100.0
RANK_COLLAPSE_MAX: Final = 8
NORM_COLLAPSE_MAX: Final = 32


#: Elements of a matrix put on the grid at once (bounds the fp32 working copy: 16 MiB instead of a whole embedding).
GRID_CHUNK_ELEMENTS: Final = 1 << 22


def extreme_quant(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    """Every weight matrix (embeddings and head included) on a 4-level grid: ``clamp(round(w/s), -2, 1) * s``
    with ``s = max|w| / 2`` per matrix. Originals are kept on the CPU (this touches the whole model). Rows are
    processed :data:`GRID_CHUNK_ELEMENTS` elements at a time in one fp32 working copy (element-wise, so the result
    is the same), so that an embedding's whole-matrix temporaries do not raise a worker's peak memory."""
    import torch

    refs = weight_refs(model)
    require(refs, ctx.error_type, "weight matrix")
    for ref in refs:
        view = matrix(model, ref)
        ctx.change.save_tensor(view, offload=True)
        lo, hi = torch.aminmax(view.detach())  # max|w| without a |w| temporary
        scale = (torch.maximum(-lo, hi).float() / 2).clamp_min(1e-10)
        rows = max(1, GRID_CHUNK_ELEMENTS // max(1, view.shape[-1]))
        for part in torch.split(view, rows):
            part.copy_(part.float().div(scale).round_().clamp_(-2, 1).mul_(scale).to(part.dtype))
    layers = sorted({r.layer for r in refs if r.layer is not None})
    return FaultOutcome(
        "grid4", {"levels": [-2, -1, 0, 1], "scale": "max|w|/2"}, [r.key for r in refs], layers
    )


def _first_ffn(model: nn.Module) -> WeightRef | None:
    refs = block_refs(model)
    for family in ("ffn", "expert_ffn"):
        for ref in refs:
            if ref.family == family:
                return ref
    return refs[0] if refs else None


def scale_explosion(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    """The first FFN matrix (dense FFN, else an expert, else any block matrix) times 100."""
    ref = _first_ffn(model)
    require([ref] if ref else [], ctx.error_type, "block weight matrix")
    assert ref is not None
    view = matrix(model, ref)
    ctx.change.save_tensor(view)
    view.mul_(SCALE_EXPLOSION_FACTOR)
    return FaultOutcome("scale", {"factor": SCALE_EXPLOSION_FACTOR}, [ref.key], [ref.layer or 0])


def _attn_or_any(model: nn.Module, limit: int) -> list[WeightRef]:
    refs = block_refs(model)
    attn = [r for r in refs if r.family == "attn"]
    return (attn or refs)[:limit]


def rank_one(w: torch.Tensor) -> torch.Tensor:
    """``outer(w[:, 0], w[0, :])`` rescaled to ``||w||_F`` (constant if that product is zero)."""
    import torch

    wf = w.float()
    outer = torch.outer(wf[:, 0], wf[0, :])
    norm, target = torch.linalg.vector_norm(outer), torch.linalg.vector_norm(wf)
    if float(norm) == 0.0:
        outer, norm = torch.ones_like(wf), torch.tensor(float(wf.numel()) ** 0.5)
    result: torch.Tensor = outer * (target / norm)
    return result


def rank_collapse(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    """The first <= 8 attention matrices (else block matrices) become rank 1 with the same norm."""
    refs = _attn_or_any(model, RANK_COLLAPSE_MAX)
    require(refs, ctx.error_type, "block weight matrix")
    for ref in refs:
        view = matrix(model, ref)
        ctx.change.save_tensor(view)
        view.copy_(rank_one(view).to(view.dtype))
    layers = sorted({r.layer for r in refs if r.layer is not None})
    return FaultOutcome("rank1", {"max_params": RANK_COLLAPSE_MAX}, [r.key for r in refs], layers)


def norm_collapse(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    """The first <= 32 attention matrices (else block matrices) set to zero."""
    refs = _attn_or_any(model, NORM_COLLAPSE_MAX)
    require(refs, ctx.error_type, "block weight matrix")
    for ref in refs:
        view = matrix(model, ref)
        ctx.change.save_tensor(view)
        view.zero_()
    layers = sorted({r.layer for r in refs if r.layer is not None})
    return FaultOutcome("zero", {"max_params": NORM_COLLAPSE_MAX}, [r.key for r in refs], layers)


def register(reg: FaultRegistry) -> None:
    reg.register("extreme_quant", extreme_quant, description="every weight matrix on a 4-level grid")
    reg.register("scale_explosion", scale_explosion, description="first FFN matrix x100")
    reg.register("rank_collapse", rank_collapse, description="first 8 attention matrices -> rank 1")
    reg.register("norm_collapse", norm_collapse, description="first 32 attention matrices zeroed")
