"""``proofpack verify``: a pack checked by a fixed sequence of checks, the first failure deciding the exit code.

Checks, in order (:data:`_CHECKS`), each with the exit-code class of its failures (:data:`EXIT_CODES`):
layout (3, 6), signature (5, 6), schema (4, 5), gpg (5), binding (6), checksums (4, 6), attestation (6),
extra (6, strict only), verdict (4, 6, 7). The signature is checked *before* the manifest is interpreted, so
any change to manifest.json of a signed pack is a signature failure (5).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, final

from pytest_proofpack.errors import PackError
from pytest_proofpack.pack.integrity import check_file, read_checksums
from pytest_proofpack.pack.layout import (
    CHECKSUMS,
    CONTROL_FILES,
    EXIT_CODES,
    GPG_SIGNATURE,
    MANIFEST,
    MANIFEST_FORMAT,
    SIGNATURE,
    VERDICT_PATH,
    VerifyFailure,
    is_safe_relpath,
    sha256_file,
    walk_files,
)
from pytest_proofpack.pack.manifest import check_manifest
from pytest_proofpack.pack.recompute import recompute_verdict
from pytest_proofpack.signing import fingerprint, gpg_available, gpg_verify, load_public_key, verify_envelope

__all__ = ["VerifyResult", "verify_pack"]


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

    def failed(self, code: int, check: str, message: str) -> None:
        """Record the failure that ends verification."""
        self.exit_code, self.message = code, message
        self.checks.append({"check": check, "ok": False, "detail": message})


@dataclass
class _Verification:
    """One verification in progress: its inputs, its result, and what earlier checks established."""

    pack: Path
    strict: bool
    expected_fingerprint: str | None
    result: VerifyResult
    manifest_bytes: bytes = b""
    statement: dict[str, Any] | None = None
    signer: tuple[str, str] | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    entries: dict[str, str] = field(default_factory=dict)

    def passed(self, check: str, detail: str) -> None:
        self.result.checks.append({"check": check, "ok": True, "detail": detail})


def _check_layout(v: _Verification) -> None:
    if not v.pack.is_dir():
        raise VerifyFailure(3, "layout", f"{v.pack}: no such pack directory")
    for rel in (MANIFEST, CHECKSUMS, VERDICT_PATH):
        if (v.pack / rel).is_symlink():
            raise VerifyFailure(6, "layout", f"{rel} is a symlink")
        if not (v.pack / rel).is_file():
            raise VerifyFailure(3, "layout", f"{rel} is missing")
    v.passed("layout", "manifest.json, checksums.sha256 and results/final_verdict.json present")


def _verify_signature(v: _Verification, envelope_path: Path) -> None:
    try:
        envelope = json.loads(envelope_path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VerifyFailure(5, "signature", f"{SIGNATURE} is not valid JSON") from None
    statement, fp, pem = verify_envelope(envelope, expected_fingerprint=v.expected_fingerprint)
    signed = (statement["predicate"].get("manifest") or {}).get("digest", {}).get("sha256")
    if signed != hashlib.sha256(v.manifest_bytes).hexdigest():
        raise VerifyFailure(
            5, "signature", f"{MANIFEST} was changed after signing (its digest is not the signed one)"
        )
    v.statement, v.signer = statement, (fp, pem)
    v.result.signer_fingerprint = fp
    v.passed("signature", f"Ed25519 DSSE envelope verifies (key {fp[:16]}…)")


def _check_signature(v: _Verification) -> None:
    v.manifest_bytes = (v.pack / MANIFEST).read_bytes()
    envelope_path = v.pack / SIGNATURE
    if envelope_path.is_symlink():
        raise VerifyFailure(6, "signature", f"{SIGNATURE} is a symlink")
    if envelope_path.is_file():
        _verify_signature(v, envelope_path)
    elif v.strict or v.expected_fingerprint is not None:
        raise VerifyFailure(5, "signature", f"{SIGNATURE} is missing (required with --strict / --public-key)")
    else:
        v.result.warnings.append(f"{SIGNATURE} is absent: the pack is not signed")


def _check_schema(v: _Verification) -> None:
    """The manifest's schema, and that it names the key the envelope was signed with."""
    try:
        manifest_obj = json.loads(v.manifest_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VerifyFailure(4, "schema", f"{MANIFEST} is not valid JSON") from None
    v.manifest = check_manifest(manifest_obj)
    signing = v.manifest.get("signing")
    if v.signer is None and signing is not None:
        raise VerifyFailure(5, "signature", f"{MANIFEST} records a signature but {SIGNATURE} is missing")
    if v.signer is not None and (
        signing is None or signing["fingerprint"] != v.signer[0] or signing["public_key_pem"] != v.signer[1]
    ):
        raise VerifyFailure(5, "signature", f"{MANIFEST} signing key does not match the envelope's key")
    v.passed("schema", f"{MANIFEST_FORMAT}, schema_version 1")


def _check_gpg(v: _Verification) -> None:
    asc = v.pack / GPG_SIGNATURE
    if not asc.is_file():
        return
    if not gpg_available():
        v.result.warnings.append(f"{GPG_SIGNATURE} present but gpg is not installed; not checked")
        return
    good, detail = gpg_verify(v.pack / MANIFEST, asc)
    if not good:
        raise VerifyFailure(5, "gpg", f"{GPG_SIGNATURE} does not verify: {detail}")
    v.passed("gpg", detail)


def _check_signed_subjects(v: _Verification, statement: dict[str, Any]) -> None:
    for subject in statement["subject"]:
        name = subject.get("name") if isinstance(subject, dict) else None
        digest = (subject.get("digest") or {}).get("sha256") if isinstance(subject, dict) else None
        if not isinstance(name, str) or not is_safe_relpath(name) or not (v.pack / name).is_file():
            raise VerifyFailure(6, "binding", f"signed subject {name!r} is missing from the pack")
        if sha256_file(v.pack / name) != digest:
            raise VerifyFailure(6, "binding", f"{name} differs from the signed subject digest")


def _check_binding(v: _Verification) -> None:
    """checksums.sha256 is the file the manifest (and the signature, when present) bound."""
    if sha256_file(v.pack / CHECKSUMS) != v.manifest["checksums_sha256_digest"]:
        raise VerifyFailure(6, "binding", f"{CHECKSUMS} does not match the digest bound in {MANIFEST}")
    if v.statement is not None:
        _check_signed_subjects(v, v.statement)
    signed = " and the signature" if v.statement else ""
    v.passed("binding", f"{CHECKSUMS} digest bound by {MANIFEST}{signed}")


def _check_checksums(v: _Verification) -> None:
    v.entries = read_checksums(v.pack)
    for rel, digest in sorted(v.entries.items()):
        if rel in CONTROL_FILES:
            raise VerifyFailure(4, "checksums", f"{CHECKSUMS} must not list the control file {rel}")
        check_file(v.pack, rel, digest, "checksums")
    v.passed("checksums", f"{len(v.entries)} files match")


def _check_attestation(v: _Verification) -> None:
    """Every file the manifest references is listed in checksums.sha256 with the manifest's digest."""
    refs = [v.manifest["subject"], v.manifest["environment"], *v.manifest["materials"]]
    for ref in refs:
        rel = ref["path"]
        if rel not in v.entries:
            raise VerifyFailure(6, "attestation", f"{MANIFEST} references {rel!r}, which is not in {CHECKSUMS}")
        check_file(v.pack, rel, ref["digest"][7:], "attestation")
    v.passed("attestation", f"{len(refs)} manifest references match")


def _check_extra(v: _Verification) -> None:
    """No file outside checksums.sha256: a failure with ``strict``, a warning without."""
    extras = []
    for path in walk_files(v.pack):
        rel = path.relative_to(v.pack).as_posix()
        if path.is_symlink():
            raise VerifyFailure(6, "extra", f"{rel} is a symlink")
        if rel not in v.entries and rel not in CONTROL_FILES:
            extras.append(rel)
    if not extras:
        v.passed("extra", "no files outside the checksums")
        return
    message = f"{len(extras)} file(s) not covered by {CHECKSUMS}: {', '.join(extras[:5])}"
    if v.strict:
        raise VerifyFailure(6, "extra", message)
    v.result.warnings.append(message)


def _check_verdict(v: _Verification) -> None:
    v.result.verdict = recompute_verdict(v.pack)
    v.passed("verdict", f"recomputed verdict {v.result.verdict} matches results/")


#: The checks of a verification, in order; each raises :class:`VerifyFailure` with its exit-code class.
_CHECKS: Final[tuple[Callable[[_Verification], None], ...]] = (
    _check_layout,
    _check_signature,
    _check_schema,
    _check_gpg,
    _check_binding,
    _check_checksums,
    _check_attestation,
    _check_extra,
    _check_verdict,
)


def _expected_fingerprint(public_key: Path | None) -> str | None:
    if public_key is None:
        return None
    try:
        data = public_key.read_bytes()
    except OSError as exc:
        raise PackError(f"--public-key {public_key}: cannot read ({exc.strerror})", exit_code=2) from None
    try:
        return fingerprint(load_public_key(data, f"--public-key {public_key}"))
    except PackError as exc:
        raise PackError(str(exc), exit_code=2) from None


def verify_pack(pack: Path, *, strict: bool = False, public_key: Path | None = None) -> VerifyResult:
    """Verify a proof pack; never raises for a bad pack (the result carries the exit code and message).

    ``public_key`` (PEM) pins the signer. Raises :class:`PackError` (exit 2) only when ``public_key`` cannot
    be read.
    """
    verification = _Verification(pack, strict, _expected_fingerprint(public_key), VerifyResult(str(pack), strict))
    result = verification.result
    try:
        for check in _CHECKS:
            check(verification)
    except VerifyFailure as failure:
        result.failed(failure.code, failure.check, failure.message)
    except PackError as exc:
        result.failed(exc.exit_code, "pack", str(exc))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        # A malformed pack can break assumptions deep in the recomputation; that is a schema problem.
        result.failed(4, "pack", f"malformed pack content: {type(exc).__name__}: {exc}")
    return result
