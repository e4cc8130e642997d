"""Seal a staged pack: write checksums.sha256, manifest.json and the signature(s) over them.

The Ed25519 DSSE envelope signs an in-toto statement whose subjects are the verdict and checksums.sha256 and
whose predicate carries manifest.json's digest, so changing any sealed byte breaks the signature. The predicate
also states the claims a reader cares about (:func:`signed_claims`): the verdict, the catalog digest, the config
digest and the plan, and the certified checkpoints' digests, which ``proofpack verify`` recomputes from the pack and
compares.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pytest_proofpack.errors import PackError
from pytest_proofpack.pack.coverage import plan_digest, plan_of
from pytest_proofpack.pack.layout import (
    CHECKSUMS,
    CONTROL_FILES,
    MANIFEST,
    SIGNATURE,
    VERDICT_PATH,
    sha256_file,
    walk_files,
)
from pytest_proofpack.pack.manifest import make_manifest
from pytest_proofpack.results import atomic_write_text
from pytest_proofpack.signing import SigningKey, gpg_available, gpg_sign, make_statement, sign_statement
from pytest_proofpack.verdict import dump_json

__all__ = ["RUN_JSON", "seal_pack", "signed_claims"]

RUN_JSON: Final = "metadata/run.json"


def signed_claims(run: Mapping[str, Any]) -> dict[str, Any]:
    """What the signed statement claims about the run of pack whose run.json is ``run``: its catalog and
    config digests, the digest of the cases it judged (``planned_digest``) and of its command line's plan."""
    config = run.get("config")
    plan = plan_of(run) or {}
    return {
        "catalog_digest": config.get("catalog_digest") if isinstance(config, Mapping) else None,
        "config_digest": run.get("config_digest"),
        "planned_digest": plan_digest(run.get("planned") or []),
        "plan_digest": plan.get("digest"),
    }


def _now_z() -> str:
    # SOURCE_DATE_EPOCH makes a rebuilt pack byte-identical (reproducible-builds convention).
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), UTC) if epoch and epoch.isdigit() else datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_checksums(pack: Path) -> str:
    """Write checksums.sha256 over every file but the control files; return its own digest."""
    lines = []
    for path in walk_files(pack):
        rel = path.relative_to(pack).as_posix()
        if rel in CONTROL_FILES:
            continue
        if path.is_symlink() or not path.is_file():
            raise PackError(f"{rel}: packs hold regular files only", exit_code=6)
        lines.append(f"{sha256_file(path)}  ./{rel}\n")
    atomic_write_text(pack / CHECKSUMS, "".join(lines))
    return sha256_file(pack / CHECKSUMS)


def seal_pack(pack: Path, key: SigningKey, *, gpg: bool = False, generated_at: str | None = None) -> None:
    """(Re)write checksums.sha256, manifest.json and the signature(s) of a staged pack directory.

    ``gpg`` adds a detached GPG signature of the manifest when a ``gpg`` binary is on PATH (a warning when not).
    Raises :class:`PackError` when the pack holds a symlink or special file.
    """
    for name in CONTROL_FILES:
        (pack / name).unlink(missing_ok=True)
    checksums_digest = _write_checksums(pack)
    manifest = make_manifest(pack, checksums_digest, key, generated_at or _now_z())
    atomic_write_text(pack / MANIFEST, dump_json(manifest))
    statement = make_statement(
        [(VERDICT_PATH, sha256_file(pack / VERDICT_PATH)), (CHECKSUMS, checksums_digest)],
        {
            "manifest": {"name": MANIFEST, "digest": {"sha256": sha256_file(pack / MANIFEST)}},
            "verdict": manifest["verdict"],
            "suite": manifest["suite"],
            **({"checkpoints": manifest["checkpoints"]} if manifest.get("checkpoints") else {}),
            **signed_claims(json.loads((pack / RUN_JSON).read_text(encoding="utf-8"))),
        },
    )
    atomic_write_text(pack / SIGNATURE, dump_json(sign_statement(statement, key)))
    if gpg:
        if gpg_available():
            gpg_sign(pack / MANIFEST)
        else:
            warnings.warn(
                "gpg signing requested but no `gpg` on PATH; pack has the Ed25519 signature only",
                stacklevel=2,
            )
