"""Progress of the long phases: events, the workers' event files, the board's lines, the terminal region, and the
plugin as a user sees it (pytester, ``-n 2``, the oracle engine)."""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from e2e_support import ORACLE_CONFTEST, write_suite

from pytest_proofpack import progress
from pytest_proofpack.progress_board import ProgressBoard
from pytest_proofpack.progress_role import EventFiles, StatusRegion, _GuardedStream
from pytest_proofpack.shared_cache import shared_parts

# ------------------------------------------------------------------------------------------------ phases


def test_phase_events_nest_and_inherit_the_subject() -> None:
    events: list[dict[str, Any]] = []
    with progress.reporting(events.append):
        with progress.phase("load", subject="m1"):
            with progress.phase("convert", detail="m.gguf"):
                pass
        with progress.subject("m2"), progress.phase("calibrate", total=3) as calibrating:
            calibrating.advance(1)
            calibrating.advance(2)
    assert [(e["ev"], e["phase"], e["subject"]) for e in events] == [
        ("start", "load", "m1"), ("start", "convert", "m1"), ("end", "convert", "m1"), ("end", "load", "m1"),
        ("start", "calibrate", "m2"), ("step", "calibrate", "m2"), ("step", "calibrate", "m2"),
        ("end", "calibrate", "m2"),
    ]
    assert [e["done"] for e in events[4:]] == [0, 1, 2, 2]
    assert events[1]["detail"] == "m.gguf" and events[4]["total"] == 3
    assert all(e["ok"] for e in events if e["ev"] == "end")
    assert len({e["id"] for e in events}) == 3


def test_a_failing_phase_ends_not_ok_and_the_error_propagates() -> None:
    events: list[dict[str, Any]] = []
    with progress.reporting(events.append), pytest.raises(KeyError), progress.phase("baseline", subject="m"):
        raise KeyError("boom")
    assert [(e["ev"], e.get("ok")) for e in events] == [("start", None), ("end", False)]


def test_without_a_sink_phases_do_nothing_and_a_broken_sink_is_ignored() -> None:
    with progress.phase("load", subject="m") as p:
        p.advance(1)

    def broken(event: dict[str, Any]) -> None:
        raise OSError("display gone")

    with progress.reporting(broken), progress.phase("load", subject="m") as p:
        p.advance(1)


def test_shared_parts_reports_each_item_it_has(tmp_path: Path) -> None:
    seen: list[int] = []
    shared_parts(tmp_path, 3, lambda i: {"i": i}, seen.append)
    assert seen == [1, 2, 3]
    seen.clear()
    shared_parts(tmp_path, 3, lambda i: {"never": i}, seen.append)  # all on disk: still counted
    assert seen == [1, 2, 3]


def test_format_duration() -> None:
    assert [progress.format_duration(s) for s in (0.04, 9.96, 12.4, 60, 185, 3725)] == [
        "0.0 s", "10.0 s", "12 s", "1 min", "3 min 5 s", "1 h 2 min"]


def test_print_sink_one_line_at_start_and_end() -> None:
    out = io.StringIO()
    with progress.reporting(progress.print_sink(out)):
        with progress.phase("fetch", subject="smollm2-gguf", total=3) as p:
            p.advance(1)
        with pytest.raises(ValueError), progress.phase("tune", subject="m"):
            raise ValueError
    lines = out.getvalue().splitlines()
    assert lines[0] == "fetching smollm2-gguf (3 parts) ..."
    assert re.fullmatch(r"fetched smollm2-gguf in \d+\.\d s", lines[1]), lines
    assert lines[2] == "tuning m ..." and lines[3].startswith("tuning failed m in ")


# ------------------------------------------------------------------------------------------------ files and board


