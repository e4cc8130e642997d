"""What a fault function receives and returns: the types shared by the fault families and the registry.

A fault function ``fn(model, ctx) -> FaultOutcome`` changes the model only through ``ctx.change`` (which records
how to undo each step) and returns what it did. It raises :class:`~pytest_proofpack.errors.SpecError` when it finds
no target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from pytest_proofpack.edits.change import AppliedChange
    from pytest_proofpack.faults.env import EnvReader


@dataclass
class FaultContext:
    """What a fault function gets: the scenario id, its env reader, the seed, the change to record into."""

    error_type: str
    family: str
    env: EnvReader
    seed: int
    change: AppliedChange
    total_layers: int


@dataclass
class FaultOutcome:
    """What a fault did: ``mode``, the resolved ``params``, modified names (ref keys, modules), layers."""

    mode: str
    params: dict[str, Any] = field(default_factory=dict)
    modified: list[str] = field(default_factory=list)
    target_layers: list[int] = field(default_factory=list)


FaultFn = Callable[["nn.Module", FaultContext], FaultOutcome]
"""``fn(model, ctx) -> FaultOutcome``: a fault injection, applied in place through ``ctx.change``."""
