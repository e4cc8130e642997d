"""Harmless edits that calibration applies to learn how much an in-budget change moves each statistic.

The thresholds must let the model's own clean edits through, so the benign edits are those clean edits and their
ladder neighbours (:func:`pytest_proofpack.tuning.neighbours`): calibration run ``r`` applies, for every tuned
kind, the rung at offset ``OFFSETS[r % 3]`` from the tuned one (the tuned rung, the next stronger, the next
weaker), each on the run's own calibration windows. A model with no tuned kind at all falls back to
:data:`FALLBACK_SPECS`, generic edits of a few percent of perplexity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from pytest_proofpack.edits.registry import EditRegistry

#: Benign edits when no clean kind is tuned for the model: one per calibration run, cycling.
FALLBACK_SPECS: Final = ("quant_rtn:6:32:all", "fp8_quant:e4m3:ffn", "magnitude_prune:0.05:ffn")
#: Position of a run's benign rung relative to the tuned rung on the kind's ladder (0 tuned, +1 stronger, -1 weaker).
OFFSETS: Final = (0, 1, -1)


class BenignPlan:
    """The benign edit specs of every calibration run; callable as ``plan(model, index)`` like any benign edit.

    ``rungs_by_kind`` maps a kind to its ``[weaker, tuned, stronger]`` specs (fewer at a ladder's end). Run ``r``
    evaluates :attr:`per_run` edits, the flat index ``r * per_run + j`` naming edit ``j`` of run ``r``. The specs
    resolve in ``registry`` (default: the module-level edit registry).
    """

    def __init__(self, rungs_by_kind: Mapping[str, Sequence[str]], tuned_by_kind: Mapping[str, str],
                 registry: EditRegistry | None = None) -> None:
        self._rungs = {kind: list(specs) for kind, specs in sorted(rungs_by_kind.items()) if specs}
        self._tuned = dict(tuned_by_kind)
        self._registry = registry
        self.per_run = max(1, len(self._rungs))

    def spec(self, index: int) -> str:
        """The benign edit spec at flat ``index`` (see the class docstring)."""
        if not self._rungs:
            return FALLBACK_SPECS[index % len(FALLBACK_SPECS)]
        run, j = divmod(index, self.per_run)
        kind = list(self._rungs)[j]
        specs = self._rungs[kind]
        at = specs.index(self._tuned[kind]) + OFFSETS[run % len(OFFSETS)]
        return specs[min(max(at, 0), len(specs) - 1)]

    def describe(self) -> dict[str, Any]:
        """What the plan applies, for the preset's provenance and its cache key."""
        if not self._rungs:
            return {"source": "fallback", "specs": list(FALLBACK_SPECS)}
        return {"source": "tuned_neighbours", "offsets": list(OFFSETS), "rungs": self._rungs, "tuned": self._tuned}

    def __call__(self, model: Any, index: int) -> AbstractContextManager[Any]:
        from pytest_proofpack.edits.apply import apply_edit
        from pytest_proofpack.edits.spec import parse_edit_spec

        spec = parse_edit_spec(self.spec(index), registry=self._registry)
        change: AbstractContextManager[Any] = apply_edit(model, spec, seed=index, registry=self._registry)
        return change


def plan_from_tuned(model: Any, tuned: Mapping[str, Mapping[str, Any]],
                    registry: EditRegistry | None = None) -> BenignPlan:
    """The plan for ``model`` from its tuned entries (``{kind: entry}``), its edits resolved in ``registry``
    (default: the module-level edit registry); skipped entries are left out."""
    from pytest_proofpack.tuning import CLEAN_KINDS, neighbours

    rungs: dict[str, list[str]] = {}
    chosen: dict[str, str] = {}
    for kind, entry in tuned.items():
        if kind not in CLEAN_KINDS or entry.get("status", "selected") != "selected":
            continue
        ladder_part, at = neighbours(kind, model, entry)
        rungs[kind] = [str(r.spec(kind, registry)) for r in ladder_part]
        chosen[kind] = rungs[kind][at]
    return BenignPlan(rungs, chosen, registry)
