"""Preflight checks before any model loads: disk space, and edit scopes against each model's layer count.

Disk: estimate what the cache and the run directory will need and refuse early when space is short.

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from pytest_proofpack.bounded import loads_json
from pytest_proofpack.errors import ProofpackError

if TYPE_CHECKING:
    from pytest_proofpack.catalog import Case
    from pytest_proofpack.models import AssetRef, ModelEntry

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


#: config.json keys that give a model's block count, by architecture family.
_LAYER_KEYS: Final = ("num_hidden_layers", "n_layer", "num_layers")


def _local_layer_count(path: str) -> int | None:
    """The block count a local model's config.json states, or None when it cannot be read cheaply."""
    config = Path(path) / "config.json"
    try:
        if config.stat().st_size > 1 << 20:
            return None
        data = loads_json(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    counts = [data.get(k) for k in _LAYER_KEYS] if isinstance(data, dict) else []
    return next((n for n in counts if isinstance(n, int) and not isinstance(n, bool) and n > 0), None)


def layer_count(model: ModelEntry, assets: Mapping[str, AssetRef], cache: Path, suite: str) -> int | None:
    """The block count of ``model`` where it can be read without loading weights or fetching anything: a local
    model's config.json, a fetched GGUF file's header, or a hub model's config.json already in the Hugging Face
    cache at its pinned revision; None otherwise (the load then reports an out-of-range scope)."""
    if model.source == "local":
        return _local_layer_count(model.path) if model.path else None
    if model.source == "gguf":
        from pytest_proofpack.models.gguf import find_gguf, gguf_block_count

        try:
            path, _ = find_gguf(model, assets, cache, suite)
        except ProofpackError:  # not fetched yet, or misnamed: loading the model says so
            return None
        return gguf_block_count(path)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(model.hub_id, "config.json", revision=model.revision or None)
    return _local_layer_count(str(Path(found).parent)) if isinstance(found, str) else None


def check_layer_scopes(cases: Sequence[Case], scenarios_file: str, *, assets: Mapping[str, AssetRef], cache: Path,
                       suite: str) -> None:
    """A scenario's edit scope names only layers the model has, wherever the model's layer count can be read
    before loading it (:func:`layer_count`): an out-of-range layer is an error now, not after the model loaded.

    Raises :class:`ProofpackError` naming the scenario, the scope, the model and its layer range.
    """
    from pytest_proofpack.edits.spec import parse_scope

    layers: dict[str, int | None] = {}
    for case in cases:
        if case.edit_spec is None:
            continue
        if case.model.key not in layers:
            layers[case.model.key] = layer_count(case.model, assets, cache, suite)
        count = layers[case.model.key]
        scope = parse_scope(case.edit_spec.rsplit(":", 1)[-1])
        if count is None or scope.layers is None or scope.layers[1] < count:
            continue
        raise ProofpackError(
            f"{scenarios_file}: scenario {case.scenario.id}: scope '{scope}' names layer {scope.layers[1]}, but "
            f"model {case.model.key} has {count} layers (0-{count - 1}); fix the scope or the tuned entry"
        )
