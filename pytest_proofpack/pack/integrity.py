"""The integrity side of verify: checksums.sha256 read strictly.

Each line is ``<64 hex>  ./<path>``; a listed path must be a plain relative path inside the pack, listed once,
and not a control file. Every failure is a :class:`VerifyFailure` (class 4 for a malformed list, 6 for a path
that escapes the pack). The listed files themselves are read and checked by :func:`.reader.stage_listed`.
"""

from __future__ import annotations

import re
from typing import Final

from pytest_proofpack.pack.layout import CHECKSUMS, CONTROL_FILES, VerifyFailure, is_safe_relpath

__all__ = ["parse_checksums"]

_CHECKSUM_LINE: Final = re.compile(r"^([0-9a-f]{64})  \./(.+)$")


def parse_checksums(data: bytes) -> dict[str, str]:
    """checksums.sha256's bytes as ``{relative path: hex digest}``."""
    entries: dict[str, str] = {}
    text = data.decode("utf-8", errors="replace")
    for n, line in enumerate(text.splitlines(), 1):
        m = _CHECKSUM_LINE.match(line)
        if not m:
            raise VerifyFailure(4, "checksums", f"{CHECKSUMS} line {n}: expected '<sha256>  ./<path>'")
        digest, rel = m.groups()
        if not is_safe_relpath(rel):
            raise VerifyFailure(6, "checksums", f"{CHECKSUMS} line {n}: path {rel!r} escapes the pack")
        if rel in entries:
            raise VerifyFailure(4, "checksums", f"{CHECKSUMS} line {n}: {rel} listed twice")
        if rel in CONTROL_FILES:
            raise VerifyFailure(4, "checksums", f"{CHECKSUMS} must not list the control file {rel}")
        entries[rel] = digest
    return entries
