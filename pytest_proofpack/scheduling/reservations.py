"""Device reservations of multi-GPU models: the record, the file it travels in, and the leader's wait for it.

A model whose memory plan needs ``k > 1`` devices holds ``k`` workers' devices. The scheduler cannot change a
live worker's environment, so it records each reservation in memory (:class:`ReservationBook`) and writes the
table atomically to ``<controller basetemp>/``:data:`RESERVATIONS_FILE`; a worker finds that file at the parent
of its own basetemp. The reservation's leader reads it (:func:`leader_reservation`), waits until every helper's
device is free (:func:`wait_until_ready`) and runs the model's items in a subprocess that sees all ``k`` devices
(:mod:`pytest_proofpack.scheduling.launch`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

from pytest_proofpack.errors import OptionError, ProofpackError
from pytest_proofpack.results import atomic_write_text

RESERVATIONS_FILE: Final = "proofpack-reservations.json"
RESERVATIONS_SCHEMA: Final = "proofpack_reservations_v1"
READY_TIMEOUT_ENV: Final = "PROOFPACK_RESERVATION_TIMEOUT"
DEFAULT_READY_TIMEOUT_S: Final = 3600.0


class ReservationNotReadyError(ProofpackError):
    """The reservation never became ready (a helper worker kept its device) within the timeout."""

    error_class = "timeout"


@dataclass
class Reservation:
    """``k`` devices held for one model.

    ``leader`` is the gateway id (``gw3``) whose items run the model; ``devices`` the ``CUDA_VISIBLE_DEVICES``
    entries (leader's first) the item side must give the subprocess it launches (also as
    ``PROOFPACK_RESERVED_DEVICES``); ``size`` is ``k``; ``helpers`` the gateway ids whose devices join the
    leader's, ``waiting_for`` those among them whose process has not exited yet; ``ready`` turns true once every
    helper is free (never started work, or its process has exited); ``done`` once all the model's items completed.
    """

    model: str
    leader: str
    devices: list[str]
    size: int = 1
    helpers: list[str] = field(default_factory=list)
    waiting_for: list[str] = field(default_factory=list)
    ready: bool = False
    done: bool = False

    def update_ready(self) -> None:
        """Ready once ``size - 1`` helpers joined and none of them still holds its device."""
        self.ready = len(self.helpers) >= self.size - 1 and not self.waiting_for


class ReservationBook:
    """The controller's reservations, by model key, mirrored to ``path`` after every change.

    The in-memory table is authoritative; a failed write is logged through ``log`` and the run goes on (the
    leader then waits for a file that shows the reservation ready, up to its timeout).
    """

    def __init__(self, path: Path | None, log: Callable[[str], None]) -> None:
        self.path = path
        self.log = log
        self.by_model: dict[str, Reservation] = {}

    def lead(self, model: str, leader: str, device: str, size: int) -> Reservation:
        """Open the reservation of ``model`` led by gateway ``leader`` on its device ``device``."""
        res = Reservation(model, leader, [device], size=size)
        self.by_model[model] = res
        self.changed(res)
        return res

    def join(self, model: str, helper: str, device: str, *, must_exit: bool) -> Reservation:
        """Add gateway ``helper``'s ``device``; ``must_exit``: its process must exit before the device is free."""
        res = self.by_model[model]
        res.helpers.append(helper)
        res.devices.append(device)
        if must_exit:
            res.waiting_for.append(helper)
        self.changed(res)
        return res

    def finish(self, model: str) -> list[str] | None:
        """Mark the live reservation of ``model`` done (its last item completed); return the helpers it releases.

        None when ``model`` has no live reservation.
        """
        res = self.by_model.get(model)
        if res is None or res.done:
            return None
        res.done = True
        self.write()
        return list(res.helpers)

    def forget_worker(self, gateway_id: str) -> list[str]:
        """A worker is gone: drop the live reservations it led, stop waiting for it as a helper.

        Returns the helpers released by the dropped reservations.
        """
        released: list[str] = []
        for model, res in list(self.by_model.items()):
            if res.done:
                continue
            if res.leader == gateway_id:
                self.log(f"leader {gateway_id} of {model} is gone; releasing its reservation")
                del self.by_model[model]
                released.extend(res.helpers)
                self.write()
            elif gateway_id in res.helpers:
                if gateway_id in res.waiting_for:
                    res.waiting_for.remove(gateway_id)
                self.changed(res)
        return released

    def changed(self, res: Reservation) -> None:
        """Recompute ``res.ready`` and write the table."""
        res.update_ready()
        self.write()

    def write(self) -> None:
        """Write the table to ``path`` (if any) atomically."""
        if self.path is None:
            return
        try:
            write_reservations(self.path, self.by_model)
        except OSError as exc:
            self.log(f"could not write {self.path}: {exc}")


def write_reservations(path: Path, reservations: Mapping[str, Reservation]) -> None:
    """Write ``reservations`` (by model key) to ``path`` atomically; raises OSError."""
    payload = {"schema": RESERVATIONS_SCHEMA, "reservations": {k: asdict(r) for k, r in reservations.items()}}
    atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=True))


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


def leader_reservation(basetemp: Path, worker_id: str, model: str) -> tuple[Path, Reservation] | None:
    """The live multi-device reservation ``worker_id`` leads for ``model``, read from the file the controller
    writes in its basetemp (the parent of a worker's ``basetemp``), with the file's path; None if there is none."""
    path = Path(basetemp).parent / RESERVATIONS_FILE
    res = reservation_for(path, worker_id, model)
    if res is None or max(res.size, len(res.devices)) < 2:
        return None
    return path, res


def device_list(devices: Sequence[str]) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value of a reservation: its devices, leader's first, comma-joined."""
    return ",".join(devices)


def ready_timeout_s(environ: Mapping[str, str] | None = None) -> float:
    """:data:`READY_TIMEOUT_ENV` in seconds (> 0), else :data:`DEFAULT_READY_TIMEOUT_S`.

    Raises :class:`~pytest_proofpack.errors.OptionError` for a value that is not a positive number.
    """
    raw = (os.environ if environ is None else environ).get(READY_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_READY_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise OptionError(f"{READY_TIMEOUT_ENV}={raw!r}: must be a number of seconds > 0 (e.g. 3600)")
    return value


def wait_until_ready(path: Path, worker_id: str, model: str, timeout_s: float, poll_s: float = 0.5) -> Reservation:
    """Poll ``path`` until ``worker_id``'s reservation of ``model`` is ready; return it.

    Raises :class:`ReservationNotReadyError` after ``timeout_s`` seconds, or at once if the reservation is gone
    (it can only go when its items are done or its leader is gone, so an item waiting for it is a bug).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        res = reservation_for(path, worker_id, model)
        if res is None:
            raise ReservationNotReadyError(
                f"{path}: no live reservation of model {model!r} led by {worker_id}; the scheduler released it "
                "while its items still run; rerun the session"
            )
        if res.ready:
            return res
        if time.monotonic() >= deadline:
            raise ReservationNotReadyError(
                f"{path}: the reservation of model {model!r} (devices {device_list(res.devices)}) was not ready "
                f"after {timeout_s:g} s; still waiting for worker(s) {', '.join(res.waiting_for) or '(none)'} to "
                f"free their device; raise {READY_TIMEOUT_ENV} (seconds) or lower the model's memory plan"
            )
        time.sleep(poll_s)
