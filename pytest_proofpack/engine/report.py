"""The evaluation report (``proofpack_report_v1``): its top-level shape, JSON sanitising and atomic writer.

Field names are a contract read by the scenarios' detectors and the verdict: ``validation.*`` (five booleans,
always present), ``primary_metric.*``, ``invariants.status``, ``spectral.caps_applied``, ``rmt.*``,
``variance.*`` and, when the context asks for probes, ``rmt_probe``/``ve_probe`` (also written as sidecars).
Non-finite floats are written as ``null`` so every file is strict JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

REPORT_SCHEMA: Final = "proofpack_report_v1"
REPORT_SCHEMA_VERSION: Final = 1
REPORT_FILE: Final = "evaluation.report.json"
VALIDATION_KEYS: Final = (
    "primary_metric_acceptable",
    "preview_final_drift_acceptable",
    "invariants_pass",
    "spectral_stable",
    "rmt_stable",
)
SIDECARS: Final = {"rmt": "rmt_probe.json", "ve": "ve_probe.json"}


@dataclass(frozen=True)
class EvaluationResult:
    """``report`` is the ``evaluation.report.json`` body; ``sidecars`` maps file names to probe bodies."""

    report: dict[str, Any]
    sidecars: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """All five validation flags true and the primary metric not degraded."""
        v = self.report["validation"]
        return all(bool(v[k]) for k in VALIDATION_KEYS) and not self.report["primary_metric"]["degraded"]


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` with non-finite floats as ``None``, tuples as lists and numpy scalars as Python ones."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    item = getattr(obj, "item", None)
    if callable(item):
        return json_safe(item())
    return str(obj)


def atomic_write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented strict JSON (non-finite numbers as null) to ``path``, atomically."""
    from pytest_proofpack.results import atomic_write_text

    atomic_write_text(path, json.dumps(json_safe(data), indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def write_report(path_dir: Path, result: EvaluationResult) -> list[Path]:
    """Write the report and its sidecars into ``path_dir`` (created if needed); returns the written paths."""
    out = [atomic_write_json(Path(path_dir) / REPORT_FILE, result.report)]
    for name, body in sorted(result.sidecars.items()):
        out.append(atomic_write_json(Path(path_dir) / name, body))
    return out


def check_report(report: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless ``report`` carries this schema, version and every validation flag as a bool."""
    if report.get("schema") != REPORT_SCHEMA or report.get("schema_version") != REPORT_SCHEMA_VERSION:
        raise ValueError(f"report schema must be {REPORT_SCHEMA} v{REPORT_SCHEMA_VERSION}")
    v = report.get("validation")
    if not isinstance(v, Mapping) or any(not isinstance(v.get(k), bool) for k in VALIDATION_KEYS):
        raise ValueError(f"report validation must hold booleans {', '.join(VALIDATION_KEYS)}")
