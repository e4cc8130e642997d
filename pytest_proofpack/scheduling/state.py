"""The scheduler's records: a model's group of queued items, and what it knows of each worker."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pytest_proofpack.scheduling.plan import ModelPlan

if TYPE_CHECKING:
    from xdist.workermanage import WorkerController

#: What a worker is for the model it runs: one of its workers, the leader or a helper of its reservation.
Role = Literal["work", "leader", "helper"]


@dataclass
class ModelGroup:
    """The items of one model (``key``; ``""`` for plain tests) still held in the controller (``queue``).

    ``sort_key`` is ``(rank, params_b, key)``: rank 0 plain tests, 1 unknown models, 2 the suite's models, -1 a
    promoted critical model. ``workers`` are the nodes running it, ``inflight`` its items sent and not completed.
    """

    key: str
    sort_key: tuple[int, float, str]
    plan: ModelPlan | None
    queue: deque[int]
    plain: bool = False
    workers: set[WorkerController] = field(default_factory=set)
    inflight: int = 0

    @property
    def need_gb(self) -> float:
        """Device memory the model needs (0 for plain tests and unknown models)."""
        return self.plan.need_gb if self.plan is not None else 0.0

    @property
    def required(self) -> int:
        """Devices the model needs (1 for plain tests and unknown models)."""
        return self.plan.required_gpus if self.plan is not None else 1


@dataclass
class NodeState:
    """What the scheduler knows of one worker: its device (index into the inventory; None on CPU) and
    ``CUDA_VISIBLE_DEVICES`` entry, the group it works on, the memory that group holds on its device, its role,
    and whether it ever received items (then it can only reach 0 pending through shutdown)."""

    device: int | None
    cuda_id: str
    group: ModelGroup | None = None
    held_gb: float = 0.0
    role: Role = "work"
    fed: bool = False
