"""``proofpack merge``: the run directories of the shards of one command line unioned into one run and its pack.

Each shard is checked first (:mod:`.shard_checks`): bounded regular files, run.json consistent with its own
catalog and plan, and every record's evidence unchanged since the run. The shards must then come from one command
line: one config digest, one plan, one shard count, each shard index once. A shard of the plan that holds models
but is not given is refused, unless ``allow_partial``: the merged run then records the missing shards and its
verdict is ``PARTIAL`` (see :mod:`.coverage`). A file present in two shards must be identical, except
``metadata/`` JSON objects, which are unioned when they agree key by key (objects recursively), and
``metadata/environment.json``, which is taken from the first shard.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from pytest_proofpack.bounded import loads_json
from pytest_proofpack.catalog.expansion import shard_models
from pytest_proofpack.errors import PackError, ProofpackError
from pytest_proofpack.pack.build import SENSITIVITY_FILE, build_pack
from pytest_proofpack.pack.coverage import plan_of
from pytest_proofpack.pack.layout import walk_files
from pytest_proofpack.pack.shard_checks import load_shard
from pytest_proofpack.results import atomic_write_text
from pytest_proofpack.verdict import dump_json

__all__ = ["merge_runs"]

_SAME_IN_EVERY_SHARD: Final = ("scenarios_digest", "config_digest", "engine_version", "suite")
#: Run-directory trees merged file by file.
_MERGED_DIRS: Final = ("records", "reports", "metadata")
_FIRST_SHARD_WINS: Final = "metadata/environment.json"


def _refuse(run_dir: Path, what: str) -> PackError:
    return PackError(f"cannot merge {run_dir}: {what}", exit_code=2)


def _check_one_command_line(run_dirs: Sequence[Path], runs: Sequence[Mapping[str, Any]]) -> dict[int, Path]:
    """The shards agree on the configuration, the plan and the shard count; returns shard index -> run dir."""
    first = runs[0]
    for run_dir, run in zip(run_dirs[1:], runs[1:], strict=True):
        for key in _SAME_IN_EVERY_SHARD:
            if run.get(key) != first.get(key):
                raise _refuse(run_dir, f"{key} differs ({str(run.get(key))[:24]!r} vs {str(first.get(key))[:24]!r} in "
                                       f"{run_dirs[0]}); merge only the shards of one command line")
        if (plan_of(run) or {}).get("digest") != (plan_of(first) or {}).get("digest"):
            raise _refuse(run_dir, f"its plan differs from {run_dirs[0]}'s (other models or run counts); merge only "
                                   "the shards of one command line")
        if run["shard"].get("count") != first["shard"].get("count"):
            raise _refuse(run_dir, f"shard {run['shard'].get('index')}/{run['shard'].get('count')} is not of the "
                                   f"{first['shard'].get('count')} shards of {run_dirs[0]}")
    by_index: dict[int, Path] = {}
    for run_dir, run in zip(run_dirs, runs, strict=True):
        index = int(run["shard"]["index"])
        if index in by_index:
            raise _refuse(run_dir, f"shard {index}/{run['shard']['count']} is given twice (also {by_index[index]})")
        by_index[index] = run_dir
    return by_index


def _merged_run(run_dirs: Sequence[Path], runs: Sequence[Mapping[str, Any]], allow_partial: bool) -> dict[str, Any]:
    """The first shard's run.json with every shard's models and planned cases, and what the merge covers."""
    present = _check_one_command_line(run_dirs, runs)
    count = int(runs[0]["shard"]["count"])
    plan_models = [str(m) for m in (plan_of(runs[0]) or {}).get("models") or []]
    missing = [k for k in range(1, count + 1) if k not in present and shard_models(plan_models, (k, count))]
    if missing and not allow_partial:
        lacking = [m for k in missing for m in shard_models(plan_models, (k, count))]
        raise PackError(f"shard(s) {', '.join(f'{k}/{count}' for k in missing)} missing (models "
                        f"{', '.join(lacking)}); pass every shard's run directory, or --allow-partial for a "
                        "PARTIAL verdict", exit_code=2)
    models: dict[str, Any] = {}
    for run_dir, run in zip(run_dirs, runs, strict=True):
        for m in run.get("models") or []:
            if models.setdefault(str(m.get("key")), m) != m:
                raise _refuse(run_dir, f"model {m.get('key')!r} is described differently in the shards")
    covered = {str(m) for run in runs for m in run["shard"].get("models") or []}
    planned = sorted({(str(a), str(b), int(c)) for run in runs for a, b, c in run.get("planned") or []})
    return {**runs[0], "models": [models[k] for k in sorted(models)], "planned": [list(p) for p in planned],
            "shard": None, "merged": {"count": count, "shards": sorted(present), "missing_shards": missing,
                                      "models": [m for m in plan_models if m in covered]}}


def _union(x: dict[str, Any], y: dict[str, Any]) -> dict[str, Any] | None:
    """``x`` and ``y`` unioned key by key (objects recursively), or None where both hold a key with different
    values."""
    merged = dict(x)
    for key, value in y.items():
        if key not in merged or merged[key] == value:
            merged[key] = value
        elif isinstance(merged[key], dict) and isinstance(value, dict):
            inner = _union(merged[key], value)
            if inner is None:
                return None
            merged[key] = inner
        else:
            return None
    return merged


def _merge_json_dicts(a: bytes, b: bytes) -> bytes | None:
    try:
        x, y = json.loads(a), json.loads(b)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    union = _union(x, y) if isinstance(x, dict) and isinstance(y, dict) else None
    return None if union is None else dump_json(union).encode("utf-8")


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
    _merge_sensitivity(run_dirs, stage)
    atomic_write_text(stage / "run.json", dump_json(merged))


def _merge_sensitivity(run_dirs: Sequence[Path], stage: Path) -> None:
    """The shards' ``sensitivity.json`` documents as one (per model; a model swept in two shards must have used
    disjoint window samples), so the merged pack carries every shard's curves."""
    from pytest_proofpack.sensitivity_summary import check_document, merge_documents

    docs = []
    for run_dir in run_dirs:
        src = run_dir / SENSITIVITY_FILE
        if src.is_file():
            try:
                docs.append(check_document(loads_json(src.read_text(encoding="utf-8")), str(src)))
            except (ValueError, ProofpackError) as exc:
                raise _refuse(run_dir, f"{SENSITIVITY_FILE}: {exc}") from None
    if docs:
        try:
            merged = merge_documents(docs)
        except ProofpackError as exc:
            raise PackError(f"cannot merge the shards' {SENSITIVITY_FILE}: {exc}", exit_code=2) from None
        atomic_write_text(stage / SENSITIVITY_FILE, dump_json(merged))


def merge_runs(run_dirs: Sequence[Path], out: Path, *, allow_partial: bool = False,
               sign_key: Path | None = None) -> Path:
    """Union the shard run directories of one command line into a new run directory ``out`` and build its pack
    (signed with ``sign_key``, else an ephemeral key); return the pack path.

    Refuses (:class:`PackError`, exit 2, one line) a run directory that fails a check of :mod:`.shard_checks`,
    shards of different command lines (config, catalog, engine, suite, plan or shard count), a shard given twice,
    a model described differently, the same case recorded twice with different content, and a missing shard
    unless ``allow_partial``.
    """
    if not run_dirs:
        raise PackError("merge needs at least one run directory", exit_code=2)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PackError(f"--out {out}: exists and is not empty; choose a new directory", exit_code=2)
    runs = [load_shard(d).run for d in run_dirs]
    merged = _merged_run(run_dirs, runs, allow_partial)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        _stage_merged(run_dirs, merged, stage)
        stage.chmod(0o755)
        os.rename(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return build_pack(out, sign_key=sign_key)
