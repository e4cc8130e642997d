"""A reserved multi-GPU model's scenarios, run in a subprocess that sees the reservation's devices.

Two processes, one module each: the leader worker's handle on the subprocess (:mod:`.client`) and the
subprocess itself (:mod:`.server`, started as ``python -m pytest_proofpack.scheduling.launch``); the files
and lines they exchange are :mod:`.protocol`. The worker reports each outcome as for an in-process item: the
same user properties, an error with the same ``error_class`` and message, a skip as a skip. Every report
records where it ran (its ``execution`` block, :func:`~pytest_proofpack.execute.execution_evidence`).
"""

from __future__ import annotations

from pytest_proofpack.scheduling.launch.client import (
    LaunchAnswer,
    ReservedLauncher,
    ScenarioSubprocessError,
    hook_conftests,
)

__all__ = ["LaunchAnswer", "ReservedLauncher", "ScenarioSubprocessError", "hook_conftests"]
