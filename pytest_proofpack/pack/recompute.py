"""The verdict side of verify: recompute the verdict from the pack's reports and compare it with ``results/``.

JSON files are compared as values (keys in :data:`VOLATILE_KEYS` ignored), text files byte for byte; the
first difference is named by its JSON path so a reviewer sees what changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from pytest_proofpack.pack.coverage import run_verdict
from pytest_proofpack.pack.layout import VerifyFailure
from pytest_proofpack.verdict import load_run, result_texts

__all__ = ["VOLATILE_KEYS", "recompute_verdict"]

#: Keys of result JSON files that may legitimately differ from a recomputation (none written by us today).
VOLATILE_KEYS: Final = frozenset({"generated_at", "timestamp"})


def _strip_volatile(obj: Any) -> Any:
    return {k: v for k, v in obj.items() if k not in VOLATILE_KEYS} if isinstance(obj, dict) else obj


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{where}[{i}]")
    return f"{where or '<root>'}: recorded {json.dumps(a)[:80]}, recomputed {json.dumps(b)[:80]}"


def _compare(name: str, recorded: str, text: str) -> None:
    if not name.endswith(".json"):
        if recorded != text:
            raise VerifyFailure(7, "verdict", f"results/{name} differs from the recomputed summary")
        return
    try:
        recorded_obj = _strip_volatile(json.loads(recorded))
    except json.JSONDecodeError:
        raise VerifyFailure(4, "verdict", f"results/{name} is not valid JSON") from None
    new_obj = _strip_volatile(json.loads(text))
    if recorded_obj != new_obj:
        where = _first_difference(recorded_obj, new_obj)
        raise VerifyFailure(7, "verdict", f"results/{name} differs from the recomputed verdict at {where}")


def recompute_verdict(pack: Path) -> str:
    """Recompute the pack's verdict, check every ``results/`` file against it and return ``PASS``, ``FAIL`` or
    ``PARTIAL``."""
    loaded = load_run(pack)
    verdict = run_verdict(loaded)
    for name, text in result_texts(verdict).items():
        recorded_path = pack / "results" / name
        if not recorded_path.is_file():
            raise VerifyFailure(6, "verdict", f"results/{name} is missing")
        _compare(name, recorded_path.read_text(encoding="utf-8", errors="replace"), text)
    return str(verdict["verdict"])
