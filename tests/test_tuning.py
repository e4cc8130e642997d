"""Clean-edit tuning: the ladder walk's rule, measured settings on a tiny model, window pools, the benign plan."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_metric import make_windows
from tinymodels import tiny_llama

from pytest_proofpack.benign import FALLBACK_SPECS, BenignPlan, plan_from_tuned
from pytest_proofpack.data.windows import POOL_SHARES, chunk_count, pool_exclusion
from pytest_proofpack.engine.config import EngineConfig
from pytest_proofpack.engine.metric import window_losses
from pytest_proofpack.tuning import (
    MIN_CHANGED_FRACTION,
    Rung,
    budget_limit,
    ladder,
    middle_block,
    neighbours,
    start_index,
    tune_kind,
    walk,
)

CFG = EngineConfig(bootstrap_replicates=200, guard_windows=2, batch_size=4)


def _fake(limit_index: int) -> Any:
    """A measurement under which rungs up to ``limit_index`` (inclusive) are within budget."""

    def measure(rung: Rung) -> dict[str, Any]:
        index = int(rung.params["i"])
        return {"params": dict(rung.params), "within_budget": index <= limit_index, "changed_fraction": 1.0}

    return measure


RUNGS = [Rung({"i": i}, "ffn") for i in range(8)]


@pytest.mark.parametrize(("limit", "start", "best", "walked"), [
    (5, 3, 5, [3, 4, 5, 6]),   # the start passes: go stronger until the first failure
    (7, 3, 7, [3, 4, 5, 6, 7]),  # every rung passes: the strongest, at the ladder's end
    (1, 3, 1, [3, 2, 1]),      # the start fails: go weaker until one passes
    (-1, 3, None, [3, 2, 1, 0]),  # nothing passes
])
def test_walk_selects_the_strongest_rung_within_budget(limit: int, start: int, best: int | None,
                                                        walked: list[int]) -> None:
    chosen, seen = walk(RUNGS, start, _fake(limit))
    assert chosen == best
    assert [s["params"]["i"] for s in seen] == walked


def test_ladders_are_ordered_and_start_at_the_reference_default() -> None:
    model = tiny_llama(0, layers=4, hidden=32)
    quant = ladder("quant_rtn", model)
    assert quant[start_index("quant_rtn", quant)].params == {"bits": 4, "group_size": 32}
    assert [r.params["bits"] for r in quant] == sorted((r.params["bits"] for r in quant), reverse=True)
    prune = ladder("magnitude_prune", model)
    assert [r.params["sparsity"] for r in prune] == sorted(r.params["sparsity"] for r in prune)
    assert prune[start_index("magnitude_prune", prune)].params == {"sparsity": 0.12}
    lowrank = ladder("lowrank_svd", model)
    assert {r.scope for r in lowrank} == {f"ffn@layer={middle_block(model)}"} == {"ffn@layer=2"}
    ranks = [r.params["rank"] for r in lowrank]
    assert ranks == sorted(ranks, reverse=True) and ranks[0] < 32 and len(set(ranks)) == len(ranks)
    with pytest.raises(ValueError, match="no ladder for edit kind 'bogus'"):
        ladder("bogus", model)


def _tune(model: Any, kind: str, cfg: EngineConfig = CFG) -> dict[str, Any]:
    windows = make_windows(8, 32, seed=3)
    base = window_losses(model, windows, batch_size=cfg.batch_size, device="cpu")
    return tune_kind(model, kind, windows, base, cfg)


def test_tuning_a_tiny_model_measures_every_rung_it_walks_and_restores_the_model() -> None:
    model = tiny_llama(1, layers=2, hidden=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    entry = _tune(model, "magnitude_prune")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    evidence = entry["evidence"]
    assert evidence["budget_upper_limit"] == pytest.approx(budget_limit(CFG)) == pytest.approx(1.05)
    assert evidence["n_windows"] == 8 and len(evidence["windows_digest"]) == 64
    for rung in evidence["rungs"]:
        assert rung["within_budget"] == (rung["ci"][1] <= budget_limit(CFG))
        assert rung["ci"][0] <= rung["ratio"] <= rung["ci"][1]
    if entry["status"] == "selected":
        chosen = next(r for r in evidence["rungs"] if r["params"] == {"sparsity": entry["sparsity"]})
        assert chosen["within_budget"] and chosen["changed_fraction"] >= MIN_CHANGED_FRACTION
        stronger = [r for r in evidence["rungs"] if r["params"]["sparsity"] > entry["sparsity"]]
        assert all(not r["within_budget"] for r in stronger)
    else:
        assert "within budget" in entry["reason"] or "changes only" in entry["reason"]


def test_a_tier_with_a_larger_budget_never_selects_a_weaker_setting() -> None:
    model = tiny_llama(2, layers=2, hidden=32)

    def selected(tier: str) -> float:
        entry = _tune(model, "magnitude_prune", EngineConfig(bootstrap_replicates=200, batch_size=4, tier=tier))
        return float(entry["sparsity"]) if entry["status"] == "selected" else 0.0

    assert selected("aggressive") >= selected("conservative")


def test_pools_partition_the_chunks_by_their_shares() -> None:
    n_tokens, seq_len = 10_000, 16
    total = chunk_count(n_tokens, seq_len)
    inside = {p: frozenset(range(total)) - pool_exclusion(n_tokens, seq_len, p, seed=7) for p in POOL_SHARES}
    assert sum(len(s) for s in inside.values()) == total
    assert not (inside["tuning"] & inside["calibration"]) and not (inside["calibration"] & inside["evaluation"])
    for pool, share in POOL_SHARES.items():
        assert abs(len(inside[pool]) - share * total) <= 1
    assert pool_exclusion(n_tokens, seq_len, "tuning", seed=7) == pool_exclusion(n_tokens, seq_len, "tuning", seed=7)
    assert pool_exclusion(n_tokens, seq_len, "tuning", seed=8) != pool_exclusion(n_tokens, seq_len, "tuning", seed=7)


def test_benign_plan_cycles_the_tuned_rung_and_its_neighbours() -> None:
    model = tiny_llama(0, layers=4, hidden=32)
    tuned = {"magnitude_prune": {"status": "selected", "sparsity": 0.12, "scope": "ffn"},
             "quant_rtn": {"status": "skipped", "reason": "none within budget"}}
    plan = plan_from_tuned(model, tuned)
    assert plan.per_run == 1
    assert [plan.spec(i) for i in range(4)] == [
        "magnitude_prune:0.12:ffn", "magnitude_prune:0.16:ffn", "magnitude_prune:0.08:ffn",
        "magnitude_prune:0.12:ffn"]
    rungs, at = neighbours("magnitude_prune", model, {"sparsity": 0.01, "scope": "attn"})
    assert [r.params["sparsity"] for r in rungs] == [0.01, 0.02] and at == 0 and rungs[0].scope == "attn"
    empty = BenignPlan({}, {})
    assert [empty.spec(i) for i in range(3)] == list(FALLBACK_SPECS)
    assert empty.describe()["source"] == "fallback"