def test_event_files_are_read_incrementally_and_torn_lines_wait(tmp_path: Path) -> None:
    sink = progress.FileSink(tmp_path / "gw0.jsonl")
    files = EventFiles(tmp_path)
    sink({"ev": "start", "id": "1"})
    with (tmp_path / "gw1.jsonl").open("w") as fh:
        fh.write('{"ev": "start", "id": "2"}\n{"ev": "st')  # a worker caught mid-write
    assert files.read() == [("gw0", {"ev": "start", "id": "1"}), ("gw1", {"ev": "start", "id": "2"})]
    assert files.read() == []
    with (tmp_path / "gw1.jsonl").open("a") as fh:
        fh.write('ep", "id": "2"}\nnot json\n')
    sink({"ev": "end", "id": "1"})
    sink.close()
    sink({"ev": "after close"})  # ignored, never raises
    assert files.read() == [("gw0", {"ev": "end", "id": "1"}), ("gw1", {"ev": "step", "id": "2"})]


def _event(ev: str, ident: str, phase: str, subject: str, t: float, **extra: Any) -> dict[str, Any]:
    return {"ev": ev, "id": ident, "phase": phase, "subject": subject, "total": None, "done": 0, "detail": "",
            "t": t, "started": 100.0, **extra}


def test_board_status_lines_eta_and_finished_lines() -> None:
    board = ProgressBoard()
    assert board.feed("gw10", _event("start", "a", "load", "big", 100.0)) is None
    board.feed("gw2", _event("start", "b", "calibrate", "smollm2-135m", 100.0, total=5))
    board.feed("gw2", _event("start", "c", "baseline", "smollm2-135m", 100.0, detail="run 1"))
    assert board.status_lines(112.9) == ["gw2 smollm2-135m computing baseline (run 1) · 12 s",
                                         "gw10 big loading model · 12 s"]
    line = board.feed("gw2", _event("end", "c", "baseline", "smollm2-135m", 104.0, detail="run 1", ok=True))
    assert line == "gw2 smollm2-135m computed baseline (run 1) in 4.0 s"
    board.feed("gw2", _event("step", "b", "calibrate", "smollm2-135m", 160.0, total=5, done=1))
    # one run of five took a minute: four more take four minutes
    assert board.status_lines(160.0)[0] == "gw2 smollm2-135m calibrating 2/5 · eta 4 min"
    board.feed("gw2", _event("step", "b", "calibrate", "smollm2-135m", 160.0, total=5, done=4))
    assert board.status_lines(180.0)[0] == "gw2 smollm2-135m calibrating 5/5 · eta 20 s"
    line = board.feed("gw2", _event("end", "b", "calibrate", "smollm2-135m", 400.0, total=5, done=5, ok=True))
    assert line == "gw2 smollm2-135m calibrated 5 runs in 5 min"
    line = board.feed("gw10", _event("end", "a", "load", "big", 101.5, ok=False))
    assert line == "gw10 big loading model failed after 1.5 s"
    assert board.status_lines(500.0) == [] and not board.active()
    assert board.feed("master", _event("end", "zz", "load", "m", 1.0, ok=True)) is None  # never started
    assert board.feed("gw0", {"ev": "start"}) is None  # malformed: ignored
    board.feed("master", _event("start", "t", "tune", "m", 100.0, total=1))
    assert board.feed("master", _event("end", "t", "tune", "m", 190.0, total=1, done=1, ok=True)) == \
        "m tuned 1 kind in 1 min 30 s"


def test_a_worker_that_goes_down_leaves_no_status_line() -> None:
    board = ProgressBoard()
    board.feed("gw0", _event("start", "a", "calibrate", "m", 100.0, total=3))
    board.feed("gw1", _event("start", "b", "load", "n", 100.0))
    board.gone("gw0")  # crashed mid-calibration
    assert board.status_lines(110.0) == ["gw1 n loading model · 10 s"]
    assert board.feed("gw0", _event("end", "a", "calibrate", "m", 120.0, ok=True)) is None
    board.feed("gw0", _event("start", "c", "load", "m", 100.0))
    assert board.status_lines(110.0) == ["gw1 n loading model · 10 s"]


# ------------------------------------------------------------------------------------------------ terminal region


