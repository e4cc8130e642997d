"""Extension points of pytest-proofpack, declared in one place.

Implement any of these in a ``conftest.py`` or a plugin:

* :func:`pytest_proofpack_evaluate` replaces the built-in detection engine (first non-``None`` result wins).
* :func:`pytest_proofpack_register_edits`, :func:`pytest_proofpack_register_faults` and
  :func:`pytest_proofpack_register_corpus_providers` add edits, faults and corpus providers by name, usable from a
  user's ``scenarios.json`` (``my_edit:<params>:<scope>``, ``error_type: my_fault``) and ``suites.yaml``
  (``datasets: {mine: {provider: my_provider}}``).

The registries a ``register`` hook receives belong to the pytest session that calls it: a registration is seen by
that session only, never by another session in the same process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_proofpack.catalog import Case
    from pytest_proofpack.data.registry import ProviderRegistry
    from pytest_proofpack.edits.registry import EditRegistry
    from pytest_proofpack.engine.report import EvaluationResult
    from pytest_proofpack.faults.registry import FaultRegistry
    from pytest_proofpack.runtime import ModelRuntime


@pytest.hookspec(firstresult=True)
def pytest_proofpack_evaluate(
    case: Case, runtime: ModelRuntime, change: dict[str, Any] | None
) -> EvaluationResult | Mapping[str, Any] | None:
    """Evaluate ``case`` on ``runtime.model``, which already carries the scenario's edit or fault.

    ``change`` is the edit/fault metadata (``None`` for a baseline evaluation). Return an object with
    ``report: dict`` and ``sidecars: dict[str, dict]`` (such as :class:`EvaluationResult`) or a plain report dict.
    The report must carry the fields the scenario detectors read (``validation.*``, ``primary_metric.*``,
    ``invariants.status``, ``spectral.caps_applied`` …; see README "Report"). Raise to make the scenario an error;
    a guard that cannot judge must raise too (an ``invariants.status`` of ``error`` is itself made an error).
    """


@pytest.hookspec(historic=True)
def pytest_proofpack_register_edits(registry: EditRegistry) -> None:
    """Register custom edits in this session's registry: ``registry.register(name, parser, fn, param_names=...)``
    (see :class:`~pytest_proofpack.edits.registry.EditRegistry`)."""


@pytest.hookspec(historic=True)
def pytest_proofpack_register_faults(registry: FaultRegistry) -> None:
    """Register custom faults in this session's registry: ``registry.register(name, fn, env_prefixes=...)``
    (see :class:`~pytest_proofpack.faults.registry.FaultRegistry`)."""


@pytest.hookspec(historic=True)
def pytest_proofpack_register_corpus_providers(registry: ProviderRegistry) -> None:
    """Register custom corpus providers in this session's registry: ``registry.register(name, load,
    requires=..., source_key=...)``, where ``load(spec, ctx)`` returns ``(documents, source_desc)`` (see
    :class:`~pytest_proofpack.data.registry.ProviderRegistry`). A suite's dataset then names it as its
    ``provider``."""
