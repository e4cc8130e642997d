"""The registries a session resolves names in: edit kinds, faults and corpus providers.

A pytest session owns one :class:`Registries`: :func:`session_registries` builds fresh registries holding the
built-ins and lets every plugin and conftest add to them through the ``pytest_proofpack_register_*`` hooks. The
session hands it to the catalog's validation and, through the run context, to everything that parses an edit
spec, applies an edit or a fault, or loads a corpus. Two sessions in one process therefore never see each other's
registrations.

Code that runs outside a pytest session (the ``proofpack`` command, bench scripts, unit tests) uses
:func:`default_registries`: the module-level registries of :mod:`~pytest_proofpack.edits.registry`,
:mod:`~pytest_proofpack.faults.builtin` and :mod:`~pytest_proofpack.data.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

from pytest_proofpack.data.registry import PROVIDERS, ProviderRegistry, builtin_provider_registry
from pytest_proofpack.edits.registry import EditRegistry, builtin_edit_registry, default_edit_registry
from pytest_proofpack.faults.builtin import builtin_fault_registry, default_fault_registry
from pytest_proofpack.faults.registry import FaultRegistry

if TYPE_CHECKING:
    import pluggy

__all__ = ["Registries", "builtin_registries", "default_registries", "session_registries"]


@final
@dataclass(frozen=True)
class Registries:
    """The edit, fault and corpus provider registries of one session (or of code outside any session)."""

    edits: EditRegistry
    faults: FaultRegistry
    providers: ProviderRegistry


def builtin_registries() -> Registries:
    """New registries holding the built-in edits, faults and providers only."""
    return Registries(builtin_edit_registry(), builtin_fault_registry(), builtin_provider_registry())


def session_registries(hook: pluggy.HookRelay) -> Registries:
    """New built-in registries, then filled by the ``pytest_proofpack_register_edits``, ``_faults`` and
    ``_corpus_providers`` hooks (historic: a plugin registered later is called too). Whatever a hook
    implementation raises propagates."""
    registries = builtin_registries()
    hook.pytest_proofpack_register_edits.call_historic(kwargs={"registry": registries.edits})
    hook.pytest_proofpack_register_faults.call_historic(kwargs={"registry": registries.faults})
    hook.pytest_proofpack_register_corpus_providers.call_historic(kwargs={"registry": registries.providers})
    return registries


def default_registries() -> Registries:
    """The module-level registries, for code outside a pytest session: what ``parse_edit_spec``, ``apply_edit``,
    ``apply_fault`` and ``load_text`` use when given no registry."""
    return Registries(default_edit_registry, default_fault_registry, PROVIDERS)
