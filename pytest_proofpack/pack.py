"""The proof pack: build it from a run directory, seal it (checksums, manifest, signature), verify, merge.

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

``proofpack verify`` exit codes (:data:`EXIT_CODES`): 0 ok, 2 usage, 3 missing pack/manifest/checksums/
verdict, 4 schema, 5 signature, 6 integrity, 7 verdict mismatch. The signature is checked *before* the
manifest is interpreted, so any change to manifest.json of a signed pack is a signature failure (5).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Final, final

from pytest_proofpack import __version__
from pytest_proofpack.errors import PackError
from pytest_proofpack.html_report import render_index
from pytest_proofpack.results import atomic_write_text
from pytest_proofpack.signing import (
    SigningKey,
    fingerprint,
    gpg_available,
    gpg_sign,
    gpg_verify,
    load_public_key,
    load_signing_key,
    make_statement,
    sign_statement,
    verify_envelope,
)
from pytest_proofpack.verdict import (
    compute_verdict,
    dump_json,
    load_run,
    result_texts,
    write_results,
)

__all__ = [
    "CONTROL_FILES",
    "EXIT_CODES",
    "VerifyResult",
    "build_pack",
    "merge_runs",
    "seal_pack",
    "sha256_file",
    "verify_pack",
]

MANIFEST_FORMAT: Final = "proof-pack-v1"
CHECKSUMS: Final = "checksums.sha256"
MANIFEST: Final = "manifest.json"
SIGNATURE: Final = "manifest.signature.json"
GPG_SIGNATURE: Final = "manifest.json.asc"
VERDICT_PATH: Final = "results/final_verdict.json"
CONTROL_FILES: Final = frozenset({CHECKSUMS, MANIFEST, SIGNATURE, GPG_SIGNATURE})
_IGNORED_NAMES: Final = frozenset({".DS_Store"})
_IGNORED_DIRS: Final = frozenset({"__MACOSX"})
#: Keys of result JSON files that may legitimately differ from a recomputation (none written by us today).
VOLATILE_KEYS: Final = frozenset({"generated_at", "timestamp"})
EXIT_CODES: Final = {
    0: "ok",
    2: "usage",
    3: "missing pack, manifest, checksums or verdict",
    4: "schema",
    5: "signature",
    6: "integrity",
    7: "verdict mismatch",
}
_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")
_CHECKSUM_LINE: Final = re.compile(r"^([0-9a-f]{64})  \./(.+)$")
_PACK_DIRS: Final = ("reports", "metadata")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ref(name: str, path: str, pack: Path) -> dict[str, str]:
    return {"name": name, "path": path, "digest": "sha256:" + sha256_file(pack / path)}


def _now_z() -> str:
    # SOURCE_DATE_EPOCH makes a rebuilt pack byte-identical (reproducible-builds convention).
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), UTC) if epoch and epoch.isdigit() else datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------------------------------- build


def _scrub(value: Any, replacements: Sequence[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        for old, new in replacements:
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, replacements) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, replacements) for v in value]
    return value


def _replacements(run_dir: Path) -> list[tuple[str, str]]:
    pairs = [(str(run_dir.resolve()), "<run_dir>"), (str(run_dir.absolute()), "<run_dir>")]
    home = os.path.expanduser("~").rstrip("/")
    if home not in ("", "~"):
        pairs.append((home + "/", "~/"))
    # longest first, so a run dir under $HOME becomes <run_dir>, not ~/...
    return sorted(set(pairs), key=lambda p: -len(p[0]))


def _copy_file(src: Path, dst: Path, replacements: Sequence[tuple[str, str]]) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    if src.suffix == ".json" and any(old.encode() in data for old, _ in replacements):
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            obj = None
        if obj is not None:
            # allow_nan: evidence may hold NaN ratios; key order kept as the engine wrote it
            text = json.dumps(_scrub(obj, replacements), indent=2, ensure_ascii=False) + "\n"
            dst.write_text(text, encoding="utf-8")
            return
    dst.write_bytes(data)


def _walk_files(root: Path) -> list[Path]:
    """Every non-directory entry below ``root`` (symlinks included), sorted, ignored names skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_DIRS)
        base = Path(dirpath)
        for d in dirnames:
            if (base / d).is_symlink():
                found.append(base / d)
        found.extend(base / f for f in sorted(filenames) if f not in _IGNORED_NAMES)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _copy_tree(src: Path, dst: Path, replacements: Sequence[tuple[str, str]]) -> None:
    if not src.is_dir():
        return
    for path in _walk_files(src):
        if path.is_symlink() or not path.is_file():
            raise PackError(f"{path}: run directory holds a symlink or special file; replace it with a file")
        _copy_file(path, dst / path.relative_to(src), replacements)


