"""Harmless edits that calibration applies to learn how much a benign change moves each statistic.

Calibration run ``i`` applies ``BENIGN_SPECS[i % len(BENIGN_SPECS)]``: edits well inside every quality budget
but of the strength of real clean edits (6-bit RTN with groups of 32, an FP8 e4m3 cast of the FFN, 5 % magnitude
pruning of the FFN; each moves perplexity by 0.4–2.5 % on SmolLM2), so the thresholds learn the spread of edits a
user would call harmless, instead of the zero spread of a deterministic null run.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Final

BENIGN_SPECS: Final = ("quant_rtn:6:32:all", "fp8_quant:e4m3:ffn", "magnitude_prune:0.05:ffn")


def benign_edit(model: Any, run: int) -> AbstractContextManager[Any]:
    """Apply the run's benign edit to ``model`` in place; leaving the ``with`` block restores it bit-exactly."""
    from pytest_proofpack.edits import apply_edit, parse_edit_spec

    change: AbstractContextManager[Any] = apply_edit(
        model, parse_edit_spec(BENIGN_SPECS[run % len(BENIGN_SPECS)]), seed=run)
    return change


def benign_edits(model: Any) -> Callable[[Any, int], AbstractContextManager[Any]]:
    """The ``benign`` callable :func:`pytest_proofpack.calibration.calibrate` expects."""
    del model  # the callable receives the model itself; kept for a uniform call site
    return benign_edit
