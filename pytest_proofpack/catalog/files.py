"""Reading a catalog file, and the one-line error every catalog check raises.

Every problem in a catalog file is a :class:`~pytest_proofpack.errors.CatalogError` with one line:
``<file>: <json path>: <what is wrong>; <what is accepted>``. The helpers here read a file (JSON or YAML, by its
suffix), build that error, and check the two things every file format shares: a ``schema``/``schema_version``
pair and fields that take one of a fixed set of values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pytest_proofpack.bounded import MAX_TEXT_BYTES, BoundError, loads_json, loads_yaml
from pytest_proofpack.errors import CatalogError
from pytest_proofpack.suggest import did_you_mean

__all__ = [
    "COMMENT_KEYS", "MAX_NAME_LENGTH", "check_int", "check_keys", "check_mapping", "check_name", "check_schema",
    "default_paths", "error_at", "one_of", "read_document",
]


def _data_dir() -> Path:
    """Where the shipped scenarios/ files live: inside the wheel, or the repository's top-level folder."""
    packaged = Path(str(resources.files("pytest_proofpack"))) / "scenarios"
    if (packaged / "scenarios.json").is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "scenarios"


def default_paths() -> dict[str, Path]:
    """The shipped ``scenarios``, ``suites`` and ``tuned`` files, by those names."""
    d = _data_dir()
    return {
        "scenarios": d / "scenarios.json",
        "suites": d / "suites.yaml",
        "tuned": d / "tuned_edit_params.json",
    }


def error_at(path: Path | str, where: str, what: str) -> CatalogError:
    """The error for ``what`` at the JSON path ``where`` of the file ``path`` (named by its file name)."""
    return CatalogError(f"{Path(path).name}: {where}: {what}")


def one_of(path: Path, where: str, value: object, accepted: Sequence[str]) -> str:
    """``value`` when it is one of ``accepted``; else an error naming the accepted values and the closest one."""
    if not isinstance(value, str) or value not in accepted:
        hint = did_you_mean(value, accepted) if isinstance(value, str) else ""
        raise error_at(path, where, f"{value!r} is not accepted{hint}; accepted: {', '.join(accepted)}")
    return value


def read_document(path: Path) -> Any:
    """The parsed content of ``path``: YAML for ``.yaml``/``.yml``, JSON otherwise.

    Raises :class:`CatalogError` for a missing, unreadable or oversized file, a directory, a syntax error (with
    its line and column, counted from 1 as editors do), a YAML alias, nesting past
    :data:`~pytest_proofpack.bounded.MAX_DEPTH` and a number too long to read.
    """
    if path.is_dir():
        raise CatalogError(f"{path}: is a directory; pass the file itself (e.g. {path / 'scenarios.json'})")
    if not path.is_file():
        raise CatalogError(f"{path}: file not found; pass an existing file or drop the option to use the default")
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise CatalogError(f"{path}: larger than {MAX_TEXT_BYTES >> 20} MiB; a catalog file is a few hundred KiB")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read ({exc}); pass a readable UTF-8 file") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            return loads_yaml(text)
        return loads_json(text)
    except BoundError as exc:
        raise CatalogError(f"{path.name}: {exc}") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise CatalogError(f"{path.name}: {where}: not valid JSON: {exc.msg}") from None
    except yaml.YAMLError as exc:
        # PyYAML marks are 0-based; editors count lines and columns from 1.
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CatalogError(f"{path.name}: {where}: not valid YAML: {what}") from None


def check_schema(path: Path, doc: object, expected: str) -> Mapping[str, Any]:
    """``doc`` when it is an object whose ``schema`` is ``expected`` and whose ``schema_version`` (default 1) is 1."""
    if not isinstance(doc, Mapping):
        raise error_at(path, "$", f"top level must be an object with schema: {expected}")
    got = doc.get("schema")
    if got != expected:
        raise error_at(path, "$.schema", f"unknown schema {got!r}; accepted: {expected}")
    version = doc.get("schema_version", 1)
    if version != 1:
        raise error_at(path, "$.schema_version", f"unsupported version {version!r}; accepted: 1")
    return doc


#: Keys every object of a catalog file may carry as free text (ignored by the plugin).
COMMENT_KEYS = frozenset({"description", "note", "notes"})
#: The longest scenario id, model key or suite name: each becomes a path component of the run directory.
MAX_NAME_LENGTH = 100


def check_keys(path: Path, where: str, raw: Mapping[str, Any], accepted: Sequence[str]) -> None:
    """An error for the first key of ``raw`` that is neither ``accepted`` nor a comment key (with "did you
    mean")."""
    for key in raw:
        if key not in accepted and key not in COMMENT_KEYS:
            hint = did_you_mean(str(key), accepted)
            raise error_at(path, f"{where}.{key}", f"unknown field{hint}; accepted: {', '.join(accepted)}")


def check_name(path: Path, where: str, name: object, what: str) -> str:
    """``name`` when it is a usable path component: letters, digits, ``_``, ``-``, ``.``, not starting with ``.``,
    at most :data:`MAX_NAME_LENGTH` characters."""
    if not isinstance(name, str) or not name or name.startswith(".") or \
            not name.replace("_", "").replace("-", "").replace(".", "").isalnum() or not name.isascii():
        raise error_at(path, where, f"{name!r} is not a valid {what}; use ASCII letters, digits, '_', '-' and '.'")
    if len(name) > MAX_NAME_LENGTH:
        raise error_at(path, where, f"{what} of {len(name)} characters is too long; at most {MAX_NAME_LENGTH}")
    return name


def check_int(path: Path, where: str, value: object, low: int, high: int) -> int:
    """``value`` when it is an integer (not a bool) in ``[low, high]``."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise error_at(path, where, f"{shown} must be an integer from {low} to {high}")
    return value


def check_mapping(path: Path, where: str, value: object, what: str) -> Mapping[str, Any]:
    """``value`` when it is an object (``None`` reads as an empty one); else an error naming ``what`` it holds."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise error_at(path, where, f"must be an object of {what}, got {type(value).__name__} {value!r:.40}")
    return value
