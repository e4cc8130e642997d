"""The built-in fault families, and the module-level fault registry that holds them for code outside a session.

Each family module (numeric, structural, weights, probes) registers its faults through its own ``register``;
this module sits above them and the registry, so neither has to import the other.
"""

from __future__ import annotations

from collections.abc import Iterable

from pytest_proofpack.faults import numeric, probes, structural, weights
from pytest_proofpack.faults.registry import FaultKind, FaultRegistry
from pytest_proofpack.faults.types import FaultFn


def builtin_fault_registry() -> FaultRegistry:
    """A new registry holding every built-in fault."""
    registry = FaultRegistry()
    for family in (numeric, structural, weights, probes):
        family.register(registry)
    return registry


default_fault_registry: FaultRegistry = builtin_fault_registry()
"""The registry :func:`~pytest_proofpack.faults.apply.apply_fault` uses unless given another: the built-ins, for
code outside a pytest session (a session resolves faults in its own
:class:`~pytest_proofpack.registries.Registries`)."""


def register_fault(
    name: str,
    fn: FaultFn,
    *,
    env_prefixes: Iterable[str] = (),
    env_keys: Iterable[str] = (),
    description: str = "",
    replace: bool = False,
) -> FaultKind:
    """Register a fault in :data:`default_fault_registry`, for code outside a pytest session (a plugin or a conftest
    registers through the ``pytest_proofpack_register_faults`` hook instead)."""
    return default_fault_registry.register(
        name, fn, env_prefixes=env_prefixes, env_keys=env_keys, description=description, replace=replace
    )
