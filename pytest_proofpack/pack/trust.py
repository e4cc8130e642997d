"""Pinned keys: which signers ``proofpack verify`` trusts, and what it says about the one that signed.

A signature proves that the pack was not changed after it was sealed, by whoever held the key. Only a key the
reader pins says *who* that was: ``--public-key KEY.pem``, ``--trusted-keys FILE`` or the environment variable
``PROOFPACK_TRUSTED_KEYS`` (a file path, or the file's content itself, for CI). A trusted-keys file holds PEM
Ed25519 public (or private) keys and/or lines of 64-hex key fingerprints; ``#`` starts a comment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, final

from pytest_proofpack.errors import PackError
from pytest_proofpack.signing import fingerprint, load_public_key

__all__ = ["TRUSTED_KEYS_ENV", "TrustedKeys", "load_trusted_keys", "signer_lines"]

TRUSTED_KEYS_ENV: Final = "PROOFPACK_TRUSTED_KEYS"
_PEM_BLOCK: Final = re.compile(r"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)
_FINGERPRINT: Final = re.compile(r"^[0-9a-f]{64}$")
_MAX_KEYS_BYTES: Final = 1 << 20


@final
@dataclass(frozen=True)
class TrustedKeys:
    """Fingerprint -> where it was pinned (``--public-key a.pem``, ``--trusted-keys keys.txt``, ...)."""

    keys: Mapping[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def sources(self) -> str:
        return ", ".join(sorted(set(self.keys.values())))


def _parse(text: str, where: str) -> list[str]:
    """The fingerprints of the PEM keys and fingerprint lines of ``text``; :class:`PackError` (exit 2) when it
    holds something else or nothing."""
    found = [fingerprint(load_public_key(block.group(0), where)) for block in _PEM_BLOCK.finditer(text)]
    for n, line in enumerate(_PEM_BLOCK.sub("", text).splitlines(), 1):
        line = line.split("#", 1)[0].strip().lower()
        if not line:
            continue
        if not _FINGERPRINT.match(line):
            raise PackError(f"{where}: line {n} is neither a PEM key nor a 64-hex key fingerprint", exit_code=2)
        found.append(line)
    if not found:
        raise PackError(f"{where}: holds no key; put PEM Ed25519 public keys or 64-hex fingerprints in it",
                        exit_code=2)
    return found


def _read(path: Path, where: str) -> str:
    try:
        if path.stat().st_size > _MAX_KEYS_BYTES or not path.is_file():
            raise PackError(f"{where}: not a key file of at most 1 MiB", exit_code=2)
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PackError(f"{where}: cannot read ({getattr(exc, 'strerror', None) or exc})", exit_code=2) from None


def _parse_key(text: str, where: str) -> list[str]:
    try:
        return _parse(text, where)
    except PackError as exc:
        raise PackError(str(exc), exit_code=2) from None


def load_trusted_keys(public_keys: list[Path] | None = None, trusted_keys: Path | None = None,
                      environ: Mapping[str, str] | None = None) -> TrustedKeys:
    """The pinned keys of the command line and the environment (empty when none is pinned).

    Raises :class:`PackError` with exit code 2 naming the option or variable when a source cannot be read or
    holds no key.
    """
    env = os.environ if environ is None else environ
    keys: dict[str, str] = {}
    for path in public_keys or []:
        where = f"--public-key {path}"
        keys.update(dict.fromkeys(_parse_key(_read(path, where), where), where))
    if trusted_keys is not None:
        where = f"--trusted-keys {trusted_keys}"
        keys.update(dict.fromkeys(_parse_key(_read(trusted_keys, where), where), where))
    value = env.get(TRUSTED_KEYS_ENV, "").strip()
    if value:
        inline = "-----BEGIN" in value or all(_FINGERPRINT.match(v.strip().lower()) for v in value.split())
        where = TRUSTED_KEYS_ENV if inline else f"{TRUSTED_KEYS_ENV}={value}"
        text = value if inline else _read(Path(value).expanduser(), where)
        keys.update(dict.fromkeys(_parse_key(text, where), TRUSTED_KEYS_ENV))
    return TrustedKeys(keys)


def signer_lines(fp: str, ephemeral: bool | None, trusted: TrustedKeys) -> tuple[str, str | None]:
    """``(the signer line, the pin verdict)``: who signed and whether a pinned key vouches for it; the second
    item is ``"pinned"``, ``"not pinned"`` or ``None`` when no key is pinned."""
    kind = ("an ephemeral key (made for this pack and discarded: it shows integrity, not who built the pack)"
            if ephemeral else "a kept key" if ephemeral is False else "a key of unrecorded kind")
    if not trusted:
        return f"signed by key {fp}, {kind}; no key pinned", None
    if fp in trusted.keys:
        return f"signed by key {fp}, {kind}; matches the pinned key from {trusted.keys[fp]}", "pinned"
    return f"signed by key {fp}, {kind}; matches none of the pinned keys ({trusted.sources()})", "not pinned"
