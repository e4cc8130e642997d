"""tuned_edit_params.json: the measured parameters of each model's clean edits.

A scenario whose edit spec reads ``<kind>:clean:<scope>`` takes its parameters from this file: per model key (or
hub id) under ``models``, else from ``defaults``. :func:`load_tuned` checks the schema and that every selected
entry gives a valid edit; a problem is a one-line :class:`~pytest_proofpack.errors.CatalogError` naming the JSON
path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pytest_proofpack.catalog.files import error_at, one_of, read_document
from pytest_proofpack.edits.registry import EditRegistry
from pytest_proofpack.edits.spec import parse_edit_spec, parse_scope
from pytest_proofpack.errors import ProofpackError

__all__ = ["EDIT_TYPES", "TUNED_FIELDS", "TUNED_SCHEMA", "load_tuned"]

TUNED_SCHEMA: Final = "tuned_edit_params_v1"
EDIT_TYPES: Final = ("quant_rtn", "fp8_quant", "magnitude_prune", "lowrank_svd")
TUNED_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "quant_rtn": ("bits", "group_size"),
    "fp8_quant": ("format",),
    "magnitude_prune": ("sparsity",),
    "lowrank_svd": ("rank",),
}
"""The entry fields of each edit type, in the order of the edit spec's parameters."""


def load_tuned(path: Path, *, edits: EditRegistry) -> Mapping[str, Any]:
    """The document of ``path`` (``_meta``, ``models``, ``defaults``), checked; a selected entry must give a valid
    edit of ``edits``."""
    doc = read_document(path)
    if not isinstance(doc, Mapping):
        raise error_at(path, "$", "top level must be an object with _meta.schema: tuned_edit_params_v1")
    meta = doc.get("_meta")
    if not isinstance(meta, Mapping) or meta.get("schema") != TUNED_SCHEMA:
        got = meta.get("schema") if isinstance(meta, Mapping) else None
        raise error_at(path, "$._meta.schema", f"unknown schema {got!r}; accepted: {TUNED_SCHEMA}")
    if meta.get("schema_version", 1) != 1:
        raise error_at(path, "$._meta.schema_version",
                       f"unsupported version {meta.get('schema_version')!r}; accepted: 1")
    for section in ("models", "defaults"):
        block = doc.get(section, {})
        if not isinstance(block, Mapping):
            raise error_at(path, f"$.{section}", "must be an object")
        groups = block.items() if section == "models" else [("", block)]
        for model_key, model_edits in groups:
            _check_model_edits(path, f"$.{section}" + (f".{model_key}" if model_key else ""), model_edits, edits)
    return doc


def _check_model_edits(path: Path, where: str, model_edits: object, edits: EditRegistry) -> None:
    """One model's (or the defaults') entries, by edit type."""
    if not isinstance(model_edits, Mapping):
        raise error_at(path, where, "must be an object of edit type: entry")
    for edit_type, entry in model_edits.items():
        entry_where = f"{where}.{edit_type}"
        one_of(path, entry_where, edit_type, EDIT_TYPES)
        _check_entry(path, entry_where, edit_type, entry, edits)


def _check_entry(path: Path, where: str, edit_type: str, entry: object, edits: EditRegistry) -> None:
    """``status: skipped``, or ``status: selected`` with the edit's fields and a scope that make a valid edit."""
    if not isinstance(entry, Mapping):
        raise error_at(path, where, "must be an object with status and the edit's parameters")
    status = one_of(path, f"{where}.status", entry.get("status"), ("selected", "skipped"))
    if status == "skipped":
        return
    for field in TUNED_FIELDS[edit_type]:
        if field not in entry:
            need = ", ".join(TUNED_FIELDS[edit_type])
            raise error_at(path, f"{where}.{field}", f"missing; a selected {edit_type} entry needs {need}")
    scope = str(entry.get("scope", "ffn"))
    try:
        parse_scope(scope)
    except ProofpackError as exc:
        raise error_at(path, f"{where}.scope", str(exc)) from None
    values = [str(entry[field]) for field in TUNED_FIELDS[edit_type]]
    try:
        parse_edit_spec(":".join([edit_type, *values, scope]), registry=edits)
    except ProofpackError as exc:
        raise error_at(path, where, f"gives an invalid edit: {exc}") from None
