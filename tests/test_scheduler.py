"""ProofpackScheduling with mock xdist nodes and a fake GPU inventory, plus one real ``-n auto`` run."""

from __future__ import annotations

import random
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_proofpack.malloc import glibc_version
from pytest_proofpack.models import ModelEntry
from pytest_proofpack.scheduling.gpus import CpuInventory, FakeInventory, GpuInventory
from pytest_proofpack.scheduling.plan import PlanSettings
from pytest_proofpack.scheduling.reservations import reservation_for
from pytest_proofpack.scheduling.scheduler import ProofpackScheduling


@dataclass
class _Spec:
    env: dict[str, str]


@dataclass
class _Gateway:
    id: str
    spec: _Spec


@dataclass(eq=False)
class Node:
    """A mock WorkerController that follows xdist's worker queue rule."""

    gateway: _Gateway
    queue: list[int] = field(default_factory=list)
    shutdown_sent: bool = False
    exited: bool = False

    @property
    def shutting_down(self) -> bool:
        return self.shutdown_sent or self.exited

    def send_runtest_some(self, indices: list[int]) -> None:
        assert not self.shutdown_sent
        self.queue.extend(indices)

    def send_runtest_all(self) -> None:
        raise AssertionError("not used")

    def shutdown(self) -> None:
        self.shutdown_sent = True

    def can_run(self) -> bool:
        return bool(self.queue) and (len(self.queue) >= 2 or self.shutdown_sent)


def nid(model: str, scenario: str, run: int = 1) -> str:
    return f"tests/test_pp.py::test_scenario[{model}:{scenario}:run{run}]"


MODELS = {
    "tiny": ModelEntry("tiny", "x", 0.5, "llama"),
    "small": ModelEntry("small", "x", 7.0, "llama"),
    "mid": ModelEntry("mid", "x", 14.0, "llama"),
    "big": ModelEntry("big", "x", 60.0, "llama"),
}


def make(
    collection: list[str],
    n: int,
    inventory: GpuInventory | None = None,
    tmp: Path | None = None,
    **kw: Any,
) -> tuple[ProofpackScheduling, list[Node]]:
    inv = inventory or FakeInventory.uniform(n, 80)
    sched = ProofpackScheduling(
        None,  # type: ignore[arg-type]
        models=MODELS,
        settings=PlanSettings(),
        inventory=inv,
        numnodes=n,
        reservations_path=tmp / "res.json" if tmp else None,
        **kw,
    )
    nodes = [Node(_Gateway(f"gw{i}", _Spec({"PROOFPACK_WORKER_GPU": str(i)}))) for i in range(n)]
    for node in nodes:
        sched.add_node(node)
    for node in nodes:
        sched.add_node_collection(node, collection)
    sched.schedule()
    return sched, nodes


def step(
    sched: ProofpackScheduling, nodes: list[Node], rng: random.Random | None, ran: list[tuple[str, int]]
) -> bool:
    """Complete one runnable item (random node, or round-robin), or retire a finished node. False: idle."""
    for node in nodes:
        if not node.exited and node.shutdown_sent and not node.queue:
            node.exited = True
            assert sched.remove_node(node) is None
            return True
    if sched.tests_finished:
        for node in nodes:
            if not node.exited and not node.shutdown_sent:
                node.shutdown()
    runnable = [n for n in nodes if not n.exited and n.can_run()]
    if not runnable:
        return any(not n.exited and n.shutdown_sent for n in nodes)
    if rng:
        node = rng.choice(runnable)
    else:  # round-robin: the node after the one that ran last
        last = ran[-1][0] if ran else ""
        after = [n for n in runnable if n.gateway.id > last]
        node = (after or runnable)[0]
    index = node.queue.pop(0)
    ran.append((node.gateway.id, index))
    sched.mark_test_complete(node, index)
    return True


