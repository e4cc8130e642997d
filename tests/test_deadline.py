"""--proofpack-timeout: the deadline surfaces through handlers that catch Exception, and never cuts a restore."""

from __future__ import annotations

import time

import pytest

from pytest_proofpack.deadline import scenario_timeout, uninterrupted
from pytest_proofpack.errors import ScenarioTimeout


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_expired_deadline_passes_through_except_exception() -> None:
    swallowed: list[BaseException] = []
    t0 = time.monotonic()
    with pytest.raises(ScenarioTimeout, match=r"--proofpack-timeout 0\.2 s"), scenario_timeout(0.2):
        try:
            time.sleep(5)
        except Exception as exc:  # like a guard's fail-closed handler
            swallowed.append(exc)
        time.sleep(5)
    assert swallowed == [] and time.monotonic() - t0 < 2


def test_a_swallowed_deadline_is_raised_when_the_block_ends() -> None:
    with pytest.raises(ScenarioTimeout), scenario_timeout(0.1):
        try:
            time.sleep(1)
        except BaseException:  # a careless library
            pass


def test_restore_is_finished_before_the_deadline_is_raised() -> None:
    steps: list[str] = []
    with pytest.raises(ScenarioTimeout), scenario_timeout(0.1):
        with uninterrupted():
            _busy(0.4)  # the deadline expires in here
            steps.append("restored")
        steps.append("after")  # not reached: raised as the uninterrupted block ends
    assert steps == ["restored"]


def test_no_deadline_and_finished_in_time_raise_nothing() -> None:
    with scenario_timeout(None):
        time.sleep(0.01)
    with scenario_timeout(5):
        with uninterrupted():
            pass
    time.sleep(0.05)  # the timer was cancelled when the block ended
