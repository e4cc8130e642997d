"""The scenario test id: the one place that knows how a case is spelled inside a pytest nodeid.

A scenario item is ``<anchor>::test_scenario[<model-key>:<scenario-id>:run<n>]``. The scheduler sees only nodeid
strings, so it parses the model key back out of them with :func:`parse_nodeid`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

TEST_NAME: Final = "test_scenario"
_ID_RE: Final = re.compile(r"\[(?P<model>[^:\[\]]+):(?P<scenario>[^:\[\]]+):run(?P<run>\d+)\]$")


@dataclass(frozen=True)
class CaseId:
    """The identity of one scenario run: model key, scenario id and run number (1-based)."""

    model: str
    scenario: str
    run: int

    def param_id(self) -> str:
        """The pytest parametrization id: ``<model>:<scenario>:run<n>``."""
        return f"{self.model}:{self.scenario}:run{self.run}"


def parse_nodeid(nodeid: str) -> CaseId | None:
    """Return the case a scenario nodeid names, or ``None`` for any other test."""
    if f"::{TEST_NAME}[" not in nodeid:
        return None
    m = _ID_RE.search(nodeid)
    if m is None:
        return None
    return CaseId(m.group("model"), m.group("scenario"), int(m.group("run")))