def run_all(sched: ProofpackScheduling, nodes: list[Node], seed: int | None = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed) if seed is not None else None
    ran: list[tuple[str, int]] = []
    for _ in range(100_000):
        if not step(sched, nodes, rng, ran):
            break
    stuck = {n.gateway.id: n.queue for n in nodes if not n.exited}
    assert all(n.exited for n in nodes), f"stranded/deadlocked: {stuck}"
    return ran


def models_in_order(
    collection: list[str], ran: list[tuple[str, int]], worker: str | None = None
) -> list[str]:
    out: list[str] = []
    for w, i in ran:
        if worker is None or w == worker:
            key = collection[i].split("[")[1].split(":")[0] if "[" in collection[i] else "plain"
            if not out or out[-1] != key:
                out.append(key)
    return out


def test_smallest_first_plain_and_unknown_before_known() -> None:
    col = [nid("big", f"s{i}") for i in range(3)] + [nid("small", f"s{i}") for i in range(3)]
    col += [
        nid("mystery", "s0"),
        nid("mystery", "s1"),
        "tests/test_a.py::test_plain",
        "tests/test_a.py::test_b",
    ]
    random.shuffle(col)
    sched, nodes = make(col, 1, CpuInventory())
    ran = run_all(sched, nodes)
    assert sorted(i for _, i in ran) == list(range(len(col)))
    assert models_in_order(col, ran) == ["plain", "mystery", "small", "big"]


def test_affinity_and_scenario_run_order() -> None:
    col = [nid(m, f"s{j}", r) for m in ("small", "mid") for r in (2, 1) for j in range(4)]
    sched, nodes = make(col, 2, CpuInventory())
    ran = run_all(sched, nodes, seed=None)
    by_model: dict[str, set[str]] = {}
    for w, i in ran:
        by_model.setdefault(col[i].split("[")[1].split(":")[0], set()).add(w)
    assert by_model == {"small": {"gw0"}, "mid": {"gw1"}}
    small = [col[i].split("[")[1] for w, i in ran if w == "gw0"]
    assert small == [f"small:s{j}:run{r}]" for j in range(4) for r in (1, 2)]


def test_idle_worker_splits_the_largest_queue() -> None:
    col = [nid("small", "s0"), nid("small", "s1")] + [nid("big", f"s{j}") for j in range(20)]
    sched, nodes = make(col, 2, CpuInventory())
    ran = run_all(sched, nodes, seed=None)
    big_workers = {w for w, i in ran if "big:" in col[i]}
    assert big_workers == {"gw0", "gw1"}
    assert sorted(i for _, i in ran) == list(range(len(col)))


@pytest.mark.parametrize("n_nodes", [2, 3, 4])
@pytest.mark.parametrize("inventory", ["cpu", "gpu"])
def test_one_model_suite_uses_every_worker(n_nodes: int, inventory: str) -> None:
    """Issue 9: a one-model suite (smoke: SmolLM2 only) left the second of two workers idle with 4 items.

    After every event: no live worker is idle while the controller still holds an item it could take, and with
    two workers, none is idle while two or more items have not started (running items excluded).
    """
    # Every size from 2 to 30, the 4 items included. The scheduler and these runs are deterministic
    # (fixed seeds, no other randomness), so listing a size twice would only repeat an identical run.
    for n_items in range(2, 31):
        for seed in (None, 1, 2):
            col = [nid("small", f"s{j}") for j in range(n_items)]
            inv = CpuInventory() if inventory == "cpu" else FakeInventory.uniform(n_nodes, 80)
            sched, nodes = make(col, n_nodes, inv)
            rng = random.Random(seed) if seed is not None else None
            ran: list[tuple[str, int]] = []
            while True:
                idle = [n.gateway.id for n in nodes if not n.queue and not n.exited]
                queued = sum(len(g.queue) for g in sched.groups)
                not_started = queued + sum(max(0, len(n.queue) - 1) for n in nodes)
                state = f"{n_items} items, seed {seed}, after {len(ran)} done: {[n.queue for n in nodes]}"
                if idle and len(idle) < n_nodes:
                    assert queued == 0, f"{idle} idle while the controller holds {queued}: {state}"
                    if n_nodes == 2:
                        assert not_started < 2, f"{idle} idle while {not_started} items wait: {state}"
                if not step(sched, nodes, rng, ran):
                    break
            assert sorted(i for _, i in ran) == list(range(n_items))
            if n_items >= 2 * n_nodes:
                assert {w for w, _ in ran} == {n.gateway.id for n in nodes}, state


