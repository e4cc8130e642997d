"""Disk preflight: estimate what the cache and the run directory will need and refuse early when space is short.

Estimate (bytes), documented so a user can check it by hand:

* cache, per model not yet converted or downloaded: GGUF → ``params × 4`` (fp32 safetensors conversion);
  hub → ``params × 2`` (bf16 safetensors snapshot); local → 0;
* cache, per model: token stream and baselines, ``64 MiB`` flat;
* cache scratch: the largest model's ``params × 4``, what one change of every matrix may spill there
  (``--proofpack-backup-ram``; counted once although each running worker may spill one change at a time);
* run directory: ``2 MiB`` per scenario run (report, sidecars, record) plus the pack (the same again);
* ``--proofpack-save-models``: ``params × 4`` per edited scenario run.

A 10 % margin is added. ``--proofpack-skip-disk-check`` disables the check.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_proofpack.errors import ProofpackError

if TYPE_CHECKING:
    from pytest_proofpack.catalog import Case

GIB = 2**30
PER_CASE = 2 * 2**20
PER_MODEL_CACHE = 64 * 2**20
MARGIN = 1.10


class DiskSpaceError(ProofpackError):
    error_class = "bad_input"


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def estimate(cases: Sequence[Case], cache: Path, save_models: bool) -> tuple[int, int]:
    """``(cache_bytes, run_dir_bytes)`` needed by ``cases``."""
    models = {c.model.key: c.model for c in cases}
    cache_need = 0
    for m in models.values():
        converted = cache / "models"
        already = converted.is_dir() and any(p.name.startswith(m.key) for p in converted.iterdir())
        if m.source == "gguf" and not already:
            cache_need += int(m.params_b * 1e9 * 4)
        elif m.source == "hub":
            cache_need += int(m.params_b * 1e9 * 2)  # an upper bound: a cached snapshot is counted again
        cache_need += PER_MODEL_CACHE
    cache_need += max((int(m.params_b * 1e9 * 4) for m in models.values()), default=0)
    run_need = 2 * PER_CASE * len(cases)
    if save_models:
        run_need += sum(int(c.model.params_b * 1e9 * 4) for c in cases if c.scenario.kind == "edit")
    return int(cache_need * MARGIN), int(run_need * MARGIN)


def check_disk(cases: Sequence[Case], cache: Path, run_dir: Path, *, save_models: bool) -> None:
    """Raise :class:`DiskSpaceError` with the numbers when the estimate exceeds the free space."""
    cache_need, run_need = estimate(cases, cache, save_models)
    needs: dict[Path, int] = {}
    for path, need in ((cache, cache_need), (run_dir, run_need)):
        root = _existing(path)
        needs[root] = needs.get(root, 0) + need
    for root, need in needs.items():
        free = shutil.disk_usage(root).free
        if need > free:
            raise DiskSpaceError(
                f"disk preflight: {root} has {free / GIB:.1f} GiB free but this run needs about "
                f"{need / GIB:.1f} GiB (cache {cache_need / GIB:.1f} GiB, run directory {run_need / GIB:.1f} GiB); "
                "free space, point --proofpack-cache/--proofpack-out elsewhere, or pass --proofpack-skip-disk-check"
            )
