"""Parsing untrusted JSON and YAML text within bounds: nesting depth, size, number length and no YAML aliases.

Every file the plugin or ``proofpack`` reads that a user or an attacker may have written (catalog files, packs,
run directories) goes through :func:`loads_json` or :func:`loads_yaml`, so a hostile file gives one
:class:`BoundError` (a ``ValueError``) instead of a ``RecursionError``, a ``MemoryError`` or a hang:

* nesting deeper than :data:`MAX_DEPTH` is refused before the parser recurses;
* an integer longer than Python's digit limit is refused by the parser; the error is reworded here;
* a YAML alias (``*name``) is refused, so a "billion laughs" document never expands.

The size bound belongs to the reader (:data:`MAX_TEXT_BYTES` is the default every caller uses).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import yaml

__all__ = ["MAX_DEPTH", "MAX_TEXT_BYTES", "BoundError", "check_depth", "loads_json", "loads_yaml"]

#: Deepest nesting of objects/lists accepted (the deepest file the plugin writes nests about 8 levels).
MAX_DEPTH: Final = 64
#: Largest JSON or YAML document read, in bytes.
MAX_TEXT_BYTES: Final = 32 * 2**20

_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET: Final = re.compile(r"[^\[\]{}]+")


class BoundError(ValueError):
    """A document is outside the bounds; ``str()`` is one line saying which and how to fix it."""


def check_depth(text: str, limit: int = MAX_DEPTH) -> None:
    """:class:`BoundError` when JSON ``text`` nests objects/lists deeper than ``limit`` (strings ignored)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    depth = 0
    for char in brackets:
        if char in "[{":
            depth += 1
            if depth > limit:
                raise BoundError(f"nested deeper than {limit} levels; flatten the document")
        else:
            depth -= 1


def loads_json(text: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(text)`` within the bounds; :class:`json.JSONDecodeError` for a syntax error (unchanged),
    :class:`BoundError` for a document too deep or a number too long."""
    check_depth(text, max_depth)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise BoundError(f"nested deeper than {max_depth} levels; flatten the document") from None
    except ValueError as exc:  # an integer past sys.get_int_max_str_digits()
        raise BoundError(f"holds a number too long to read ({str(exc).split(';')[0]}); shorten it") from None


class _NoAliasLoader(yaml.SafeLoader):
    """A safe loader that refuses aliases: an alias can make a small file expand without bound."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise BoundError(
                f"line {mark.line + 1}, column {mark.column + 1}: YAML aliases (*name) are not accepted; "
                "write the value out"
            )
        return super().compose_node(parent, index)


def _depth(value: Any, limit: int) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            if level > limit:
                raise BoundError(f"nested deeper than {limit} levels; flatten the document")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)


def loads_yaml(text: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``yaml.safe_load(text)`` without aliases and within the depth bound; :class:`yaml.YAMLError` for a
    syntax error (unchanged), :class:`BoundError` otherwise."""
    try:
        value = yaml.load(text, Loader=_NoAliasLoader)
    except RecursionError:
        raise BoundError(f"nested deeper than {max_depth} levels; flatten the document") from None
    except yaml.YAMLError:
        raise
    except ValueError as exc:
        if isinstance(exc, BoundError):
            raise
        raise BoundError(f"holds a value that cannot be read ({str(exc).split(';')[0]}); shorten it") from None
    _depth(value, max_depth)
    return value
