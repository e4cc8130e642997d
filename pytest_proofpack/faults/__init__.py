"""Fault injections, one small module per family, registered by name.

Public API (resolved lazily; importing this package does not import torch)::

    apply_fault(model, error_type, env, *, seed=0) -> AppliedChange   (metadata, restore(), `with`)
    default_fault_registry, register_fault(name, fn, *, env_prefixes=(), env_keys=())
    FaultContext, FaultOutcome   (what a registered fault function receives and returns)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "apply_fault": "registry",
    "default_fault_registry": "registry",
    "register_fault": "registry",
    "FaultContext": "registry",
    "FaultOutcome": "registry",
    "FaultKind": "registry",
    "FaultRegistry": "registry",
    "EnvReader": "env",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
