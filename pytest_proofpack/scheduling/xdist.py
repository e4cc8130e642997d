"""The proofpack scheduler for pytest-xdist, per-worker device pinning and ``-n auto``.

:class:`ProofpackScheduling` implements xdist's ``Scheduling`` protocol (xdist 3.8 ``scheduler/protocol.py``).
It sees only nodeids; the model key is parsed with :func:`pytest_proofpack.nodeid.parse_nodeid` and looked up
in the suite's models. Items are grouped per model and kept **in the controller**; workers get small chunks
(about ``target_pending`` items queued), so rebalancing never needs xdist's ``steal`` round trip.

Rules, in the order a worker that needs work applies them:

1. Continue the model it is working on (its items run in scenario order, then run number).
2. Start the next model nobody works on yet, smallest first (plain tests and unknown models first, then
   ``params_b``, then key), if the model's memory plan fits the worker's device now: ``need_gb ≤
   available × usable_frac`` where ``available`` is the live free memory (``inventory.refresh()``) plus
   what the worker's own previous model holds (the worker releases it when it switches models). A model
   that does not fit is skipped for this worker; another worker or a later moment may take it. CPU mode
   never gates. Exception to "smallest first": a model whose own chain bounds the makespan and would miss
   the first wave starts first (see ``_promote_critical``).
3. A model needing ``k > 1`` devices is *reserved*: the first worker to ask becomes its leader, the next
   ``k−1`` become helpers. A helper that never received work is held idle (nothing pending, so nothing is
   stranded) and is released when the model is done; a helper that has run work is shut down, so its process
   exits and frees its device. The leader gets the model's items once every helper is free (at once if the
   leader would otherwise strand an item; the item side then waits for ``ready``). See :class:`Reservation`
   for how the item side learns the devices.
4. Otherwise join the running model with the most queued items per worker, if it has at least
   ``split_min_items`` (default 2) queued, or its single queued item is the last queued item of the run; so no
   worker idles while two or more items remain. For this to be possible, a short queue (fewer than
   ``target_pending`` items per live worker) is handed out 2 pending items per worker at most; the rest
   stays in the controller for whichever worker idles first (see ``_chunk``).
5. Nothing to do: shut down when nothing remains it could run; otherwise wait — but never with exactly one
   item pending (xdist runs a worker's last queued item only after another item or ``shutdown`` arrives).

A crashed worker (``remove_node``) returns its running item and requeues the rest at the front of their
models' queues; its reservation is released. Progress is guaranteed: when no worker is busy and items remain,
the scheduler places work ignoring live free memory and unfinished reservations, and says so in the log.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from pytest_proofpack.models import ModelEntry
from pytest_proofpack.nodeid import parse_nodeid
from pytest_proofpack.scheduling.gpus import RESERVED_DEVICES_ENV, GpuDevice, GpuInventory
from pytest_proofpack.scheduling.plan import ModelPlan, PlanSettings, plan_model

if TYPE_CHECKING:
    import execnet

RESERVATIONS_FILE = "proofpack-reservations.json"
WORKER_GPU_ENV = "PROOFPACK_WORKER_GPU"
_GW_RE = re.compile(r"(\d+)$")

Role = Literal["work", "leader", "helper"]


@dataclass
class Reservation:
    """``k`` devices held for one model.

    ``leader`` is the gateway id (``gw3``) whose items run the model; ``devices`` the ``CUDA_VISIBLE_DEVICES``
    entries (leader's first) the item side must give the subprocess it launches (also as
    ``PROOFPACK_RESERVED_DEVICES``); ``ready`` turns true once every helper is free (never started work, or
    its process has exited); ``done`` once all the model's items completed.

    Mechanism: the scheduler cannot change a live worker's environment, so it records reservations in
    ``ProofpackScheduling.reservations`` and writes them atomically to ``<controller basetemp>/``
    :data:`RESERVATIONS_FILE` (a worker finds it at ``tmp_path_factory.getbasetemp().parent``). On the leader,
    the session reads it with :func:`reservation_for` and runs the model's items through
    :class:`~pytest_proofpack.scheduling.launch.ReservedLauncher`, in a subprocess that sees ``devices``.
    """

    model: str
    leader: str
    devices: list[str]
    size: int = 1
    helpers: list[str] = field(default_factory=list)
    waiting_for: list[str] = field(default_factory=list)
    ready: bool = False
    done: bool = False


def reservation_for(path: Path, worker_id: str, model: str) -> Reservation | None:
    """Read :data:`RESERVATIONS_FILE` at ``path``: the live reservation ``worker_id`` leads for ``model``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = data.get("reservations", {}).get(model) if isinstance(data, dict) else None
    if not isinstance(entry, dict) or entry.get("leader") != worker_id or entry.get("done"):
        return None
    return Reservation(**entry)


