"""scenarios.json: the scenarios a suite runs, each with its category, strictness and expectation.

:func:`load_scenarios` checks the schema and every field (edit specs are parsed with the edit grammar, detectors
with the detector rules) and returns the scenarios in file order; a problem is a one-line
:class:`~pytest_proofpack.errors.CatalogError` naming the JSON path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pytest_proofpack.catalog.entries import Scenario
from pytest_proofpack.catalog.files import (
    MAX_NAME_LENGTH,
    check_keys,
    check_mapping,
    check_name,
    check_schema,
    error_at,
    one_of,
    read_document,
)
from pytest_proofpack.detectors import validate_detector
from pytest_proofpack.edits.registry import EditRegistry
from pytest_proofpack.edits.spec import parse_edit_spec
from pytest_proofpack.errors import CatalogError, ProofpackError
from pytest_proofpack.faults.registry import FaultRegistry
from pytest_proofpack.models.subject import parse_subject

__all__ = ["CATEGORIES", "INTENTS", "PRIMARY_GUARDS", "SCENARIOS_SCHEMA", "STRICTNESS", "load_scenarios"]

SCENARIOS_SCHEMA: Final = "proof_pack_scenarios_v1"
CATEGORIES: Final = ("clean", "stress", "error_injection")
STRICTNESS: Final = ("must_pass", "must_fail", "must_detect", "informational")
INTENTS: Final = ("clean_control", "catastrophic_failure", "subtle_detectable", "fault_detection")
PRIMARY_GUARDS: Final = ("invariants", "primary_metric", "spectral", "rmt", "variance")
_REQUIREMENT_FIELDS: Final = ("catastrophic_required", "primary_guard_required", "detectors_any_of",
                              "detectors_all_of")
_TOP_FIELDS: Final = ("schema", "schema_version", "_meta", "scenarios")
_SCENARIO_FIELDS: Final = ("id", "category", "strictness", "intent", "primary_guard", "failure_class", "generation",
                           "requirements", "suites")
_GENERATION_FIELDS: Final = {"edit": ("kind", "edit_spec", "version"),
                             "error": ("kind", "error_type", "version", "env", "env_by_model"),
                             "checkpoint": ("kind", "subject", "version")}
#: The strictness a checkpoint scenario may have: a release candidate, a known-bad build, or a record only.
CHECKPOINT_STRICTNESS: Final = ("must_pass", "must_fail", "informational")


def load_scenarios(path: Path, *, edits: EditRegistry, faults: FaultRegistry | None = None) -> tuple[Scenario, ...]:
    """The scenarios of ``path``, in file order; ids are unique, edit specs name kinds of ``edits``, error types
    faults of ``faults`` (when given) with env keys that fault knows."""
    doc = check_schema(path, read_document(path), SCENARIOS_SCHEMA)
    check_keys(path, "$", doc, _TOP_FIELDS)
    items = doc.get("scenarios")
    if not isinstance(items, list) or not items:
        raise error_at(path, "$.scenarios", "must be a non-empty list of scenario objects")
    seen: set[str] = set()
    return tuple(_scenario(path, i, raw, seen, (edits, faults)) for i, raw in enumerate(items))


def _scenario(path: Path, index: int, raw: object, seen: set[str],
              registries: tuple[EditRegistry, FaultRegistry | None]) -> Scenario:
    """The ``index``-th entry as a :class:`Scenario`; adds its id to ``seen`` (ids already there are duplicates)."""
    where = f"$.scenarios[{index}]"
    if not isinstance(raw, Mapping):
        raise error_at(path, where, "must be an object")
    sid = raw.get("id")
    if not isinstance(sid, str) or not sid or not sid.isascii() or not sid.replace("_", "").replace("-", "").isalnum():
        raise error_at(path, f"{where}.id", f"{sid!r:.60} is not a valid id; use letters, digits, '_' and '-'")
    if len(sid) > MAX_NAME_LENGTH:
        raise error_at(path, f"{where}.id", f"id of {len(sid)} characters is too long; at most {MAX_NAME_LENGTH}")
    where = f"$.scenarios[{index}] ({sid})"
    check_keys(path, where, raw, _SCENARIO_FIELDS)
    if sid in seen:
        raise error_at(path, f"{where}.id", f"duplicate id {sid!r}; ids must be unique")
    seen.add(sid)
    category = one_of(path, f"{where}.category", raw.get("category"), CATEGORIES)
    strictness = one_of(path, f"{where}.strictness", raw.get("strictness"), STRICTNESS)
    intent = one_of(path, f"{where}.intent", raw.get("intent"), INTENTS)
    guard = one_of(path, f"{where}.primary_guard", raw.get("primary_guard"), PRIMARY_GUARDS)
    generation = _check_generation(path, f"{where}.generation", raw.get("generation"), category, registries)
    if generation.get("kind") == "checkpoint" and strictness not in CHECKPOINT_STRICTNESS:
        raise error_at(path, f"{where}.strictness", f"{strictness!r} does not apply to a checkpoint; accepted: "
                                                    f"{', '.join(CHECKPOINT_STRICTNESS)}")
    requirements = raw.get("requirements", {})
    if not isinstance(requirements, Mapping):
        raise error_at(path, f"{where}.requirements", "must be an object")
    _check_requirements(path, f"{where}.requirements", requirements, strictness)
    suites = raw.get("suites", [])
    if not isinstance(suites, list):
        raise error_at(path, f"{where}.suites", "must be a list of suite names")
    for i, name in enumerate(suites):
        check_name(path, f"{where}.suites[{i}]", name, "suite name")
    return Scenario(sid, category, strictness, intent, guard, str(raw.get("failure_class", "")), generation,
                    requirements, tuple(suites), raw)


def _check_generation(path: Path, where: str, generation: object, category: str,
                      registries: tuple[EditRegistry, FaultRegistry | None]) -> Mapping[str, Any]:
    """``generation`` when it is an edit or a checkpoint (for a clean or stress scenario; a checkpoint's subject
    normalised, see :func:`_check_checkpoint`) or a fault (for an error injection)."""
    if not isinstance(generation, Mapping):
        raise error_at(path, where, "must be an object {kind: edit, edit_spec, version}, {kind: error, error_type} "
                                    "or {kind: checkpoint, subject}")
    kind = one_of(path, f"{where}.kind", generation.get("kind"), ("edit", "error", "checkpoint"))
    if kind == "edit":
        _check_edit(path, where, generation, category, registries[0])
    elif kind == "checkpoint":
        check_keys(path, where, generation, _GENERATION_FIELDS[kind])
        return _check_checkpoint(path, where, generation, category)
    else:
        _check_fault(path, where, generation, category, registries[1])
    check_keys(path, where, generation, _GENERATION_FIELDS[kind])
    return generation


def _check_edit(path: Path, where: str, generation: Mapping[str, Any], category: str, edits: EditRegistry) -> None:
    if category == "error_injection":
        raise error_at(path, f"{where}.kind", "an error_injection scenario needs kind 'error'")
    spec = generation.get("edit_spec")
    if not isinstance(spec, str):
        raise error_at(path, f"{where}.edit_spec", "missing; e.g. quant_rtn:4:32:ffn or quant_rtn:clean:ffn")
    try:
        parse_edit_spec(spec, registry=edits)
    except ProofpackError as exc:
        raise error_at(path, f"{where}.edit_spec", str(exc)) from None


def _check_checkpoint(path: Path, where: str, generation: Mapping[str, Any], category: str) -> Mapping[str, Any]:
    """A checkpoint scenario's generation, its subject's relative path made absolute (relative to ``path``)."""
    if category == "error_injection":
        raise error_at(path, f"{where}.kind", "a checkpoint scenario is a clean (release candidate) or stress "
                                              "(known-bad build) scenario, not an error_injection")
    try:
        spec = parse_subject(generation.get("subject"), path.resolve().parent, "subject")
    except ProofpackError as exc:
        raise CatalogError(f"{path.name}: {where}.{exc}") from None
    subject = {k: v for k, v in vars(spec).items() if v not in ("", False)}
    return {**generation, "subject": subject}


def _check_fault(path: Path, where: str, generation: Mapping[str, Any], category: str,
                 faults: FaultRegistry | None) -> None:
    if category != "error_injection":
        raise error_at(path, f"{where}.kind", f"a {category} scenario needs kind 'edit'")
    error_type = generation.get("error_type")
    if not isinstance(error_type, str):
        raise error_at(path, f"{where}.error_type", "missing; name a registered fault such as nan_injection")
    by_model = check_mapping(path, f"{where}.env_by_model", generation.get("env_by_model"),
                             "model key: {INVARLOCK_*: value}")
    blocks = [("env", generation.get("env", {}))] + [(f"env_by_model.{m}", e) for m, e in by_model.items()]
    for label, env in blocks:
        _check_env(path, f"{where}.{label}", env)
    if faults is None:
        return
    try:
        kind = faults.get(error_type)
        for _, env in blocks:
            kind.check_env_keys(error_type, env)
    except ProofpackError as exc:
        raise error_at(path, f"{where}.error_type", str(exc)) from None


def _check_env(path: Path, where: str, env: object) -> None:
    """A fault's environment: upper-case ``INVARLOCK_*`` names with string or number values."""
    if not isinstance(env, Mapping):
        raise error_at(path, where, "must be an object of INVARLOCK_* string values")
    for name, value in env.items():
        if not _is_invarlock_name(name):
            raise error_at(path, f"{where}.{name}", "keys must be upper-case INVARLOCK_* names")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise error_at(path, f"{where}.{name}", "values must be strings or numbers")


