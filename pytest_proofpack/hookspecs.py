"""Extension points of pytest-proofpack, declared in one place.

Implement any of these in a ``conftest.py`` or a plugin:

* :func:`pytest_proofpack_evaluate` replaces the built-in detection engine (first non-``None`` result wins).
* :func:`pytest_proofpack_register_edits` / :func:`pytest_proofpack_register_faults` add edits and faults by
  name, usable from a user's ``scenarios.json`` (``my_edit:<params>:<scope>``, ``error_type: my_fault``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_proofpack.catalog import Case
    from pytest_proofpack.runtime import ModelRuntime


@pytest.hookspec(firstresult=True)
def pytest_proofpack_evaluate(case: Case, runtime: ModelRuntime, change: dict[str, Any] | None) -> Any:
    """Evaluate ``case`` on ``runtime.model``, which already carries the scenario's edit or fault.

    ``change`` is the edit/fault metadata (``None`` for a baseline evaluation). Return an object with
    ``report: dict`` and ``sidecars: dict[str, dict]`` (or a plain report dict). The report must carry the
    fields the scenario detectors read (``validation.*``, ``primary_metric.*``, ``invariants.status``,
    ``spectral.caps_applied`` …; see README "Report"). Raise to make the scenario an error.
    """


@pytest.hookspec(historic=True)
def pytest_proofpack_register_edits(registry: Any) -> None:
    """Register custom edits: ``registry.register(name, parser, fn)`` (see ``pytest_proofpack.edits.registry``)."""


@pytest.hookspec(historic=True)
def pytest_proofpack_register_faults(registry: Any) -> None:
    """Register custom faults: ``registry.register(name, fn)`` (see ``pytest_proofpack.faults.registry``)."""
