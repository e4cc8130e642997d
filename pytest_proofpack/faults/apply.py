"""Inject a fault in place, reversibly, and describe what it did."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pytest_proofpack.edits.change import AppliedChange
from pytest_proofpack.errors import SpecError
from pytest_proofpack.faults.builtin import default_fault_registry
from pytest_proofpack.faults.env import EnvReader
from pytest_proofpack.faults.registry import FaultKind, FaultRegistry
from pytest_proofpack.faults.types import FaultContext, FaultOutcome
from pytest_proofpack.malloc import reusing_heap
from pytest_proofpack.models.adapters import find_blocks

if TYPE_CHECKING:
    from torch import nn


def _inject(model: nn.Module, kind: FaultKind, ctx: FaultContext) -> FaultOutcome:
    """Run the fault function; undo its partial change when it raises or modifies nothing."""
    try:
        outcome = kind.fn(model, ctx)
    except BaseException:
        ctx.change.restore()
        raise
    if not outcome.modified:
        ctx.change.restore()
        raise SpecError(
            f"fault {ctx.error_type}: no target was modified (mode {outcome.mode}); check its env targets"
        )
    return outcome


def _metadata(ctx: FaultContext, outcome: FaultOutcome) -> dict[str, Any]:
    """The change's metadata (without ``seconds``)."""
    return {
        "error_type": ctx.error_type,
        "family": ctx.family,
        "injected": True,
        "mode": outcome.mode,
        "params": outcome.params,
        "modified_count": len(outcome.modified),
        "modified_params": outcome.modified[:20],
        "target_layers": outcome.target_layers,
        "total_layers": ctx.total_layers,
        "seed": ctx.seed,
    }


@reusing_heap()  # its temporaries reuse heap pages (see pytest_proofpack.malloc)
def apply_fault(
    model: nn.Module,
    error_type: str,
    env: Mapping[str, str] | None = None,
    *,
    seed: int = 0,
    registry: FaultRegistry | None = None,
) -> AppliedChange:
    """Inject fault ``error_type`` (a family name or scenario id) in place; return the reversible change.

    ``env`` is the scenario's ``generation.env``. ``metadata``: error_type, family, injected, mode, params,
    modified_count, modified_params (first 20), target_layers, total_layers, seed, seconds. Raises
    :class:`SpecError` for an unknown fault, an unknown env key or a fault that modified nothing. On any error the
    partial change is undone before the exception propagates.
    """
    kind = (registry if registry is not None else default_fault_registry).get(error_type)
    env = dict(env or {})
    kind.check_env_keys(error_type, env)
    start = time.perf_counter()
    change = AppliedChange()
    ctx = FaultContext(
        error_type, kind.name, EnvReader(env, error_type), seed, change, len(find_blocks(model)[1])
    )
    outcome = _inject(model, kind, ctx)
    change.metadata.update(_metadata(ctx, outcome))
    change.metadata["seconds"] = time.perf_counter() - start
    return change