def test_memory_gating_waits_for_free_memory() -> None:
    col = [nid("small", f"s{j}") for j in range(6)] + [nid("mid", f"s{j}") for j in range(6)]
    inv = FakeInventory.uniform(2, 80)
    inv.set_free_gb(1, random.uniform(0.5, 10))  # someone else's process fills device 1
    sched, nodes = make(col, 2, inv)
    assert nodes[1].queue == [] and len(nodes[0].queue) >= 2
    ran: list[tuple[str, int]] = []
    while sum(1 for w, _ in ran) < 3:
        assert step(sched, nodes, None, ran)
    assert all(w == "gw0" for w, _ in ran) and nodes[1].queue == []
    inv.set_free_gb(1, 80)  # the foreign process exits; the next event lets gw1 start "mid"
    ran += run_all(sched, nodes, seed=None)
    assert {col[i].split("[")[1].split(":")[0] for w, i in ran if w == "gw1"} == {"mid"}


def test_gating_never_deadlocks_when_nothing_fits() -> None:
    col = [nid("small", f"s{j}") for j in range(5)]
    inv = FakeInventory.uniform(2, 80)
    inv.set_free_gb(0, 1)
    inv.set_free_gb(1, 1)
    sched, nodes = make(col, 2, inv)
    ran = run_all(sched, nodes)
    assert sorted(i for _, i in ran) == list(range(5))


def test_multi_gpu_reservation(tmp_path: Path) -> None:
    col = [nid("big", f"s{j}") for j in range(6)] + [nid("small", f"s{j}") for j in range(8)]
    sched, nodes = make(col, 3, FakeInventory.uniform(3, 80), tmp=tmp_path)
    assert sched.groups[-1].plan is not None and sched.groups[-1].plan.required_gpus == 2
    res = sched.reservations["big"]
    assert res.size == 2 and res.ready and len(res.helpers) == 1
    leader = res.leader
    helper = res.helpers[0]
    assert res.devices == [leader[2:], helper[2:]]
    on_disk = reservation_for(tmp_path / "res.json", leader, "big")
    assert on_disk is not None and on_disk.devices == res.devices and on_disk.ready
    ran = run_all(sched, nodes)
    big_workers = {w for w, i in ran if "big:" in col[i]}
    assert big_workers == {leader}
    assert sched.reservations["big"].done
    assert reservation_for(tmp_path / "res.json", leader, "big") is None  # done: no longer live


def test_fed_helper_is_shut_down_and_leader_waits(tmp_path: Path) -> None:
    col = [nid("small", f"s{j}") for j in range(4)] + [nid("big", f"s{j}") for j in range(4)]
    sched, nodes = make(col, 2, FakeInventory.uniform(2, 80), tmp=tmp_path, critical_frac=10.0)
    ran = run_all(sched, nodes, seed=None)
    res = sched.reservations["big"]
    assert res.done and len(res.helpers) == 1
    assert {w for w, i in ran if "big:" in col[i]} == {res.leader}
    assert sorted(i for _, i in ran) == list(range(len(col)))


def test_crash_requeues_and_returns_running_item() -> None:
    col = [nid("small", f"s{j}") for j in range(5)] + [nid("mid", f"s{j}") for j in range(5)]
    sched, nodes = make(col, 2, CpuInventory())
    victim = nodes[0]
    queued = list(victim.queue)
    assert len(queued) >= 2
    victim.exited = True
    crash = sched.remove_node(victim)
    assert crash == col[queued[0]]
    ran = run_all(sched, [nodes[1]])
    done = sorted(i for _, i in ran)
    assert done == sorted(set(range(len(col))) - {queued[0]})


