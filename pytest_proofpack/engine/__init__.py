"""The detection engine: paired primary metric, guards, report and evaluation entry points.

Names are re-exported lazily so importing this package does not import torch.
"""

from __future__ import annotations

from pytest_proofpack.lazy import lazy_exports

_EXPORTS = {
    "EngineConfig": "config",
    "BaselineState": "baseline",
    "BaselineMismatchError": "baseline",
    "prepare_baseline": "evaluate",
    "evaluate": "evaluate",
    "EvaluationResult": "report",
    "write_report": "report",
    "PairingError": "pairing",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
