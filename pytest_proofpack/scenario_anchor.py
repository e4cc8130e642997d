"""The module every scenario item belongs to (nodeid ``proofpack::test_scenario[<model>:<scenario>:run<n>]``).

The session adds this file to pytest's arguments when ``--proofpack-suite`` is given, so scenarios are ordinary
``pytest.Function`` items: fixtures, markers, ``-k``, ``-m``, ``--lf`` and xdist all work as for any test.
"""

from __future__ import annotations

import pytest

from pytest_proofpack.session import ProofpackSession
from pytest_proofpack.worker_role import ScenarioOutcome


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    ProofpackSession.get(metafunc.config).parametrize(metafunc)


def test_scenario(proofpack_outcome: ScenarioOutcome) -> None:
    """The scenario's expectation (DESIGN §2) is the test; the work happened in the fixture's setup."""
    assert proofpack_outcome.ok, proofpack_outcome.message
