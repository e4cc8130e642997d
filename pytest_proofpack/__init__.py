"""pytest-proofpack: prove that an LLM edit detector catches broken edits and lets good ones through.

The public surface is small on purpose: the pytest plugin (entry point ``proofpack``), the ``proofpack``
console script and the hook specifications in :mod:`pytest_proofpack.hookspecs`.
"""

from __future__ import annotations

__version__ = "0.1.0"
ENGINE_VERSION = "proofpack-engine-3"

__all__ = ["ENGINE_VERSION", "__version__"]
