"""Scenario detectors: small predicates over an evaluation report.

A scenario's ``requirements`` may declare ``detectors_any_of`` and ``detectors_all_of``: lists of
detector dicts keyed by ``kind`` (the reference harness vocabulary, so its scenarios.json runs unchanged):

- ``validation_flag{flag, expected}``: ``validation[flag]`` exists and equals ``expected``;
- ``primary_metric{field, expected}``: ``primary_metric[field]`` exists and equals ``expected``;
- ``invariants_status{allowed[]}``: lower-cased ``invariants.status`` is in ``allowed``, which may not name
  ``error`` (:data:`GUARD_ERROR_STATUS`): a guard that raises makes the run an error, never a detection;
- ``rmt_probe{field, expected}``: ``rmt_probe[field]`` exists and equals ``expected``;
- ``spectral_caps_applied{min}``: ``int(spectral.caps_applied) >= min``;
- ``ve_probe{field, expected | min}``: ``ve_probe[field]`` equals ``expected``, or is ``>= min``.

Booleans are compared through :func:`as_bool`. ``hit = any(any_of) [if declared] and all(all_of)
[if declared]``, and it is **false when nothing is declared**: a scenario without detectors cannot be
"detected".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, final

from pytest_proofpack.errors import CatalogError

__all__ = [
    "DETECTOR_FIELDS",
    "GUARD_ERROR_STATUS",
    "DetectorOutcome",
    "DetectorRow",
    "as_bool",
    "as_float",
    "describe_detector",
    "evaluate_detector",
    "evaluate_detectors",
    "validate_detector",
    "validate_requirements",
]

#: kind -> (required fields, optional fields). ``ve_probe`` needs exactly one of ``expected`` / ``min``.
DETECTOR_FIELDS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "validation_flag": (("flag", "expected"), ()),
    "primary_metric": (("field", "expected"), ()),
    "invariants_status": (("allowed",), ()),
    "rmt_probe": (("field", "expected"), ()),
    "spectral_caps_applied": (("min",), ()),
    "ve_probe": (("field",), ("expected", "min")),
}
#: A guard's error status. No detector may name it and none ever hits on it: a guard that raises is an error of the
#: run (class ``internal``), not evidence that a change was detected.
GUARD_ERROR_STATUS: Final = "error"
# Free-text keys a catalog author may add without changing semantics.
_COMMENT_KEYS: Final = frozenset({"description", "note"})
_TRUE_STRINGS: Final = frozenset({"1", "true", "yes", "on", "pass"})
_MISSING: Final = "<missing>"


def as_bool(value: object, *, default: bool = False) -> bool:
    """Reference truthiness: ``None`` -> ``default``; numbers are true when non-zero; strings when they
    are one of ``1 true yes on pass`` (case-insensitive); anything else (lists, dicts) -> ``default``."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_STRINGS
    return default


def as_float(value: object) -> float | None:
    """A finite-or-not float from a number or numeric string; ``None`` for anything else (bools included)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _accepted() -> str:
    parts = []
    for kind, (required, optional) in DETECTOR_FIELDS.items():
        fields = ",".join(required) + ("," + "|".join(optional) if optional else "")
        parts.append(f"{kind}{{{fields}}}")
    return "; ".join(parts)


def _unknown_fields(kind: str, d: Mapping[str, Any]) -> str | None:
    required, optional = DETECTOR_FIELDS[kind]
    allowed = {"kind", *required, *optional, *_COMMENT_KEYS}
    extra = sorted(str(k) for k in d if k not in allowed)
    return f"{kind} detector has unknown field(s) {', '.join(extra)}" if extra else None


def _missing_fields(kind: str, d: Mapping[str, Any]) -> str | None:
    missing = [name for name in DETECTOR_FIELDS[kind][0] if name not in d]
    return f"{kind} detector lacks field {missing[0]!r}" if missing else None


def _one_threshold(kind: str, d: Mapping[str, Any]) -> str | None:
    if kind == "ve_probe" and ("expected" in d) == ("min" in d):
        return "ve_probe detector needs exactly one of 'expected' or 'min'"
    return None


def _names(kind: str, d: Mapping[str, Any]) -> str | None:
    for name in ("flag", "field"):
        if name in d and (not isinstance(d[name], str) or not d[name].strip()):
            return f"{kind}.{name} must be a non-empty string, got {d[name]!r}"
    return None


def _expected(kind: str, d: Mapping[str, Any]) -> str | None:
    if "expected" in d and not isinstance(d["expected"], bool):
        return f"{kind}.expected must be true or false, got {d['expected']!r}"
    return None


def _minimum(kind: str, d: Mapping[str, Any]) -> str | None:
    if "min" not in d:
        return None
    m = d["min"]
    if isinstance(m, bool) or not isinstance(m, int | float) or not math.isfinite(m):
        return f"{kind}.min must be a finite number, got {m!r}"
    return None


def _allowed_states(kind: str, d: Mapping[str, Any]) -> str | None:
    if kind != "invariants_status":
        return None
    states = d["allowed"]
    if isinstance(states, list) and states and all(isinstance(s, str) and s.strip() for s in states):
        return None
    return f"invariants_status.allowed must be a non-empty list of strings, got {states!r}"


def _guard_error_status(d: Mapping[str, Any]) -> str | None:
    """The problem of a detector that would count a guard's error status as a detection, with the fix."""
    states = d.get("allowed") if d.get("kind") == "invariants_status" else None
    if not isinstance(states, list) or not any(str(s).strip().lower() == GUARD_ERROR_STATUS for s in states):
        return None
    kept = [s for s in states if str(s).strip().lower() != GUARD_ERROR_STATUS] or ["fail"]
    return (f"invariants_status.allowed names {GUARD_ERROR_STATUS!r}, the guard's error status; a guard that "
            "raises makes the run an error (class internal), never a detection, so detect the change by the "
            f"guard's own verdict: allowed {kept!r}")


