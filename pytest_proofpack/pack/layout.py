"""The pack's fixed names, the exit-code classes of ``proofpack verify``, and the file walk both sides share.

Layout (paths relative to the pack root; nothing names the building machine's absolute paths)::

    results/            final_verdict.{json,txt}, summaries, detection_matrix.json (recomputed here)
    reports/<model>/<scenario>/run_<n>/  evaluation.report.json (+ probe sidecars); calibration too
    records/<model>/<scenario>/run_<n>.json   the run's records (stale ones left out)
    metadata/           run.json, scenarios.json, suites.yaml, tuned params, revisions, environment.json
    index.html          self-contained page (verdict, detection matrix, ratio plot)
    checksums.sha256    ``<hex>  ./<path>`` for every file but the control files, sorted
    manifest.json       proof-pack-v1; binds checksums.sha256 by digest; materials, subject, environment
    manifest.signature.json   DSSE/in-toto envelope (Ed25519) over final_verdict.json and
                              checksums.sha256, with manifest.json's digest in the predicate
    manifest.json.asc   optional GPG detached signature of manifest.json
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Final

__all__ = [
    "CHECKSUMS",
    "CONTROL_FILES",
    "EXIT_CODES",
    "GPG_SIGNATURE",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "SIGNATURE",
    "VERDICT_PATH",
    "VerifyFailure",
    "is_safe_relpath",
    "sha256_file",
    "walk_files",
]

MANIFEST_FORMAT: Final = "proof-pack-v1"
CHECKSUMS: Final = "checksums.sha256"
MANIFEST: Final = "manifest.json"
SIGNATURE: Final = "manifest.signature.json"
GPG_SIGNATURE: Final = "manifest.json.asc"
VERDICT_PATH: Final = "results/final_verdict.json"
#: The files that seal the pack: not listed in checksums.sha256.
CONTROL_FILES: Final = frozenset({CHECKSUMS, MANIFEST, SIGNATURE, GPG_SIGNATURE})
#: Exit code of ``proofpack verify`` -> the class of failure it reports.
EXIT_CODES: Final = {
    0: "ok",
    2: "usage",
    3: "missing pack, manifest, checksums or verdict",
    4: "schema",
    5: "signature",
    6: "integrity",
    7: "verdict mismatch",
    8: "provenance",
}
# Litter that archivers and file browsers add: never copied into a pack (but an unlisted file to verify --strict).
_IGNORED_NAMES: Final = frozenset({".DS_Store"})
_IGNORED_DIRS: Final = frozenset({"__MACOSX"})


class VerifyFailure(Exception):
    """A verify check failed: ``code`` is its :data:`EXIT_CODES` class, ``check`` the check's name."""

    def __init__(self, code: int, check: str, message: str) -> None:
        super().__init__(message)
        self.code, self.check, self.message = code, check, message


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def walk_files(root: Path, *, skip_litter: bool = True) -> list[Path]:
    """Every non-directory entry below ``root`` (symlinks included), sorted; with ``skip_litter``, archiver litter
    (``__MACOSX/``, ``.DS_Store``) is left out, as building a pack does. ``verify --strict`` walks without it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not (skip_litter and d in _IGNORED_DIRS))
        base = Path(dirpath)
        for d in dirnames:
            if (base / d).is_symlink():
                found.append(base / d)
        found.extend(base / f for f in sorted(filenames) if not (skip_litter and f in _IGNORED_NAMES))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def is_safe_relpath(rel: str) -> bool:
    """``rel`` is a plain relative POSIX path that cannot leave the pack (no ``..``, ``.``, empty or absolute)."""
    parts = rel.split("/")
    return (
        bool(rel)
        and not rel.startswith("/")
        and "\\" not in rel
        and all(p not in ("", ".", "..") for p in parts)
    )
