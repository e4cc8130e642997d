"""Ed25519 signatures over a proof pack, as a DSSE envelope around an in-toto Statement v1.

The envelope is ``{"payloadType": "application/vnd.in-toto+json", "payload": base64(statement),
"signatures": [{"keyid": <fingerprint>, "sig": base64(sig), "public_key": <PEM>}]}``; the signature covers
DSSE's pre-authentication encoding ``PAE(payloadType, payload)``. The fingerprint of a key is the hex SHA-256
of its 32 raw public-key bytes. The public key travels with the envelope (and the manifest) so a pack verifies
on its own; a reviewer who must know *who* signed passes the expected key (``--public-key``), which pins it.

GPG detached signatures (``manifest.json.asc``) are supported through the ``gpg`` binary when present.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pytest_proofpack.errors import PackError

__all__ = [
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "SigningKey",
    "fingerprint",
    "gpg_available",
    "gpg_sign",
    "gpg_verify",
    "load_public_key",
    "load_signing_key",
    "make_statement",
    "pae",
    "sign_statement",
    "verify_envelope",
]

PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE: Final = "https://github.com/pytest-proofpack/proof-pack/v1"
SIGNATURE_EXIT: Final = 5


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(_raw(public)).hexdigest()


def public_pem(public: Ed25519PublicKey) -> str:
    """The key as SubjectPublicKeyInfo PEM text (what the envelope and the manifest carry)."""
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


@final
@dataclass(frozen=True)
class SigningKey:
    """A private key ready to sign, its public PEM and fingerprint; ``ephemeral`` when generated here."""

    private: Ed25519PrivateKey
    public_pem: str
    fingerprint: str
    ephemeral: bool


def load_signing_key(path: Path | None) -> SigningKey:
    """Read an unencrypted Ed25519 private key (PEM, PKCS#8) from ``path``, or make an ephemeral one.

    Raises :class:`PackError` (exit code 2) naming the file when it is missing or not an Ed25519 key.
    """
    if path is None:
        key = Ed25519PrivateKey.generate()
        ephemeral = True
    else:
        try:
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise PackError(
                f"{path}: cannot read an unencrypted PEM private key ({exc}); make one with "
                "`openssl genpkey -algorithm ed25519 -out key.pem`",
                exit_code=2,
            ) from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise PackError(f"{path}: signing key must be Ed25519, got {type(loaded).__name__}", exit_code=2)
        key, ephemeral = loaded, False
    public = key.public_key()
    return SigningKey(key, public_pem(public), fingerprint(public), ephemeral)


def load_public_key(data: bytes | str, where: str) -> Ed25519PublicKey:
    """Parse an Ed25519 public key from PEM (a private key PEM is accepted and its public half used)."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        key: object = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_private_key(raw, password=None).public_key()
        except (ValueError, TypeError):
            raise PackError(f"{where}: not a PEM Ed25519 key", exit_code=SIGNATURE_EXIT) from None
    if not isinstance(key, Ed25519PublicKey):
        raise PackError(f"{where}: key is not Ed25519", exit_code=SIGNATURE_EXIT)
    return key


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: ``DSSEv1 SP len(type) SP type SP len(body) SP body``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def make_statement(subjects: Sequence[tuple[str, str]], predicate: Mapping[str, Any]) -> dict[str, Any]:
    """An in-toto Statement v1 over ``(name, sha256 hex)`` subjects."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest}} for name, digest in subjects],
        "predicateType": PREDICATE_TYPE,
        "predicate": dict(predicate),
    }


def sign_statement(statement: Mapping[str, Any], key: SigningKey) -> dict[str, Any]:
    """Sign ``statement`` and return the DSSE envelope (JSON-ready)."""
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode("utf-8")
    sig = key.private.sign(pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [
            {
                "keyid": key.fingerprint,
                "sig": base64.b64encode(sig).decode("ascii"),
                "public_key": key.public_pem,
            }
        ],
    }


def _bad(message: str) -> PackError:
    return PackError(message, exit_code=SIGNATURE_EXIT)


def verify_envelope(
    envelope: object, *, expected_fingerprint: str | None = None
) -> tuple[dict[str, Any], str, str]:
    """Check a DSSE envelope; return ``(statement, fingerprint, public_pem)``.

    Raises :class:`PackError` with exit code 5 when the envelope is malformed, the signature does not verify,
    the keyid is not the key's fingerprint, or ``expected_fingerprint`` is given and differs.
    """
    if not isinstance(envelope, Mapping) or envelope.get("payloadType") != PAYLOAD_TYPE:
        raise _bad(f"signature envelope must be DSSE with payloadType {PAYLOAD_TYPE!r}")
    sigs = envelope.get("signatures")
    if (
        set(envelope) != {"payloadType", "payload", "signatures"}
        or not isinstance(sigs, list)
        or len(sigs) != 1
    ):
        raise _bad("signature envelope must hold exactly payloadType, payload and one signature")
    sig = sigs[0]
    if not isinstance(sig, Mapping) or set(sig) != {"keyid", "sig", "public_key"}:
        raise _bad("signature entry must hold exactly keyid, sig and public_key")
    public = load_public_key(str(sig["public_key"]), "signature public_key")
    fp = fingerprint(public)
    if sig["keyid"] != fp:
        raise _bad("signature keyid does not match its public key's fingerprint")
    if expected_fingerprint is not None and fp != expected_fingerprint:
        raise _bad(f"pack was signed by key {fp[:16]}…, not by the expected key {expected_fingerprint[:16]}…")
    try:
        payload = base64.b64decode(str(envelope["payload"]), validate=True)
        signature = base64.b64decode(str(sig["sig"]), validate=True)
        public.verify(signature, pae(PAYLOAD_TYPE, payload))
    except (binascii.Error, ValueError):
        raise _bad("signature envelope holds invalid base64") from None
    except InvalidSignature:
        raise _bad("signature does not verify: the signed statement or the signature was altered") from None
    try:
        statement = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _bad("signed payload is not JSON") from None
    if (
        not isinstance(statement, dict)
        or statement.get("_type") != STATEMENT_TYPE
        or statement.get("predicateType") != PREDICATE_TYPE
        or not isinstance(statement.get("subject"), list)
        or not isinstance(statement.get("predicate"), dict)
    ):
        raise _bad("signed payload is not a proof-pack in-toto Statement v1")
    return statement, fp, str(sig["public_key"])


def gpg_available() -> bool:
    """A ``gpg`` binary is on PATH."""
    return shutil.which("gpg") is not None


def gpg_sign(path: Path) -> Path:
    """Write an armored detached signature ``<path>.asc`` with the default gpg key."""
    asc = path.with_name(path.name + ".asc")
    proc = subprocess.run(
        ["gpg", "--batch", "--yes", "--armor", "--detach-sign", "--output", str(asc), str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise PackError(f"gpg could not sign {path.name}: {last}; configure a default key or drop --gpg")
    return asc


def gpg_verify(path: Path, asc: Path) -> tuple[bool, str]:
    """``(ok, gpg's last stderr line)`` for a detached signature."""
    proc = subprocess.run(
        ["gpg", "--batch", "--verify", str(asc), str(path)], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0, (proc.stderr.strip().splitlines() or [""])[-1]
