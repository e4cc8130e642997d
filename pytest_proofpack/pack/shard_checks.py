"""What ``proofpack merge`` checks of each shard's run directory before it trusts it.

* its files are regular files of bounded size, and its JSON is within bounds (:func:`check_tree`): a shard
  directory may come from anywhere (a CI artifact), and must not hang or crash the merge;
* it is a shard, and its run.json agrees with its catalog and its plan (:func:`~.provenance.provenance_problem`);
* every current record's evidence (its report directory's files) has the digests the controller recorded when
  it wrote the record (:func:`~.evidence.evidence_problem`): a report edited after the run, or a file added to its
  directory, is refused.

Every problem is a :class:`PackError` (exit 2) naming the run directory and the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from pytest_proofpack.bounded import BoundError, loads_json
from pytest_proofpack.errors import PackError
from pytest_proofpack.pack.evidence import evidence_problem
from pytest_proofpack.pack.provenance import provenance_problem
from pytest_proofpack.verdict import LoadedRun, load_run

__all__ = ["check_tree", "load_shard"]

#: Largest file a shard's run directory may hold.
MAX_FILE_BYTES: Final = 256 * 2**20
_TREES: Final = ("records", "reports", "metadata")


def _refuse(run_dir: Path, what: str) -> PackError:
    return PackError(f"cannot merge {run_dir}: {what}", exit_code=2)


def _check_file(run_dir: Path, path: Path) -> None:
    rel = path.relative_to(run_dir).as_posix()
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(run_dir, f"{rel} is a symlink or special file; a run directory holds regular files only")
    if info.st_size > MAX_FILE_BYTES:
        raise _refuse(run_dir, f"{rel} holds {info.st_size} bytes, more than {MAX_FILE_BYTES}")
    if path.suffix == ".json":
        try:
            loads_json(path.read_text(encoding="utf-8"))
        except BoundError as exc:
            raise _refuse(run_dir, f"{rel}: {exc}") from None
        except (UnicodeDecodeError, ValueError):
            raise _refuse(run_dir, f"{rel} is not valid JSON") from None


def check_tree(run_dir: Path) -> None:
    """Every entry of run.json, ``records/``, ``reports/`` and ``metadata/`` is a bounded regular file."""
    if not run_dir.is_dir():
        raise PackError(f"{run_dir}: no such run directory", exit_code=2)
    if (run_dir / "run.json").exists() or (run_dir / "run.json").is_symlink():
        _check_file(run_dir, run_dir / "run.json")
    for tree in _TREES:
        for dirpath, dirnames, filenames in os.walk(run_dir / tree, followlinks=False):
            base = Path(dirpath)
            for name in [*dirnames, *filenames]:
                if (base / name).is_symlink() or name in filenames:
                    _check_file(run_dir, base / name)


def load_shard(run_dir: Path) -> LoadedRun:
    """The shard's run directory read back after every check of this module; :class:`PackError` otherwise."""
    check_tree(run_dir)
    loaded = load_run(run_dir)
    if not isinstance(loaded.run.get("shard"), dict):
        raise _refuse(run_dir, "not a shard (a run without --proofpack-shard); merge combines the run directories "
                               "of the shards of one command line")
    problem = provenance_problem(loaded.run, loaded.scenarios, run_dir)
    if problem is not None:
        raise _refuse(run_dir, f"run.json: {problem}")
    problem = evidence_problem(run_dir, str(loaded.run.get("config_digest")))
    if problem is not None:
        raise _refuse(run_dir, problem)
    return loaded
