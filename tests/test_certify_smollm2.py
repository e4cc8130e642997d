"""The README's "Certify your own checkpoint", run exactly as written: SmolLM2-135M re-quantized from its shipped
Q4_1 GGUF to Q8_0, certified against its Q4_1 baseline, the pack verified (slow: minutes on a CPU).

The commands are read out of README.md, so the test fails when the README's steps stop working. They run in a
scratch directory holding a link to the repository's ``ci/``; ``proofpack`` and ``python`` are this interpreter.
The asset cache is the user's (the smoke suite's baseline and preset are reused from it when present).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_own_model import README, _blocks, _section

pytestmark = pytest.mark.slow


def _commands() -> list[str]:
    section = _section(README.read_text(encoding="utf-8"), "Certify your own checkpoint")
    lines = [line.split("  #")[0].strip() for block in _blocks(section, "bash") for line in block.splitlines()]
    return [line for line in lines if line]


def test_the_readme_certifies_smollm2_requantized_to_q8_0(tmp_path: Path) -> None:
    from fetched_assets import require_fetched, smoke_asset_names

    require_fetched(*smoke_asset_names())
    commands = _commands()
    assert [c.split()[:2] for c in commands] == [["proofpack", "fetch"], ["python", "ci/requantize_gguf.py"],
                                                 ["proofpack", "certify"], ["proofpack", "verify"]]
    (tmp_path / "ci").symlink_to(Path(__file__).resolve().parent.parent / "ci")
    me = f"{sys.executable} -m pytest_proofpack.cli "
    for command in commands:
        line = re.sub(r"^proofpack ", me, re.sub(r"^python ", f"{sys.executable} ", command))
        done = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, check=False,
                              env={**os.environ}, timeout=1800)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    run = tmp_path / "proof_pack_runs" / "certify-smollm2-135m"
    report = json.loads((run / "reports" / "smollm2-135m" / "certify" / "run_1" / "evaluation.report.json").read_text())
    subject = report["subject_provenance"]
    assert subject["gguf_file_type"] == "Q8_0" and report["baseline_provenance"]["gguf_file_type"] == "Q4_1"
    assert subject["digest"].startswith("sha256:") and subject["tokenizer"] == "same"
    assert report["edit"]["n_missing"] == 0 and report["edit"]["tensors_swapped"] > 200
    assert 0.98 < report["primary_metric"]["ratio_vs_baseline"] < 1.02  # Q8_0 of the Q4_1 weights: nearly the same
    verdict = json.loads((run / "results" / "final_verdict.json").read_text())
    assert verdict["verdict"] == "PASS"
