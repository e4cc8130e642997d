"""The proof pack: build it from a run directory, seal it (checksums, manifest, signature), verify, merge.

- :mod:`.layout` — the pack's file names, verify's exit-code classes (:data:`EXIT_CODES`: 0 ok, 2 usage,
  3 missing pack/manifest/checksums/verdict, 4 schema, 5 signature, 6 integrity, 7 verdict mismatch,
  8 provenance);
- :mod:`.build` and :mod:`.seal` — stage a run directory into a pack, then checksums, manifest
  (:mod:`.manifest`) and signature;
- :mod:`.verify` — the checks of ``proofpack verify`` (:mod:`.integrity` for checksums, :mod:`.recompute`
  for the verdict);
- :mod:`.merge` — shard run directories unioned into one run and its pack.
"""

from __future__ import annotations

from pytest_proofpack.pack.build import build_pack
from pytest_proofpack.pack.layout import CONTROL_FILES, EXIT_CODES, sha256_file
from pytest_proofpack.pack.merge import merge_runs
from pytest_proofpack.pack.seal import seal_pack
from pytest_proofpack.pack.verify import verify_pack
from pytest_proofpack.pack.verify_result import VerifyResult

__all__ = [
    "CONTROL_FILES",
    "EXIT_CODES",
    "VerifyResult",
    "build_pack",
    "merge_runs",
    "seal_pack",
    "sha256_file",
    "verify_pack",
]
