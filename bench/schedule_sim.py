"""Simulate the real :class:`ProofpackScheduling` on a full-suite run; compare its makespan with a bound.

Run: ``python bench/schedule_sim.py`` (from the repository root). No GPU, no pytest session: the scheduler is
driven the way xdist's ``DSession`` drives it, with mock worker nodes that obey xdist's worker queue rule — a
node starts its first queued item only when it has at least two queued or has been sent ``shutdown`` (it needs
``nextitem`` for teardown) — and with :class:`FakeInventory` devices whose free memory follows what each
worker has loaded, so memory gating is exercised.

Duration model (seconds; ``p`` = the model's parameter count in billions):

* one scenario item takes ``ITEM_S_PER_B × p`` (evaluation time grows about linearly with parameters);
* the first item of a model on a worker also pays ``SETUP_S_PER_B × p`` (load, baseline evaluation and
  calibration null runs), and every further worker that takes part of that model pays it again;
* a model that needs ``k`` devices runs at the same per-item speed on its leader and occupies ``k`` devices;
  its leader's items wait (worker side) until the reservation is ``ready``.

Lower bound: ``max(total work ÷ devices, longest single-model chain)`` where total work counts every model
once (one setup plus all items) times the devices it occupies, and a chain is one model's setup plus all its
items. The last line is ``makespan_over_bound=<float>`` for 8×80 GiB.
"""

from __future__ import annotations

import heapq
import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_proofpack.models import ModelEntry
from pytest_proofpack.scheduling.gpus import FakeInventory
from pytest_proofpack.scheduling.plan import PlanSettings, plan_model
from pytest_proofpack.scheduling.scheduler import ProofpackScheduling

ITEM_S_PER_B = 5.0
SETUP_S_PER_B = 40.0
ITEMS_PER_MODEL = 35

FULL_SUITE: dict[str, tuple[float, dict[str, int]]] = {
    "mistral-7b": (7.24, dict(L=32, h=4096, a=32, kv=8, V=32000, i=14336)),
    "qwen2.5-14b": (14.8, dict(L=48, h=5120, a=40, kv=8, V=152064, i=13824)),
    "qwen2.5-32b": (32.8, dict(L=64, h=5120, a=40, kv=8, V=152064, i=27648)),
    "yi-34b": (34.4, dict(L=60, h=7168, a=56, kv=8, V=64000, i=20480)),
    "mixtral-8x7b": (46.7, dict(L=32, h=4096, a=32, kv=8, V=32000, i=14336)),
    "qwen1.5-72b": (72.3, dict(L=80, h=8192, a=64, kv=64, V=152064, i=24576)),
}


def hf_config(short: dict[str, int]) -> dict[str, int]:
    """Expand the short shape above into Hugging Face config keys."""
    return {
        "num_hidden_layers": short["L"],
        "hidden_size": short["h"],
        "num_attention_heads": short["a"],
        "num_key_value_heads": short["kv"],
        "vocab_size": short["V"],
        "intermediate_size": short["i"],
    }


@dataclass
class _Spec:
    env: dict[str, str]


@dataclass
class _Gateway:
    id: str
    spec: _Spec


@dataclass
class SimNode:
    """A mock ``WorkerController`` plus the worker it stands for."""

    gateway: _Gateway
    queue: list[int] = field(default_factory=list)
    shutdown_sent: bool = False
    exited: bool = False
    running: int | None = None
    loaded: set[str] = field(default_factory=set)
    current_model: str = ""
    workerinput: dict[str, Any] = field(default_factory=dict)

    @property
    def shutting_down(self) -> bool:
        return self.shutdown_sent or self.exited

    def send_runtest_some(self, indices: list[int]) -> None:
        assert not self.shutdown_sent, f"{self.gateway.id}: items sent after shutdown"
        self.queue.extend(indices)

    def send_runtest_all(self) -> None:
        raise AssertionError("the proofpack scheduler never sends all")

    def shutdown(self) -> None:
        self.shutdown_sent = True

    def __hash__(self) -> int:
        return id(self)


@dataclass
class SimResult:
    makespan: float
    bound: float
    utilisation: list[float]
    completed: int
    total: int


