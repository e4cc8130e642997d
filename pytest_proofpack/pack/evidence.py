"""A record's evidence: the files of its report directory, with the digests the controller took when it wrote it.

The controller stores ``evidence_sha256`` in each record (:func:`~pytest_proofpack.results.with_evidence`).
:func:`evidence_problem` checks a run directory or a pack against them: the pack builder refuses to seal, ``proofpack
merge`` to merge and ``proofpack verify`` to pass (exit 8) a run whose report was changed, added to or removed
after its record was written.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pytest_proofpack.pack.layout import is_safe_relpath
from pytest_proofpack.results import ResultStore

__all__ = ["evidence_problem"]


def evidence_problem(root: Path, config_digest: str) -> str | None:
    """The first current record of ``root`` (a run directory or a pack) whose report directory does not hold
    exactly the files its ``evidence_sha256`` lists, with those digests; ``None`` when every one does."""
    records, _stale = ResultStore(root, config_digest).all_records()
    for record in records:
        if not record.report:
            continue
        where = f"records/{record.model}/{record.scenario}/run_{record.run}.json"
        base = Path(record.report).parent
        if not is_safe_relpath(record.report) or any(not is_safe_relpath(rel) or Path(rel).parent != base
                                                     for rel in record.evidence or {}):
            return f"{where} names a report or evidence file outside its report directory"
        if record.evidence is None:
            return f"{where} has no evidence checksums (written before they were recorded); rerun the scenario"
        directory = (root / record.report).parent
        present = {p.relative_to(root).as_posix() for p in directory.iterdir()} if directory.is_dir() else set()
        for rel in sorted(present | set(record.evidence)):
            expected = record.evidence.get(rel)
            if expected is None:
                return f"{rel} was added after {where} was written"
            if rel not in present:
                return f"{rel}, listed by {where}, is missing"
            if hashlib.sha256((root / rel).read_bytes()).hexdigest() != expected:
                return f"{rel} was changed after the run (its sha256 is not the one {where} recorded)"
    return None
