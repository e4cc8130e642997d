"""Clean-edit tuning: for each clean edit kind, the strongest setting this model tolerates, found by measurement.

A clean scenario asks "does the gate let an in-budget edit through?". Which setting is in budget depends on the
model (a 135M model loses more to 4-bit RTN than a 7B one), so the parameters are measured, never copied from
another model. The rule is the same for every model (:data:`TUNING_RULE`):

* each kind has a fixed ladder of settings ordered from weakest to strongest (:func:`ladder`); the walk starts at
  the reference harness's default rung;
* a rung is *within budget* when the upper bound of the paired perplexity ratio's BCa interval, on tuning windows
  that no scenario and no calibration run evaluates, is at most ``1 + BUDGET_SHARE * (tier limit - 1)``;
* from the start rung the walk goes stronger while rungs stay within budget, or weaker until one is; the last rung
  within budget is selected when it changes at least ``MIN_CHANGED_FRACTION`` of the weights in its scope (a
  weaker edit would not test the gate at all), else the kind is ``skipped`` with the reason.

The output is a ``tuned_edit_params_v1`` entry per kind with its evidence: every rung evaluated (parameters,
ratio, interval, fraction changed), the windows' digest, the tier and the engine version.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from pytest_proofpack.edits.spec import EditSpec, parse_edit_spec, parse_scope
from pytest_proofpack.engine.bootstrap import bca_interval
from pytest_proofpack.engine.config import EngineConfig
from pytest_proofpack.engine.metric import window_losses

if TYPE_CHECKING:
    from pytest_proofpack.data.windows import WindowSet
    from pytest_proofpack.edits.registry import EditRegistry

#: Fraction of the tier's ratio budget (limit - 1) that a clean edit may use, on the interval's upper bound.
BUDGET_SHARE: Final = 0.5
#: A selected setting must change at least this fraction of the weights in its scope.
MIN_CHANGED_FRACTION: Final = 0.005
TUNING_RULE: Final = (
    "walk the kind's ladder from the reference default: stronger while within budget, else weaker until within "
    "budget; within budget = upper BCa bound of the paired ratio on the tuning windows <= 1 + 0.5 * (tier limit - 1); "
    "select the strongest rung within budget that changes >= 0.5 % of in-scope weights, else skip the kind"
)
CLEAN_KINDS: Final = ("quant_rtn", "fp8_quant", "magnitude_prune", "lowrank_svd")
#: Marks an entry written by the tuner (its ``reason`` starts with it).
TUNED_BY: Final = "proofpack tune"

_RTN_RUNGS: Final = ((8, 32), (8, 128), (6, 32), (6, 128), (5, 32), (5, 128), (4, 32), (4, 64), (4, 128),
                     (3, 32), (3, 128), (2, 32))
_PRUNE_RUNGS: Final = (0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.16, 0.20, 0.25, 0.30, 0.40, 0.50)
_RANK_FRACTIONS: Final = (31 / 32, 15 / 16, 7 / 8, 3 / 4, 5 / 8, 1 / 2, 3 / 8, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64)
#: The reference harness's clean settings: where each walk starts.
REFERENCE_DEFAULT: Final[dict[str, dict[str, Any]]] = {
    "quant_rtn": {"bits": 4, "group_size": 32},
    "fp8_quant": {"format": "e5m2"},
    "magnitude_prune": {"sparsity": 0.12},
    "lowrank_svd": {"rank": 32},
}


@dataclass(frozen=True)
class Rung:
    """One setting of a ladder: the tuned fields (as a tuned_edit_params entry holds them) and its scope."""

    params: Mapping[str, Any]
    scope: str

    def spec(self, kind: str, registry: EditRegistry | None = None) -> EditSpec:
        """This rung as an edit of ``kind``, parsed in ``registry`` (default: the module-level edit registry)."""
        return parse_edit_spec(":".join([kind, *(str(v) for v in self.params.values()), self.scope]),
                               registry=registry)


def middle_block(model: Any) -> int:
    """The index of the model's middle transformer block (the low-rank edit's single-layer scope)."""
    from pytest_proofpack.models.adapters import find_blocks

    return len(find_blocks(model)[1]) // 2


def _min_dim(model: Any, scope: str) -> int:
    """The smallest ``min(out, in)`` over the weight matrices in ``scope``."""
    from pytest_proofpack.edits.spec import scope_matches
    from pytest_proofpack.models.adapters import matrix, weight_refs

    parsed = parse_scope(scope)
    dims = [min(matrix(model, r).shape) for r in weight_refs(model) if scope_matches(parsed, r)]
    if not dims:
        raise ValueError(f"tuning: scope {scope!r} matches no weight matrix of the model")
    return int(min(dims))


def ladder(kind: str, model: Any, base_scope: str = "ffn") -> list[Rung]:
    """The rungs of ``kind`` for ``model``, weakest first. The low-rank ladder is relative to the matrices' size."""
    if kind == "quant_rtn":
        return [Rung({"bits": b, "group_size": g}, base_scope) for b, g in _RTN_RUNGS]
    if kind == "fp8_quant":
        return [Rung({"format": f}, base_scope) for f in ("e4m3", "e5m2")]
    if kind == "magnitude_prune":
        return [Rung({"sparsity": s}, base_scope) for s in _PRUNE_RUNGS]
    if kind == "lowrank_svd":
        scope = f"{parse_scope(base_scope).base}@layer={middle_block(model)}"
        dim = _min_dim(model, scope)
        ranks = dict.fromkeys(max(1, round(dim * f)) for f in _RANK_FRACTIONS if round(dim * f) < dim)
        return [Rung({"rank": r}, scope) for r in ranks]
    raise ValueError(f"tuning: no ladder for edit kind {kind!r}; tunable kinds: {', '.join(CLEAN_KINDS)}")


