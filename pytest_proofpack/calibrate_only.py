"""``--proofpack-calibrate-only``: each item calibrates (or loads) its model's preset, then skips.

The same in a worker and in a multi-GPU reservation's subprocess, so both ask this module for the skip reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pytest_proofpack.runtime import ModelRuntime


def calibrate_only_message(runtime: ModelRuntime) -> str:
    """Calibrate (or load) ``runtime``'s preset; return the reason its item skips: where the preset was written."""
    preset = runtime.preset
    return f"--proofpack-calibrate-only: preset written to {runtime.preset_path()} ({len(preset)} keys)"
