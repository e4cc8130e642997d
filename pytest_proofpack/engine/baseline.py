"""The baseline state: what the engine keeps of one baseline model on one pair of window sets.

The subject is the baseline's model object with an edit applied in place, so the baseline keeps *statistics*
(JSON), never tensors: per-window losses of both arms, the invariants snapshot, per-matrix sigma and activation
statistics. It is cached on disk and shared by workers, so it carries its schema and the digest of the engine
configuration it was made under; :func:`pytest_proofpack.engine.evaluate.evaluate` refuses one made under another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

from pytest_proofpack.errors import ProofpackError

BASELINE_SCHEMA: Final = "proofpack_baseline_v1"


class BaselineMismatchError(ProofpackError):
    """A cached baseline was made under another engine configuration or schema."""

    error_class = "bad_input"


@dataclass
class BaselineState:
    """Everything needed to judge subjects against one baseline model on one pair of window sets (JSON-able)."""

    config_digest: str
    seq_len: int
    preview: dict[str, Any]
    final: dict[str, Any]
    invariants: dict[str, Any]
    invariants_self: dict[str, Any]
    spectral: dict[str, dict[str, Any]]
    activations: dict[str, dict[str, Any]]
    guard_chunk_losses: list[list[float | None]]
    meta: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"schema": BASELINE_SCHEMA, "schema_version": 1, **asdict(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BaselineState:
        """The state of a ``to_json`` body; raises :class:`BaselineMismatchError` for another schema or version."""
        if d.get("schema") != BASELINE_SCHEMA or d.get("schema_version") != 1:
            raise BaselineMismatchError(
                f"baseline state has schema {d.get('schema')!r} v{d.get('schema_version')!r}, expected "
                f"{BASELINE_SCHEMA} v1; delete the cached baseline so it is rebuilt"
            )
        fields = {k: v for k, v in d.items() if k not in ("schema", "schema_version")}
        return cls(**fields)