def _is_invarlock_name(name: object) -> bool:
    return (isinstance(name, str) and name.startswith("INVARLOCK_") and name.replace("_", "").isalnum()
            and name.upper() == name)


def _check_requirements(path: Path, where: str, requirements: Mapping[str, Any], strictness: str) -> None:
    """Known fields only, valid detectors, and at least one detector group for a gating detection scenario."""
    for name in requirements:
        if name not in _REQUIREMENT_FIELDS:
            raise error_at(path, f"{where}.{name}", f"unknown field; accepted: {', '.join(_REQUIREMENT_FIELDS)}")
    for group in ("detectors_any_of", "detectors_all_of"):
        detectors = requirements.get(group, [])
        if not isinstance(detectors, list):
            raise error_at(path, f"{where}.{group}", "must be a list of detector objects")
        for index, detector in enumerate(detectors):
            try:
                validate_detector(detector, f"{where}.{group}[{index}]")
            except ProofpackError as exc:
                raise CatalogError(f"{path.name}: {exc}") from None
    if strictness in ("must_fail", "must_detect") and not (requirements.get("detectors_any_of") or
                                                           requirements.get("detectors_all_of")):
        raise error_at(path, where, f"a {strictness} scenario needs detectors_any_of or detectors_all_of "
                                    "(otherwise it could never be judged detected)")