def simulate(
    n_gpus: int,
    gpu_gb: float,
    suite: dict[str, tuple[float, dict[str, int]]] = FULL_SUITE,
    items_per_model: int = ITEMS_PER_MODEL,
    settings: PlanSettings | None = None,
) -> SimResult:
    """Run the whole suite on ``n_gpus`` devices of ``gpu_gb`` GiB through the scheduler; return timings."""
    settings = settings or PlanSettings()
    inv = FakeInventory.uniform(n_gpus, gpu_gb)
    models = {k: ModelEntry(k, k, p, "llama") for k, (p, _) in suite.items()}
    configs = {k: hf_config(c) for k, (_, c) in suite.items()}
    plans = {k: plan_model(models[k], settings, gpu_gb, configs[k]) for k in models}
    collection = [
        f"tests/test_proofpack.py::test_scenario[{k}:sc{j:02d}:run1]"
        for k in suite
        for j in range(items_per_model)
    ]
    model_of = [nid.split("[")[1].split(":")[0] for nid in collection]
    sched = ProofpackScheduling(
        None,  # type: ignore[arg-type]
        models=models,
        settings=settings,
        inventory=inv,
        numnodes=n_gpus,
        model_configs=configs,
    )
    nodes = [
        SimNode(_Gateway(f"gw{i}", _Spec({"PROOFPACK_WORKER_GPU": str(i), "CUDA_VISIBLE_DEVICES": str(i)})))
        for i in range(n_gpus)
    ]
    for n in nodes:
        sched.add_node(n)
    for n in nodes:
        sched.add_node_collection(n, collection)
    sched.schedule()

    now = 0.0
    events: list[tuple[float, int, SimNode, int, float]] = []
    seq = itertools.count()
    completed = 0
    device_busy = [0.0] * n_gpus

    def device_of(node: SimNode) -> int:
        return int(node.gateway.spec.env["PROOFPACK_WORKER_GPU"])

    def occupy(node: SimNode, model: str) -> None:
        res = sched.reservations.get(model)
        devices = [int(d) for d in res.devices] if res is not None and res.leader == node.gateway.id else []
        devices = devices or [device_of(node)]
        for d in devices:
            inv.set_free_gb(d, max(0.0, gpu_gb - plans[model].need_gb / len(devices)))

    def try_start(node: SimNode) -> None:
        if node.running is not None or node.exited or not node.queue:
            return
        if len(node.queue) < 2 and not node.shutdown_sent:
            return  # xdist's worker queue rule
        idx = node.queue[0]
        model = model_of[idx]
        res = sched.reservations.get(model)
        if res is not None and res.leader == node.gateway.id and not res.ready:
            return  # the item side waits for the reserved devices
        params = models[model].params_b
        duration = ITEM_S_PER_B * params
        if model not in node.loaded:
            duration += SETUP_S_PER_B * params
            node.loaded.add(model)
        if node.current_model != model:
            node.current_model = model
            occupy(node, model)
        node.running = idx
        lead = res is not None and res.leader == node.gateway.id
        for d in [int(x) for x in res.devices] if res is not None and lead else [device_of(node)]:
            device_busy[d] += duration
        heapq.heappush(events, (now + duration, next(seq), node, idx, duration))

    def settle() -> None:
        changed = True
        while changed:
            changed = False
            for n in nodes:
                if not n.exited and n.shutdown_sent and not n.queue and n.running is None:
                    n.exited = True
                    inv.set_free_gb(device_of(n), gpu_gb)
                    crash = sched.remove_node(n)
                    assert crash is None
                    changed = True
            if sched.tests_finished:
                for n in nodes:
                    if not n.exited and not n.shutdown_sent:
                        n.shutdown()
                        changed = True
            for n in nodes:
                was = n.running
                try_start(n)
                changed = changed or (n.running is not None and was is None)

    settle()
    while events:
        now, _, node, idx, duration = heapq.heappop(events)
        node.queue.remove(idx)
        node.running = None
        completed += 1
        sched.mark_test_complete(node, idx, duration)
        settle()
    if completed != len(collection):
        stuck = {n.gateway.id: (n.queue, n.shutdown_sent) for n in nodes if not n.exited}
        raise RuntimeError(f"deadlock at t={now:.0f}s: {completed}/{len(collection)} done; {stuck}")

    work = 0.0
    chain = 0.0
    for k, m in models.items():
        one = (SETUP_S_PER_B + ITEM_S_PER_B * items_per_model) * m.params_b
        res_size = min(plans[k].required_gpus, n_gpus)
        work += one * res_size
        chain = max(chain, one)
    bound = max(work / n_gpus, chain)
    return SimResult(now, bound, [b / now if now else 0.0 for b in device_busy], completed, len(collection))


def main() -> None:
    settings = PlanSettings()
    for label, n, gb in (("2x141", 2, 141.0), ("4x80", 4, 80.0), ("8x80", 8, 80.0)):
        r = simulate(n, gb, settings=settings)
        plans = {
            k: plan_model(ModelEntry(k, k, p, "llama"), settings, gb, hf_config(c)).required_gpus
            for k, (p, c) in FULL_SUITE.items()
        }
        print(f"== {label}: devices per model {plans}")
        print(
            f"makespan {r.makespan / 3600:.2f} h, lower bound {r.bound / 3600:.2f} h, "
            f"ratio {r.makespan / r.bound:.3f}, items {r.completed}/{r.total}"
        )
        print("utilisation " + " ".join(f"gpu{i}={u:.0%}" for i, u in enumerate(r.utilisation)))
        last = r.makespan / r.bound
    print(f"makespan_over_bound={last:.3f}")


if __name__ == "__main__":
    main()
