"""``proofpack verify``: a pack checked by a fixed sequence of checks, the first failure deciding the exit code.

Checks, in order (:data:`_CHECKS`), each with the exit-code class of its failures (:data:`EXIT_CODES`):
layout (3, 6), signature (5, 6), schema (4, 5), gpg (5), binding (6), checksums (4, 6), attestation (6),
extra (6, strict only), verdict (4, 6, 7), provenance (7, 8). The signature is checked *before* the manifest is
interpreted, so any change to manifest.json of a signed pack is a signature failure (5); a pack without a
signature fails (5) with or without ``--strict``.

Verify opens only regular files inside the pack (:mod:`.reader`), and reads only the control files and the files
checksums.sha256 lists: those are copied, digest-checked, into a private directory where the verdict is
recomputed, so an unlisted file (``__MACOSX/``, ``.DS_Store``, a FIFO) is never opened. Under ``--strict`` any
unlisted file fails (6). Who signed is always reported (:mod:`.trust`): the key's fingerprint, whether it was an
ephemeral key, and whether it matches a pinned key; a pinned key that does not match fails (5).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pytest_proofpack.errors import PackError
from pytest_proofpack.pack.checkpoints import checkpoint_claims
from pytest_proofpack.pack.coverage import plan_digest
from pytest_proofpack.pack.evidence import evidence_problem
from pytest_proofpack.pack.integrity import parse_checksums
from pytest_proofpack.pack.layout import (
    CHECKSUMS,
    CONTROL_FILES,
    GPG_SIGNATURE,
    MANIFEST,
    MANIFEST_FORMAT,
    SIGNATURE,
    VERDICT_PATH,
    VerifyFailure,
    walk_files,
)
from pytest_proofpack.pack.manifest import check_manifest
from pytest_proofpack.pack.provenance import provenance_problem
from pytest_proofpack.pack.reader import MAX_CONTROL_BYTES, read_json, read_regular, stage_listed
from pytest_proofpack.pack.recompute import recompute_verdict
from pytest_proofpack.pack.trust import TrustedKeys, load_trusted_keys, signer_lines
from pytest_proofpack.pack.verify_result import VerifyResult
from pytest_proofpack.signing import gpg_available, gpg_verify, verify_envelope
from pytest_proofpack.verdict import load_run

__all__ = ["VerifyResult", "verify_pack"]

#: The one line ``--strict`` adds when no key is pinned.
UNPINNED_WARNING: Final = ("integrity is shown, authenticity is not: no pinned key (--public-key, --trusted-keys "
                           "or PROOFPACK_TRUSTED_KEYS), so anyone could have re-signed this pack with a key of "
                           "their own")


@dataclass
class _Verification:
    """One verification in progress: its inputs, its result, and what earlier checks established."""

    pack: Path
    strict: bool
    trusted: TrustedKeys
    result: VerifyResult
    stage: Path
    control: dict[str, bytes] = field(default_factory=dict)
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
        v.control[rel] = read_regular(v.pack, rel, "layout", limit=MAX_CONTROL_BYTES, missing=3)
    v.passed("layout", "manifest.json, checksums.sha256 and results/final_verdict.json present")


def _check_signature(v: _Verification) -> None:
    data = read_regular(v.pack, SIGNATURE, "signature", limit=MAX_CONTROL_BYTES, missing=5)
    envelope = read_json(data, SIGNATURE, "signature", code=5)
    statement, fp, pem = verify_envelope(envelope)
    signed = (statement["predicate"].get("manifest") or {}).get("digest", {}).get("sha256")
    if signed != hashlib.sha256(v.control[MANIFEST]).hexdigest():
        raise VerifyFailure(
            5, "signature", f"{MANIFEST} was changed after signing (its digest is not the signed one)"
        )
    v.statement, v.signer = statement, (fp, pem)
    v.result.signer_fingerprint = fp
    line, pinned = signer_lines(fp, None, v.trusted)
    v.result.signer, v.result.signer_line = {"fingerprint": fp, "ephemeral": None, "pinned": pinned}, line
    if pinned == "not pinned":
        raise VerifyFailure(5, "signature", f"pack was signed by key {fp[:16]}…, not by the expected key: it "
                                            f"matches none of the keys pinned by {v.trusted.sources()}")
    v.passed("signature", f"Ed25519 DSSE envelope verifies (key {fp})")


def _check_schema(v: _Verification) -> None:
    """The manifest's schema, and that it names the key the envelope was signed with."""
    v.manifest = check_manifest(read_json(v.control[MANIFEST], MANIFEST, "schema"))
    signing = v.manifest.get("signing")
    if v.signer is None or signing is None or signing["fingerprint"] != v.signer[0] or \
            signing["public_key_pem"] != v.signer[1]:
        raise VerifyFailure(5, "signature", f"{MANIFEST} signing key does not match the envelope's key")
    ephemeral = signing.get("ephemeral") if isinstance(signing.get("ephemeral"), bool) else None
    line, pinned = signer_lines(v.signer[0], ephemeral, v.trusted)
    v.result.signer = {"fingerprint": v.signer[0], "ephemeral": ephemeral, "pinned": pinned}
    v.result.signer_line = line
    v.passed("schema", f"{MANIFEST_FORMAT}, schema_version 1")


