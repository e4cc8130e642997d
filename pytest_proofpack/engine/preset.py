"""Reading a calibrated preset: a gate's number by its JSON path, else the documented default, and its source.

A preset (:mod:`pytest_proofpack.calibration`) stores each number either bare or as ``{"value": x, ...}`` with its
provenance beside it. A missing, malformed or boolean entry falls back to the engine's default, and every report
section records where its thresholds came from (``thresholds_source``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def preset_number(preset: Mapping[str, Any], *path: str) -> float | None:
    """The number at ``path`` in ``preset`` (unwrapping ``{"value": x}``), or ``None`` where there is none."""
    node: object = preset
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    if isinstance(node, Mapping):
        node = node.get("value")
    if isinstance(node, int | float) and not isinstance(node, bool):
        return float(node)
    return None


def preset_or_default(preset: Mapping[str, Any], path: tuple[str, ...], default: float) -> tuple[float, str]:
    """``(value, "preset")`` for the number at ``path``, else ``(default, "default")``."""
    value = preset_number(preset, *path)
    return (value, "preset") if value is not None else (default, "default")


def thresholds_source(sources: Iterable[str]) -> str:
    """``preset`` when every threshold came from the preset, ``default`` when none did, else ``mixed``."""
    found = set(sources)
    if found == {"preset"}:
        return "preset"
    return "default" if found <= {"default"} else "mixed"