def test_leader_crash_releases_reservation() -> None:
    col = [nid("big", f"s{j}") for j in range(4)]
    sched, nodes = make(col, 3, FakeInventory.uniform(3, 80))
    leader = next(n for n in nodes if n.gateway.id == sched.reservations["big"].leader)
    first = leader.queue[0]
    leader.exited = True
    assert sched.remove_node(leader) == col[first]
    live = [n for n in nodes if n is not leader]
    new_res = sched.reservations["big"]
    assert new_res.leader != leader.gateway.id
    ran = run_all(sched, live)
    assert sorted(i for _, i in ran) == sorted(set(range(4)) - {first})


def test_mark_test_pending_requeues() -> None:
    col = [nid("small", f"s{j}") for j in range(4)]
    sched, nodes = make(col, 1, CpuInventory())
    ran: list[tuple[str, int]] = []
    assert step(sched, nodes, None, ran)
    sched.mark_test_pending(col[ran[0][1]])
    ran += run_all(sched, nodes)
    assert sorted(i for _, i in ran) == [0, 0, 1, 2, 3]


@pytest.mark.parametrize("seed", range(40))
def test_no_stranded_items_for_random_subsets(seed: int) -> None:
    rng = random.Random(seed)
    full = [
        nid(m, f"s{j}", r) for m in ("tiny", "small", "mid", "big", "odd") for j in range(6) for r in (1, 2)
    ]
    full += [f"tests/test_x.py::test_{j}" for j in range(5)]
    col = [x for x in full if rng.random() < rng.uniform(0.05, 1.0)] or [full[0]]
    n = rng.randint(1, 4)
    inv: GpuInventory
    if rng.random() < 0.25:
        inv = CpuInventory()
    else:
        fake = FakeInventory.uniform(n, rng.choice([40, 80, 141]))
        for d in range(n):
            fake.set_free_gb(d, rng.uniform(0, 141))
        inv = fake
    sched, nodes = make(col, n, inv, split_min_items=rng.randint(1, 5), target_pending=rng.randint(2, 5))
    ran = run_all(sched, nodes, seed=seed)
    assert sorted(i for _, i in ran) == list(range(len(col)))


def test_plain_tests_are_spread_like_load() -> None:
    col = [f"tests/test_p.py::test_{j}" for j in range(40)]
    sched, nodes = make(col, 3, CpuInventory())
    assert all(len(n.queue) >= 2 for n in nodes)
    ran = run_all(sched, nodes)
    assert sorted(i for _, i in ran) == list(range(40))
    assert {w for w, _ in ran} == {"gw0", "gw1", "gw2"}


CONFTEST = textwrap.dedent(
    """
    import pytest
    from pytest_proofpack.models import ModelEntry
    from pytest_proofpack.scheduling.gpus import detect_inventory
    from pytest_proofpack.scheduling.plan import PlanSettings
    from pytest_proofpack.scheduling.worker_env import auto_num_workers
    from pytest_proofpack.scheduling.xdist_plugin import SchedulingPlugin

    MODELS = {
        "m-small": ModelEntry("m-small", "x", 1.0, "llama"),
        "m-big": ModelEntry("m-big", "x", 3.0, "llama"),
    }

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_xdist_auto_num_workers(config):
        return auto_num_workers(config, detect_inventory())

    def pytest_configure(config):
        if not hasattr(config, "workerinput"):
            plugin = SchedulingPlugin(config, MODELS, PlanSettings(), detect_inventory())
            config.pluginmanager.register(plugin, "proofpack-scheduling")
    """
)

TESTFILE = textwrap.dedent(
    """
    import os, time
    import pytest

    CASES = [f"{m}:s{j}:run1" for m in ("m-big", "m-small") for j in range(3)]

    @pytest.mark.parametrize("case", CASES, ids=CASES)
    def test_scenario(case, request):
        out = os.environ["RECORD_DIR"]
        line = "|".join([str(time.time()), os.environ.get("PYTEST_XDIST_WORKER", "?"),
                         os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), case,
                         str(request.config.workerinput.get("proofpack_gpu")),
                         os.environ.get("GLIBC_TUNABLES", "unset")])
        with open(os.path.join(out, case.replace(":", "_")), "w") as f:
            f.write(line)
        time.sleep(0.2)
    """
)