def _environment() -> dict[str, Any]:
    packages = {}
    for name in ("pytest-proofpack", "torch", "transformers", "cryptography", "numpy", "pytest"):
        try:
            packages[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return {
        "schema": "proofpack_environment_v1",
        "recorded_by": "proofpack pack builder (the run did not record its environment)",
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": packages,
    }


def _stage(run_dir: Path, stage: Path) -> None:
    loaded = load_run(run_dir)
    replacements = _replacements(run_dir)
    for name in _PACK_DIRS:
        _copy_tree(run_dir / name, stage / name, replacements)
    digest = loaded.run.get("config_digest")
    for rec in sorted((run_dir / "records").glob("*/*/run_*.json")):
        if json.loads(rec.read_text(encoding="utf-8")).get("config_digest") == digest:
            _copy_file(rec, stage / rec.relative_to(run_dir), replacements)
    (stage / "metadata").mkdir(parents=True, exist_ok=True)
    atomic_write_text(stage / "metadata" / "run.json", dump_json(_scrub(dict(loaded.run), replacements)))
    if not (stage / "metadata" / "environment.json").is_file():
        atomic_write_text(stage / "metadata" / "environment.json", dump_json(_environment()))
    # The pack's verdict is computed from the pack's own content, exactly as `verify` will recompute it.
    packed = load_run(stage)
    verdict = compute_verdict(packed.scenarios, packed.planned, packed.results)
    write_results(stage / "results", verdict)
    reports = {r.path: r.report for r in packed.results if r.path and r.report is not None}
    atomic_write_text(stage / "index.html", render_index(verdict, reports))


def _write_checksums(pack: Path) -> str:
    lines = []
    for path in _walk_files(pack):
        rel = path.relative_to(pack).as_posix()
        if rel in CONTROL_FILES:
            continue
        if path.is_symlink() or not path.is_file():
            raise PackError(f"{rel}: packs hold regular files only", exit_code=6)
        lines.append(f"{sha256_file(path)}  ./{rel}\n")
    atomic_write_text(pack / CHECKSUMS, "".join(lines))
    return sha256_file(pack / CHECKSUMS)


def _manifest(pack: Path, checksums_digest: str, key: SigningKey, generated_at: str) -> dict[str, Any]:
    run = json.loads((pack / "metadata" / "run.json").read_text(encoding="utf-8"))
    verdict = json.loads((pack / VERDICT_PATH).read_text(encoding="utf-8"))
    env = json.loads((pack / "metadata" / "environment.json").read_text(encoding="utf-8"))
    materials = [
        _ref(p.stem, p.relative_to(pack).as_posix(), pack)
        for p in sorted((pack / "metadata").glob("*"))
        if p.is_file() and p.name != "environment.json"
    ]
    env_fields = {
        k: env[k]
        for k in ("platform", "python_version", "gpu_name", "gpu_count", "gpu_memory_gb", "torch_version")
        if isinstance(env, dict) and k in env
    }
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


def seal_pack(pack: Path, key: SigningKey, *, gpg: bool = False, generated_at: str | None = None) -> None:
    """(Re)write checksums.sha256, manifest.json and the signature(s) of a staged pack directory."""
    for name in CONTROL_FILES:
        (pack / name).unlink(missing_ok=True)
    checksums_digest = _write_checksums(pack)
    manifest = _manifest(pack, checksums_digest, key, generated_at or _now_z())
    atomic_write_text(pack / MANIFEST, dump_json(manifest))
    statement = make_statement(
        [(VERDICT_PATH, sha256_file(pack / VERDICT_PATH)), (CHECKSUMS, checksums_digest)],
        {
            "manifest": {"name": MANIFEST, "digest": {"sha256": sha256_file(pack / MANIFEST)}},
            "verdict": manifest["verdict"],
            "suite": manifest["suite"],
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


def _swap_into_place(stage: Path, dest: Path) -> None:
    stage.chmod(0o755)
    if not dest.exists():
        os.rename(stage, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
    os.rename(dest, old / dest.name)
    os.rename(stage, dest)
    shutil.rmtree(old, ignore_errors=True)


def build_pack(
    run_dir: Path, *, sign_key: Path | None = None, gpg: bool = False, out: Path | None = None
) -> Path:
    """Build ``<run_dir>/proof_pack`` (or ``out``) from a run directory and return its path.

    The pack is staged in a temporary sibling directory and renamed into place, replacing an older pack,
    so a crash never leaves a half-written pack. ``sign_key`` is an Ed25519 PEM private key (ephemeral
    if ``None``).
    Raises :class:`PackError` for unreadable run directories or keys.
    """
    key = load_signing_key(sign_key)
    dest = out if out is not None else run_dir / "proof_pack"
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp.", dir=dest.parent))
    try:
        _stage(run_dir, stage)
        seal_pack(stage, key, gpg=gpg)
        _swap_into_place(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return dest


# ---------------------------------------------------------------------------------------------------- verify


class _Fail(Exception):
    def __init__(self, code: int, check: str, message: str) -> None:
        super().__init__(message)
        self.code, self.check, self.message = code, check, message


@final
@dataclass
class VerifyResult:
    """Outcome of :func:`verify_pack`: ``exit_code`` (see :data:`EXIT_CODES`), the checks run, warnings."""

    pack: str
    strict: bool
    exit_code: int = 0
    message: str = "all checks passed"
    checks: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    verdict: str | None = None
    signer_fingerprint: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "proofpack_verify_v1",
            "pack": self.pack,
            "strict": self.strict,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "failure_class": EXIT_CODES.get(self.exit_code, "unknown"),
            "message": self.message,
            "verdict": self.verdict,
            "signer_fingerprint": self.signer_fingerprint,
            "checks": self.checks,
            "warnings": self.warnings,
        }

    def human(self) -> list[str]:
        lines = [f"proofpack verify {self.pack}{' (strict)' if self.strict else ''}"]
        lines += [f"  [{'ok' if c['ok'] else 'FAIL'}] {c['check']}: {c['detail']}" for c in self.checks]
        lines += [f"  warning: {w}" for w in self.warnings]
        status = "OK" if self.ok else f"FAILED ({EXIT_CODES.get(self.exit_code, '?')}, exit {self.exit_code})"
        lines.append(
            f"result: {status}: {self.message}" + (f"; pack verdict {self.verdict}" if self.verdict else "")
        )
        return lines


def _is_digest_ref(ref: object) -> bool:
    return (
        isinstance(ref, Mapping)
        and isinstance(ref.get("path"), str)
        and isinstance(ref.get("digest"), str)
        and ref["digest"].startswith("sha256:")
        and bool(_HEX64.match(ref["digest"][7:]))
    )


def _check_schema(manifest: object) -> dict[str, Any]:
    def bad(what: str) -> _Fail:
        return _Fail(4, "schema", f"{MANIFEST}: {what}")

    if not isinstance(manifest, dict):
        raise bad("must be a JSON object")
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("schema_version") != 1:
        raise bad(f"format must be {MANIFEST_FORMAT!r} with schema_version 1")
    if manifest.get("checksums_sha256") != CHECKSUMS:
        raise bad(f"checksums_sha256 must be {CHECKSUMS!r}")
    if not isinstance(manifest.get("checksums_sha256_digest"), str) or not _HEX64.match(
        manifest["checksums_sha256_digest"]
    ):
        raise bad("checksums_sha256_digest must be 64 lower-case hex digits")
    generated = manifest.get("generated_at")
    if not isinstance(generated, str) or not generated.endswith("Z"):
        raise bad("generated_at must be a UTC timestamp ending in 'Z'")
    for key in ("subject", "environment"):
        if not _is_digest_ref(manifest.get(key)):
            raise bad(f"{key} must be {{path, digest: 'sha256:<hex>'}}")
    materials = manifest.get("materials")
    if not isinstance(materials, list) or not all(_is_digest_ref(m) for m in materials):
        raise bad("materials must be a list of {name, path, digest: 'sha256:<hex>'}")
    if manifest["subject"]["path"] != VERDICT_PATH:
        raise bad(f"subject.path must be {VERDICT_PATH!r}")
    signing = manifest.get("signing")
    if signing is not None and (
        not isinstance(signing, dict)
        or signing.get("algorithm") != "ed25519"
        or not isinstance(signing.get("fingerprint"), str)
        or not isinstance(signing.get("public_key_pem"), str)
    ):
        raise bad("signing must be {algorithm: 'ed25519', fingerprint, public_key_pem}")
    return manifest


def _safe_rel(rel: str) -> bool:
    parts = rel.split("/")
    return (
        bool(rel)
        and not rel.startswith("/")
        and "\\" not in rel
        and all(p not in ("", ".", "..") for p in parts)
    )


def _read_checksums(pack: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    text = (pack / CHECKSUMS).read_text(encoding="utf-8", errors="replace")
    for n, line in enumerate(text.splitlines(), 1):
        m = _CHECKSUM_LINE.match(line)
        if not m:
            raise _Fail(4, "checksums", f"{CHECKSUMS} line {n}: expected '<sha256>  ./<path>'")
        digest, rel = m.groups()
        if not _safe_rel(rel):
            raise _Fail(6, "checksums", f"{CHECKSUMS} line {n}: path {rel!r} escapes the pack")
        if rel in entries:
            raise _Fail(4, "checksums", f"{CHECKSUMS} line {n}: {rel} listed twice")
        entries[rel] = digest
    return entries


def _check_file(pack: Path, rel: str, digest: str, check: str) -> None:
    path = pack / rel
    if not _safe_rel(rel):
        raise _Fail(6, check, f"{rel}: path escapes the pack")
    # Walk each component: a symlinked directory would let a listed path point outside the pack.
    cur = pack
    for part in rel.split("/"):
        cur = cur / part
        if cur.is_symlink():
            raise _Fail(6, check, f"{rel}: {cur.relative_to(pack).as_posix()} is a symlink")
    if not path.is_file():
        raise _Fail(6, check, f"{rel}: listed file is missing")
    if sha256_file(path) != digest:
        raise _Fail(6, check, f"{rel}: sha256 mismatch (file was modified)")


def _strip_volatile(obj: Any) -> Any:
    return {k: v for k, v in obj.items() if k not in VOLATILE_KEYS} if isinstance(obj, dict) else obj


def _first_difference(a: Any, b: Any, where: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{where}[{i}]")
    return f"{where or '<root>'}: recorded {json.dumps(a)[:80]}, recomputed {json.dumps(b)[:80]}"


def _recompute(pack: Path) -> str:
    loaded = load_run(pack)
    verdict = compute_verdict(loaded.scenarios, loaded.planned, loaded.results)
    for name, text in result_texts(verdict).items():
        recorded_path = pack / "results" / name
        if not recorded_path.is_file():
            raise _Fail(6, "verdict", f"results/{name} is missing")
        recorded = recorded_path.read_text(encoding="utf-8", errors="replace")
        if name.endswith(".json"):
            try:
                rec_obj = _strip_volatile(json.loads(recorded))
            except json.JSONDecodeError:
                raise _Fail(4, "verdict", f"results/{name} is not valid JSON") from None
            new_obj = _strip_volatile(json.loads(text))
            if rec_obj != new_obj:
                raise _Fail(
                    7,
                    "verdict",
                    f"results/{name} differs from the recomputed verdict at "
                    f"{_first_difference(rec_obj, new_obj)}",
                )
        elif recorded != text:
            raise _Fail(7, "verdict", f"results/{name} differs from the recomputed summary")
    return str(verdict["verdict"])


def _verify(pack: Path, strict: bool, expected_fp: str | None, result: VerifyResult) -> None:
    def ok(check: str, detail: str) -> None:
        result.checks.append({"check": check, "ok": True, "detail": detail})

    if not pack.is_dir():
        raise _Fail(3, "layout", f"{pack}: no such pack directory")
    for rel in (MANIFEST, CHECKSUMS, VERDICT_PATH):
        if (pack / rel).is_symlink():
            raise _Fail(6, "layout", f"{rel} is a symlink")
        if not (pack / rel).is_file():
            raise _Fail(3, "layout", f"{rel} is missing")
    ok("layout", "manifest.json, checksums.sha256 and results/final_verdict.json present")

    manifest_bytes = (pack / MANIFEST).read_bytes()
    statement: dict[str, Any] | None = None
    signer: tuple[str, str] | None = None
    env_path = pack / SIGNATURE
    if env_path.is_symlink():
        raise _Fail(6, "signature", f"{SIGNATURE} is a symlink")
    if env_path.is_file():
        try:
            envelope = json.loads(env_path.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Fail(5, "signature", f"{SIGNATURE} is not valid JSON") from None
        statement, fp, pem = verify_envelope(envelope, expected_fingerprint=expected_fp)
        signed = (statement["predicate"].get("manifest") or {}).get("digest", {}).get("sha256")
        if signed != hashlib.sha256(manifest_bytes).hexdigest():
            raise _Fail(
                5, "signature", f"{MANIFEST} was changed after signing (its digest is not the signed one)"
            )
        signer = (fp, pem)
        result.signer_fingerprint = fp
        ok("signature", f"Ed25519 DSSE envelope verifies (key {fp[:16]}…)")
    elif strict or expected_fp is not None:
        raise _Fail(5, "signature", f"{SIGNATURE} is missing (required with --strict / --public-key)")
    else:
        result.warnings.append(f"{SIGNATURE} is absent: the pack is not signed")

    try:
        manifest_obj = json.loads(manifest_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Fail(4, "schema", f"{MANIFEST} is not valid JSON") from None
    manifest = _check_schema(manifest_obj)
    signing = manifest.get("signing")
    if signer is None and signing is not None:
        raise _Fail(5, "signature", f"{MANIFEST} records a signature but {SIGNATURE} is missing")
    if signer is not None and (
        signing is None or signing["fingerprint"] != signer[0] or signing["public_key_pem"] != signer[1]
    ):
        raise _Fail(5, "signature", f"{MANIFEST} signing key does not match the envelope's key")
    ok("schema", f"{MANIFEST_FORMAT}, schema_version 1")
    asc = pack / GPG_SIGNATURE
    if asc.is_file():
        if gpg_available():
            good, detail = gpg_verify(pack / MANIFEST, asc)
            if not good:
                raise _Fail(5, "gpg", f"{GPG_SIGNATURE} does not verify: {detail}")
            ok("gpg", detail)
        else:
            result.warnings.append(f"{GPG_SIGNATURE} present but gpg is not installed; not checked")

    checksums_digest = sha256_file(pack / CHECKSUMS)
    if checksums_digest != manifest["checksums_sha256_digest"]:
        raise _Fail(6, "binding", f"{CHECKSUMS} does not match the digest bound in {MANIFEST}")
    if statement is not None:
        for subject in statement["subject"]:
            name = subject.get("name") if isinstance(subject, dict) else None
            digest = (subject.get("digest") or {}).get("sha256") if isinstance(subject, dict) else None
            if not isinstance(name, str) or not _safe_rel(name) or not (pack / name).is_file():
                raise _Fail(6, "binding", f"signed subject {name!r} is missing from the pack")
            if sha256_file(pack / name) != digest:
                raise _Fail(6, "binding", f"{name} differs from the signed subject digest")
    ok("binding", f"{CHECKSUMS} digest bound by {MANIFEST}" + (" and the signature" if statement else ""))

    entries = _read_checksums(pack)
    for rel, digest in sorted(entries.items()):
        if rel in CONTROL_FILES:
            raise _Fail(4, "checksums", f"{CHECKSUMS} must not list the control file {rel}")
        _check_file(pack, rel, digest, "checksums")
    ok("checksums", f"{len(entries)} files match")

    refs = [manifest["subject"], manifest["environment"], *manifest["materials"]]
    for ref in refs:
        rel = ref["path"]
        if rel not in entries:
            raise _Fail(6, "attestation", f"{MANIFEST} references {rel!r}, which is not in {CHECKSUMS}")
        _check_file(pack, rel, ref["digest"][7:], "attestation")
    ok("attestation", f"{len(refs)} manifest references match")

    extras = []
    for path in _walk_files(pack):
        rel = path.relative_to(pack).as_posix()
        if path.is_symlink():
            raise _Fail(6, "extra", f"{rel} is a symlink")
        if rel not in entries and rel not in CONTROL_FILES:
            extras.append(rel)
    if extras:
        message = f"{len(extras)} file(s) not covered by {CHECKSUMS}: {', '.join(extras[:5])}"
        if strict:
            raise _Fail(6, "extra", message)
        result.warnings.append(message)
    else:
        ok("extra", "no files outside the checksums")

    result.verdict = _recompute(pack)
    ok("verdict", f"recomputed verdict {result.verdict} matches results/")


def verify_pack(pack: Path, *, strict: bool = False, public_key: Path | None = None) -> VerifyResult:
    """Verify a proof pack; never raises for a bad pack (the result carries the exit code and message).

    ``public_key`` (PEM) pins the signer. Raises :class:`PackError` (exit 2) only when ``public_key`` cannot
    be read.
    """
    expected_fp = None
    if public_key is not None:
        try:
            data = public_key.read_bytes()
        except OSError as exc:
            raise PackError(f"--public-key {public_key}: cannot read ({exc.strerror})", exit_code=2) from None
        try:
            expected_fp = fingerprint(load_public_key(data, f"--public-key {public_key}"))
        except PackError as exc:
            raise PackError(str(exc), exit_code=2) from None
    result = VerifyResult(pack=str(pack), strict=strict)
    try:
        _verify(pack, strict, expected_fp, result)
    except _Fail as fail:
        result.exit_code, result.message = fail.code, fail.message
        result.checks.append({"check": fail.check, "ok": False, "detail": fail.message})
    except PackError as exc:
        result.exit_code, result.message = exc.exit_code, str(exc)
        result.checks.append({"check": "pack", "ok": False, "detail": str(exc)})
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        # A malformed pack can break assumptions deep in the recomputation; that is a schema problem.
        result.exit_code, result.message = 4, f"malformed pack content: {type(exc).__name__}: {exc}"
        result.checks.append({"check": "pack", "ok": False, "detail": result.message})
    return result


# ----------------------------------------------------------------------------------------------------- merge


def _merge_json_dicts(a: bytes, b: bytes) -> bytes | None:
    try:
        x, y = json.loads(a), json.loads(b)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(x, dict) or not isinstance(y, dict) or any(k in x and x[k] != y[k] for k in y):
        return None
    return dump_json({**x, **y}).encode("utf-8")


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
    first = runs[0]
    for d, run in zip(run_dirs[1:], runs[1:], strict=True):
        for key in ("scenarios_digest", "config_digest", "engine_version", "suite"):
            if run.get(key) != first.get(key):
                raise PackError(
                    f"cannot merge {d} into {run_dirs[0]}: {key} differs "
                    f"({run.get(key)!r} vs {first.get(key)!r}); merge only shards of one configuration"
                )
    models: dict[str, dict[str, Any]] = {}
    for d, run in zip(run_dirs, runs, strict=True):
        for m in run.get("models") or []:
            known = models.setdefault(str(m.get("key")), m)
            if known != m:
                raise PackError(
                    f"cannot merge {d}: model {m.get('key')!r} is described differently in the shards"
                )
    planned = sorted({(str(a), str(b), int(c)) for run in runs for a, b, c in run.get("planned") or []})
    merged = {**first, "models": [models[k] for k in sorted(models)], "planned": [list(p) for p in planned]}
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        for d in run_dirs:
            for sub in ("records", "reports", "metadata"):
                for path in _walk_files(d / sub) if (d / sub).is_dir() else []:
                    if path.is_symlink() or not path.is_file():
                        raise PackError(f"{path}: run directory holds a symlink or special file")
                    rel = path.relative_to(d)
                    target = stage / rel
                    data = path.read_bytes()
                    if not target.exists():
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(data)
                        continue
                    current = target.read_bytes()
                    if current == data or rel.as_posix() == "metadata/environment.json":
                        continue
                    union = _merge_json_dicts(current, data) if sub == "metadata" else None
                    if union is None:
                        why = (
                            "shards of one configuration must share their metadata"
                            if sub == "metadata"
                            else "a case must be recorded by one shard only"
                        )
                        raise PackError(
                            f"cannot merge {d}: {rel.as_posix()} also exists in another shard with different "
                            f"content; {why}"
                        )
                    target.write_bytes(union)
        atomic_write_text(stage / "run.json", dump_json(merged))
        stage.chmod(0o755)
        os.rename(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return build_pack(out)
