"""The detection engine: paired primary metric, guards, report and evaluation entry points.

Names are re-exported lazily so importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EngineConfig": "pytest_proofpack.engine.config",
    "BaselineState": "pytest_proofpack.engine.evaluate",
    "prepare_baseline": "pytest_proofpack.engine.evaluate",
    "evaluate": "pytest_proofpack.engine.evaluate",
    "EvaluationResult": "pytest_proofpack.engine.report",
    "write_report": "pytest_proofpack.engine.report",
    "PairingError": "pytest_proofpack.engine.metric",
    "BaselineMismatchError": "pytest_proofpack.engine.evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
