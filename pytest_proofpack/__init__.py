"""pytest-proofpack: prove that an LLM edit detector catches broken edits and lets good ones through.

The public surface is small on purpose: the pytest plugin (entry point ``proofpack``), the ``proofpack``
console script and the hook specifications in :mod:`pytest_proofpack.hookspecs`.
"""

from __future__ import annotations

__version__ = "0.1.0"
#: Names what the engine computes, the per-token losses included: cached baselines and presets are keyed by it
#: (a baseline's losses pair with a subject's to the bit only when one implementation made both). Bump it with
#: any change to a number the engine produces.
ENGINE_VERSION = "proofpack-engine-3"

__all__ = ["ENGINE_VERSION", "__version__"]