def start_index(kind: str, rungs: Sequence[Rung]) -> int:
    """The rung nearest the reference default (by rank for the low-rank ladder)."""
    default = REFERENCE_DEFAULT[kind]
    if kind == "lowrank_svd":
        return min(range(len(rungs)), key=lambda i: abs(int(rungs[i].params["rank"]) - default["rank"]))
    for i, rung in enumerate(rungs):
        if all(rung.params.get(k) == v for k, v in default.items()):
            return i
    return 0


def rung_evidence(
    model: Any, kind: str, rung: Rung, windows: WindowSet, base_losses: Sequence[float | None],
    cfg: EngineConfig, registry: EditRegistry | None = None,
) -> dict[str, Any]:
    """Apply ``rung`` (an edit of ``registry``, default the module-level one), measure the paired ratio on
    ``windows`` against ``base_losses``, restore the model."""
    from pytest_proofpack.edits.apply import apply_edit

    with apply_edit(model, rung.spec(kind, registry), seed=cfg.seed, registry=registry) as change:
        losses = window_losses(model, windows, batch_size=cfg.batch_size, device=cfg.device)
        changed = float(change.metadata.get("changed_fraction", 0.0))
    pairs = [(s, b) for s, b in zip(losses, base_losses, strict=True) if s is not None and b is not None]
    evidence: dict[str, Any] = {"params": dict(rung.params), "scope": rung.scope, "changed_fraction": changed,
                                "ratio": None, "ci": None, "within_budget": False}
    if len(pairs) < len(losses) or not pairs:
        evidence["reason"] = f"{len(losses) - len(pairs)} window(s) gave a non-finite loss"
        return evidence
    deltas = np.asarray([s - b for s, b in pairs], dtype=np.float64)
    lo, hi = bca_interval(deltas, replicates=cfg.bootstrap_replicates, alpha=cfg.alpha, seed=cfg.seed)
    upper = math.exp(hi)
    evidence.update(ratio=math.exp(float(deltas.mean())), ci=[math.exp(lo), upper],
                    within_budget=upper <= budget_limit(cfg))
    return evidence