class _Screen:
    """Just enough of a terminal: text, newline (as a tty's output processing does it), carriage return, cursor
    up (``ESC[nA``) and right (``ESC[nC``), clear to the end of the screen (``ESC[J``); colours ignored."""

    _TOKEN = re.compile(r"\x1b\[([0-9;]*)([A-Za-z])|\n|\r|[^\x1b\n\r]")

    def __init__(self) -> None:
        self.rows: list[list[str]] = [[]]
        self.y = self.x = 0

    def feed(self, text: str) -> None:
        for m in self._TOKEN.finditer(text):
            token = m.group(0)
            if m.group(2):
                self._escape(m.group(2), int(m.group(1) or 0))
            elif token == "\n":
                self.y, self.x = self.y + 1, 0
                while len(self.rows) <= self.y:
                    self.rows.append([])
            elif token == "\r":
                self.x = 0
            else:
                row = self.rows[self.y]
                row.extend(" " * (self.x + 1 - len(row)))
                row[self.x] = token
                self.x += 1

    def _escape(self, kind: str, n: int) -> None:
        if kind == "A":
            self.y = max(0, self.y - n)
        elif kind == "C":
            self.x += n
        elif kind == "J":
            del self.rows[self.y][self.x:]
            del self.rows[self.y + 1:]

    def lines(self) -> list[str]:
        return ["".join(r).rstrip() for r in self.rows]


class _Writer:
    """What the region relies on of pytest's TerminalWriter: it tracks its current line, then writes."""

    fullwidth = 60

    def __init__(self, stream: Any) -> None:
        self.stream, self.current = stream, ""

    @property
    def width_of_current_line(self) -> int:
        return len(self.current)

    def write(self, text: str) -> None:
        self.current = text.rsplit("\n", 1)[-1] if "\n" in text else self.current + text
        self.stream.write(text)


def test_status_region_stays_below_pytest_output_and_leaves_nothing_behind() -> None:
    raw = io.StringIO()
    lock = threading.RLock()
    writer = _Writer(None)
    region = StatusRegion(writer, raw)
    writer.stream = _GuardedStream(raw, lock, region)  # type: ignore[arg-type]

    def screen() -> list[str]:
        s = _Screen()
        s.feed(raw.getvalue())
        return s.lines()

    writer.write("2 workers [4 items]\n")
    region.lines = ["gw0 tiny-a loading model · 1 s", "gw1 tiny-b tokenizing corpus · 0 s"]
    region.draw()
    assert screen() == ["2 workers [4 items]", "", "gw0 tiny-a loading model · 1 s",
                        "gw1 tiny-b tokenizing corpus · 0 s"]
    writer.write("..")  # pytest's dots go on pytest's line, the status lines move down with it
    writer.write("x" * 50 + "\n")
    region.lines = ["gw1 tiny-b calibrating 2/5 · eta 3 min"]
    region.draw()
    writer.write(".")
    lines = screen()
    assert lines == ["2 workers [4 items]", ".." + "x" * 50, ".", "gw1 tiny-b calibrating 2/5 · eta 3 min"]
    region.lines = ["a status line far longer than the terminal is wide, which would wrap and push the rest"]
    region.draw()
    assert screen()[-1] == region.lines[0][: _Writer.fullwidth - 1]
    writer.write("[")  # erased before pytest writes, redrawn after
    assert screen()[-2:] == [".[", region.lines[0][: _Writer.fullwidth - 1]]
    region.lines = []  # the display stops: nothing is left behind
    region.erase()
    writer.write("100%]\n")
    assert screen() == ["2 workers [4 items]", ".." + "x" * 50, ".[100%]", ""]


# ------------------------------------------------------------------------------------------------ the plugin

_SLOW_CALIBRATION = r'''

import time as _time
import pytest_proofpack.calibration as _calibration

_run = _calibration.calibration_run

def _slow_run(*args, **kwargs):
    _time.sleep(2.0)  # long enough for the controller to draw the worker's status line a few times
    return _run(*args, **kwargs)

_calibration.calibration_run = _slow_run
'''


