"""The scheduler's groups built from the collection: one queue of items per model, smallest model first.

The scheduler sees only nodeid strings. :func:`build_groups` parses each scenario nodeid back into its model
key (:func:`pytest_proofpack.nodeid.parse_nodeid`), plans the model's memory (:func:`.plan.plan_model`) and
orders the groups: plain (non-scenario) tests first, then models the suite does not list, then the suite's models
by ``params_b`` and key. :func:`promote_critical` then moves a model whose own chain of items bounds the
makespan to the front.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pytest_proofpack.nodeid import parse_nodeid
from pytest_proofpack.scheduling.plan import PlanSettings, plan_model
from pytest_proofpack.scheduling.state import ModelGroup

if TYPE_CHECKING:
    from pytest_proofpack.models import ModelEntry


def build_groups(
    collection: Sequence[str],
    models: Mapping[str, ModelEntry],
    settings: PlanSettings,
    device_gb: float,
    model_configs: Mapping[str, Mapping[str, Any]],
) -> list[ModelGroup]:
    """One group per model key in ``collection``, sorted by ``sort_key``; a model's items in scenario order
    (first appearance in the collection), then run number. ``device_gb``: the largest device (0 on CPU)."""
    scenario_order: dict[str, int] = {}
    by_key: dict[str, list[tuple[int, int, int]]] = {}
    for index, nodeid in enumerate(collection):
        case = parse_nodeid(nodeid)
        if case is None:
            by_key.setdefault("", []).append((0, 0, index))
            continue
        order = scenario_order.setdefault(case.scenario, len(scenario_order))
        by_key.setdefault(case.model, []).append((order, case.run, index))
    groups: list[ModelGroup] = []
    for key, entries in by_key.items():
        entry = models.get(key) if key else None
        plan = plan_model(entry, settings, device_gb, model_configs.get(key)) if entry is not None else None
        rank = 0 if not key else (1 if entry is None else 2)
        sort_key = (rank, entry.params_b if entry is not None else 0.0, key)
        queue = deque(index for _, _, index in sorted(entries))
        groups.append(ModelGroup(key, sort_key, plan, queue, plain=not key))
    return sorted(groups, key=lambda g: g.sort_key)


def promote_critical(
    ordered: list[ModelGroup],
    slots: int,
    setup_items: float,
    critical_frac: float,
    log: Callable[[str], None],
) -> list[ModelGroup]:
    """Move a model whose own chain bounds the makespan to the front if it would miss the first wave.

    Work is estimated as ``params_b × (items + setup_items)`` (a model's setup — load, baseline,
    calibration — costs about ``setup_items`` items) times the devices it occupies, out of ``slots`` devices
    (workers on CPU). A model is critical when its chain is at least ``critical_frac`` × the average work per
    slot; started late, it alone would set the makespan.
    """
    if slots <= 1:
        return ordered

    def chain(g: ModelGroup) -> float:
        return g.sort_key[1] * (len(g.queue) + setup_items)

    total = sum(chain(g) * min(g.required, slots) for g in ordered if g.plan is not None)
    critical = sorted(
        (g for g in ordered if g.plan is not None and chain(g) >= critical_frac * total / slots),
        key=chain,
        reverse=True,
    )
    head = [g for g in ordered if g.plan is None]
    rest = [g for g in ordered if g.plan is not None]
    for g in critical:
        used = 0
        for other in rest:
            used += min(other.required, slots)
            if other is g:
                break
        if used > slots:
            rest.remove(g)
            promoted = sum(1 for x in rest if x.sort_key[0] == -1)
            rest.insert(promoted, g)
            g.sort_key = (-1, g.sort_key[1], g.sort_key[2])
            log(f"{g.key} bounds the makespan; starting it first")
    return head + rest


def group_of_items(groups: Sequence[ModelGroup], n_items: int) -> list[ModelGroup]:
    """For each of the ``n_items`` collection indices, the group whose queue holds it."""
    owner = [groups[0]] * n_items
    for g in groups:
        for i in g.queue:
            owner[i] = g
    return owner
