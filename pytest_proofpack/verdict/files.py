"""The verdict's files: ``final_verdict.{json,txt}`` and one JSON file per summary, in canonical JSON.

:func:`result_texts` is the exact content of every file, so ``proofpack verify`` can compare a pack's
``results/`` with a recomputation byte for byte (text) or value for value (JSON).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pytest_proofpack.results import atomic_write_text
from pytest_proofpack.verdict.render import render_text

__all__ = ["RESULT_FILES", "dump_json", "result_texts", "write_results"]

#: Files written by :func:`write_results`, in write order.
RESULT_FILES: Final = (
    "final_verdict.json",
    "final_verdict.txt",
    "category_summary.json",
    "guard_signal_summary.json",
    "guard_intervention_summary.json",
    "scenario_signal_summary.json",
    "detection_matrix.json",
    "false_alarm_rate.json",
    "determinism_repeats.json",
)
#: Summary file -> the verdict key it holds.
_SUMMARY_KEYS: Final = {
    "category_summary.json": "category_summary",
    "guard_signal_summary.json": "guard_signal_summary",
    "guard_intervention_summary.json": "guard_intervention_summary",
    "scenario_signal_summary.json": "scenario_signal_summary",
    "detection_matrix.json": "detection_matrix",
    "false_alarm_rate.json": "false_alarm_rate",
    "determinism_repeats.json": "determinism_repeats",
}


def dump_json(obj: Any) -> str:
    """The canonical JSON text of every file this package writes: sorted keys, indent 2, strict, newline."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n"


def result_texts(verdict: Mapping[str, Any]) -> dict[str, str]:
    """File name -> exact content of every file :func:`write_results` writes."""
    texts = {"final_verdict.json": dump_json(verdict), "final_verdict.txt": render_text(verdict)}
    for name, key in _SUMMARY_KEYS.items():
        texts[name] = dump_json(verdict.get(key))
    return texts


def write_results(run_dir_or_pack_results_dir: Path, verdict: Mapping[str, Any]) -> list[Path]:
    """Atomically write :data:`RESULT_FILES`. A directory holding ``run.json`` is a run directory and the
    files go to its ``results/``; any other directory receives them directly. Returns the written paths."""
    dest = run_dir_or_pack_results_dir
    if (dest / "run.json").is_file():
        dest = dest / "results"
    written = []
    for name, text in result_texts(verdict).items():
        atomic_write_text(dest / name, text)
        written.append(dest / name)
    return written
