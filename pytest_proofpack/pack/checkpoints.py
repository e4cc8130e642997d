"""The checkpoints a pack certifies: each checkpoint scenario run's subject, by source and digest.

A checkpoint scenario's report carries ``subject_provenance`` (its source, digest and file hashes). The manifest
lists them under ``checkpoints`` and the signed statement's predicate claims the same list, so a reader learns
from the signature which weights were judged; ``proofpack verify`` recomputes the list from the pack's reports
and compares it with both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pytest_proofpack.verdict.cases import RunResult

__all__ = ["checkpoint_claims"]


def checkpoint_claims(results: Iterable[RunResult]) -> list[dict[str, Any]]:
    """``[{model, scenario, run, source, digest}]`` of the results whose report names a checkpoint subject, sorted
    by case; empty for a pack without checkpoint scenarios."""
    claims = []
    for result in results:
        subject = result.report.get("subject_provenance") if isinstance(result.report, Mapping) else None
        if isinstance(subject, Mapping):
            claims.append({"model": result.model, "scenario": result.scenario, "run": result.run,
                           "source": str(subject.get("source_desc", "")), "digest": str(subject.get("digest", ""))})
    return sorted(claims, key=lambda c: (c["model"], c["scenario"], c["run"]))
