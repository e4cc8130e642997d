"""``--proofpack-timeout``: a per-scenario deadline that cannot be swallowed and never cuts a restore in half.

The deadline is a ``SIGALRM`` timer in the worker's main thread. When it expires, :class:`ScenarioTimeout` (a
``BaseException``) is raised where the scenario is, unless the scenario is inside :func:`uninterrupted` (restoring
the model's weights after an edit): there it is held and raised as the block ends, so the next scenario always
starts from bit-exact baseline weights. Should any handler still swallow it, the deadline block itself raises it
as it ends: an expired scenario is never reported as a result.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from pytest_proofpack.errors import ScenarioTimeout


class _Held:
    """How deep the worker is in :func:`uninterrupted` blocks, and the deadline message held meanwhile."""

    depth = 0
    pending = ""


@contextlib.contextmanager
def scenario_timeout(seconds: float | None) -> Iterator[None]:
    """Run the block under a ``seconds`` deadline (``None`` or 0: no deadline; platforms without ``setitimer``)."""
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return
    message = f"scenario exceeded --proofpack-timeout {seconds:g} s"
    expired = False

    def expire(signum: int, frame: object) -> None:
        nonlocal expired
        expired = True
        if _Held.depth:
            _Held.pending = message
            return
        raise ScenarioTimeout(message)

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _Held.pending = ""
    if expired:
        raise ScenarioTimeout(message)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold an expiring deadline until the block has finished; then raise it."""
    _Held.depth += 1
    try:
        yield
    finally:
        _Held.depth -= 1
    if not _Held.depth and _Held.pending:
        message, _Held.pending = _Held.pending, ""
        raise ScenarioTimeout(message)
