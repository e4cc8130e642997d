"""Progress of the workers' long phases on the controller's terminal (``--proofpack-progress``).

A phase (:mod:`pytest_proofpack.progress`) runs inside a scenario's fixture on a worker, where nothing reaches the
screen and xdist tells the controller nothing until an item ends. So each worker appends its events to
``<controller basetemp>/proofpack-progress/<worker>.jsonl`` (the directory travels in ``workerinput``; a
multi-GPU reservation's subprocess inherits it with the rest of the worker's ``workerinput``), and the controller
reads those files from a thread every quarter second and shows them:

* ``live`` (the default on a terminal, with xdist): one status line per busy worker, kept below pytest's output
  and redrawn in place, e.g. ``gw0 smollm2-135m calibrating 2/5 · eta 3 min``;
* ``lines`` (the default otherwise: CI logs, a pipe, or a run without ``-n``): one line per finished phase, e.g.
  ``proofpack: gw0 smollm2-135m calibrated 5 runs in 4 min 10 s``;
* ``off``: nothing.

Without xdist the one process is both: its phases feed the display directly, one line each, written with output
capturing suspended the way pytest's own live logging does.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import Token
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, TextIO

import pytest

from pytest_proofpack import progress
from pytest_proofpack.progress_board import ProgressBoard
from pytest_proofpack.pytest_private import controller_basetemp, swap_terminal_stream, uncaptured

if TYPE_CHECKING:
    from xdist.workermanage import WorkerController

__all__ = ["MODES", "WORKERINPUT_KEY", "EventFiles", "ProgressRole", "StatusRegion"]

MODES: Final = ("auto", "live", "lines", "off")
WORKERINPUT_KEY: Final = "proofpack_progress_dir"
LINE_PREFIX: Final = "proofpack: "
_DIR_NAME: Final = "proofpack-progress"
_INTERVAL_S: Final = 0.25


class EventFiles:
    """The workers' event files in ``directory``, read incrementally: each call returns the events appended
    since the last one as ``(worker, event)``; a torn last line waits for its end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}

    def read(self) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        for path in sorted(self.directory.glob("*.jsonl")):
            offset = self._offsets.get(path, 0)
            try:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except OSError:
                continue
            self._offsets[path] = offset + len(data)
            *lines, rest = (self._partial.pop(path, b"") + data).split(b"\n")
            if rest:
                self._partial[path] = rest
            for line in lines:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    events.append((path.stem, event))
        return events


class StatusRegion:
    """Status lines drawn below the terminal writer's current line, erased before anything else is written.

    The cursor stays on pytest's line, at the column where pytest's next character goes: drawing writes the
    lines below and moves the cursor back up; erasing clears from the cursor to the end of the screen (pytest's
    line keeps what is left of the cursor). ``raw`` is the terminal stream itself, not the guarded one.
    """

    def __init__(self, writer: Any, raw: IO[str]) -> None:
        self.writer, self.raw = writer, raw
        self.lines: list[str] = []
        self.shown = 0

    def erase(self) -> None:
        if self.shown:
            self.raw.write("\x1b[J")
            self.shown = 0

    def draw(self) -> None:
        self.erase()
        column, width = int(self.writer.width_of_current_line), int(self.writer.fullwidth)
        if not self.lines or not 0 <= column < width - 1:  # a line being rewritten ("\r"), or full: next time
            return
        lines = [line[: width - 1] for line in self.lines]
        self.raw.write("\n" + "\n".join(lines) + f"\x1b[{len(lines)}A\r" + (f"\x1b[{column}C" if column else ""))
        self.raw.flush()
        self.shown = len(lines)