@dataclass
class _Group:
    key: str  # model key; "" for plain (non-scenario) tests
    sort_key: tuple[int, float, str]
    plan: ModelPlan | None
    queue: deque[int]
    plain: bool = False
    workers: set[Any] = field(default_factory=set)
    inflight: int = 0

    @property
    def need_gb(self) -> float:
        return self.plan.need_gb if self.plan is not None else 0.0

    @property
    def required(self) -> int:
        return self.plan.required_gpus if self.plan is not None else 1


@dataclass
class _NodeState:
    device: int | None
    cuda_id: str
    group: _Group | None = None
    held_gb: float = 0.0
    role: Role = "work"
    fed: bool = False  # ever received items (then it can only reach 0 pending through shutdown)


class ProofpackScheduling:
    """xdist ``Scheduling`` for proofpack scenarios (see the module docstring for the rules)."""

    def __init__(
        self,
        config: pytest.Config,
        log: Any = None,
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
        self.reservations: dict[str, Reservation] = {}
        self.reservations_path = reservations_path
        self.node2collection: dict[Any, list[str]] = {}
        self.node2pending: dict[Any, list[int]] = {}
        self.collection: list[str] | None = None
        self.groups: list[_Group] = []
        self._item_group: list[_Group] = []
        self._state: dict[Any, _NodeState] = {}
        self._devices: list[GpuDevice] = inventory.devices()
        self._fresh = False

    # -- protocol: state -------------------------------------------------------------------------------------
    @property
    def nodes(self) -> list[Any]:
        """All nodes the scheduler knows (xdist ``WorkerController`` objects)."""
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
    def add_node(self, node: Any) -> None:
        """Register a node; its device comes from the env its spec was started with."""
        assert node not in self.node2pending
        self.node2pending[node] = []
        self._state[node] = self._node_state(node)

    def add_node_collection(self, node: Any, collection: Sequence[str]) -> None:
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

    def remove_node(self, node: Any) -> str | None:
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
        self._release_reservations_of(node.gateway.id)
        self._reschedule()
        return crash

    # -- protocol: items -------------------------------------------------------------------------------------
    def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
        """An item finished on ``node``; finish a reservation whose last item this was, and feed the nodes."""
        self.node2pending[node].remove(item_index)
        group = self._item_group[item_index]
        group.inflight -= 1
        if not group.queue and group.inflight == 0:
            res = self.reservations.get(group.key)
            if res is not None and not res.done:
                res.done = True
                self.log(f"reservation of {group.key} done; releasing {res.helpers}")
                for other, st in self._state.items():
                    if st.role == "helper" and other.gateway.id in res.helpers:
                        st.role = "work"
                self._write_reservations()
        self._reschedule()

    def mark_test_pending(self, item: str) -> None:
        """Requeue ``item`` (e.g. a crashed item to be rerun) at the front of its model's queue."""
        assert self.collection is not None
        index = self.collection.index(item)
        self._requeue([index])
        self._reschedule()

    def remove_pending_tests_from_node(self, node: Any, indices: Sequence[int]) -> None:
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
        device_gb = max((d.total_gb for d in self._devices), default=0.0) if self._gpu_mode else 0.0
        scenario_order: dict[str, int] = {}
        by_key: dict[str, list[tuple[int, int, int]]] = {}
        for index, nodeid in enumerate(collection):
            case = parse_nodeid(nodeid)
            if case is None:
                by_key.setdefault("", []).append((0, 0, index))
                continue
            order = scenario_order.setdefault(case.scenario, len(scenario_order))
            by_key.setdefault(case.model, []).append((order, case.run, index))
        groups: dict[str, _Group] = {}
        for key, entries in by_key.items():
            entry = self.models.get(key) if key else None
            plan = (
                plan_model(entry, self.settings, device_gb, self.model_configs.get(key))
                if entry is not None
                else None
            )
            rank = 0 if not key else (1 if entry is None else 2)
            sort_key = (rank, entry.params_b if entry is not None else 0.0, key)
            queue = deque(index for _, _, index in sorted(entries))
            groups[key] = _Group(key, sort_key, plan, queue, plain=not key)
        self.groups = self._promote_critical(sorted(groups.values(), key=lambda g: g.sort_key))
        self._item_group = [self.groups[0]] * len(collection)
        for g in self.groups:
            for i in g.queue:
                self._item_group[i] = g
        for g in self.groups:
            if g.plan is not None:
                self.log(f"plan {g.key}: {g.need_gb:.1f} GiB, {g.required} device(s), {len(g.queue)} items")

    def _promote_critical(self, ordered: list[_Group]) -> list[_Group]:
        """Move a model whose own chain bounds the makespan to the front if it would miss the first wave.

        Work is estimated as ``params_b × (items + setup_items)`` (a model's setup — load, baseline,
        calibration — costs about ``setup_items`` items) times the devices it occupies. A model is critical
        when its chain is at least ``critical_frac`` × the average work per worker; started late, it alone
        would set the makespan.
        """
        slots = len(self._devices) if self._gpu_mode else self.numnodes
        if slots <= 1:
            return ordered

        def chain(g: _Group) -> float:
            return g.sort_key[1] * (len(g.queue) + self.setup_items)

        total = sum(chain(g) * min(g.required, slots) for g in ordered if g.plan is not None)
        critical = sorted(
            (g for g in ordered if g.plan is not None and chain(g) >= self.critical_frac * total / slots),
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
                self.log(f"{g.key} bounds the makespan; starting it first")
        return head + rest

    # -- the scheduling pass ---------------------------------------------------------------------------------
    @property
    def _gpu_mode(self) -> bool:
        return self.inventory.mode == "gpu" and bool(self._devices)

    def _reschedule(self) -> None:
        if self.collection is None:
            return
        self._fresh = False
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

    def _feed(self, node: Any, force: bool) -> None:
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

    def _chunk(self, node: Any, group: _Group) -> int:
        """How many of ``group``'s queued items ``node`` is sent now (``_send`` raises it to 2 for an empty node).

        Normally enough for ``target_pending`` queued. While the queue is short (fewer than ``target_pending``
        items per live worker) and another worker could join, only up to 2 (the running item and the next one,
        xdist's minimum): the rest stays in the controller, where whichever worker idles first takes it. Before
        this cap the first worker of a model took ``target_pending`` items and left too few for anyone to join,
        so a one-model suite of 4 items ran on one of two workers (issue 9).
        """
        pending = len(self.node2pending[node])
        want = self._target(group) - pending
        if self._k(group) > 1:
            return want  # a reserved model runs on its leader only
        live = sum(1 for n in self.nodes if not n.shutting_down and self._state[n].role != "helper")
        if live > 1 and len(group.queue) < self.target_pending * live:
            want = min(want, 2 - pending)
        return want

    def _target(self, group: _Group) -> int:
        if group.plain:
            return max(self.target_pending, len(group.queue) // max(1, len(self.nodes) * 4))
        return self.target_pending

    def _choose(self, node: Any, force: bool) -> tuple[_Group, Role] | None:
        """The next work for a node that is about to idle, by the module docstring's rules 2–4."""
        for g in self.groups:
            if not g.queue:
                continue
            if g.plain:
                return g, "work"
            if self._k(g) > 1:
                res = self.reservations.get(g.key)
                if res is None:
                    return g, "leader"
                if len(res.helpers) < self._k(g) - 1:
                    return g, "helper"
                continue
            if g.workers:
                continue
            if force or self._fits(node, g):
                return g, "work"
        # Rule 4: the queue itself, not the share per worker, decides whether joining is worth it: an idle worker
        # that can take a chunk of 2 (or the run's last queued item, after which it is shut down so it runs)
        # shortens the run; ranking by share sends it where the most work per worker waits.
        queued = sum(len(g.queue) for g in self.groups)
        best: _Group | None = None
        best_share = 0.0
        for g in self.groups:
            if not g.queue or not g.workers or node in g.workers or self._k(g) > 1:
                continue
            enough = len(g.queue) >= self.split_min_items or queued == len(g.queue) == 1
            share = len(g.queue) / len(g.workers)
            if enough and share > best_share and (force or self._fits(node, g)):
                best, best_share = g, share
        return (best, "work") if best is not None else None

    def _k(self, group: _Group) -> int:
        if not self._gpu_mode:
            return 1
        res = self.reservations.get(group.key)
        if res is not None:
            return res.size
        live = sum(1 for n in self.nodes if not n.shutting_down or self._state[n].role == "helper")
        return max(1, min(group.required, live))

    def _fits(self, node: Any, group: _Group) -> bool:
        state = self._state[node]
        if not self._gpu_mode or state.device is None or group.plan is None:
            return True
        if not self._fresh:
            self._devices = self.inventory.refresh()
            self._fresh = True
        dev = self._devices[state.device]
        available = min(dev.total_gb, dev.free_gb + state.held_gb)
        return group.need_gb <= available * self.settings.usable_frac

    def _fits_ever(self, node: Any, group: _Group) -> bool:
        state = self._state[node]
        if not self._gpu_mode or state.device is None or group.plan is None:
            return True
        return group.need_gb <= self._devices[state.device].total_gb * self.settings.usable_frac

    def _others_can_run(self, node: Any) -> bool:
        live = [n for n in self.nodes if n is not node and not n.shutting_down]
        return all(
            any(self._fits_ever(n, g) or self._k(g) > 1 for n in live) for g in self.groups if g.queue
        ) and bool(live)

    def _assign(self, node: Any, group: _Group, role: Role) -> None:
        state = self._state[node]
        if state.group is not None:
            state.group.workers.discard(node)
        state.group = group
        state.role = "work"
        group.workers.add(node)
        if group.plan is not None:
            state.held_gb = group.need_gb
        if role == "leader":
            res = Reservation(group.key, node.gateway.id, [state.cuda_id], size=self._k(group))
            self.reservations[group.key] = res
            self.log(f"{node.gateway.id} leads {group.key} ({self._k(group)} devices)")
            self._update_ready(res)
        self.log(f"{node.gateway.id} takes {group.key or 'plain tests'} ({len(group.queue)} queued)")

    def _become_helper(self, node: Any, group: _Group) -> None:
        state = self._state[node]
        res = self.reservations[group.key]
        res.helpers.append(node.gateway.id)
        res.devices.append(state.cuda_id)
        state.role = "helper"
        if state.group is not None:
            state.group.workers.discard(node)
            state.group = None
        if self.node2pending[node] or state.fed:
            res.waiting_for.append(node.gateway.id)
            node.shutdown()  # its process must exit to free the device
        self.log(f"{node.gateway.id} helps {group.key}; waiting for {res.waiting_for}")
        self._update_ready(res)

    def _update_ready(self, res: Reservation) -> None:
        res.ready = len(res.helpers) >= res.size - 1 and not res.waiting_for
        self._write_reservations()

    def _release_reservations_of(self, gateway_id: str) -> None:
        for key, res in list(self.reservations.items()):
            if res.done:
                continue
            if res.leader == gateway_id:
                self.log(f"leader {gateway_id} of {key} is gone; releasing its reservation")
                del self.reservations[key]
                for st_node, st in self._state.items():
                    if st.role == "helper" and st_node.gateway.id in res.helpers:
                        st.role = "work"
                self._write_reservations()
            elif gateway_id in res.helpers:
                if gateway_id in res.waiting_for:
                    res.waiting_for.remove(gateway_id)
                self._update_ready(res)

    def _send(self, node: Any, group: _Group, count: int) -> None:
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

    # -- node identity ---------------------------------------------------------------------------------------
    def _node_state(self, node: Any) -> _NodeState:
        env: Mapping[str, str] = getattr(getattr(node.gateway, "spec", None), "env", None) or {}
        raw = env.get(WORKER_GPU_ENV)
        if raw is None:
            value = getattr(node, "workerinput", {}).get("proofpack_gpu")
            raw = "" if value is None else str(value)
        if not raw:
            m = _GW_RE.search(str(node.gateway.id))
            raw = m.group(1) if m else "0"
        device: int | None = None
        cuda_id = raw
        if self._devices:
            device = int(raw) % len(self._devices) if raw.isdigit() else 0
            cuda_id = env.get("CUDA_VISIBLE_DEVICES") or self._devices[device].cuda_id
        return _NodeState(device=device, cuda_id=cuda_id)

    def _write_reservations(self) -> None:
        path = self.reservations_path
        if path is None:
            return
        payload = {
            "schema": "proofpack_reservations_v1",
            "reservations": {k: asdict(r) for k, r in self.reservations.items()},
        }
        from pytest_proofpack.results import atomic_write_text

        try:
            atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=True))
        except OSError as exc:  # the in-memory record stays authoritative
            self.log(f"could not write {path}: {exc}")


# -- the plugin the session registers on the controller ------------------------------------------------------
def _physical_cores() -> int:
    try:
        import psutil

        count = psutil.cpu_count(logical=False)
    except ImportError:
        count = None
    return int(count or os.cpu_count() or 1)


def worker_device_env(
    worker_index: int,
    inventory: GpuInventory,
    n_workers: int,
    environ: Mapping[str, str] | None = None,
    cores: int | None = None,
) -> dict[str, str]:
    """The environment variables worker ``worker_index`` of ``n_workers`` must start with.

    GPU mode: ``CUDA_VISIBLE_DEVICES`` = the device's entry in the parent's ``CUDA_VISIBLE_DEVICES`` list when
    it has one, else its physical (PCI bus order) index; ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so integers mean the
    same device as in NVML; ``PROOFPACK_WORKER_GPU`` = the visible index. More workers than devices share
    devices round-robin. Both modes: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``PROOFPACK_TORCH_THREADS`` =
    ``max(1, cores // n_workers)`` unless the parent already set them.
    """
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    devices = inventory.devices()
    if inventory.mode == "gpu" and devices:
        dev = devices[worker_index % len(devices)]
        parent = [e.strip() for e in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if e.strip()]
        out["CUDA_VISIBLE_DEVICES"] = parent[dev.index] if dev.index < len(parent) else dev.cuda_id
        out["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        out[WORKER_GPU_ENV] = str(dev.index)
    threads = str(max(1, (cores if cores is not None else _physical_cores()) // max(1, n_workers)))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PROOFPACK_TORCH_THREADS"):
        if name not in env:
            out[name] = threads
    return out


def auto_num_workers(config: pytest.Config, inventory: GpuInventory) -> int | None:
    """Workers for ``-n auto``: one per device in GPU mode, physical cores in CPU mode.

    Returns None when ``PYTEST_XDIST_AUTO_NUM_WORKERS`` is set (xdist's default honours it) or for
    ``-n logical`` in CPU mode (xdist counts logical cores).
    """
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    devices = inventory.devices()
    if inventory.mode == "gpu" and devices:
        return len(devices)
    if getattr(config.option, "numprocesses", None) == "logical":
        return None
    return _physical_cores()


class SchedulingPlugin:
    """Controller-side plugin: the scheduler, per-worker env and ``workerinput``; register it there."""

    def __init__(
        self,
        config: pytest.Config,
        models: Mapping[str, ModelEntry],
        plan_settings: PlanSettings,
        inventory: GpuInventory,
    ) -> None:
        self.config = config
        self.models = models
        self.plan_settings = plan_settings
        self.inventory = inventory
        self.scheduler: ProofpackScheduling | None = None
        self._saved_tunables: tuple[str | None] | None = None

    def _reservations_path(self) -> Path | None:
        factory = getattr(self.config, "_tmp_path_factory", None)
        if factory is None:
            return None
        try:
            return Path(factory.getbasetemp()) / RESERVATIONS_FILE
        except OSError:
            return None

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> ProofpackScheduling:
        extra = {k: m.extra.get("hf_config") for k, m in self.models.items()}
        self.scheduler = ProofpackScheduling(
            config,
            log,
            models=self.models,
            settings=self.plan_settings,
            inventory=self.inventory,
            model_configs={k: v for k, v in extra.items() if isinstance(v, Mapping)},
            reservations_path=self._reservations_path(),
        )
        return self.scheduler

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_setupnodes(self, config: pytest.Config, specs: Sequence[execnet.XSpec]) -> None:
        from pytest_proofpack.malloc import worker_glibc_tunables

        # glibc reads its tunables when a process starts, before execnet applies ``spec.env``: the workers
        # (spawned after this hook) inherit the controller's environment, so it goes there.
        # Put back in pytest_unconfigure (an in-process pytester run must not leak it into the caller).
        tunables = worker_glibc_tunables(os.environ)
        if tunables is not None:
            self._saved_tunables = (os.environ.get("GLIBC_TUNABLES"),)
            os.environ["GLIBC_TUNABLES"] = tunables
        for i, spec in enumerate(specs):
            env = worker_device_env(i, self.inventory, len(specs))
            # execnet applies ``spec.env`` in the fresh worker interpreter before any conftest runs.
            spec.env.update(env)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._saved_tunables is not None:
            (previous,) = self._saved_tunables
            if previous is None:
                os.environ.pop("GLIBC_TUNABLES", None)
            else:
                os.environ["GLIBC_TUNABLES"] = previous
            self._saved_tunables = None

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        env: Mapping[str, str] = getattr(node.gateway.spec, "env", None) or {}
        gpu = env.get(WORKER_GPU_ENV)
        if gpu is None and self.inventory.mode == "gpu" and self.inventory.devices():
            m = _GW_RE.search(str(node.gateway.id))
            gpu = str(int(m.group(1)) % len(self.inventory.devices())) if m else "0"
        node.workerinput["proofpack_gpu"] = gpu


__all__ = [
    "RESERVATIONS_FILE",
    "RESERVED_DEVICES_ENV",
    "ProofpackScheduling",
    "Reservation",
    "SchedulingPlugin",
    "auto_num_workers",
    "reservation_for",
    "worker_device_env",
]
