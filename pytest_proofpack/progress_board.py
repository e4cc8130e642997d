"""What every worker is doing, from its progress events: the live status lines and the finished-phase lines.

:class:`ProgressBoard` is fed the events of :mod:`pytest_proofpack.progress` tagged with the worker that sent them
(``gw0``…, or ``master`` without xdist). It keeps each worker's running phases in the order they started; the
innermost is the worker's status. It touches no terminal: :mod:`pytest_proofpack.progress_role` draws what it
returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, final

from pytest_proofpack.progress import describe, format_duration

__all__ = ["ProgressBoard"]


@dataclass
class _Running:
    name: str
    subject: str
    total: int | None
    done: int
    detail: str
    started: float


def _label(worker: str) -> str:
    return "" if worker in ("", "master") else worker


def _eta(seconds: float) -> str:
    if seconds < 60:
        return f"eta {max(5, 5 * round(seconds / 5))} s"
    return f"eta {round(seconds / 60)} min"


@final
class ProgressBoard:
    """The running phases of every worker (see the module docstring). Not thread-safe: one owner feeds and reads."""

    def __init__(self) -> None:
        self._running: dict[str, dict[str, _Running]] = {}
        self._gone: set[str] = set()

    def feed(self, worker: str, event: Mapping[str, Any]) -> str | None:
        """Apply one event of ``worker``; return the finished-phase line when the event ends a phase.

        Malformed events, and events of a worker that is :meth:`gone`, are ignored (a worker killed mid-write
        leaves a torn line behind)."""
        if worker in self._gone:
            return None
        try:
            ident, kind = str(event["id"]), str(event["ev"])
            running = self._running.setdefault(worker, {})
            if kind == "start":
                total = event.get("total")
                running[ident] = _Running(str(event["phase"]), str(event.get("subject") or ""),
                                          int(total) if total else None, int(event.get("done") or 0),
                                          str(event.get("detail") or ""), float(event["started"]))
            elif kind == "step" and ident in running:
                running[ident].done = int(event["done"])
            elif kind == "end":
                phase = running.pop(ident, None)
                if phase is not None:
                    phase.done = int(event.get("done") or phase.done)
                    return self._finished_line(worker, phase, float(event["t"]), bool(event.get("ok")))
        except (KeyError, TypeError, ValueError):
            return None
        return None

    def status_lines(self, now: float) -> list[str]:
        """One line per worker with a running phase, workers in their natural order (gw2 before gw10):
        ``gw0 smollm2-135m calibrating 2/5 · eta 3 min``."""
        lines = []
        for worker in sorted(self._running, key=_worker_order):
            phases = self._running[worker]
            if phases:
                lines.append(self._status_line(worker, next(reversed(phases.values())), now))
        return lines

    def gone(self, worker: str) -> None:
        """``worker`` stopped (or crashed): its running phases end without a line, its later events are ignored."""
        self._gone.add(worker)
        self._running.pop(worker, None)

    def active(self) -> bool:
        """True while some worker has a running phase."""
        return any(self._running.values())

    @staticmethod
    def _status_line(worker: str, phase: _Running, now: float) -> str:
        doing, _, _ = describe(phase.name)
        text = " ".join(filter(None, (_label(worker), phase.subject, doing)))
        elapsed = max(0.0, now - phase.started)
        if phase.total:
            text += f" {min(phase.done + 1, phase.total)}/{phase.total}"
        if phase.detail:
            text += f" ({phase.detail})"
        if phase.total and 0 < phase.done < phase.total:
            return f"{text} · {_eta(elapsed / phase.done * (phase.total - phase.done))}"
        return f"{text} · {format_duration(elapsed) if elapsed >= 60 else f'{int(elapsed)} s'}"

    @staticmethod
    def _finished_line(worker: str, phase: _Running, end: float, ok: bool) -> str:
        doing, done, unit = describe(phase.name)
        took = format_duration(end - phase.started)
        head = " ".join(filter(None, (_label(worker), phase.subject)))
        detail = f" ({phase.detail})" if phase.detail else ""
        if not ok:
            return f"{head} {doing}{detail} failed after {took}".lstrip()
        count = f" {phase.total} {unit}{'s' if phase.total != 1 else ''}" if phase.total and unit else ""
        return f"{head} {done}{count}{detail} in {took}".lstrip()


def _worker_order(worker: str) -> tuple[int, str]:
    digits = worker.lstrip("gw")
    return (int(digits), worker) if digits.isdigit() else (-1, worker)
