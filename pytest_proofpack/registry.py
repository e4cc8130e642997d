"""A registry of named entries: the shape the edit and the fault registries share.

A name holds one entry; registering a taken name is an error unless the caller says ``replace``. A lookup of an
unknown name builds a :class:`SpecError` that names the closest accepted name
(:func:`pytest_proofpack.suggest.did_you_mean`) and lists every known one. Subclasses add their own ``register``
(what an entry is made of) and ``get`` (how a name resolves) on top of :meth:`Registry.add` and
:meth:`Registry.unknown`.
"""

from __future__ import annotations

from collections.abc import ItemsView
from typing import ClassVar, Generic, TypeVar

from pytest_proofpack.errors import SpecError
from pytest_proofpack.suggest import did_you_mean

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Name -> entry, with duplicate rejection and "did you mean" errors.

    ``what`` names an entry in error messages (``"edit kind"``, ``"fault"``).
    """

    what: ClassVar[str] = "entry"

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def add(self, name: str, entry: Entry, *, replace: bool = False) -> Entry:
        """Hold ``entry`` under ``name``; :class:`SpecError` when ``name`` is taken and ``replace`` is false."""
        if name in self._entries and not replace:
            raise SpecError(f"{self.what} '{name}' is already registered; pass replace=True to override it")
        self._entries[name] = entry
        return entry

    def find(self, name: str) -> Entry | None:
        """The entry held under exactly ``name``, or ``None``."""
        return self._entries.get(name)

    def unknown(self, name: str, *, context: str = "", hint: str = "") -> SpecError:
        """The error for a lookup of ``name`` that found nothing: ``[<context>: ]unknown <what> '<name>'[ (did you
        mean 'x'?)]; known: a, b, c[<hint>]``."""
        where = f"{context}: " if context else ""
        known = self.names()
        return SpecError(
            f"{where}unknown {self.what} '{name}'{did_you_mean(name, known)}; known: {', '.join(known)}{hint}"
        )

    def items(self) -> ItemsView[str, Entry]:
        """``(name, entry)`` pairs in registration order."""
        return self._entries.items()

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