def _check_gpg(v: _Verification) -> None:
    if not (v.pack / GPG_SIGNATURE).exists() and not (v.pack / GPG_SIGNATURE).is_symlink():
        return
    asc = read_regular(v.pack, GPG_SIGNATURE, "gpg", limit=MAX_CONTROL_BYTES)
    if not gpg_available():
        v.result.warnings.append(f"{GPG_SIGNATURE} present but gpg is not installed; not checked")
        return
    # gpg checks the bytes verify read, in a directory of its own, not the pack's files
    gpg_dir = Path(tempfile.mkdtemp(dir=v.stage))
    (gpg_dir / MANIFEST).write_bytes(v.control[MANIFEST])
    (gpg_dir / GPG_SIGNATURE).write_bytes(asc)
    good, detail = gpg_verify(gpg_dir / MANIFEST, gpg_dir / GPG_SIGNATURE)
    if not good:
        raise VerifyFailure(5, "gpg", f"{GPG_SIGNATURE} does not verify: {detail}")
    v.passed("gpg", detail)


def _check_binding(v: _Verification) -> None:
    """checksums.sha256 is the file the manifest and the signature bound; the verdict the one the signature did."""
    if hashlib.sha256(v.control[CHECKSUMS]).hexdigest() != v.manifest["checksums_sha256_digest"]:
        raise VerifyFailure(6, "binding", f"{CHECKSUMS} does not match the digest bound in {MANIFEST}")
    assert v.statement is not None
    for subject in v.statement["subject"]:
        name = subject.get("name") if isinstance(subject, dict) else None
        digest = (subject.get("digest") or {}).get("sha256") if isinstance(subject, dict) else None
        if name not in (VERDICT_PATH, CHECKSUMS):
            raise VerifyFailure(6, "binding", f"signed subject {name!r} is not the verdict or the checksums")
        if hashlib.sha256(v.control[name]).hexdigest() != digest:
            raise VerifyFailure(6, "binding", f"{name} differs from the signed subject digest")
    v.passed("binding", f"{CHECKSUMS} digest bound by {MANIFEST} and the signature")


def _check_checksums(v: _Verification) -> None:
    v.entries = parse_checksums(v.control[CHECKSUMS])
    if v.entries.get(VERDICT_PATH) != hashlib.sha256(v.control[VERDICT_PATH]).hexdigest():
        raise VerifyFailure(6, "checksums", f"{VERDICT_PATH}: not listed with its sha256 in {CHECKSUMS}")
    stage_listed(v.pack, v.entries, v.stage, "checksums")
    v.passed("checksums", f"{len(v.entries)} files match")


def _check_attestation(v: _Verification) -> None:
    """Every file the manifest references is listed in checksums.sha256 with the manifest's digest."""
    refs = [v.manifest["subject"], v.manifest["environment"], *v.manifest["materials"]]
    for ref in refs:
        rel = ref["path"]
        if rel not in v.entries:
            raise VerifyFailure(6, "attestation", f"{MANIFEST} references {rel!r}, which is not in {CHECKSUMS}")
        if v.entries[rel] != ref["digest"][7:]:
            raise VerifyFailure(6, "attestation", f"{rel}: sha256 mismatch (file was modified)")
    v.passed("attestation", f"{len(refs)} manifest references match")


