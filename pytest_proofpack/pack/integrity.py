"""The integrity side of verify: checksums.sha256 read strictly, each listed file checked against it.

A listed path must be a plain relative path inside the pack, reached through no symlink, naming a regular
file with the listed SHA-256. Every failure is a :class:`VerifyFailure` (class 4 for a malformed list,
6 for a file that does not match).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from pytest_proofpack.pack.layout import CHECKSUMS, VerifyFailure, is_safe_relpath, sha256_file

__all__ = ["check_file", "read_checksums"]

_CHECKSUM_LINE: Final = re.compile(r"^([0-9a-f]{64})  \./(.+)$")


def read_checksums(pack: Path) -> dict[str, str]:
    """checksums.sha256 as ``{relative path: hex digest}``."""
    entries: dict[str, str] = {}
    text = (pack / CHECKSUMS).read_text(encoding="utf-8", errors="replace")
    for n, line in enumerate(text.splitlines(), 1):
        m = _CHECKSUM_LINE.match(line)
        if not m:
            raise VerifyFailure(4, "checksums", f"{CHECKSUMS} line {n}: expected '<sha256>  ./<path>'")
        digest, rel = m.groups()
        if not is_safe_relpath(rel):
            raise VerifyFailure(6, "checksums", f"{CHECKSUMS} line {n}: path {rel!r} escapes the pack")
        if rel in entries:
            raise VerifyFailure(4, "checksums", f"{CHECKSUMS} line {n}: {rel} listed twice")
        entries[rel] = digest
    return entries


def check_file(pack: Path, rel: str, digest: str, check: str) -> None:
    """``pack/rel`` is a regular file inside the pack whose SHA-256 is ``digest``; else a failure of ``check``."""
    path = pack / rel
    if not is_safe_relpath(rel):
        raise VerifyFailure(6, check, f"{rel}: path escapes the pack")
    # Walk each component: a symlinked directory would let a listed path point outside the pack.
    cur = pack
    for part in rel.split("/"):
        cur = cur / part
        if cur.is_symlink():
            raise VerifyFailure(6, check, f"{rel}: {cur.relative_to(pack).as_posix()} is a symlink")
    if not path.is_file():
        raise VerifyFailure(6, check, f"{rel}: listed file is missing")
    if sha256_file(path) != digest:
        raise VerifyFailure(6, check, f"{rel}: sha256 mismatch (file was modified)")
