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

from pytest_proofpack.errors import CatalogError
from pytest_proofpack.suggest import did_you_mean

__all__ = ["check_schema", "default_paths", "error_at", "one_of", "read_document"]


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

    Raises :class:`CatalogError` for a missing or unreadable file, and for a syntax error with its line and
    column (counted from 1, as editors do).
    """
    if not path.is_file():
        raise CatalogError(f"{path}: file not found; pass an existing file or drop the option to use the default")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read ({exc}); pass a readable UTF-8 file") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
        return json.loads(text)
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
