"""pytest-proofpack: prove that an LLM edit detector catches broken edits and lets good ones through.

The public surface is small on purpose: the pytest plugin (entry point ``proofpack``), the ``proofpack``
console script and the hook specifications in :mod:`pytest_proofpack.hookspecs`.
"""

from __future__ import annotations

__version__ = "0.1.0"
#: Names what the engine computes, the per-token losses included: cached baselines and presets are keyed by it
#: (a baseline's losses pair with a subject's to the bit only when one implementation made both). Bump it with
#: any change to a number the engine produces.
ENGINE_VERSION = "proofpack-engine-9"  # 9: RMT module change = median over guard windows of the per-window log change
#: Names what the built-in edits and faults compute. It keys the run configuration, so a stored scenario record that
#: other edit numerics made is recomputed, not reused. Baselines and presets are not keyed by it: a change to the
#: numerics of a benign calibration edit (``benign.FALLBACK_SPECS``, the tuning ladders) must bump ``ENGINE_VERSION``.
EDITS_VERSION = "proofpack-edits-4"  # 4: low-rank range finder in bf16 where native, ends in a row-space half-iteration

__all__ = ["EDITS_VERSION", "ENGINE_VERSION", "__version__"]
