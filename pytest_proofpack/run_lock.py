"""The run directory's lock: one session (or ``proofpack report``) writes a run directory at a time.

Two sessions on one run directory would interleave records, run.json and the pack. The controller takes an
exclusive, non-blocking ``flock`` on ``<run_dir>/.proofpack.lock`` at start-up and holds it until the session
ends; the operating system drops it when the process dies, so a crash never leaves a stale lock. A second
session fails at once with one line naming the holder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pytest_proofpack.errors import ProofpackError

__all__ = ["LOCK_NAME", "RunDirLocked", "RunLock", "lock_run_dir"]

LOCK_NAME: Final = ".proofpack.lock"


class RunDirLocked(ProofpackError):
    """Another process holds the run directory's lock."""

    error_class = "bad_input"


@dataclass
class RunLock:
    """A held lock; :meth:`release` (idempotent) gives it back."""

    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()[:200]
    except OSError:
        return "another process"
    return text or "another process"


def lock_run_dir(run_dir: Path, *, what: str = "--proofpack-out") -> RunLock:
    """Create ``run_dir`` if needed and lock it for this process.

    Raises :class:`RunDirLocked` (one line naming the holder and the fix) when another process holds it, and
    :class:`ProofpackError` when the directory cannot be created.
    """
    import fcntl

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ProofpackError(f"{what} {run_dir}: cannot create the run directory ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunDirLocked(
            f"{what} {run_dir}: the run directory is in use by {_holder(run_dir / LOCK_NAME)}; wait for it to "
            "finish or choose another directory"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}".encode())
    return RunLock(run_dir / LOCK_NAME, fd)
