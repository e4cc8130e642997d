"""The fault registry and :func:`apply_fault`.

A fault is registered under its family name (``nan_injection``, ``rmt_norm_noise``, ...). Scenario ids such as
``rmt_norm_noise_strong`` resolve to the family with the longest registered name that equals the id or is a
``_``-separated prefix of it; their ``generation.env`` carries the difference.

A fault function ``fn(model, ctx) -> FaultOutcome`` changes the model only through ``ctx.change`` (which
records how to undo each step) and returns what it did. It raises :class:`SpecError` when it finds no target.
Plugins add faults through the ``pytest_proofpack_register_faults(registry)`` hook with ``registry.register``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_proofpack.edits.registry import did_you_mean
from pytest_proofpack.errors import SpecError
from pytest_proofpack.faults.env import EnvReader
from pytest_proofpack.malloc import reusing_heap

if TYPE_CHECKING:
    from torch import nn

    from pytest_proofpack.edits.change import AppliedChange


@dataclass
class FaultContext:
    """What a fault function gets: the scenario id, its env reader, the seed, the change to record into."""

    error_type: str
    family: str
    env: EnvReader
    seed: int
    change: AppliedChange
    total_layers: int


@dataclass
class FaultOutcome:
    """What a fault did: ``mode``, the resolved ``params``, modified names (ref keys, modules), layers."""

    mode: str
    params: dict[str, Any] = field(default_factory=dict)
    modified: list[str] = field(default_factory=list)
    target_layers: list[int] = field(default_factory=list)


FaultFn = Callable[["nn.Module", FaultContext], FaultOutcome]


@dataclass(frozen=True)
class FaultKind:
    """A registered fault. Env keys starting with one of ``env_prefixes`` must be in ``env_keys``."""

    name: str
    fn: FaultFn
    env_prefixes: tuple[str, ...] = ()
    env_keys: frozenset[str] = frozenset()
    description: str = ""


class FaultRegistry:
    """Name -> :class:`FaultKind`, resolved by longest ``_``-bounded prefix."""

    def __init__(self) -> None:
        self._kinds: dict[str, FaultKind] = {}

    def register(
        self,
        name: str,
        fn: FaultFn,
        *,
        env_prefixes: Iterable[str] = (),
        env_keys: Iterable[str] = (),
        description: str = "",
        replace: bool = False,
    ) -> FaultKind:
        if not name:
            raise SpecError("fault name must be non-empty")
        if name in self._kinds and not replace:
            raise SpecError(f"fault '{name}' is already registered; pass replace=True to override it")
        kind = FaultKind(name, fn, tuple(env_prefixes), frozenset(env_keys), description)
        self._kinds[name] = kind
        return kind

    def get(self, error_type: str) -> FaultKind:
        """The family of scenario id ``error_type``; :class:`SpecError` with "did you mean" when none fits."""
        best: FaultKind | None = None
        for name, kind in self._kinds.items():
            if (error_type == name or error_type.startswith(name + "_")) and (
                best is None or len(name) > len(best.name)
            ):
                best = kind
        if best is None:
            raise SpecError(
                f"unknown fault '{error_type}'{did_you_mean(error_type, self.names())}; "
                f"known: {', '.join(self.names())} (a scenario id may add a _suffix to one of these)"
            )
        return best

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds


def _check_env_keys(kind: FaultKind, error_type: str, env: Mapping[str, object]) -> None:
    for key in env:
        if any(key.startswith(p) for p in kind.env_prefixes) and key not in kind.env_keys:
            raise SpecError(
                f"fault {error_type}: unknown env key {key}{did_you_mean(key, sorted(kind.env_keys))}; "
                f"known: {', '.join(sorted(kind.env_keys))}"
            )


@reusing_heap()  # its temporaries reuse heap pages (see pytest_proofpack.malloc)
def apply_fault(
    model: nn.Module,
    error_type: str,
    env: Mapping[str, str] | None = None,
    *,
    seed: int = 0,
    registry: FaultRegistry | None = None,
) -> AppliedChange:
    """Inject fault ``error_type`` (a family name or scenario id) in place; return the reversible change.

    ``env`` is the scenario's ``generation.env``. ``metadata``: error_type, family, injected, mode, params,
    modified_count, modified_params (first 20), target_layers, total_layers, seed, seconds. On any error the
    partial change is undone before the exception propagates.
    """
    from pytest_proofpack.edits.change import AppliedChange
    from pytest_proofpack.models.adapters import find_blocks

    reg = registry if registry is not None else default_fault_registry
    kind = reg.get(error_type)
    env = dict(env or {})
    _check_env_keys(kind, error_type, env)
    start = time.perf_counter()
    change = AppliedChange()
    ctx = FaultContext(
        error_type, kind.name, EnvReader(env, error_type), seed, change, len(find_blocks(model)[1])
    )
    try:
        outcome = kind.fn(model, ctx)
    except BaseException:
        change.restore()
        raise
    if not outcome.modified:
        change.restore()
        raise SpecError(
            f"fault {error_type}: no target was modified (mode {outcome.mode}); check its env targets"
        )
    change.metadata.update(
        {
            "error_type": error_type,
            "family": kind.name,
            "injected": True,
            "mode": outcome.mode,
            "params": outcome.params,
            "modified_count": len(outcome.modified),
            "modified_params": outcome.modified[:20],
            "target_layers": outcome.target_layers,
            "total_layers": ctx.total_layers,
            "seed": seed,
            "seconds": time.perf_counter() - start,
        }
    )
    return change


def _builtin_registry() -> FaultRegistry:
    from pytest_proofpack.faults import numeric, probes, structural, weights

    reg = FaultRegistry()
    for module in (numeric, structural, weights, probes):
        module.register(reg)
    return reg


default_fault_registry: FaultRegistry = _builtin_registry()
"""The registry :func:`apply_fault` uses unless given another."""


def register_fault(
    name: str,
    fn: FaultFn,
    *,
    env_prefixes: Iterable[str] = (),
    env_keys: Iterable[str] = (),
    description: str = "",
    replace: bool = False,
) -> FaultKind:
    """Register a fault in the default registry (what the ``pytest_proofpack_register_faults`` hook calls)."""
    return default_fault_registry.register(
        name, fn, env_prefixes=env_prefixes, env_keys=env_keys, description=description, replace=replace
    )
