"""``ci/gpu_check.py --dry-run``: the GPU check's code paths on the CPU with a tiny model (no GPU here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "ci" / "gpu_check.py"


def test_the_gpu_check_dry_run_exercises_every_phase() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=600,
                          check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for phase in ("build", "warmup", "eval", "edit_copy"):
        assert f"phase={phase} " in out, out
    assert "tokens/s" in out and out.rstrip().endswith("gpu_check: OK"), out
