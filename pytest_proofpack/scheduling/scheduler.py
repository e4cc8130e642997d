"""The proofpack scheduler for pytest-xdist: models onto workers, smallest first, memory-gated per device.

:class:`ProofpackScheduling` implements xdist's ``Scheduling`` protocol (``xdist/scheduler/protocol.py``).
It sees only nodeids; :func:`.groups.build_groups` turns the collection into one queue per model. The queues
are kept **in the controller**; workers get small chunks (about ``target_pending`` items queued), so
rebalancing never needs xdist's ``steal`` round trip.

Rules, in the order a worker that needs work applies them:

1. Continue the model it is working on (its items run in scenario order, then run number).
2. Start the next model nobody works on yet, smallest first (plain tests and unknown models first, then
   ``params_b``, then key), if its memory plan fits the worker's device now (:mod:`.memory_gate`; CPU mode never
   gates). A model that does not fit is skipped for this worker; another worker or a later moment may take it.
   Exception to "smallest first": a model whose own chain bounds the makespan and would miss the first wave
   starts first (:func:`.groups.promote_critical`).
3. A model needing ``k > 1`` devices is *reserved* (:mod:`.reservations`): the first worker to ask becomes
   its leader, the next ``k−1`` become helpers. A helper that never received work is held idle (nothing
   pending, so nothing is stranded) and is released when the model is done; a helper that has run work is shut
   down, so its process exits and frees its device. The leader gets the model's items once every helper is
   free (at once if the leader would otherwise strand an item; the item side then waits for ``ready``).
4. Otherwise join the running model with the most queued items per worker, if it has at least
   ``split_min_items`` (default 2) queued, or its single queued item is the last queued item of the run; so no
   worker idles while two or more items remain. For this to be possible, a short queue (fewer than
   ``target_pending`` items per live worker) is handed out 2 pending items per worker at most; the rest
   stays in the controller for whichever worker idles first (:func:`.choice.chunk_size`).
5. Nothing to do: shut down when nothing remains it could run; otherwise wait — but never with exactly one
   item pending (xdist runs a worker's last queued item only after another item or ``shutdown`` arrives).

A crashed worker (``remove_node``) returns its running item and requeues the rest at the front of their
models' queues; its reservation is released. Progress is guaranteed: when no worker is busy and items remain,
the scheduler places work ignoring live free memory and unfinished reservations, and says so in the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_proofpack.scheduling.choice import choose_group, chunk_size
from pytest_proofpack.scheduling.gpus import GpuInventory
from pytest_proofpack.scheduling.groups import build_groups, group_of_items, promote_critical
from pytest_proofpack.scheduling.memory_gate import MemoryGate
from pytest_proofpack.scheduling.plan import PlanSettings
from pytest_proofpack.scheduling.reservations import Reservation, ReservationBook
from pytest_proofpack.scheduling.state import ModelGroup, NodeState, Role

if TYPE_CHECKING:
    from xdist.remote import Producer
    from xdist.workermanage import WorkerController

    from pytest_proofpack.models import ModelEntry


class ProofpackScheduling:
    """xdist ``Scheduling`` for proofpack scenarios (see the module docstring for the rules).

    ``models``: the suite's models by key; ``settings`` and ``model_configs``: what their memory plans are made
    from; ``inventory``: the devices; ``numnodes``: the workers expected (default: from ``-n``/``--tx``).
    ``target_pending``: items kept queued per worker; ``split_min_items``: queued items for which a second worker
    joins a model; ``setup_items``, ``critical_frac``: see :func:`.groups.promote_critical`;
    ``reservations_path``: where reservations are written for the workers (None: kept in memory only).
    """

    def __init__(
        self,
        config: pytest.Config,
        log: Producer | None = None,
        *,
        models: Mapping[str, ModelEntry],
        settings: PlanSettings,
        inventory: GpuInventory,
        numnodes: int | None = None,
        target_pending: int = 3,
        split_min_items: int = 2,
        setup_items: float = 8.0,
        critical_frac: float = 0.8,
        model_configs: Mapping[str, Mapping[str, Any]] | None = None,
        reservations_path: Path | None = None,
    ) -> None:
        if numnodes is None:
            from xdist.workermanage import parse_tx_spec_config

            numnodes = len(parse_tx_spec_config(config))
        self.numnodes = numnodes
        self.config = config
        self.log: Callable[..., None] = log.proofpacksched if log is not None else (lambda *a: None)
        self.models = models
        self.settings = settings
        self.inventory = inventory
        self.target_pending = max(2, target_pending)
        self.split_min_items = max(1, split_min_items)
        self.setup_items = setup_items
        self.critical_frac = critical_frac
        self.model_configs = model_configs or {}
        self._book = ReservationBook(reservations_path, self.log)
        self.node2collection: dict[WorkerController, list[str]] = {}
        self.node2pending: dict[WorkerController, list[int]] = {}
        self.collection: list[str] | None = None
        self.groups: list[ModelGroup] = []
        self._item_group: list[ModelGroup] = []
        self._state: dict[WorkerController, NodeState] = {}
        self._gate = MemoryGate(inventory, settings.usable_frac)

    # -- protocol: state -------------------------------------------------------------------------------------
    @property
    def reservations(self) -> dict[str, Reservation]:
        """The multi-device reservations by model key (live and done)."""
        return self._book.by_model

    @property
    def nodes(self) -> list[WorkerController]:
        """All nodes the scheduler knows."""
        return list(self.node2pending)

    @property
    def collection_is_completed(self) -> bool:
        """True once every initially expected node sent its collection. It stays true once scheduling started:
        nodes that finished (or crashed) are removed, and a replacement node must then still be scheduled."""
        return self.collection is not None or len(self.node2collection) >= self.numnodes

    @property
    def tests_finished(self) -> bool:
        """True when nothing is held in the controller and no node has 2 or more pending items."""
        if not self.collection_is_completed:
            return False
        if any(g.queue for g in self.groups):
            return False
        return all(len(p) < 2 for p in self.node2pending.values())

    @property
    def has_pending(self) -> bool:
        """True while any item is held in the controller or queued on a node."""
        return any(g.queue for g in self.groups) or any(self.node2pending.values())

    # -- protocol: nodes and collections ---------------------------------------------------------------------
    def add_node(self, node: WorkerController) -> None:
        """Register a node; its device comes from the env its spec was started with."""
        assert node not in self.node2pending
        self.node2pending[node] = []
        device, cuda_id = self._gate.pinned_device(node)
        self._state[node] = NodeState(device=device, cuda_id=cuda_id)

    def add_node_collection(self, node: WorkerController, collection: Sequence[str]) -> None:
        """Store a node's collection; a late (replacement) node must match the first collection."""
        assert node in self.node2pending
        if self.collection_is_completed and self.collection is not None:
            if list(collection) != self.collection:
                from xdist.report import report_collection_diff

                other = next(iter(self.node2collection))
                msg = report_collection_diff(self.collection, collection, other.gateway.id, node.gateway.id)
                self.log(msg)
                return
        self.node2collection[node] = list(collection)

    def schedule(self) -> None:
        """Build the groups on first call (collections must agree), then hand out work."""
        assert self.collection_is_completed
        if self.collection is None:
            if not self._same_collections():
                self.log("**Different tests collected, aborting run**")
                return
            self.collection = next(iter(self.node2collection.values()))
            self._build_groups(self.collection)
        self._reschedule()

    def remove_node(self, node: WorkerController) -> str | None:
        """Forget a node; return the item it was running when it crashed (or None) and requeue the rest."""
        pending = self.node2pending.pop(node)
        state = self._state.pop(node)
        self.node2collection.pop(node, None)
        if state.group is not None:
            state.group.workers.discard(node)
        crash: str | None = None
        if pending:
            assert self.collection is not None
            crash = self.collection[pending[0]]
            self._item_group[pending[0]].inflight -= 1
            self._requeue(pending[1:])
        self._release_helpers(self._book.forget_worker(node.gateway.id))
        self._reschedule()
        return crash

    # -- protocol: items -------------------------------------------------------------------------------------
    def mark_test_complete(self, node: WorkerController, item_index: int, duration: float = 0) -> None:
        """An item finished on ``node``; finish a reservation whose last item this was, and feed the nodes."""
        self.node2pending[node].remove(item_index)
        group = self._item_group[item_index]
        group.inflight -= 1
        if not group.queue and group.inflight == 0:
            released = self._book.finish(group.key)
            if released is not None:
                self.log(f"reservation of {group.key} done; releasing {released}")
                self._release_helpers(released)
        self._reschedule()

    def mark_test_pending(self, item: str) -> None:
        """Requeue ``item`` (e.g. a crashed item to be rerun) at the front of its model's queue."""
        assert self.collection is not None
        index = self.collection.index(item)
        self._requeue([index])
        self._reschedule()

    def remove_pending_tests_from_node(self, node: WorkerController, indices: Sequence[int]) -> None:
        """Answer to a ``steal``; this scheduler never steals, but requeues correctly if one happens."""
        for i in indices:
            self.node2pending[node].remove(i)
            self._item_group[i].inflight -= 1
        self._requeue(indices)
        self._reschedule()

    # -- building --------------------------------------------------------------------------------------------
    def _same_collections(self) -> bool:
        from xdist.report import report_collection_diff

        items = list(self.node2collection.items())
        first_node, first = items[0]
        same = True
        for node, col in items[1:]:
            msg = report_collection_diff(first, col, first_node.gateway.id, node.gateway.id)
            if msg:
                same = False
                self.log(msg)
                rep = pytest.CollectReport(nodeid=node.gateway.id, outcome="failed", longrepr=msg, result=[])
                self.config.hook.pytest_collectreport(report=rep)
        return same

    def _build_groups(self, collection: list[str]) -> None:
        ordered = build_groups(collection, self.models, self.settings, self._gate.largest_gb(), self.model_configs)
        slots = len(self._gate.devices) if self._gate.gpu_mode else self.numnodes
        self.groups = promote_critical(ordered, slots, self.setup_items, self.critical_frac, self.log)
        self._item_group = group_of_items(self.groups, len(collection))
        for g in self.groups:
            if g.plan is not None:
                self.log(f"plan {g.key}: {g.need_gb:.1f} GiB, {g.required} device(s), {len(g.queue)} items")

    # -- the scheduling pass ---------------------------------------------------------------------------------
    def _reschedule(self) -> None:
        if self.collection is None:
            return
        self._gate.new_pass()
        # Nodes with the fewest pending items choose first: they are the ones about to idle.
        for node in sorted(self.nodes, key=lambda n: len(self.node2pending[n])):
            self._feed(node, force=False)
        self._ensure_progress()

    def _ensure_progress(self) -> None:
        if not any(g.queue for g in self.groups):
            return
        # A node with 2+ items queued, or one shutting down, will still send an event that reschedules.
        busy = any(len(p) >= 2 or node.shutting_down for node, p in self.node2pending.items())
        if busy:
            return
        for node in self.nodes:
            if not node.shutting_down and self._state[node].role != "helper":
                self.log(f"no worker busy; placing work on {node.gateway.id}, ignoring memory/reservations")
                self._feed(node, force=True)
                if len(self.node2pending[node]) >= 2 or node.shutting_down:
                    return
        for node in self.nodes:  # only helpers left alive: un-hold them
            if not node.shutting_down:
                self._state[node].role = "work"
                self._feed(node, force=True)
                return

    def _feed(self, node: WorkerController, force: bool) -> None:
        state = self._state[node]
        pending = self.node2pending[node]
        while not node.shutting_down and state.role != "helper":
            group = state.group
            if group is not None and group.queue:
                if len(pending) >= self._target(group):
                    return
                res = self.reservations.get(group.key)
                if res is not None and not res.ready and not pending and not force:
                    return  # a fresh leader waits for its helpers with nothing pending
                self._send(node, group, self._chunk(node, group))
                if group.queue or len(pending) >= 2:
                    return
                continue  # its model ran out with < 2 items queued: pick the next one now
            if len(pending) >= 2:
                return  # it still has work; its next model is chosen when it is about to idle
            choice = self._choose(node, force)
            if choice is None and pending and any(g.queue for g in self.groups):
                if self._others_can_run(node):
                    # Waiting would strand its last item; another worker will take the remaining work.
                    self.log(f"{node.gateway.id}: nothing fits now; shut down rather than strand an item")
                    node.shutdown()
                    return
                force = True
                choice = self._choose(node, force)
            if choice is None:
                if not any(g.queue for g in self.groups) or pending:
                    node.shutdown()
                return
            new, role = choice
            if role == "helper":
                self._become_helper(node, new)
                return
            self._assign(node, new, role)

    def _chunk(self, node: WorkerController, group: ModelGroup) -> int:
        pending = len(self.node2pending[node])
        if self._devices_needed(group) > 1:
            return self._target(group) - pending  # a reserved model runs on its leader only
        live = sum(1 for n in self.nodes if not n.shutting_down and self._state[n].role != "helper")
        return chunk_size(pending, self._target(group), len(group.queue), live, self.target_pending)

    def _target(self, group: ModelGroup) -> int:
        if group.plain:
            return max(self.target_pending, len(group.queue) // max(1, len(self.nodes) * 4))
        return self.target_pending

    def _choose(self, node: WorkerController, force: bool) -> tuple[ModelGroup, Role] | None:
        """The next work for a node that is about to idle (:func:`.choice.choose_group`)."""
        return choose_group(
            node,
            self.groups,
            self.reservations,
            devices_needed=self._devices_needed,
            fits=lambda g: force or self._fits(node, g),
            split_min_items=self.split_min_items,
        )

    def _devices_needed(self, group: ModelGroup) -> int:
        """Devices ``group`` runs on: its reservation's size, else its plan's need capped by the live workers."""
        if not self._gate.gpu_mode:
            return 1
        res = self.reservations.get(group.key)
        if res is not None:
            return res.size
        live = sum(1 for n in self.nodes if not n.shutting_down or self._state[n].role == "helper")
        return max(1, min(group.required, live))

    def _fits(self, node: WorkerController, group: ModelGroup) -> bool:
        state = self._state[node]
        return self._gate.fits(state.device, state.held_gb, group)

    def _others_can_run(self, node: WorkerController) -> bool:
        live = [n for n in self.nodes if n is not node and not n.shutting_down]
        return all(
            any(self._gate.fits_ever(self._state[n].device, g) or self._devices_needed(g) > 1 for n in live)
            for g in self.groups
            if g.queue
        ) and bool(live)

    # -- placing ---------------------------------------------------------------------------------------------
    def _assign(self, node: WorkerController, group: ModelGroup, role: Role) -> None:
        state = self._state[node]
        if state.group is not None:
            state.group.workers.discard(node)
        state.group = group
        state.role = "work"
        group.workers.add(node)
        if group.plan is not None:
            state.held_gb = group.need_gb
        if role == "leader":
            size = self._devices_needed(group)
            self.log(f"{node.gateway.id} leads {group.key} ({size} devices)")
            self._book.lead(group.key, node.gateway.id, state.cuda_id, size)
        self.log(f"{node.gateway.id} takes {group.key or 'plain tests'} ({len(group.queue)} queued)")

    def _become_helper(self, node: WorkerController, group: ModelGroup) -> None:
        state = self._state[node]
        state.role = "helper"
        if state.group is not None:
            state.group.workers.discard(node)
            state.group = None
        must_exit = bool(self.node2pending[node]) or state.fed
        res = self._book.join(group.key, node.gateway.id, state.cuda_id, must_exit=must_exit)
        if must_exit:
            node.shutdown()  # its process must exit to free the device
        self.log(f"{node.gateway.id} helps {group.key}; waiting for {res.waiting_for}")

    def _release_helpers(self, gateway_ids: Iterable[str]) -> None:
        released = set(gateway_ids)
        for other, st in self._state.items():
            if st.role == "helper" and other.gateway.id in released:
                st.role = "work"

    def _send(self, node: WorkerController, group: ModelGroup, count: int) -> None:
        if count <= 0 or not group.queue:
            return
        # Never leave a node with exactly one item queued: send two, or everything left.
        count = max(count, 2 - len(self.node2pending[node]))
        chunk = [group.queue.popleft() for _ in range(min(count, len(group.queue)))]
        group.inflight += len(chunk)
        self.node2pending[node].extend(chunk)
        self._state[node].fed = True
        node.send_runtest_some(chunk)
        if len(self.node2pending[node]) == 1 and not any(g.queue for g in self.groups):
            node.shutdown()

    def _requeue(self, indices: Iterable[int]) -> None:
        for i in reversed(list(indices)):
            self._item_group[i].queue.appendleft(i)
