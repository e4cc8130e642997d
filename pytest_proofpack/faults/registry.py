"""The fault registry: fault family name -> :class:`FaultKind`.

A fault is registered under its family name (``nan_injection``, ``rmt_norm_noise``, ...). Scenario ids such as
``rmt_norm_noise_strong`` resolve to the family with the longest registered name that equals the id or is a
``_``-separated prefix of it; their ``generation.env`` carries the difference. Plugins add faults through the
``pytest_proofpack_register_faults(registry)`` hook with ``registry.register``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pytest_proofpack.errors import SpecError
from pytest_proofpack.faults.types import FaultFn
from pytest_proofpack.registry import Registry
from pytest_proofpack.suggest import did_you_mean


@dataclass(frozen=True)
class FaultKind:
    """A registered fault. Env keys starting with one of ``env_prefixes`` must be in ``env_keys``."""

    name: str
    fn: FaultFn
    env_prefixes: tuple[str, ...] = ()
    env_keys: frozenset[str] = frozenset()
    description: str = ""

    def check_env_keys(self, error_type: str, env: Mapping[str, object]) -> None:
        """:class:`SpecError` for a key of scenario ``error_type``'s env that has one of this fault's prefixes but
        is none of its keys (a typo the fault would otherwise ignore)."""
        for key in env:
            if any(key.startswith(p) for p in self.env_prefixes) and key not in self.env_keys:
                raise SpecError(
                    f"fault {error_type}: unknown env key {key}{did_you_mean(key, sorted(self.env_keys))}; "
                    f"known: {', '.join(sorted(self.env_keys))}"
                )


class FaultRegistry(Registry[FaultKind]):
    """Name -> :class:`FaultKind`, resolved by longest ``_``-bounded prefix."""

    what = "fault"

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
        """Add a fault family; :class:`SpecError` for an empty name, or a taken one unless ``replace``."""
        if not name:
            raise SpecError("fault name must be non-empty")
        kind = FaultKind(name, fn, tuple(env_prefixes), frozenset(env_keys), description)
        return self.add(name, kind, replace=replace)

    def get(self, error_type: str) -> FaultKind:
        """The family of scenario id ``error_type``; :class:`SpecError` with "did you mean" when none fits."""
        best: FaultKind | None = None
        for name, kind in self.items():
            if (error_type == name or error_type.startswith(name + "_")) and (
                best is None or len(name) > len(best.name)
            ):
                best = kind
        if best is None:
            raise self.unknown(error_type, hint=" (a scenario id may add a _suffix to one of these)")
        return best
