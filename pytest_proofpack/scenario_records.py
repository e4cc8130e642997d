"""How a scenario's test report carries its evidence to the controller, and the record the controller makes of it.

A worker attaches the evidence of a scenario run to its test item as ``user_properties`` named
``proofpack_<name>`` (:data:`PROPERTY_PREFIX`): where the report is, the judgement's numbers, the error class and
message, the model revision. xdist sends them to the controller on the test report, which turns each report into
one :class:`~pytest_proofpack.results.Record` with :func:`record_for`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pytest_proofpack.nodeid import parse_nodeid
from pytest_proofpack.results import Record

if TYPE_CHECKING:
    import pytest

#: The prefix of every user property this plugin attaches to a scenario's test item.
PROPERTY_PREFIX: Final = "proofpack_"


def proofpack_properties(report: pytest.TestReport) -> dict[str, str]:
    """The report's ``proofpack_*`` user properties, by name without the prefix."""
    return {k[len(PROPERTY_PREFIX) :]: str(v) for k, v in report.user_properties
            if isinstance(k, str) and k.startswith(PROPERTY_PREFIX)}


def record_for(report: pytest.TestReport, config_digest: str) -> Record | None:
    """The record a scenario's test report makes, or None (not a scenario, or a phase that decides nothing).

    Outcome: a call that passed, failed or skipped is ``passed``/``failed``/``skipped``, except a failure before a
    judgement (no ``gates_passed`` property), which is an ``error``: not a detector mistake. A setup that skipped
    is ``skipped``; any other setup, teardown or crash report that did not pass is an ``error``, of class
    ``crash`` for xdist's crash report, else ``internal`` unless the worker named one.
    """
    cid = parse_nodeid(report.nodeid)
    if cid is None:
        return None
    props = proofpack_properties(report)
    if report.when == "setup" and report.passed:
        return None
    if report.when == "teardown" and (report.passed or report.skipped):
        return None
    outcome, message = _outcome_and_message(report, props)
    crashed = report.when not in ("setup", "call", "teardown")  # xdist's crash report ('???')
    error_class = props.get("error_class") or (("crash" if crashed else "internal") if outcome == "error" else None)
    return Record(
        cid.model, cid.scenario, cid.run, config_digest, outcome, error_class,
        message if outcome in ("error", "skipped") else None,
        props.get("report"), float(props.get("duration_s", report.duration) or 0.0), report.nodeid,
        props.get("reused") == "true",
    )


def _outcome_and_message(report: pytest.TestReport, props: dict[str, str]) -> tuple[str, str | None]:
    if report.when == "setup":
        outcome = "skipped" if report.skipped else "error"
    elif report.when == "call":
        outcome = "passed" if report.passed else ("skipped" if report.skipped else "failed")
    else:
        outcome = "error"
    message = props.get("error_message")
    unjudged = report.when == "call" and outcome == "failed" and "gates_passed" not in props
    if unjudged:
        message = message or (report.longreprtext.strip().splitlines() or ["error"])[-1][:500]
    if outcome == "error" and not message:
        message = str(report.longreprtext).strip().splitlines()[-1][:500] if report.longreprtext else "error"
    if unjudged:
        outcome = "error"  # the test body died before a judgement: not a detector mistake
    if report.when == "call" and outcome == "skipped":
        message = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else message
    return outcome, message