@pytest.fixture
def progress_args(pytester: pytest.Pytester, model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("PROOFPACK_TEST_LOG", str(pytester.path / "calls.log"))
    monkeypatch.delenv("PROOFPACK_TEST_MISS", raising=False)
    return write_suite(pytester.path, model_dirs)


#: One clean scenario per model: each worker loads, tokenizes, computes the baseline and calibrates its model.
ONE_PER_MODEL = ("-k", "quant_4bit_clean")


def test_lines_per_phase_under_xdist_without_a_terminal(pytester: pytest.Pytester, progress_args: list[str]) -> None:
    pytester.makeconftest(ORACLE_CONFTEST)
    result = pytester.runpytest_subprocess(*progress_args, *ONE_PER_MODEL, "-n", "2")
    out = result.stdout.str()
    result.assert_outcomes(passed=2)  # xdist deselects on the workers: the controller reports no count
    assert "\x1b[" not in out, "no cursor movement on a pipe"
    phase_lines = [line for line in out.splitlines() if line.startswith("proofpack: gw")]
    for model in ("tiny-a", "tiny-b"):
        mine = [line for line in phase_lines if re.match(rf"proofpack: gw[01] {model} ", line)]
        assert len({line.split()[1] for line in mine}) == 1, "a model's phases come from the worker that has it"
        kinds = [re.sub(r" in [\d.]+ s$| in \d+ min.*$", "", line.split(f" {model} ", 1)[1]) for line in mine]
        assert [k for k in kinds if k != "read corpus (local_text)"] == [
            "loaded model", "tokenized corpus (1 document)", "computed baseline (run 1)", "calibrated 1 run"], mine
    # the corpus's documents are read once: the other worker finds them in the cache
    assert sum(" read corpus (local_text) in " in line for line in phase_lines) == 1, phase_lines


def test_live_status_lines_under_xdist(pytester: pytest.Pytester, progress_args: list[str]) -> None:
    pytester.makeconftest(ORACLE_CONFTEST + _SLOW_CALIBRATION)
    result = pytester.runpytest_subprocess(*progress_args, *ONE_PER_MODEL, "-n", "2", "-v",
                                           "--proofpack-progress", "live")
    out = result.stdout.str()
    result.assert_outcomes(passed=2)  # xdist deselects on the workers: the controller reports no count
    status = re.findall(r"gw[01] tiny-[ab] calibrating 1/1 · \d+ s", out)
    assert {s.split()[1] for s in status} == {"tiny-a", "tiny-b"}, out
    # the status came from the workers while they worked: it is drawn before any item has finished
    assert out.index("calibrating 1/1") < out.index("PASSED")
    assert not re.search(r"^proofpack: gw", out, re.M), "live mode writes no per-phase lines"
    screen = _Screen()
    screen.feed((pytester.path / "stdout").read_bytes().decode())  # as written: text mode turns "\r" into "\n"
    final = screen.lines()
    assert not any("calibrating" in line or "loading model" in line for line in final), final
    assert sum("PASSED proofpack::test_scenario[" in line for line in final) == 2
    assert any("verdict: FAIL" in line for line in final)  # tiny's other scenarios were deselected


def test_without_xdist_one_line_per_phase_and_off_means_off(
    pytester: pytest.Pytester, progress_args: list[str]
) -> None:
    pytester.makeconftest(ORACLE_CONFTEST)
    result = pytester.runpytest_subprocess(*progress_args, "-k", "tiny-a and quant_4bit_clean")
    result.assert_outcomes(passed=1, deselected=39)
    result.stdout.fnmatch_lines(["proofpack: tiny-a loaded model in *", "proofpack: tiny-a calibrated 1 run in *"])
    result = pytester.runpytest_subprocess(*progress_args, "-k", "tiny-b and quant_4bit_clean",
                                           "--proofpack-progress", "off")
    result.assert_outcomes(passed=1, deselected=39)
    assert "loaded model" not in result.stdout.str()
    result = pytester.runpytest_subprocess(*progress_args, "--proofpack-progress", "sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--proofpack-progress: 'sometimes' is not accepted; accepted: auto, live, lines, off*"])