def budget_limit(cfg: EngineConfig) -> float:
    """The largest upper bound a tuned clean edit may reach: half the tier's budget above 1."""
    return 1.0 + BUDGET_SHARE * (cfg.ratio_limit - 1.0)


Measure = Callable[[Rung], dict[str, Any]]


def walk(rungs: Sequence[Rung], start: int, measure: Measure) -> tuple[int | None, list[dict[str, Any]]]:
    """The index of the strongest rung within budget reached by the walk from ``start``, and every measurement."""
    seen: list[dict[str, Any]] = []

    def within(i: int) -> bool:
        seen.append(measure(rungs[i]))
        return bool(seen[-1]["within_budget"])

    if within(start):
        best = start
        while best + 1 < len(rungs) and within(best + 1):
            best += 1
        return best, seen
    for i in range(start - 1, -1, -1):
        if within(i):
            return i, seen
    return None, seen


def tune_kind(
    model: Any, kind: str, windows: WindowSet, base_losses: Sequence[float | None], cfg: EngineConfig,
    *, base_scope: str = "ffn", registry: EditRegistry | None = None,
) -> dict[str, Any]:
    """The ``tuned_edit_params`` entry of ``kind`` for ``model``, with its evidence (see the module docstring).
    ``registry`` resolves the edit kind (default: the module-level edit registry)."""
    rungs = ladder(kind, model, base_scope)
    best, seen = walk(rungs, start_index(kind, rungs),
                      lambda rung: rung_evidence(model, kind, rung, windows, base_losses, cfg, registry))
    evidence = {"rule": TUNING_RULE, "budget_upper_limit": budget_limit(cfg), "tier": cfg.tier,
                "windows_digest": windows.digest, "n_windows": len(windows), "rungs": seen}
    if best is None:
        return {"status": "skipped", "reason": f"no {kind} setting of the ladder stays within budget "
                f"(upper bound <= {budget_limit(cfg):.3f}); the weakest tried is listed in evidence",
                "evidence": evidence}
    chosen = next(e for e in seen if e["params"] == dict(rungs[best].params))
    if chosen["changed_fraction"] < MIN_CHANGED_FRACTION:
        return {"status": "skipped", "reason": f"the strongest {kind} setting within budget changes only "
                f"{100 * chosen['changed_fraction']:.2f} % of in-scope weights (< {100 * MIN_CHANGED_FRACTION} %)",
                "evidence": evidence}
    return {"status": "selected", **dict(rungs[best].params), "scope": rungs[best].scope,
            "reason": f"{TUNED_BY}: ratio {chosen['ratio']:.4f}, upper bound {chosen['ci'][1]:.4f}, "
                      f"{100 * chosen['changed_fraction']:.1f} % of in-scope weights changed",
            "evidence": evidence}



def neighbours(kind: str, model: Any, entry: Mapping[str, Any], base_scope: str = "ffn") -> tuple[list[Rung], int]:
    """The selected rung of a tuned ``entry`` with its ladder neighbours (weaker, stronger, as present), and the
    position of the selected one in that list.

    Calibration applies these as its benign edits, so thresholds see in-budget change of the clean edits' strength.
    A hand-written entry whose setting is not on the ladder gives just that setting.
    """
    fields = {k: entry[k] for k in REFERENCE_DEFAULT[kind] if k in entry}
    scope = str(entry.get("scope", base_scope))
    rungs = ladder(kind, model, base_scope)
    for i, rung in enumerate(rungs):
        if _same_params(rung.params, fields):
            lo = max(0, i - 1)
            return [Rung(r.params, scope) for r in rungs[lo: i + 2]], i - lo
    return [Rung(fields, scope)], 0


def _same_params(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    def norm(v: Any) -> Any:
        return {"e4m3fn": "e4m3"}.get(v, v) if isinstance(v, str) else float(v)

    return a.keys() == b.keys() and all(norm(a[k]) == norm(b[k]) for k in a)
