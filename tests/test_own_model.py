"""The README's "Adding your own model", done exactly as written, for a local model.

The suites file and the commands are read out of README.md itself, so the test fails when the README's steps stop
working. The model is a tiny random LLaMA saved as a local directory, with a text of its own.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
from tinymodels import save_tiny, tiny_llama, tiny_tokenizer

README = Path(__file__).resolve().parent.parent / "README.md"
SENTENCES = ("the quick brown fox jumps over the lazy dog", "to be or not to be that is the question")


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end != -1 else len(text)]


def _blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def _commands(section: str) -> list[list[str]]:
    lines = [line.split("#")[0].strip() for block in _blocks(section, "bash") for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line]


@pytest.fixture(scope="module")
def readme_steps() -> tuple[str, list[list[str]]]:
    section = _section(README.read_text(encoding="utf-8"), "Adding your own model")
    return _blocks(section, "yaml")[0], _commands(section)


def _user_project(root: Path, suites_yaml: str) -> Path:
    """What the README's user has: the suites file, a text and a local model directory next to it."""
    (root / "my_suites.yaml").write_text(suites_yaml, encoding="utf-8")
    lines = [f"line {i}: {SENTENCES[i % 2]}, {SENTENCES[(i + 1) % 2]}." for i in range(3000)]
    (root / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    save_tiny(tiny_llama(3, layers=4, hidden=32), tiny_tokenizer(), root / "my-model")
    return root / "my_suites.yaml"


def test_the_readme_steps_tune_calibrate_and_judge_a_local_model(
    pytester: pytest.Pytester, readme_steps: tuple[str, list[list[str]]]
) -> None:
    suites_yaml, commands = readme_steps
    run_step, tune_step, tuned_run_step = commands
    assert run_step[:1] == ["pytest"] and tune_step[:2] == ["proofpack", "tune"] and tuned_run_step[:1] == ["pytest"]
    _user_project(pytester.path, suites_yaml)
    isolate = ["--proofpack-cache", str(pytester.path / "cache"), "-p", "no:cacheprovider"]

    result = pytester.runpytest_subprocess(*run_step[1:], *isolate)
    out = result.stdout.str()
    assert result.ret in (0, 1), out  # the verdict on a random model may fail; nothing may error
    outcomes = result.parseoutcomes()
    assert outcomes.get("error", 0) == 0 and outcomes.get("passed", 0) + outcomes.get("failed", 0) == 41, outcomes
    assert "tuning my-model" in out, out

    run_dir = pytester.path / "proof_pack_runs" / "mine"
    measured = json.loads((run_dir / "metadata" / "tuning" / "my-model.json").read_text())["models"]["my-model"]
    assert set(measured) == {"quant_rtn", "fp8_quant", "magnitude_prune", "lowrank_svd"}
    packed = run_dir / "proof_pack" / "metadata" / "tuning" / "my-model.json"
    assert packed.is_file(), "the tuning evidence travels in the pack"
    report = json.loads((run_dir / "reports" / "my-model" / "prune_12pct_clean" / "run_1" /
                         "evaluation.report.json").read_text())
    prune = measured["magnitude_prune"]
    if prune["status"] == "selected":
        assert report["edit"]["spec"] == f"magnitude_prune:{prune['sparsity']!r}:{prune['scope']}"
    preset = json.loads((run_dir / "metadata" / "presets" / "calibrated_preset_my-model.json").read_text())
    assert preset["calibration"]["benign_plan"]["source"] == "tuned_neighbours"

    tuned = pytester.run(sys.executable, "-m", "pytest_proofpack.cli", *tune_step[1:],
                         "--cache", str(pytester.path / "cache"))
    assert tuned.ret == 0, tuned.stdout.str() + tuned.stderr.str()
    written = json.loads((pytester.path / "my_tuned.json").read_text())["models"]["my-model"]
    assert {k: v["status"] for k, v in written.items()} == {k: v["status"] for k, v in measured.items()}
    assert all(written[k].get("evidence", {}).get("rungs") for k in written)

    again = pytester.runpytest_subprocess(*tuned_run_step[1:], *isolate, "-k", "clean")
    assert again.ret in (0, 1), again.stdout.str()
    assert "tuning my-model" not in again.stdout.str()