def _check_extra(v: _Verification) -> None:
    """No entry outside checksums.sha256 (archiver litter included): a failure with ``strict``, a warning without;
    a symlink anywhere fails either way (a pack holds regular files only). Entries are listed, never opened."""
    extras = []
    for path in walk_files(v.pack, skip_litter=False):
        rel = path.relative_to(v.pack).as_posix()
        if path.is_symlink():
            raise VerifyFailure(6, "extra", f"{rel} is a symlink")
        if rel not in v.entries and rel not in CONTROL_FILES:
            extras.append(rel)
    if not extras:
        v.passed("extra", "no files outside the checksums")
        return
    message = f"{len(extras)} file(s) not covered by {CHECKSUMS} (never read): {', '.join(extras[:5])}"
    if v.strict:
        raise VerifyFailure(6, "extra", message)
    v.result.warnings.append(message)


def _check_verdict(v: _Verification) -> None:
    v.result.verdict = recompute_verdict(v.stage)
    v.passed("verdict", f"recomputed verdict {v.result.verdict} matches results/")


def _check_provenance(v: _Verification) -> None:
    """The verdict, catalog digest and plan the signature and manifest claim are the ones recomputed here."""
    loaded = load_run(v.stage)
    claims: Mapping[str, Any] = (v.statement or {}).get("predicate") or {}
    for where, claimed in (("signed statement", claims.get("verdict")), (MANIFEST, v.manifest.get("verdict"))):
        if claimed != v.result.verdict:
            raise VerifyFailure(7, "provenance", f"the {where} says verdict {claimed!r}, the pack's evidence "
                                                 f"gives {v.result.verdict}")
    problem = provenance_problem(loaded.run, loaded.scenarios, v.stage)
    if problem is not None:
        raise VerifyFailure(8, "provenance", f"metadata/run.json: {problem}")
    problem = evidence_problem(v.stage, str(loaded.run.get("config_digest")))
    if problem is not None:
        raise VerifyFailure(8, "provenance", problem)
    config = loaded.run.get("config") or {}
    recorded = {"catalog_digest": config.get("catalog_digest"), "config_digest": loaded.run.get("config_digest"),
                "planned_digest": plan_digest(loaded.planned), "plan_digest": (loaded.run.get("plan") or {})
                .get("digest")}
    for key, value in recorded.items():
        if claims.get(key) != value:
            raise VerifyFailure(8, "provenance", f"the signed statement's {key} is not the pack's "
                                                 f"({str(claims.get(key))[:16]}… vs {str(value)[:16]}…)")
    checkpoints = checkpoint_claims(loaded.results)
    for where, claimed in (("signed statement", claims.get("checkpoints", [])),
                           (MANIFEST, v.manifest.get("checkpoints", []))):
        if claimed != checkpoints:
            raise VerifyFailure(8, "provenance", f"the {where}'s checkpoints are not the subjects the pack's "
                                                 f"reports judged ({len(checkpoints)} checkpoint run(s))")
    v.passed("provenance", "verdict, catalog digest, config digest and plan recomputed and equal to the signed "
                           "ones; every record's evidence unchanged since the run")


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
    _check_provenance,
)


def verify_pack(pack: Path, *, strict: bool = False, public_key: Path | None = None,
                trusted_keys: Path | None = None, environ: Mapping[str, str] | None = None) -> VerifyResult:
    """Verify a proof pack; never raises for a bad pack (the result carries the exit code and message).

    ``public_key`` (PEM), ``trusted_keys`` (a trusted-keys file) and ``PROOFPACK_TRUSTED_KEYS`` in ``environ``
    (default ``os.environ``) pin the signer. Raises :class:`PackError` (exit 2) only when a pinned key cannot be
    read.
    """
    trusted = load_trusted_keys([public_key] if public_key else [], trusted_keys, environ)
    result = VerifyResult(str(pack), strict)
    stage = Path(tempfile.mkdtemp(prefix="proofpack-verify-"))
    try:
        verification = _Verification(pack, strict, trusted, result, stage)
        for check in _CHECKS:
            check(verification)
    except VerifyFailure as failure:
        result.failed(failure.code, failure.check, failure.message)
    except PackError as exc:
        result.failed(exc.exit_code, "pack", str(exc))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # A malformed pack can break assumptions deep in the recomputation; that is a schema problem.
        result.failed(4, "pack", f"malformed pack content: {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if result.ok and strict and not trusted:
        result.warnings.append(UNPINNED_WARNING)
    return result
