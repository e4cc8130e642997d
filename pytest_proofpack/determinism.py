"""``--proofpack-determinism``: how numerics trade speed for repeatability on this worker.

``throughput``: TF32 matmuls, cuDNN autotuning and the low-rank edit's bfloat16 power iterations (where the device
multiplies bfloat16 natively) allowed (the fastest; GPU results may differ in the last bits between runs).
``strict``: TF32 off, cuDNN benchmark off, fp32 power iterations, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` and
``torch.use_deterministic_algorithms(True, warn_only=True)``. The mode is recorded in the pack's environment.
"""

from __future__ import annotations

import os
from typing import Any


def apply_determinism(mode: str) -> dict[str, Any]:
    """Configure torch for ``mode`` and return what was set (for the record)."""
    import torch

    from pytest_proofpack.edits.lowrank import allow_low_precision

    strict = mode == "strict"
    allow_low_precision(not strict)
    if strict:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = not strict
    torch.backends.cudnn.allow_tf32 = not strict
    torch.backends.cudnn.benchmark = not strict
    torch.use_deterministic_algorithms(strict, warn_only=True)
    return {"mode": mode, "tf32": not strict, "cudnn_benchmark": not strict,
            "deterministic_algorithms": strict, "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            "lowrank_bf16_power_iterations": not strict}
