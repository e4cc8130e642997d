"""Out-of-memory detection by exception type (never by matching log text), and memory release."""

from __future__ import annotations

import gc


def is_oom(exc: BaseException) -> bool:
    """True for torch's OutOfMemoryError (CUDA) and Python's MemoryError (host)."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(exc, torch.OutOfMemoryError)


def release_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
