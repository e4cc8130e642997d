"""Read a run directory (or a proof pack) back into what the verdict needs: run.json, catalog, planned cases
and one :class:`~pytest_proofpack.verdict.cases.RunResult` per current record (its report and probe sidecars
merged). The layout is :mod:`pytest_proofpack.results`'.

Every problem is a :class:`~pytest_proofpack.errors.PackError` naming the file: exit code 3 when run.json or
scenarios.json is missing, 4 when a file is malformed, 6 when a record's report path leaves the directory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

from pytest_proofpack.errors import PackError
from pytest_proofpack.results import RECORD_SCHEMA, RUN_SCHEMA
from pytest_proofpack.verdict.cases import Case, RunResult

__all__ = ["LoadedRun", "load_run", "load_run_results"]

_SCENARIOS_SCHEMA: Final = "proof_pack_scenarios_v1"
_SIDECARS: Final = (("rmt_probe", "rmt_probe.json"), ("ve_probe", "ve_probe.json"))


@final
@dataclass(frozen=True)
class LoadedRun:
    """A run directory (or a pack) read back: its run.json, catalog, planned cases and results."""

    run: Mapping[str, Any]
    scenarios: list[dict[str, Any]]
    planned: list[tuple[str, str, int]]
    results: list[RunResult]
    stale_records: int


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackError(f"{path}: {what} is missing", exit_code=3) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackError(f"{path}: {what} is not valid JSON ({exc})", exit_code=4) from None


def _inside(root: Path, rel: str, where: str) -> Path:
    if not rel or rel.startswith(("/", "\\")) or ".." in Path(rel).parts:
        raise PackError(f"{where}: path {rel!r} must be relative and stay inside {root}", exit_code=6)
    return root / rel


def _load_report(root: Path, rel: str, where: str) -> dict[str, Any] | None:
    path = _inside(root, rel, where)
    if not path.is_file():
        return None
    report = _read_json(path, "evaluation report")
    if not isinstance(report, dict):
        raise PackError(f"{path}: evaluation report must be a JSON object", exit_code=4)
    for key, name in _SIDECARS:
        sidecar = path.parent / name
        if key not in report and sidecar.is_file():
            report[key] = _read_json(sidecar, f"probe sidecar {name}")
    return report


def _run_description(root: Path) -> tuple[dict[str, Any], list[Case]]:
    """run.json (a pack keeps it under ``metadata/``) and its planned cases."""
    run_path = root / "run.json"
    if not run_path.is_file() and (root / "metadata" / "run.json").is_file():
        run_path = root / "metadata" / "run.json"
    run = _read_json(run_path, "run description")
    if not isinstance(run, dict) or run.get("schema") != RUN_SCHEMA:
        raise PackError(f"{run_path}: schema must be {RUN_SCHEMA!r}", exit_code=4)
    planned = run.get("planned")
    if not isinstance(planned, list) or not all(
        isinstance(p, list) and len(p) == 3 and isinstance(p[2], int) for p in planned
    ):
        raise PackError(f"{run_path}: 'planned' must be a list of [model, scenario_id, run]", exit_code=4)
    return run, [(str(m), str(s), int(r)) for m, s, r in planned]


def _scenarios(root: Path) -> list[dict[str, Any]]:
    path = root / "metadata" / "scenarios.json"
    catalog = _read_json(path, "scenario catalog")
    if (
        not isinstance(catalog, dict)
        or catalog.get("schema") != _SCENARIOS_SCHEMA
        or not isinstance(catalog.get("scenarios"), list)
        or not catalog["scenarios"]
    ):
        raise PackError(
            f"{path}: schema must be {_SCENARIOS_SCHEMA!r} with a non-empty 'scenarios' list", exit_code=4
        )
    return [s for s in catalog["scenarios"] if isinstance(s, dict)]


def _run_result(root: Path, where: str, record: Mapping[str, Any]) -> RunResult:
    try:
        model, sid, run = str(record["model"]), str(record["scenario"]), int(record["run"])
    except (KeyError, TypeError, ValueError):
        raise PackError(f"{where}: record needs model, scenario and an integer run", exit_code=4) from None
    rel = record.get("report")
    report = _load_report(root, rel, where) if isinstance(rel, str) else None
    return RunResult(
        model=model,
        scenario=sid,
        run=run,
        outcome=str(record.get("outcome", "")),
        report=report,
        error_class=record.get("error_class"),
        error_message=record.get("error_message"),
        path=rel if isinstance(rel, str) else None,
    )


def _results(root: Path, config_digest: object) -> tuple[list[RunResult], int]:
    """The results of the records made under ``config_digest``, and how many other (stale) records there are."""
    results: list[RunResult] = []
    stale = 0
    for path in sorted((root / "records").glob("*/*/run_*.json")):
        record = _read_json(path, "record")
        where = str(path.relative_to(root))
        if not isinstance(record, dict) or record.get("schema") != RECORD_SCHEMA:
            raise PackError(f"{where}: schema must be {RECORD_SCHEMA!r}", exit_code=4)
        if record.get("config_digest") != config_digest:
            stale += 1
            continue
        results.append(_run_result(root, where, record))
    return results, stale


def load_run(root: Path) -> LoadedRun:
    """Read a run directory, or a proof pack (``metadata/run.json`` instead of ``run.json``).

    Records whose ``config_digest`` differs from run.json's are ignored and counted in ``stale_records``.
    Raises :class:`PackError` with exit code 3 (missing run.json / scenarios.json) or 4 (malformed).
    """
    run, planned = _run_description(root)
    scenarios = _scenarios(root)
    results, stale = _results(root, run.get("config_digest"))
    return LoadedRun(run=run, scenarios=scenarios, planned=planned, results=results, stale_records=stale)


def load_run_results(
    run_dir: Path,
) -> tuple[list[dict[str, Any]], list[tuple[str, str, int]], list[RunResult]]:
    """``(scenarios, planned, results)`` of a run directory; see :func:`load_run`."""
    loaded = load_run(run_dir)
    return loaded.scenarios, loaded.planned, loaded.results