#: The checks of a detector of a known kind, in order; each returns its problem or ``None``.
_FIELD_CHECKS: Final = (_unknown_fields, _missing_fields, _one_threshold, _names, _expected, _minimum, _allowed_states)


def _detector_problem(d: object) -> str | None:
    if not isinstance(d, Mapping):
        return f"detector must be an object, got {type(d).__name__}"
    kind = d.get("kind")
    if not isinstance(kind, str) or kind not in DETECTOR_FIELDS:
        return f"unknown detector kind {kind!r}"
    return next((problem for check in _FIELD_CHECKS if (problem := check(kind, d)) is not None), None)


def validate_detector(d: object, where: str) -> None:
    """Check one detector dict; raise :class:`CatalogError` with one line: ``where``, the first problem and
    the accepted kinds/fields, or the fix of a detector that names a guard's error status."""
    problem = _detector_problem(d)
    if problem is not None:
        raise CatalogError(f"{where}: {problem}; accepted detectors: {_accepted()}")
    assert isinstance(d, Mapping)
    problem = _guard_error_status(d)
    if problem is not None:
        raise CatalogError(f"{where}: {problem}")


def _section(report: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = report.get(name)
    return value if isinstance(value, Mapping) else {}


def evaluate_detector(detector: Mapping[str, Any], report: Mapping[str, Any]) -> tuple[bool, object]:
    """Return ``(hit, observed)`` for one (validated) detector; ``observed`` is the value read from the report
    or ``"<missing>"``. An unknown kind never hits."""
    kind = detector.get("kind")
    if kind == "invariants_status":
        status = _section(report, "invariants").get("status")
        if not isinstance(status, str):
            return False, _MISSING if status is None else status
        allowed = {str(s).strip().lower() for s in detector.get("allowed") or []} - {GUARD_ERROR_STATUS}
        return status.strip().lower() in allowed, status
    if kind == "spectral_caps_applied":
        caps = as_float(_section(report, "spectral").get("caps_applied"))
        minimum = as_float(detector.get("min"))
        if caps is None or minimum is None or not math.isfinite(caps):
            return False, _MISSING if caps is None else caps
        return int(caps) >= minimum, int(caps)
    section_by_kind = {
        "validation_flag": ("validation", "flag"),
        "primary_metric": ("primary_metric", "field"),
        "rmt_probe": ("rmt_probe", "field"),
        "ve_probe": ("ve_probe", "field"),
    }
    if kind not in section_by_kind:
        return False, _MISSING
    section_name, key_name = section_by_kind[str(kind)]
    section = _section(report, section_name)
    key = detector.get(key_name)
    if not isinstance(key, str) or key not in section:
        return False, _MISSING
    observed = section[key]
    if "min" in detector:
        value = as_float(observed)
        minimum = as_float(detector.get("min"))
        if value is None or minimum is None or math.isnan(value):
            return False, observed
        return value >= minimum, observed
    expected = detector.get("expected")
    if not isinstance(expected, bool):
        return False, observed
    return as_bool(observed, default=False) == expected, observed


def describe_detector(detector: Mapping[str, Any]) -> str:
    """A short human form, e.g. ``validation.rmt_stable=false`` or ``spectral.caps_applied>=3``."""
    kind = detector.get("kind")
    if kind == "validation_flag":
        return f"validation.{detector.get('flag')}={_fmt_expected(detector.get('expected'))}"
    if kind == "invariants_status":
        return "invariants.status in {" + ",".join(str(s) for s in detector.get("allowed") or []) + "}"
    if kind == "spectral_caps_applied":
        return f"spectral.caps_applied>={detector.get('min')}"
    if kind in ("primary_metric", "rmt_probe", "ve_probe"):
        if "min" in detector:
            return f"{kind}.{detector.get('field')}>={detector.get('min')}"
        return f"{kind}.{detector.get('field')}={_fmt_expected(detector.get('expected'))}"
    return f"unknown detector {kind!r}"


def _fmt_expected(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


@final
@dataclass(frozen=True)
class DetectorRow:
    """One declared detector, its group (``any_of``/``all_of``), whether it hit and what was seen."""

    group: str
    detector: Mapping[str, Any]
    hit: bool
    observed: object

    def describe(self) -> str:
        mark = "hit" if self.hit else "miss"
        return f"{describe_detector(self.detector)} [{mark}, observed {_fmt_observed(self.observed)}]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "detector": dict(self.detector),
            "description": describe_detector(self.detector),
            "hit": self.hit,
            "observed": _json_safe(self.observed),
        }


def _fmt_observed(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


@final
@dataclass(frozen=True)
class DetectorOutcome:
    """Result of :func:`evaluate_detectors`; ``any_hit``/``all_hit`` are ``None`` for an absent group."""

    hit: bool
    declared: bool
    any_hit: bool | None
    all_hit: bool | None
    rows: tuple[DetectorRow, ...]

    def describe(self) -> str:
        if not self.declared:
            return "no detectors declared"
        return "; ".join(f"{row.group}: {row.describe()}" for row in self.rows)


def _detector_list(requirements: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = requirements.get(key)
    if not isinstance(value, Sequence) or isinstance(value, str):
        return []
    return [d for d in value if isinstance(d, Mapping)]


def evaluate_detectors(requirements: Mapping[str, Any] | None, report: Mapping[str, Any]) -> DetectorOutcome:
    """Evaluate a scenario's ``detectors_any_of``/``detectors_all_of`` against ``report`` (sidecars merged in
    as ``rmt_probe``/``ve_probe``). ``hit`` is false when neither group declares a detector."""
    reqs = requirements or {}
    any_of = _detector_list(reqs, "detectors_any_of")
    all_of = _detector_list(reqs, "detectors_all_of")
    rows: list[DetectorRow] = []
    for group, detectors in (("any_of", any_of), ("all_of", all_of)):
        for det in detectors:
            hit, observed = evaluate_detector(det, report)
            rows.append(DetectorRow(group=group, detector=det, hit=hit, observed=observed))
    any_hit = any(r.hit for r in rows if r.group == "any_of") if any_of else None
    all_hit = all(r.hit for r in rows if r.group == "all_of") if all_of else None
    declared = bool(any_of or all_of)
    hit = declared and any_hit is not False and all_hit is not False
    return DetectorOutcome(hit=hit, declared=declared, any_hit=any_hit, all_hit=all_hit, rows=tuple(rows))


_REQUIREMENT_KEYS: Final = frozenset(
    {"catastrophic_required", "primary_guard_required", "detectors_any_of", "detectors_all_of"}
)


def validate_requirements(requirements: object, where: str, *, strictness: str | None = None) -> None:
    """Check a scenario's ``requirements`` object and every detector in it (:func:`validate_detector`).

    With ``strictness`` ``must_fail`` or ``must_detect`` at least one detector is required: without one the
    scenario could never be judged detected (the reference silently failed such scenarios forever).
    """
    if requirements is None:
        requirements = {}
    if not isinstance(requirements, Mapping):
        raise CatalogError(f"{where}: requirements must be an object, got {type(requirements).__name__}")
    unknown = sorted(str(k) for k in requirements if k not in _REQUIREMENT_KEYS)
    if unknown:
        raise CatalogError(
            f"{where}: unknown requirement key(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(_REQUIREMENT_KEYS))}"
        )
    for flag in ("catastrophic_required", "primary_guard_required"):
        if flag in requirements and not isinstance(requirements[flag], bool):
            raise CatalogError(f"{where}.{flag}: must be true or false, got {requirements[flag]!r}")
    declared = 0
    for group in ("detectors_any_of", "detectors_all_of"):
        detectors = requirements.get(group, [])
        if not isinstance(detectors, list):
            raise CatalogError(f"{where}.{group}: must be a list of detector objects")
        for i, det in enumerate(detectors):
            validate_detector(det, f"{where}.{group}[{i}]")
        declared += len(detectors)
    if strictness in ("must_fail", "must_detect") and not declared:
        raise CatalogError(
            f"{where}: a {strictness} scenario needs detectors_any_of or detectors_all_of; "
            "without detectors it can never be judged detected"
        )
