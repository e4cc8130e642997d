"""Fault injections, one small module per family, registered by name.

Public API (resolved lazily; importing this package does not import torch)::

    apply_fault(model, error_type, env, *, seed=0) -> AppliedChange   (metadata, restore(), `with`)
    default_fault_registry, register_fault(name, fn, *, env_prefixes=(), env_keys=())
    FaultContext, FaultOutcome   (what a registered fault function receives and returns)
"""

from __future__ import annotations

from pytest_proofpack.lazy import lazy_exports

_EXPORTS = {
    "apply_fault": "apply",
    "default_fault_registry": "builtin",
    "register_fault": "builtin",
    "FaultContext": "types",
    "FaultOutcome": "types",
    "FaultKind": "registry",
    "FaultRegistry": "registry",
    "EnvReader": "env",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