def test_end_to_end_n_auto(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    record = pytester.path / "records"
    record.mkdir()
    monkeypatch.setenv("RECORD_DIR", str(record))
    monkeypatch.setenv("PROOFPACK_FAKE_GPUS", "2x80")
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_pp=TESTFILE)
    result = pytester.runpytest_subprocess("-n", "auto", "-p", "xdist", "-v")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*created: 2/2 workers*"])
    rows = sorted(p.read_text().split("|") for p in record.iterdir())
    assert len(rows) == 6
    hugepages = glibc_version() is not None and glibc_version() >= (2, 35)  # type: ignore[operator]
    expected_tunables = "glibc.malloc.arena_max=4" + (":glibc.malloc.hugetlb=1" if hugepages else "")
    by_worker: dict[str, list[list[str]]] = {}
    for row in rows:
        by_worker.setdefault(row[1], []).append(row)
    assert set(by_worker) == {"gw0", "gw1"}
    for worker, worker_rows in by_worker.items():
        assert {r[2] for r in worker_rows} == {worker[2:]}  # CUDA_VISIBLE_DEVICES pinned per worker
        assert {r[4] for r in worker_rows} == {worker[2:]}  # workerinput["proofpack_gpu"]
        # Workers start with transparent huge pages advised for malloc's mappings, the caller's tunables kept.
        assert {r[5] for r in worker_rows} == {expected_tunables}
        for model in ("m-small", "m-big"):  # a worker runs a model's items in scenario order
            mine = [r[3] for r in sorted(worker_rows, key=lambda r: float(r[0])) if r[3].startswith(model + ":")]
            assert mine == sorted(mine), (worker, mine)
    # The collection lists m-big first; the scheduler hands the smallest model to the first worker that registers
    # (gw0 or gw1: xdist adds nodes in the order they come up), the other model to the other, and each worker its
    # model's first chunk of 2 items. Only a model's last item goes to whichever worker idles first (rule 4: on a
    # loaded machine one worker may finish its model before the other asks for its model's last item).
    first = {w: min(rows, key=lambda r: float(r[0]))[3] for w, rows in by_worker.items()}
    assert sorted(first.values()) == ["m-big:s0:run1", "m-small:s0:run1"], first
    owner = {f.split(":")[0]: w for w, f in first.items()}
    assert {"m-small:s0:run1", "m-small:s1:run1"} <= {r[3] for r in by_worker[owner["m-small"]]}
    assert {"m-big:s0:run1", "m-big:s1:run1"} <= {r[3] for r in by_worker[owner["m-big"]]}


def test_replacement_node_after_the_others_finished_gets_the_requeued_work() -> None:
    """xdist removes finished nodes; a worker crashing last is replaced by a node that must still be fed."""
    col = [nid("tiny", f"s{j}") for j in range(4)] + [nid("small", f"s{j}") for j in range(6)]
    sched, nodes = make(col, 2, CpuInventory())
    first, second = nodes
    # the first node drains everything it is given and is removed, as xdist does once it has finished
    for _ in range(100):
        if not first.queue:
            break
        sched.mark_test_complete(first, first.queue.pop(0))
    if not first.shutdown_sent:
        first.shutdown()
    first.exited = True
    sched.remove_node(first)
    second.exited = True
    crashed = sched.remove_node(second)
    replacement = Node(_Gateway("gw2", _Spec({"PROOFPACK_WORKER_GPU": "0"})))
    sched.add_node(replacement)
    sched.add_node_collection(replacement, col)
    assert sched.collection_is_completed
    sched.schedule()
    ran = run_all(sched, [replacement])
    assert crashed is None or crashed not in {col[i] for _, i in ran}
    assert replacement.exited
