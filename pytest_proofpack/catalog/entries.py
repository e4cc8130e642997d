"""The catalog's value classes: a scenario, a suite, and a case (one scenario run of one model).

The models of a suite are :class:`~pytest_proofpack.models.ModelEntry` objects and its assets
:class:`~pytest_proofpack.models.AssetRef` objects, both defined with the model sources.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_proofpack.models import ModelEntry

__all__ = ["Case", "Scenario", "Suite"]


@dataclass(frozen=True)
class Scenario:
    """One entry of scenarios.json; ``raw`` keeps the entry exactly as written (for reports and the verdict)."""

    id: str
    category: str
    strictness: str
    intent: str
    primary_guard: str
    failure_class: str
    generation: Mapping[str, Any]
    requirements: Mapping[str, Any]
    suites: tuple[str, ...]
    raw: Mapping[str, Any] = field(compare=False, hash=False)

    @property
    def kind(self) -> str:
        """``edit``, ``error`` (a fault injection) or ``checkpoint`` (a user's own weights)."""
        return str(self.generation.get("kind"))

    @property
    def edit_type(self) -> str | None:
        """The edit kind of an ``edit`` scenario (``quant_rtn``, ...), else ``None``."""
        if self.kind != "edit":
            return None
        return str(self.generation["edit_spec"]).split(":", 1)[0]

    @property
    def is_clean_sentinel(self) -> bool:
        """True when the edit spec reads ``<kind>:clean:<scope>``: its parameters come from the tuned file."""
        spec = str(self.generation.get("edit_spec", ""))
        parts = spec.split(":")
        return len(parts) > 1 and parts[1] == "clean"

    @property
    def markers(self) -> tuple[str, ...]:
        """The pytest markers of this scenario's items."""
        return (self.category, self.strictness)


@dataclass(frozen=True)
class Suite:
    """One entry of suites.yaml: its model keys, dataset name, scenario suite and evaluation settings."""

    name: str
    models: tuple[str, ...]
    dataset: str
    scenario_suite: str
    eval: Mapping[str, int]


@dataclass(frozen=True)
class Case:
    """One scenario run of one model: the unit a pytest item executes.

    ``edit_spec`` is the concrete spec (the ``clean`` sentinel already resolved from the tuned parameters);
    ``skip_reason`` is set when the tuned entry says ``status: skipped``.
    """

    model: ModelEntry
    scenario: Scenario
    run: int
    edit_spec: str | None
    skip_reason: str | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.model.key, self.scenario.id, self.run)
