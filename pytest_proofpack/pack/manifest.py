"""``manifest.json`` (format ``proof-pack-v1``): what it holds, and the schema ``proofpack verify`` requires.

The manifest binds ``checksums.sha256`` by digest, names the verdict as the pack's subject, lists the
``metadata/`` files as materials (each by path and ``sha256:<hex>`` digest), lists the certified checkpoints by
source and digest (``checkpoints``, when the pack has checkpoint scenarios), and records the builder, the
environment and the signing key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pytest_proofpack import __version__
from pytest_proofpack.errors import PackError
from pytest_proofpack.pack.checkpoints import checkpoint_claims
from pytest_proofpack.pack.layout import (
    CHECKSUMS,
    MANIFEST,
    MANIFEST_FORMAT,
    SIGNATURE,
    VERDICT_PATH,
    VerifyFailure,
    sha256_file,
)
from pytest_proofpack.signing import SigningKey
from pytest_proofpack.verdict import load_run

__all__ = ["check_manifest", "make_manifest"]

_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")
#: environment.json fields copied into the manifest, where the run recorded them.
_ENVIRONMENT_FIELDS: Final = (
    "platform", "python_version", "gpu_name", "gpu_count", "gpu_memory_gb", "torch_version",
)


def _ref(name: str, path: str, pack: Path) -> dict[str, str]:
    return {"name": name, "path": path, "digest": "sha256:" + sha256_file(pack / path)}


def _read(pack: Path, rel: str) -> Any:
    return json.loads((pack / rel).read_text(encoding="utf-8"))


def make_manifest(pack: Path, checksums_digest: str, key: SigningKey, generated_at: str) -> dict[str, Any]:
    """The manifest of the staged pack ``pack`` whose checksums.sha256 has digest ``checksums_digest``."""
    run = _read(pack, "metadata/run.json")
    verdict = _read(pack, VERDICT_PATH)
    env = _read(pack, "metadata/environment.json")
    materials = [
        _ref(p.stem, p.relative_to(pack).as_posix(), pack)
        for p in sorted((pack / "metadata").glob("*"))
        if p.is_file() and p.name != "environment.json"
    ]
    env_fields = {k: env[k] for k in _ENVIRONMENT_FIELDS if isinstance(env, dict) and k in env}
    try:
        checkpoints = checkpoint_claims(load_run(pack).results)
    except (PackError, RecursionError, ValueError):  # a pack that cannot be read is refused by verify anyway
        checkpoints = []
    return {
        "format": MANIFEST_FORMAT,
        "schema_version": 1,
        "generated_at": generated_at,
        "suite": run.get("suite"),
        "verdict": verdict.get("verdict"),
        "engine_version": run.get("engine_version"),
        "config_digest": run.get("config_digest"),
        "scenarios_digest": run.get("scenarios_digest"),
        "models": [
            {k: m.get(k) for k in ("key", "hub_id", "revision")}
            for m in run.get("models") or []
            if isinstance(m, dict)
        ],
        "builder": {
            "id": "pytest-proofpack/proof-pack@v1",
            "name": "pytest-proofpack",
            "version": __version__,
        },
        "environment": {**_ref("environment", "metadata/environment.json", pack), **env_fields},
        "materials": materials,
        "subject": _ref("final_verdict", VERDICT_PATH, pack),
        **({"checkpoints": checkpoints} if checkpoints else {}),
        "checksums_sha256": CHECKSUMS,
        "checksums_sha256_digest": checksums_digest,
        "signing": {
            "algorithm": "ed25519",
            "envelope": SIGNATURE,
            "fingerprint": key.fingerprint,
            "public_key_pem": key.public_pem,
            "ephemeral": key.ephemeral,
        },
    }


def _is_digest_ref(ref: object) -> bool:
    return (
        isinstance(ref, Mapping)
        and isinstance(ref.get("path"), str)
        and isinstance(ref.get("digest"), str)
        and ref["digest"].startswith("sha256:")
        and bool(_HEX64.match(ref["digest"][7:]))
    )


def _is_signing_block(signing: object) -> bool:
    return (
        isinstance(signing, dict)
        and signing.get("algorithm") == "ed25519"
        and isinstance(signing.get("fingerprint"), str)
        and isinstance(signing.get("public_key_pem"), str)
    )


def _schema_problem(manifest: dict[str, Any]) -> str | None:
    """The first way ``manifest`` breaks the schema, or ``None``."""
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("schema_version") != 1:
        return f"format must be {MANIFEST_FORMAT!r} with schema_version 1"
    if manifest.get("checksums_sha256") != CHECKSUMS:
        return f"checksums_sha256 must be {CHECKSUMS!r}"
    digest = manifest.get("checksums_sha256_digest")
    if not isinstance(digest, str) or not _HEX64.match(digest):
        return "checksums_sha256_digest must be 64 lower-case hex digits"
    generated = manifest.get("generated_at")
    if not isinstance(generated, str) or not generated.endswith("Z"):
        return "generated_at must be a UTC timestamp ending in 'Z'"
    for key in ("subject", "environment"):
        if not _is_digest_ref(manifest.get(key)):
            return f"{key} must be {{path, digest: 'sha256:<hex>'}}"
    materials = manifest.get("materials")
    if not isinstance(materials, list) or not all(_is_digest_ref(m) for m in materials):
        return "materials must be a list of {name, path, digest: 'sha256:<hex>'}"
    if manifest["subject"]["path"] != VERDICT_PATH:
        return f"subject.path must be {VERDICT_PATH!r}"
    if manifest.get("signing") is not None and not _is_signing_block(manifest["signing"]):
        return "signing must be {algorithm: 'ed25519', fingerprint, public_key_pem}"
    return None


def check_manifest(manifest: object) -> dict[str, Any]:
    """``manifest`` (parsed JSON) when it follows the schema; else :class:`VerifyFailure` (exit class 4)."""
    if not isinstance(manifest, dict):
        raise VerifyFailure(4, "schema", f"{MANIFEST}: must be a JSON object")
    problem = _schema_problem(manifest)
    if problem is not None:
        raise VerifyFailure(4, "schema", f"{MANIFEST}: {problem}")
    return manifest
