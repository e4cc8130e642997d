"""Running one job in a short-lived child interpreter that imports this package from where this process did.

Reading a corpus through ``datasets`` and tokenizing it with a fast tokenizer leave large structures resident in
the process that did it; a model worker runs every scenario of a session, so it hands such work to a child that
exits afterwards. The job's input is a pickle file the caller writes; the child writes its result to a path named
inside that pickle.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["child_env", "run_child"]


def child_env() -> dict[str, str]:
    """The environment of a child interpreter that imports this package from where this process did."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH", "")]))
    return env


def run_child(code: str, job: Path) -> str | None:
    """Run ``python -c code job`` in a fresh interpreter; ``None`` on exit status 0, else why it failed."""
    try:
        done = subprocess.run([sys.executable, "-c", code, str(job)], env=child_env(), capture_output=True,
                              text=True)
    except OSError as exc:
        return f"cannot start {sys.executable}: {exc}"
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return tail[0]
    return None
