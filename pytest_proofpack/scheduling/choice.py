"""Which model a worker about to idle takes next (the scheduler's rules 2–4), and how many items it is sent.

Pure decisions over the scheduler's groups: the caller supplies what depends on live state (the devices a
model runs on, whether it fits the worker's device now) as functions, so each rule reads in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from pytest_proofpack.scheduling.reservations import Reservation
from pytest_proofpack.scheduling.state import ModelGroup, Role

if TYPE_CHECKING:
    from xdist.workermanage import WorkerController


def choose_group(
    node: WorkerController,
    groups: Sequence[ModelGroup],
    reservations: Mapping[str, Reservation],
    *,
    devices_needed: Callable[[ModelGroup], int],
    fits: Callable[[ModelGroup], bool],
    split_min_items: int,
) -> tuple[ModelGroup, Role] | None:
    """The group ``node`` takes next and its role there, or None when no rule gives it work.

    Rule 2: the first group in order with queued items that nobody works on and that ``fits``; plain tests
    always. Rule 3: a group needing 2+ devices makes ``node`` its leader (no reservation yet) or a helper (the
    reservation lacks helpers). Rule 4: join the running group with the most queued items per worker, if it has
    ``split_min_items`` queued or holds the run's last queued item.
    """
    for g in groups:
        if not g.queue:
            continue
        if g.plain:
            return g, "work"
        if devices_needed(g) > 1:
            res = reservations.get(g.key)
            if res is None:
                return g, "leader"
            if len(res.helpers) < devices_needed(g) - 1:
                return g, "helper"
            continue
        if g.workers:
            continue
        if fits(g):
            return g, "work"
    # Rule 4: the queue itself, not the share per worker, decides whether joining is worth it: an idle worker
    # that can take a chunk of 2 (or the run's last queued item, after which it is shut down so it runs)
    # shortens the run; ranking by share sends it where the most work per worker waits.
    queued = sum(len(g.queue) for g in groups)
    best: ModelGroup | None = None
    best_share = 0.0
    for g in groups:
        if not g.queue or not g.workers or node in g.workers or devices_needed(g) > 1:
            continue
        enough = len(g.queue) >= split_min_items or queued == len(g.queue) == 1
        share = len(g.queue) / len(g.workers)
        if enough and share > best_share and fits(g):
            best, best_share = g, share
    return (best, "work") if best is not None else None


def chunk_size(pending: int, target: int, queued: int, live_workers: int, target_pending: int) -> int:
    """How many queued items a worker with ``pending`` items is sent now (the caller raises it to 2 for an
    empty worker).

    Normally enough to reach ``target`` pending. While the queue (``queued`` items) is short — fewer than
    ``target_pending`` per live worker — and another worker could join, only up to 2 (the running item and the
    next one, xdist's minimum): the rest stays in the controller, where whichever worker idles first takes it,
    so a short model's items spread over the idle workers instead of queueing on its first one.
    """
    want = target - pending
    if live_workers > 1 and queued < target_pending * live_workers:
        want = min(want, 2 - pending)
    return want
