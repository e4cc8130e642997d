"""The engine's guards, one module each: invariants, spectral, rmt (activation edge), variance (VE detector).

Each exposes a baseline measurement (JSON statistics, never tensors) and a comparison producing its report
section; :mod:`pytest_proofpack.engine.guard_chain` chains them. :mod:`.edge_statistic` holds the RMT guard's
statistic. Import the submodules directly.
"""

from __future__ import annotations
