"""The result store: one record per scenario run, in the run directory, written atomically.

Layout (the contract :mod:`pytest_proofpack.verdict` and :mod:`pytest_proofpack.pack` read)::

    <run_dir>/run.json                                    the run's identity: suite, config digest, planned cases
    <run_dir>/records/<model>/<scenario>/run_<n>.json     one record per scenario run (schema proofpack_record_v1)
    <run_dir>/reports/<model>/<scenario>/run_<n>/         evaluation.report.json and probe sidecars

Only the controller writes records and run.json; workers write their own report directories (disjoint paths).
A record whose ``config_digest`` differs from the current one is *stale*: never mixed into the verdict.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

RECORD_SCHEMA: Final = "proofpack_record_v1"
RUN_SCHEMA: Final = "proofpack_run_v1"
OUTCOMES: Final = ("passed", "failed", "error", "skipped")


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` when it is absent, unreadable, corrupt or not an object (a cache
    entry in that state is recomputed, never trusted)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``.

    The temporary name is unique (``mkstemp``), so two processes writing the same file never share one; the last
    ``os.replace`` wins and a reader sees one whole version or the other.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8 (newlines as given)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    """:func:`atomic_write_text` of ``data`` as sorted, indented JSON (NaN allowed: records and caches only)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n")


def report_dir(run_dir: Path, model: str, scenario: str, run: int) -> Path:
    """The directory of one case's evaluation report and probe sidecars."""
    return run_dir / "reports" / model / scenario / f"run_{run}"


def report_relpath(model: str, scenario: str, run: int) -> str:
    """One case's evaluation report, relative to the run directory (what a record's ``report`` holds)."""
    return f"reports/{model}/{scenario}/run_{run}/evaluation.report.json"


def record_path(run_dir: Path, model: str, scenario: str, run: int) -> Path:
    """Where one case's record lives."""
    return run_dir / "records" / model / scenario / f"run_{run}.json"


@dataclass(frozen=True)
class Record:
    """One scenario run as stored (schema ``proofpack_record_v1``); ``report`` is relative to the run directory."""

    model: str
    scenario: str
    run: int
    config_digest: str
    outcome: str
    error_class: str | None
    error_message: str | None
    report: str | None
    duration_s: float
    nodeid: str
    reused: bool = False
    #: ``{path relative to the run directory: sha256}`` of every file of the report's directory, taken when the
    #: controller wrote the record (``proofpack merge`` checks a shard's evidence against it).
    evidence: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": RECORD_SCHEMA, "model": self.model, "scenario": self.scenario, "run": self.run,
            "config_digest": self.config_digest, "outcome": self.outcome, "error_class": self.error_class,
            "error_message": self.error_message, "report": self.report, "duration_s": round(self.duration_s, 3),
            "nodeid": self.nodeid, "reused": self.reused,
            **({"evidence_sha256": dict(self.evidence)} if self.evidence is not None else {}),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Record:
        if d.get("schema") != RECORD_SCHEMA:
            raise ValueError(f"schema {d.get('schema')!r} is not {RECORD_SCHEMA}")
        evidence = d.get("evidence_sha256")
        return cls(str(d["model"]), str(d["scenario"]), int(d["run"]), str(d["config_digest"]),
                   str(d["outcome"]), d.get("error_class"), d.get("error_message"), d.get("report"),
                   float(d.get("duration_s", 0.0)), str(d.get("nodeid", "")), bool(d.get("reused", False)),
                   dict(evidence) if isinstance(evidence, Mapping) else None)


def evidence_digests(run_dir: Path, report: str) -> dict[str, str]:
    """``{relative path: sha256}`` of every regular file in the directory of the report ``report`` (relative to
    ``run_dir``): the evidence a record vouches for. Empty when the directory does not exist."""
    directory = (run_dir / report).parent
    found: dict[str, str] = {}
    if not directory.is_dir():
        return found
    for path in sorted(directory.iterdir()):
        if path.is_file() and not path.is_symlink():
            found[path.relative_to(run_dir).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def with_evidence(record: Record, run_dir: Path) -> Record:
    """``record`` with the digests of its report directory's files (unchanged when it has no report)."""
    if not record.report:
        return record
    return dataclasses.replace(record, evidence=evidence_digests(run_dir, record.report))


class ResultStore:
    """Reads and writes the records of one run directory for one config digest."""

    def __init__(self, run_dir: Path, config_digest: str) -> None:
        self.run_dir = run_dir
        self.config_digest = config_digest

    def write(self, record: Record) -> Path:
        path = record_path(self.run_dir, record.model, record.scenario, record.run)
        atomic_write_json(path, record.to_json())
        return path

    def read(self, model: str, scenario: str, run: int) -> Record | None:
        """The record of a case if it exists, is readable and belongs to this config digest."""
        path = record_path(self.run_dir, model, scenario, run)
        try:
            rec = Record.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return rec if rec.config_digest == self.config_digest else None

    def reusable_report(self, model: str, scenario: str, run: int) -> dict[str, Any] | None:
        """The stored report of a case whose record passed under this digest (resume without recomputing)."""
        rec = self.read(model, scenario, run)
        if rec is None or rec.outcome != "passed" or not rec.report:
            return None
        try:
            data = json.loads((self.run_dir / rec.report).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def all_records(self) -> tuple[list[Record], list[Record]]:
        """``(current, stale)`` records found under ``records/``."""
        current: list[Record] = []
        stale: list[Record] = []
        root = self.run_dir / "records"
        for path in sorted(root.glob("*/*/run_*.json")) if root.is_dir() else []:
            try:
                rec = Record.from_json(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            (current if rec.config_digest == self.config_digest else stale).append(rec)
        return current, stale


def stale_reason(previous: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """One line naming which config values changed between two run.json ``config`` blocks."""
    keys = sorted(set(previous) | set(current))
    changed = [f"{k} {previous.get(k)!r} -> {current.get(k)!r}" for k in keys if previous.get(k) != current.get(k)]
    return "; ".join(changed[:6]) + (" …" if len(changed) > 6 else "") if changed else "config digest changed"


def write_run_json(run_dir: Path, data: Mapping[str, Any]) -> None:
    """Write the run's identity (``run.json``) with its schema tag."""
    atomic_write_json(run_dir / "run.json", {"schema": RUN_SCHEMA, **data})


def read_run_json(run_dir: Path) -> dict[str, Any] | None:
    """``run.json`` of ``run_dir``, or ``None`` when it is absent, unreadable or not a run description."""
    try:
        data = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == RUN_SCHEMA else None


def planned_keys(cases: Iterable[Any]) -> list[list[Any]]:
    """run.json's ``planned``: ``[model, scenario_id, run]`` of every collected case."""
    return [[c.model.key, c.scenario.id, c.run] for c in cases]
