"""Lazy re-exports for a package ``__init__``: a name resolves to its submodule on first use.

The plugin module is imported by pytest at start-up, so importing a package must not import torch or
transformers; a package lists its public names and the submodule that defines each, and
:func:`lazy_exports` returns the module-level ``__getattr__`` that imports that submodule when the name is read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A ``__getattr__`` for ``package`` that resolves ``name`` from ``package.<where[name]>``."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
