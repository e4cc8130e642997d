"""Progress of the long phases: model load, GGUF conversion, corpus, tokenization, baseline, tuning, calibration.

The code that does the work opens a phase where the work really happens (a cache miss, not a cache hit)::

    with progress.phase("calibrate", subject="smollm2-135m", total=5) as p:
        ...
        p.advance(done)            # items finished so far, for the count and the ETA

Each phase sends events (``start``, ``step``, ``end``) to the *sink* installed for this thread of work, or to
nothing: without a sink a phase costs two function calls. The pytest plugin installs a sink in every process
(:mod:`pytest_proofpack.progress_role`): an xdist worker appends its events to a small file that the controller
reads while the worker works; the controller and a run without xdist feed its display directly. The CLI
installs :func:`print_sink`.

The sink lives in a :class:`~contextvars.ContextVar` rather than being passed down: the phases sit deep in
layers that know nothing of pytest (a GGUF conversion inside model loading, tokenization inside the corpus
code), and a context variable reaches them without every signature in between carrying a reporter. A phase
without ``subject`` inherits the one of the phase (or :func:`subject` block) around it.

This module imports only the standard library.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar, Token
from pathlib import Path
from typing import IO, Any, Final, final

__all__ = [
    "PHASES",
    "FileSink",
    "Phase",
    "Sink",
    "describe",
    "format_duration",
    "install",
    "phase",
    "print_sink",
    "reporting",
    "reset",
    "subject",
]

#: Event sink: called with one JSON-serialisable event dict per start, step and end of a phase.
Sink = Callable[[dict[str, Any]], None]

#: phase name -> (what is happening, what was done, the unit its count counts). Other names are shown as they are.
PHASES: Final[Mapping[str, tuple[str, str, str]]] = {
    "load": ("loading model", "loaded model", ""),
    "convert": ("converting GGUF", "converted GGUF", ""),
    "corpus": ("reading corpus", "read corpus", ""),
    "tokenize": ("tokenizing corpus", "tokenized corpus", ""),
    "baseline": ("computing baseline", "computed baseline", ""),
    "tune": ("tuning", "tuned", "kind"),
    "calibrate": ("calibrating", "calibrated", "run"),
    "fetch": ("fetching", "fetched", "part"),
    "sweep": ("sweeping sensitivity", "swept sensitivity", "run"),
}

_SINK: ContextVar[Sink | None] = ContextVar("proofpack_progress_sink", default=None)
_SUBJECT: ContextVar[str] = ContextVar("proofpack_progress_subject", default="")
_IDS = itertools.count(1)


def describe(name: str) -> tuple[str, str, str]:
    """``(doing, done, unit)`` of the phase ``name``."""
    return PHASES.get(name, (name, f"{name} done", ""))


def format_duration(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min 5 s``, ``1 h 2 min``: a duration as a person reads it."""
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, secs = divmod(whole, 60)
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, rest = divmod(whole, 3600)
    return f"{hours} h {rest // 60} min"


def install(sink: Sink | None) -> Token[Sink | None]:
    """Make ``sink`` receive the phases of this thread of work; :func:`reset` with the token undoes it."""
    return _SINK.set(sink)


def reset(token: Token[Sink | None]) -> None:
    """Undo the :func:`install` that returned ``token``."""
    _SINK.reset(token)


@contextlib.contextmanager
def reporting(sink: Sink | None) -> Iterator[None]:
    """``sink`` receives the phases of the block (:func:`install` and :func:`reset` around it)."""
    token = install(sink)
    try:
        yield
    finally:
        reset(token)


@final
class Phase:
    """A running phase: :meth:`advance` reports how many of its ``total`` items are finished."""

    def __init__(self, sink: Sink | None, name: str, subject: str, total: int | None, detail: str) -> None:
        self._sink = sink
        self.name, self.subject, self.total, self.detail = name, subject, total, detail
        self.ident = f"{os.getpid()}-{next(_IDS)}"
        self.started = time.time()
        self.done = 0

    def advance(self, done: int) -> None:
        """``done`` items of ``total`` are finished (a count, not an increment)."""
        self.done = done
        self._emit("step")

    def _emit(self, ev: str, **extra: Any) -> None:
        if self._sink is None:
            return
        event = {"ev": ev, "id": self.ident, "phase": self.name, "subject": self.subject, "total": self.total,
                 "done": self.done, "detail": self.detail, "t": time.time(), "started": self.started, **extra}
        try:
            self._sink(event)
        except Exception:  # progress is a courtesy: a failing display never fails the work it describes
            pass


@contextlib.contextmanager
def phase(name: str, *, subject: str | None = None, total: int | None = None, detail: str = "") -> Iterator[Phase]:
    """Report the phase ``name`` (a key of :data:`PHASES`, or any short verb) while the block runs.

    ``subject`` (a model key, an asset name) defaults to the enclosing one; ``total`` is the number of items the
    phase counts (calibration runs, tuned kinds), ``detail`` a short note shown after the name. The ``end`` event
    says whether the block raised.
    """
    current = _SINK.get()
    who = subject if subject is not None else _SUBJECT.get()
    running = Phase(current, name, who, total, detail)
    token = _SUBJECT.set(who)
    running._emit("start")
    ok = False
    try:
        yield running
        ok = True
    finally:
        _SUBJECT.reset(token)
        running._emit("end", ok=ok)


@contextlib.contextmanager
def subject(name: str) -> Iterator[None]:
    """Phases opened inside the block (without their own ``subject``) are about ``name``."""
    token = _SUBJECT.set(name)
    try:
        yield
    finally:
        _SUBJECT.reset(token)


@final
class FileSink:
    """Appends each event as one JSON line to ``path``: the channel from an xdist worker to its controller.

    One ``os.write`` of one short line to a file opened with ``O_APPEND`` lands whole and in order, so the
    reader never sees two events interleaved; it keeps a partial last line until the rest arrives. Write errors
    are ignored (a full disk must not fail a scenario because of its progress line).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __call__(self, event: dict[str, Any]) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, (json.dumps(event, separators=(",", ":")) + "\n").encode())
        except OSError:
            pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def print_sink(stream: IO[str] | None = None) -> Sink:
    """A sink for command-line tools: one line when a phase starts and one when it ends, with its duration."""

    def sink(event: dict[str, Any]) -> None:
        out = stream if stream is not None else sys.stdout
        doing, done, unit = describe(str(event["phase"]))
        who = " ".join(filter(None, (str(event.get("subject") or ""), str(event.get("detail") or ""))))
        if event["ev"] == "start":
            count = f" ({event['total']} {unit}s)" if event.get("total") and unit else ""
            print(f"{doing} {who}{count} ...".replace("  ", " "), file=out, flush=True)
        elif event["ev"] == "end":
            took = format_duration(float(event["t"]) - float(event["started"]))
            verb = done if event.get("ok") else f"{doing} failed"
            print(f"{verb} {who} in {took}".replace("  ", " "), file=out, flush=True)

    return sink
