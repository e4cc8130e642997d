"""``proofpack merge``: the run directories of shards of one configuration unioned into one run and its pack.

Shards must agree on what defines the configuration (:data:`_SAME_IN_EVERY_SHARD`) and on each model's
description; their planned cases are unioned. A file present in two shards must be identical, except
``metadata/`` JSON objects, which are unioned when they agree key by key, and ``metadata/environment.json``,
which is taken from the first shard.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from pytest_proofpack.errors import PackError
from pytest_proofpack.pack.build import build_pack
from pytest_proofpack.pack.layout import walk_files
from pytest_proofpack.results import atomic_write_text
from pytest_proofpack.verdict import dump_json, load_run

__all__ = ["merge_runs"]

_SAME_IN_EVERY_SHARD: Final = ("scenarios_digest", "config_digest", "engine_version", "suite")
#: Run-directory trees merged file by file.
_MERGED_DIRS: Final = ("records", "reports", "metadata")
_FIRST_SHARD_WINS: Final = "metadata/environment.json"


def _check_one_configuration(run_dirs: Sequence[Path], runs: Sequence[Mapping[str, Any]]) -> None:
    first = runs[0]
    for run_dir, run in zip(run_dirs[1:], runs[1:], strict=True):
        for key in _SAME_IN_EVERY_SHARD:
            if run.get(key) != first.get(key):
                raise PackError(
                    f"cannot merge {run_dir} into {run_dirs[0]}: {key} differs "
                    f"({run.get(key)!r} vs {first.get(key)!r}); merge only shards of one configuration"
                )


def _merged_run(run_dirs: Sequence[Path], runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The first shard's run.json with every shard's models and planned cases."""
    models: dict[str, dict[str, Any]] = {}
    for run_dir, run in zip(run_dirs, runs, strict=True):
        for m in run.get("models") or []:
            known = models.setdefault(str(m.get("key")), m)
            if known != m:
                raise PackError(
                    f"cannot merge {run_dir}: model {m.get('key')!r} is described differently in the shards"
                )
    planned = sorted({(str(a), str(b), int(c)) for run in runs for a, b, c in run.get("planned") or []})
    return {**runs[0], "models": [models[k] for k in sorted(models)], "planned": [list(p) for p in planned]}


def _merge_json_dicts(a: bytes, b: bytes) -> bytes | None:
    try:
        x, y = json.loads(a), json.loads(b)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(x, dict) or not isinstance(y, dict) or any(k in x and x[k] != y[k] for k in y):
        return None
    return dump_json({**x, **y}).encode("utf-8")


def _merge_file(run_dir: Path, sub: str, path: Path, stage: Path) -> None:
    """Add one shard file to the staged run, refusing a conflicting copy from another shard."""
    if path.is_symlink() or not path.is_file():
        raise PackError(f"{path}: run directory holds a symlink or special file")
    rel = path.relative_to(run_dir)
    target = stage / rel
    data = path.read_bytes()
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return
    current = target.read_bytes()
    if current == data or rel.as_posix() == _FIRST_SHARD_WINS:
        return
    union = _merge_json_dicts(current, data) if sub == "metadata" else None
    if union is None:
        why = (
            "shards of one configuration must share their metadata"
            if sub == "metadata"
            else "a case must be recorded by one shard only"
        )
        raise PackError(
            f"cannot merge {run_dir}: {rel.as_posix()} also exists in another shard with different content; {why}"
        )
    target.write_bytes(union)


def _stage_merged(run_dirs: Sequence[Path], merged: Mapping[str, Any], stage: Path) -> None:
    for run_dir in run_dirs:
        for sub in _MERGED_DIRS:
            for path in walk_files(run_dir / sub) if (run_dir / sub).is_dir() else []:
                _merge_file(run_dir, sub, path, stage)
    atomic_write_text(stage / "run.json", dump_json(merged))


def merge_runs(run_dirs: Sequence[Path], out: Path) -> Path:
    """Union shard run directories into a new run directory ``out`` and build its pack; return the pack path.

    Refuses (:class:`PackError`, one line) when the runs differ in scenarios_digest, config_digest,
    engine_version or suite, when a model is described differently, or when the same case (record or report
    file) appears twice with different content. Metadata JSON objects are unioned when they agree key by key;
    ``environment.json`` is taken from the first run.
    """
    if not run_dirs:
        raise PackError("merge needs at least one run directory", exit_code=2)
    if out.exists() and any(out.iterdir()):
        raise PackError(f"--out {out}: exists and is not empty; choose a new directory", exit_code=2)
    runs = [load_run(d).run for d in run_dirs]
    _check_one_configuration(run_dirs, runs)
    merged = _merged_run(run_dirs, runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        _stage_merged(run_dirs, merged, stage)
        stage.chmod(0o755)
        os.rename(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return build_pack(out)
