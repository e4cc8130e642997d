"""What ``proofpack verify`` reports: :class:`VerifyResult`, its JSON form and its human lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, final

from pytest_proofpack.pack.layout import EXIT_CODES

__all__ = ["VerifyResult"]


@final
@dataclass
class VerifyResult:
    """Outcome of :func:`~pytest_proofpack.pack.verify.verify_pack`: ``exit_code`` (see :data:`EXIT_CODES`), the
    checks run, warnings, and who signed (``signer``: fingerprint, ephemeral, pinned)."""

    pack: str
    strict: bool
    exit_code: int = 0
    message: str = "all checks passed"
    checks: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    verdict: str | None = None
    signer_fingerprint: str | None = None
    signer: dict[str, Any] | None = None
    signer_line: str | None = None

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
            "signer": self.signer,
            "checks": self.checks,
            "warnings": self.warnings,
        }

    def human(self) -> list[str]:
        lines = [f"proofpack verify {self.pack}{' (strict)' if self.strict else ''}"]
        lines += [f"  [{'ok' if c['ok'] else 'FAIL'}] {c['check']}: {c['detail']}" for c in self.checks]
        lines.append(f"  signer: {self.signer_line or 'unknown (the signature was not read)'}")
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