class _GuardedStream:
    """The terminal reporter's stream: each write erases the status region first and redraws it after, under the
    display's lock, so pytest's output and the status lines never mix."""

    def __init__(self, stream: TextIO, lock: threading.RLock, region: StatusRegion | None) -> None:
        self._stream, self._lock, self._region = stream, lock, region

    def write(self, text: str) -> int:
        with self._lock:
            if self._region is not None:
                self._region.erase()
            written = self._stream.write(text)
            if self._region is not None:
                self._region.draw()
            return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Display:
    """The controller's display of the workers' phases (see the module docstring)."""

    def __init__(self, config: pytest.Config, mode: str, files: EventFiles | None) -> None:
        """``files``: the workers' event files (xdist), else None (this process feeds :meth:`feed` itself);
        ``mode``: ``live`` or ``lines``, or ``auto`` (live when the terminal is a TTY and there are workers)."""
        self.config, self.files, self.mode = config, files, mode
        self.board = ProgressBoard()
        self.lock = threading.RLock()
        self.writer = config.get_terminal_writer()
        self.region: StatusRegion | None = None
        self._restore: Callable[[], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        def wrap(stream: TextIO) -> TextIO:
            tty = bool(getattr(stream, "isatty", lambda: False)())
            if self.files is not None and (self.mode == "live" or (self.mode == "auto" and tty)):
                self.region = StatusRegion(self.writer, stream)
            return _GuardedStream(stream, self.lock, self.region)  # type: ignore[return-value]

        self._restore = swap_terminal_stream(self.config, wrap)
        if self.files is not None:
            self._thread = threading.Thread(target=self._poll, name="proofpack-progress", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.tick()  # the last phases' lines
        with self.lock:
            if self.region is not None:
                self.region.erase()
                self.region.raw.flush()
            if self._restore is not None:
                self._restore()
                self._restore = None

    def feed(self, worker: str, event: Mapping[str, Any]) -> None:
        with self.lock:
            line = self.board.feed(worker, event)
            if line is not None and self.region is None:
                if self.writer.width_of_current_line:
                    self.writer.line()
                self.writer.line(LINE_PREFIX + line)
                self.writer.flush()

    def forget(self, worker: str) -> None:
        """``worker`` is down: show what it sent up to now, then drop its status line for good."""
        with self.lock:
            self._drain()
            self.board.gone(worker)

    def _drain(self) -> None:
        for worker, event in self.files.read() if self.files is not None else ():
            self.feed(worker, event)

    def tick(self) -> None:
        with self.lock:
            self._drain()
            if self.region is not None and not self._stop.is_set():
                lines = self.board.status_lines(time.time())
                if lines != self.region.lines or (lines and not self.region.shown):
                    self.region.lines = lines
                    self.region.draw()

    def _poll(self) -> None:
        while not self._stop.wait(_INTERVAL_S):
            try:
                self.tick()
            except Exception:  # a display error must not end the session's progress or the session
                continue


class ProgressRole:
    """Registered in every process: a worker sends its phases, the controller shows them."""

    def __init__(self, config: pytest.Config, mode: str) -> None:
        self.config, self.mode = config, mode
        self._file_sink: progress.FileSink | None = None
        self._file_token: Token[progress.Sink | None] | None = None
        self._display: _Display | None = None
        self._display_token: Token[progress.Sink | None] | None = None
        workerinput: Mapping[str, Any] | None = getattr(config, "workerinput", None)
        directory = workerinput.get(WORKERINPUT_KEY) if workerinput is not None and mode != "off" else None
        if workerinput is not None and directory:
            self._file_sink = progress.FileSink(Path(directory) / f"{workerinput.get('workerid', 'worker')}.jsonl")
            self._file_token = progress.install(self._file_sink)

    def _directory(self) -> Path | None:
        basetemp = controller_basetemp(self.config)
        return basetemp / _DIR_NAME if basetemp is not None else None

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: WorkerController) -> None:
        directory = self._directory() if self.mode != "off" else None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            node.workerinput[WORKERINPUT_KEY] = str(directory)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: WorkerController, error: object) -> None:
        """A worker that crashed mid-phase must not leave its status line behind."""
        if self._display is not None:
            self._display.forget(str(node.gateway.id))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Any:
        self._start_display()
        try:
            return (yield)
        finally:
            self._stop_display()

    def _start_display(self) -> None:
        config = self.config
        if self.mode == "off" or hasattr(config, "workerinput") or config.option.collectonly \
                or config.pluginmanager.get_plugin("terminalreporter") is None:
            return
        if config.pluginmanager.get_plugin("dsession") is not None:  # xdist: the workers' files feed it
            directory = self._directory()
            if directory is None:
                return
            self._display = _Display(config, self.mode, EventFiles(directory))
            self._display.start()
            return
        display = self._display = _Display(config, "lines", None)
        display.start()

        def sink(event: dict[str, Any]) -> None:  # called inside this process's fixtures, where output is captured
            with uncaptured(config):
                display.feed("master", event)

        self._display_token = progress.install(sink)

    def _stop_display(self) -> None:
        if self._display_token is not None:
            progress.reset(self._display_token)
            self._display_token = None
        if self._display is not None:
            self._display.stop()
            self._display = None

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self._stop_display()
        if self._file_token is not None:
            progress.reset(self._file_token)
            self._file_token = None
        if self._file_sink is not None:
            self._file_sink.close()
            self._file_sink = None
