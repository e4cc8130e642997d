"""Non-finite value faults: ``nan_injection`` and ``inf_injection``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_proofpack.faults.targets import block_refs, require
from pytest_proofpack.faults.types import FaultContext, FaultOutcome
from pytest_proofpack.models.adapters import matrix

if TYPE_CHECKING:
    from torch import nn

    from pytest_proofpack.faults.registry import FaultRegistry


def nan_injection(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    """``[0, 0] = NaN`` in the first weight matrix of block 0."""
    refs = [r for r in block_refs(model) if r.layer == 0]
    require(refs, ctx.error_type, "weight matrix in block 0")
    view = matrix(model, refs[0])
    ctx.change.save_tensor(view)
    view[0, 0] = float("nan")
    return FaultOutcome("nan", {"index": [0, 0]}, [refs[0].key], [0])


def inf_injection(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    """``[0, 0] = +Inf`` in the first attention weight matrix."""
    refs = [r for r in block_refs(model) if r.family == "attn"]
    require(refs, ctx.error_type, "attention weight matrix")
    view = matrix(model, refs[0])
    ctx.change.save_tensor(view)
    view[0, 0] = float("inf")
    return FaultOutcome("inf", {"index": [0, 0]}, [refs[0].key], [refs[0].layer or 0])


def register(reg: FaultRegistry) -> None:
    reg.register("nan_injection", nan_injection, description="NaN at [0,0] of block 0's first weight")
    reg.register("inf_injection", inf_injection, description="+Inf at [0,0] of the first attention weight")
