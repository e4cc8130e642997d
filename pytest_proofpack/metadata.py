"""The run directory's ``metadata/``: the catalog files used, the environment, model revisions, source commit.

Written by the controller at session start (atomically); ``model_revisions.json`` is completed as workers report
the revision each model actually loaded at.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_proofpack import ENGINE_VERSION, __version__
from pytest_proofpack.results import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from pytest_proofpack.catalog import Case
    from pytest_proofpack.runtime import RunContext


def source_commit(start: Path) -> dict[str, Any]:
    """The git commit of the directory the catalog came from, if it is a git checkout (no absolute paths)."""
    try:
        out = subprocess.run(["git", "-C", str(start), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", str(start), "status", "--porcelain"], capture_output=True,
                               text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if out.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": out.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def environment() -> dict[str, Any]:
    """The machine this run used: platform, Python, torch and transformers versions, CUDA and its GPUs."""
    env: dict[str, Any] = {"platform": platform.platform(), "python": sys.version.split()[0],
                           "machine": platform.machine()}
    try:
        import torch
        import transformers

        env.update(torch=torch.__version__, transformers=transformers.__version__,
                   cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
            env["gpus"] = [{"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1)} for p in props]
    except ImportError:  # pragma: no cover - declared dependencies
        pass
    return env


def write_metadata(ctx: RunContext, cases: Sequence[Case]) -> None:
    """Write ``metadata/`` of the run directory: the catalog files, ``environment.json``, ``source_repo.json``
    and ``model_revisions.json`` (keeping the revisions workers resolved in an earlier session)."""
    meta = ctx.run_dir / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    for name, target in (("scenarios", "scenarios.json"), ("suites", "suites.yaml"),
                         ("tuned", "tuned_edit_params.json")):
        atomic_write_bytes(meta / target, ctx.catalog.paths[name].read_bytes())
    env = environment()
    env.update(plugin_version=__version__, engine_version=ENGINE_VERSION, determinism=ctx.options.determinism,
               device=ctx.options.device)
    atomic_write_json(meta / "environment.json", env)
    atomic_write_json(meta / "source_repo.json", source_commit(ctx.catalog.paths["scenarios"].parent))
    models = {c.model.key: c.model for c in cases}
    path = meta / "model_revisions.json"
    try:
        previous = json.loads(path.read_text(encoding="utf-8")).get("models", {})
    except (OSError, ValueError, AttributeError):
        previous = {}
    atomic_write_json(path, {
        "suite": ctx.suite.name, "network_mode": "online" if ctx.options.net else "offline",
        "models": {k: {"hub_id": m.hub_id, "pinned_revision": m.revision, "source": m.source,
                       **{f: previous.get(k, {}).get(f) for f in ("resolved_revision", "source_desc")
                          if previous.get(k, {}).get(f)}}
                   for k, m in sorted(models.items())},
    })


def record_revision(run_dir: Path, model: str, revision: str, source_desc: str) -> None:
    """Add the revision a worker actually loaded to ``model_revisions.json`` (controller only)."""
    path = run_dir / "metadata" / "model_revisions.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    entry = data.setdefault("models", {}).setdefault(model, {})
    if entry.get("resolved_revision") == revision and entry.get("source_desc") == source_desc:
        return
    entry.update(resolved_revision=revision, source_desc=source_desc)
    atomic_write_json(path, data)
