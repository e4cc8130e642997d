"""The bad-input corpus: every malformed input gives ONE line naming the file/field/option, the documented
exit code, no traceback, and leaves nothing behind.

The data files live in ``tests/bad_inputs/``: ``good_*`` is a valid catalog (three scenarios, two local models,
suite ``tiny``); every other file is that catalog with exactly one thing broken. Catalog and option errors are
pytest usage errors (exit 4) raised in ``pytest_configure``, checked through a real ``pytest`` subprocess. Broken
model directories are errors only when a scenario loads the model: the items error with one line, the session
exits 1 and the records say ``error_class: bad_input``. Broken packs go through the ``proofpack`` CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_pack import make_run_dir

from pytest_proofpack.cli import main as cli_main

DATA = Path(__file__).resolve().parent / "bad_inputs"
GOOD = {"scenarios": "good_scenarios.json", "suites": "good_suites.yaml", "tuned": "good_tuned.json"}
ROLE_OPTION = {
    "scenarios": "--proofpack-scenarios", "suites": "--proofpack-suites", "tuned": "--proofpack-tuned-params",
}
PYTESTER_ARTIFACTS = ("stdout", "stderr", "runpytest-")
MODEL_SLOTS = tuple(f"MODEL_{i}" for i in range(1, 9))


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (directories as ``<dir>``), pytester's own outputs
    excluded; comparing two snapshots shows any file created, changed or removed."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel.split("/")[0].startswith(PYTESTER_ARTIFACTS):
            continue
        out[rel] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _no_temp_files(root: Path) -> None:
    leftovers = [p.relative_to(root).as_posix() for p in root.rglob("*.tmp")]
    assert leftovers == [], f"partial files left behind: {leftovers}"


def _one_error_line(text: str, prefix: str) -> str:
    """The single non-empty line of ``text``, which must start with ``prefix``."""
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one error line, got {len(lines)}:\n{text}"
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


@pytest.fixture(autouse=True)
def _no_model_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's MODEL_i variables must not leak into the subprocesses."""
    for slot in MODEL_SLOTS:
        monkeypatch.delenv(slot, raising=False)


# ------------------------------------------------------------------------------ catalog and option errors

# (id, files replacing the good ones, extra args, env, expected exit, expected substring, --collect-only?)
# A role "ini" copies the file to pytest.ini. Cases with collect=False run a real session: the usage error must
# still stop it before the run directory exists.
USAGE_CASES = [
    # scenarios.json
    ("scn-bad-json", {"scenarios": "scenarios_bad_json.json"}, (), {}, 4,
     "scenarios_bad_json.json: line 13, column 5: not valid JSON: Expecting ',' delimiter", False),
    ("scn-unknown-schema", {"scenarios": "scenarios_unknown_schema.json"}, (), {}, 4,
     "scenarios_unknown_schema.json: $.schema: unknown schema 'proof_pack_scenarios_v0'; accepted: "
     "proof_pack_scenarios_v1", True),
    ("scn-schema-v2", {"scenarios": "scenarios_schema_v2.json"}, (), {}, 4,
     "scenarios_schema_v2.json: $.schema_version: unsupported version 2; accepted: 1", True),
    ("scn-duplicate-id", {"scenarios": "scenarios_duplicate_id.json"}, (), {}, 4,
     "scenarios_duplicate_id.json: $.scenarios[2] (q_clean).id: duplicate id 'q_clean'", True),
    ("scn-unknown-category", {"scenarios": "scenarios_unknown_category.json"}, (), {}, 4,
     "scenarios_unknown_category.json: $.scenarios[0] (q_clean).category: 'cleen' is not accepted "
     "(did you mean 'clean'?)", True),
    ("scn-unknown-strictness", {"scenarios": "scenarios_unknown_strictness.json"}, (), {}, 4,
     "$.scenarios[1] (prune_stress).strictness: 'must-fail' is not accepted (did you mean 'must_fail'?)", True),
    ("scn-unknown-intent", {"scenarios": "scenarios_unknown_intent.json"}, (), {}, 4,
     "$.scenarios[1] (prune_stress).intent: 'catastrophic' is not accepted (did you mean 'catastrophic_failure'?)",
     True),
    ("scn-unknown-guard", {"scenarios": "scenarios_unknown_guard.json"}, (), {}, 4,
     "$.scenarios[2] (nan_fault).primary_guard: 'spectrum' is not accepted (did you mean 'spectral'?)", True),
    ("scn-unknown-detector", {"scenarios": "scenarios_unknown_detector.json"}, (), {}, 4,
     "scenarios_unknown_detector.json: $.scenarios[1] (prune_stress).requirements.detectors_any_of[0]: "
     "unknown detector kind 'validation_flags'", True),
    ("scn-detector-missing-field", {"scenarios": "scenarios_detector_missing_field.json"}, (), {}, 4,
     "requirements.detectors_any_of[0]: validation_flag detector lacks field 'expected'", True),
    ("scn-guard-error-detector", {"scenarios": "scenarios_guard_error_detector.json"}, (), {}, 4,
     "scenarios_guard_error_detector.json: $.scenarios[2] (nan_fault).requirements.detectors_any_of[0]: "
     "invariants_status.allowed names 'error', the guard's error status; a guard that raises makes the run an "
     "error (class internal), never a detection, so detect the change by the guard's own verdict: allowed "
     "['fail']", True),
    ("scn-must-detect-no-detectors", {"scenarios": "scenarios_must_detect_no_detectors.json"}, (), {}, 4,
     "$.scenarios[2] (nan_fault).requirements: a must_detect scenario needs detectors_any_of or detectors_all_of",
     True),
    ("scn-bad-env-key", {"scenarios": "scenarios_bad_env_key.json"}, (), {}, 4,
     "$.scenarios[2] (nan_fault).generation.env.invarlock_nan_frac: keys must be upper-case INVARLOCK_* names",
     False),
    ("scn-fault-as-edit", {"scenarios": "scenarios_fault_as_edit.json"}, (), {}, 4,
     "$.scenarios[2] (nan_fault).generation.kind: an error_injection scenario needs kind 'error'", True),
    # edit specs inside scenarios.json
    ("spec-arity", {"scenarios": "scenarios_edit_spec_arity.json"}, (), {}, 4,
     "generation.edit_spec: edit spec 'quant_rtn:4:ffn': expected 2 parameter(s) and a scope", True),
    ("spec-unknown-kind", {"scenarios": "scenarios_edit_spec_kind.json"}, (), {}, 4,
     "generation.edit_spec: edit spec 'quant_rtm:4:32:ffn': unknown edit kind 'quant_rtm' "
     "(did you mean 'quant_rtn'?)", True),
    ("spec-bad-scope", {"scenarios": "scenarios_edit_spec_scope.json"}, (), {}, 4,
     "edit spec 'quant_rtn:4:32:ffn@layers=3-1': scope 'ffn@layers=3-1': layer restriction '@layers=3-1'", True),
    ("spec-bad-value", {"scenarios": "scenarios_edit_spec_value.json"}, (), {}, 4,
     "edit spec 'magnitude_prune:1.5:all': sparsity '1.5' is not a number in [0, 1)", True),
    ("spec-clean-with-params", {"scenarios": "scenarios_edit_spec_clean_params.json"}, (), {}, 4,
     "edit spec 'quant_rtn:clean:4:ffn': the clean sentinel takes only a scope", True),
    # suites.yaml
    ("suites-bad-yaml", {"suites": "suites_bad_yaml.yaml"}, (), {}, 4,
     "suites_bad_yaml.yaml: line 11, column 12: not valid YAML: expected ',' or ']', but got ':'", False),
    ("suites-unknown-schema", {"suites": "suites_unknown_schema.yaml"}, (), {}, 4,
     "suites_unknown_schema.yaml: $.schema: unknown schema 'proofpack_suites_v2'", True),
    ("suites-unknown-model", {"suites": "suites_unknown_model.yaml"}, (), {}, 4,
     "suites_unknown_model.yaml: $.suites.tiny.models[1]: unknown model key 'tiny-c' (did you mean 'tiny-b'?)",
     True),
    ("suites-unknown-dataset", {"suites": "suites_unknown_dataset.yaml"}, (), {}, 4,
     "suites_unknown_dataset.yaml: $.suites.tiny.dataset: unknown dataset 'texts'; accepted: text", True),
    ("suites-negative-params", {"suites": "suites_negative_params.yaml"}, (), {}, 4,
     "suites_negative_params.yaml: $.models.tiny-b.params_b: -1.5 must be a positive number", True),
    ("suites-unknown-field", {"suites": "suites_unknown_field.yaml"}, (), {}, 4,
     "suites_unknown_field.yaml: $.models.tiny-a.licence: unknown field (did you mean 'license'?); accepted:", True),
    ("suites-bad-eval-value", {"suites": "suites_bad_eval_value.yaml"}, (), {}, 4,
     "suites_bad_eval_value.yaml: $.suites.tiny.eval.seq_len: 0 must be a positive integer", True),
    ("suites-unknown-eval-field", {"suites": "suites_unknown_eval_field.yaml"}, (), {}, 4,
     "$.suites.tiny.eval.seqlen: unknown field (did you mean 'seq_len'?); accepted: seq_len,", True),
    ("suites-unknown-provider", {"suites": "suites_unknown_provider.yaml"}, (), {}, 4,
     "suites_unknown_provider.yaml: $.datasets.text.provider: unknown provider 'local_txt'; "
     "did you mean 'local_text'?", True),
    ("suites-bad-source", {"suites": "suites_bad_source.yaml"}, (), {}, 4,
     "$.models.tiny-a.source: 'locall' is not accepted (did you mean 'local'?)", True),
    # tuned_edit_params.json
    ("tuned-wrong-schema", {"tuned": "tuned_wrong_schema.json"}, (), {}, 4,
     "tuned_wrong_schema.json: $._meta.schema: unknown schema 'tuned_params_v1'; accepted: tuned_edit_params_v1",
     True),
    ("tuned-missing-field", {"tuned": "tuned_missing_field.json"}, (), {}, 4,
     "tuned_missing_field.json: $.defaults.quant_rtn.group_size: missing", True),
    ("tuned-bad-scope", {"tuned": "tuned_bad_scope.json"}, (), {}, 4,
     "tuned_bad_scope.json: $.defaults.quant_rtn.scope: scope 'mlp' has unknown base 'mlp'", True),
    ("tuned-bad-status", {"tuned": "tuned_bad_status.json"}, (), {}, 4,
     "tuned_bad_status.json: $.defaults.quant_rtn.status: 'chosen' is not accepted", True),
    # option values, env slots, ini values
    ("opt-tier", {}, ("--proofpack-tier", "bogus"), {}, 4,
     "--proofpack-tier: 'bogus' is not accepted; accepted: balanced, conservative, aggressive", True),
    ("opt-clean-runs-negative", {}, ("--proofpack-clean-runs", "-1"), {}, 4,
     "--proofpack-clean-runs: -1 is out of range; accepted: 1 to 1000", False),
    ("opt-shard-k-above-n", {}, ("--proofpack-shard", "3/2"), {}, 4,
     "--proofpack-shard: '3/2' needs 1 <= K <= N", True),
    ("opt-shard-not-k-n", {}, ("--proofpack-shard", "two"), {}, 4,
     "--proofpack-shard: 'two' is not K/N", True),
    ("opt-unknown-suite", {}, ("--proofpack-suite", "tinny"), {}, 4,
     "--proofpack-suite: unknown suite 'tinny' (did you mean 'tiny'?); accepted: tiny", True),
    ("opt-dataset", {}, ("--proofpack-dataset", "nope"), {}, 4,
     "--proofpack-dataset: 'nope' is neither a dataset of suites.yaml (text) nor provider:arg", True),
    ("opt-models", {}, ("--proofpack-models", "tiny-a,unknownkey"), {}, 4,
     "--proofpack-models: unknown model 'unknownkey'; accepted: tiny-a, tiny-b", True),
    ("opt-missing-scenarios-file", {}, ("--proofpack-scenarios", "nowhere.json"), {}, 4,
     "nowhere.json: file not found", True),
    ("env-model-slot", {}, (), {"MODEL_1": "unknown"}, 4,
     "MODEL_1: unknown model 'unknown'; accepted: tiny-a, tiny-b", True),
    ("ini-tier", {"ini": "bad_tier.ini"}, (), {}, 4,
     "pytest.ini: proofpack_tier (ini twin of --proofpack-tier): 'bogus' is not accepted", True),
]


def _write_catalog(pytester: pytest.Pytester, files: dict[str, str]) -> dict[str, str]:
    """Copy the good catalog, ``files`` replacing some roles (role ``ini`` becomes pytest.ini); return a
    snapshot of the directory taken after the copy."""
    for role, name in {**GOOD, **files}.items():
        shutil.copyfile(DATA / name, pytester.path / ("pytest.ini" if role == "ini" else name))
    return _tree(pytester.path)


def _run_pytest(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, files: dict[str, str],
                args: tuple[str, ...], *, collect: bool, autoload: bool = False) -> pytest.RunResult:
    """Run pytest in a subprocess on the catalog :func:`_write_catalog` wrote.

    Without ``autoload`` the subprocess loads only this plugin (``-p pytest_proofpack.plugin``): the same
    ``pytest_configure`` path at half the start-up cost of loading every installed plugin.
    """
    chosen = {**GOOD, **files}
    argv = ["-p", "no:cacheprovider", "--proofpack-suite", "tiny", "--proofpack-out", "run",
            "--proofpack-cache", "cache", "--proofpack-device", "cpu"]
    argv += [arg for role, opt in ROLE_OPTION.items() for arg in (opt, chosen[role])]
    argv += ["--collect-only", "-q"] if collect else []
    if not autoload:
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        argv = ["-p", "pytest_proofpack.plugin", *argv]
    return pytester.runpytest_subprocess(*argv, *args)  # later options win: args may override the above


def _assert_usage_error(pytester: pytest.Pytester, result: pytest.RunResult, before: dict[str, str],
                        expected_exit: int, expected: str) -> None:
    assert result.ret == expected_exit, result.stdout.str() + result.stderr.str()
    line = _one_error_line(result.stderr.str(), "ERROR: ")
    assert expected in line
    assert "Traceback" not in result.stdout.str() and result.stdout.str().strip() == ""
    assert not (pytester.path / "run").exists() and not (pytester.path / "cache").exists()
    assert _tree(pytester.path) == before
    _no_temp_files(pytester.path)


@pytest.mark.parametrize(
    ("files", "args", "env", "expected_exit", "expected", "collect"),
    [pytest.param(*case[1:], id=case[0]) for case in USAGE_CASES],
)
def test_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], args: tuple[str, ...],
    env: dict[str, str], expected_exit: int, expected: str, collect: bool,
) -> None:
    before = _write_catalog(pytester, files)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = _run_pytest(pytester, monkeypatch, files, args, collect=collect)
    _assert_usage_error(pytester, result, before, expected_exit, expected)


def test_usage_error_through_the_installed_entry_point(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same one line when pytest finds the plugin by its entry point, with every other plugin loaded."""
    files = {"suites": "suites_unknown_model.yaml"}
    before = _write_catalog(pytester, files)
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    result = _run_pytest(pytester, monkeypatch, files, ("-n", "2"), collect=False, autoload=True)
    _assert_usage_error(pytester, result, before, 4, "suites_unknown_model.yaml: $.suites.tiny.models[1]: "
                        "unknown model key 'tiny-c'")


def test_good_catalog_is_accepted(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the corpus's good files collect (so each bad file fails for its one defect only)."""
    _write_catalog(pytester, {})
    result = _run_pytest(pytester, monkeypatch, {}, (), collect=True)
    assert result.ret == 0, result.stderr.str()
    # 2 models x (q_clean x 3 clean runs + prune_stress x 2 stress runs + nan_fault x 1)
    result.stdout.fnmatch_lines(["*12 tests collected*"])
    assert not (pytester.path / "run").exists()


def test_corpus_files_differ_from_the_good_ones_in_one_place() -> None:
    """Each structured bad file parses (except the syntax cases) and differs from its good twin."""
    import yaml

    for path in sorted(DATA.iterdir()):
        role = path.name.split("_", 1)[0]
        if path.name.startswith("good_") or role not in GOOD:
            continue
        assert path.read_text() != (DATA / GOOD[role]).read_text(), path.name
        if "bad_json" in path.name or "bad_yaml" in path.name:
            continue
        doc = yaml.safe_load(path.read_text()) if path.suffix == ".yaml" else json.loads(path.read_text())
        assert isinstance(doc, dict), path.name
    covered = {name for case in USAGE_CASES for name in case[1].values()}
    on_disk = {p.name for p in DATA.iterdir() if p.name.split("_", 1)[0] in GOOD and not p.name.startswith("good_")}
    assert on_disk <= covered, f"corpus files without a case: {sorted(on_disk - covered)}"


# ------------------------------------------------------------------------------ broken model directories


def _safetensors(path: Path, rng: random.Random, *, cut: int = 0) -> None:
    """A real safetensors file (one random F32 tensor); ``cut`` bytes removed from its end."""
    rows, cols = rng.randint(2, 9), rng.randint(2, 9)
    header = json.dumps({"w": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [0, 4 * rows * cols]}})
    payload = struct.pack(f"<{rows * cols}f", *(rng.uniform(-1, 1) for _ in range(rows * cols)))
    data = struct.pack("<Q", len(header)) + header.encode() + payload
    path.write_bytes(data[: len(data) - cut])


def test_broken_model_directories_error_with_bad_input(pytester: pytest.Pytester) -> None:
    rng = random.Random()
    root = pytester.path
    shutil.copyfile(DATA / "runtime_suites.yaml", root / "suites.yaml")
    for role in ("scenarios", "tuned"):
        shutil.copyfile(DATA / GOOD[role], root / GOOD[role])
    (root / "corpus.txt").write_text(" ".join(f"line {i} of the quick brown fox" for i in range(300)))
    config = json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128})
    models = root / "models"
    (models / "no-config").mkdir(parents=True)
    _safetensors(models / "no-config" / "model.safetensors", rng)
    (models / "no-weights").mkdir()
    (models / "no-weights" / "config.json").write_text(config)
    (models / "no-weights" / "pytorch_model.bin").write_bytes(rng.randbytes(64))  # never unpickled
    (models / "truncated").mkdir()
    (models / "truncated" / "config.json").write_text(config)
    cut = rng.randint(1, 8)
    _safetensors(models / "truncated" / "model.safetensors", rng, cut=cut)
    models_before = _tree(models)
    # Run from a sub-directory: relative model paths are relative to suites.yaml, not to the cwd.
    cwd = root / "elsewhere"
    cwd.mkdir()
    os.chdir(cwd)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--proofpack-suite", "tiny", f"--proofpack-suites={root / 'suites.yaml'}",
        f"--proofpack-scenarios={root / GOOD['scenarios']}", f"--proofpack-tuned-params={root / GOOD['tuned']}",
        f"--proofpack-out={root / 'run'}", f"--proofpack-cache={root / 'cache'}",
        "--proofpack-device", "cpu", "--proofpack-calibration-runs", "1", "-k", "nan_fault", "-rE",
    )
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == 1, out
    result.assert_outcomes(errors=3, deselected=3 * 5)
    assert "Traceback" not in out
    expected = {
        "no-config": f"{models / 'no-config' / 'config.json'}: missing config.json",
        "no-weights": f"{models / 'no-weights'}: no *.safetensors weights",
        "truncated": f"{models / 'truncated' / 'model.safetensors'}: truncated or padded safetensors file",
    }
    for key, text in expected.items():
        record = json.loads((root / "run" / "records" / key / "nan_fault" / "run_1.json").read_text())
        assert (record["outcome"], record["error_class"]) == ("error", "bad_input"), record
        assert text in record["error_message"] and "\n" not in record["error_message"], record
        assert record["report"] is None
        result.stdout.fnmatch_lines([f"[[]bad_input[]] {text}*"])
    verdict = json.loads((root / "run" / "results" / "final_verdict.json").read_text())
    assert verdict["verdict"] == "FAIL"
    assert _tree(models) == models_before
    assert not (root / "cache" / "models").exists() or not any((root / "cache" / "models").iterdir())
    _no_temp_files(root)
    # Each item's error section is the one-line message, without the chained original exception.
    assert "During handling of the above exception" not in out


# ------------------------------------------------------------------------------ proofpack CLI on bad packs


@pytest.fixture(scope="module")
def signed_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = make_run_dir(tmp_path_factory.mktemp("bad_packs") / "run", models=("m1",))
    assert cli_main(["report", "--rebuild", str(run_dir)]) == 0
    return run_dir / "proof_pack"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(DATA.parent.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pytest_proofpack.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _break_manifest(pack: Path) -> None:
    (pack / "manifest.json").write_text('{"format": "proof-pack-v1", ')


def _unsign_and_break_manifest(pack: Path) -> None:
    (pack / "manifest.signature.json").unlink()
    _break_manifest(pack)


# (id, how to damage a copy of the pack, verify args ({pack}/{tmp} substituted), expected exit, expected
# substring of the last line, stream that carries the message)
VERIFY_CASES = [
    ("missing-dir", None, ("verify", "{tmp}/no_such_pack"), 3, "no_such_pack: no such pack directory", "stderr"),
    ("manifest-not-json-signed", _break_manifest, ("verify", "{pack}"), 5,
     "manifest.json was changed after signing", "stderr"),
    ("unsigned-pack-with-broken-manifest", _unsign_and_break_manifest, ("verify", "{pack}"), 5,
     "manifest.signature.json is missing", "stderr"),
    ("json-inside-pack", None, ("verify", "{pack}", "--json", "{pack}/results/verify.json"), 2,
     "--json {pack}/results/verify.json: must be written outside the pack", "stderr"),
    ("missing-public-key", None, ("verify", "{pack}", "--public-key", "{tmp}/nokey.pem"), 2,
     "--public-key {tmp}/nokey.pem: cannot read", "stderr"),
    ("merge-into-nonempty-out", None, ("merge", "{pack}/..", "--out", "{pack}"), 2,
     "--out {pack}: exists and is not empty", "stderr"),
]


@pytest.mark.parametrize(
    ("damage", "args", "expected_exit", "expected", "stream"),
    [pytest.param(*case[1:], id=case[0]) for case in VERIFY_CASES],
)
def test_cli_bad_pack(
    signed_pack: Path, tmp_path: Path, damage: object, args: tuple[str, ...], expected_exit: int, expected: str,
    stream: str,
) -> None:
    pack = tmp_path / "proof_pack"
    shutil.copytree(signed_pack, pack)
    if callable(damage):
        damage(pack)
    before = _tree(tmp_path)
    argv = [a.format(pack=pack, tmp=tmp_path) for a in args]
    proc = _cli(*argv, cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode == expected_exit, text
    assert "Traceback" not in text
    last = [line for line in getattr(proc, stream).splitlines() if line.strip()][-1]
    assert expected.format(pack=pack, tmp=tmp_path) in last, text
    if expected_exit == 2:  # a ProofpackError: exactly one line, nothing on stdout
        _one_error_line(proc.stderr, f"proofpack {argv[0]}: error: ")
        assert proc.stdout == ""
    else:  # a verify report: one FAIL check, the result line names the failure class and the exit code
        assert len([line for line in proc.stderr.splitlines() if "[FAIL]" in line]) == 1, text
        assert f"exit {expected_exit})" in last
    assert _tree(tmp_path) == before, "the CLI changed files it must only read"
    _no_temp_files(tmp_path)


def test_cli_fetch_with_bad_suites_file(tmp_path: Path) -> None:
    shutil.copyfile(DATA / "suites_negative_params.yaml", tmp_path / "suites.yaml")
    before = _tree(tmp_path)
    proc = _cli("fetch", "--suites", str(tmp_path / "suites.yaml"), "--cache", str(tmp_path / "cache"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr, "proofpack fetch: error: ")
    assert "suites.yaml: $.models.tiny-b.params_b: -1.5 must be a positive number" in line
    assert _tree(tmp_path) == before


# ------------------------------------------------------------------------------ checkpoints that do not fit


def _subject_dirs(root: Path, baseline: Path) -> dict[str, dict[str, str]]:
    """Checkpoint subjects that must each be refused before a weight is read: scenario id -> subject."""
    from tinymodels import save_tiny, tiny_llama, tiny_tokenizer

    save_tiny(tiny_llama(5, layers=3, hidden=32), tiny_tokenizer(), root / "three-layers")
    save_tiny(tiny_llama(5, layers=2, hidden=32, vocab=96), tiny_tokenizer(), root / "small-vocab")
    shutil.copytree(baseline, root / "gptq")
    config = json.loads((root / "gptq" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (root / "gptq" / "config.json").write_text(json.dumps(config))
    shutil.copytree(baseline, root / "other-tokenizer")
    tok = json.loads((root / "other-tokenizer" / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.__getitem__)[40:42]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (root / "other-tokenizer" / "tokenizer.json").write_text(json.dumps(tok))
    local = {name: {"source": "local", "path": str(root / name)}
             for name in ("three-layers", "small-vocab", "gptq", "other-tokenizer", "nowhere")}
    return {**local, "hub-not-cached": {"source": "hub", "hub_id": "nobody/nothing", "revision": "0" * 40}}


def test_checkpoints_that_do_not_fit_the_baseline_error_with_one_line(
    pytester: pytest.Pytester, model_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from e2e_support import write_suite

    root = pytester.path
    args = write_suite(root, {"tiny-a": model_dirs["tiny-a"]})
    subjects = _subject_dirs(root, model_dirs["tiny-a"])
    scenarios = [{"id": sid, "category": "clean", "failure_class": "checkpoint", "strictness": "must_pass",
                  "intent": "clean_control", "primary_guard": "primary_metric",
                  "generation": {"kind": "checkpoint", "subject": subject}} for sid, subject in subjects.items()]
    (root / "ckpt.json").write_text(json.dumps({"schema": "proof_pack_scenarios_v1", "schema_version": 1,
                                                 "scenarios": scenarios}))
    monkeypatch.setenv("HF_HUB_CACHE", str(root / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = pytester.runpytest_subprocess(*args, "--proofpack-scenarios", str(root / "ckpt.json"), "-rE")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == 1, out
    result.assert_outcomes(errors=len(subjects))
    assert "Traceback" not in out
    expected = {
        "three-layers": ("bad_input", "layer count 3 differs from the baseline's 2"),
        "small-vocab": ("bad_input", "vocabulary size 96 differs from the baseline's 128"),
        "gptq": ("bad_input", "a GPTQ checkpoint (quantization_config.quant_method 'gptq'); its packed weights need "
                              "GPU kernels, which this CPU run lacks"),
        "other-tokenizer": ("bad_input", "its tokenizer's vocabulary differs from the baseline's (128 vs 128 "
                                         "tokens, 4 entries differ)"),
        "nowhere": ("bad_input", f"{root / 'nowhere' / 'config.json'} is missing"),
        "hub-not-cached": ("missing_asset", "nobody/nothing@" + "0" * 40 + " is not in the Hugging Face cache"),
    }
    for sid, (error_class, text) in expected.items():
        record = json.loads((root / "run" / "records" / "tiny-a" / sid / "run_1.json").read_text())
        assert (record["outcome"], record["error_class"]) == ("error", error_class), record
        assert text in record["error_message"] and "\n" not in record["error_message"], record


# ------------------------------------------------------------------------------ start-up errors, in process
#
# The same configure path as USAGE_CASES, run in this process (pytester.runpytest_inprocess): a fraction of a
# second per case instead of an interpreter start. Each case is the good catalog with one thing changed, made
# here from the good documents: (id, role, change, extra args, env, expected substring of the one error line).
# ``change`` edits the parsed document in place, or is the file's whole text; role None changes no file.

Change = Callable[[Any], None] | str | None


def _scenario(index: int, **fields: Any) -> Callable[[Any], None]:
    return lambda doc: doc["scenarios"][index].update(fields)


def _generation(index: int, **fields: Any) -> Callable[[Any], None]:
    return lambda doc: doc["scenarios"][index]["generation"].update(fields)


def _set(*path_and_value: Any) -> Callable[[Any], None]:
    *path, value = path_and_value

    def change(doc: Any) -> None:
        for key in path[:-1]:
            doc = doc[key]
        doc[path[-1]] = value

    return change


def _drop(*path: Any) -> Callable[[Any], None]:
    def change(doc: Any) -> None:
        for key in path[:-1]:
            doc = doc[key]
        del doc[path[-1]]

    return change


def _rename_key(mapping_path: tuple[Any, ...], old: str, new: str) -> Callable[[Any], None]:
    def change(doc: Any) -> None:
        for key in mapping_path:
            doc = doc[key]
        doc[new] = doc.pop(old)

    return change


def _billion_laughs() -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\nschema: proofpack_suites_v1\n"


GOOD_SUITES_TEXT = (DATA / GOOD["suites"]).read_text()
GOOD_SCENARIOS_TEXT = (DATA / GOOD["scenarios"]).read_text()
DEEP_JSON = "[" * 100_000 + "]" * 100_000
LONG_ID = "s" * 300

STARTUP_CASES: list[tuple[str, str | None, Change, tuple[str, ...], dict[str, str], str]] = [
    # options: bounds on every number, run count and path
    ("opt-stress-runs-huge", None, None, ("--proofpack-stress-runs", "100000000"), {},
     "--proofpack-stress-runs: 100000000 is out of range; accepted: 1 to 1000"),
    ("opt-two-word-path-moves-rootdir", None, None, ("--proofpack-presets", ".."), {},
     "--proofpack-presets ..: pytest took '..' for a test path and moved its rootdir from"),
    ("opt-clean-runs-zero", None, None, ("--proofpack-clean-runs", "0"), {},
     "--proofpack-clean-runs: 0 is out of range; accepted: 1 to 1000"),
    ("opt-calibration-runs-zero", None, None, ("--proofpack-calibration-runs", "0"), {},
     "--proofpack-calibration-runs: 0 is out of range; accepted: 1 to 1000"),
    ("opt-clean-runs-word", None, None, ("--proofpack-clean-runs", "three"), {},
     "--proofpack-clean-runs: 'three' is not an integer from 1 to 1000"),
    ("opt-timeout-nan", None, None, ("--proofpack-timeout", "nan"), {},
     "--proofpack-timeout: 'nan' is out of range; accepted: a number > 0 and <= 2.592e+06"),
    ("opt-timeout-inf", None, None, ("--proofpack-timeout", "inf"), {}, "--proofpack-timeout: 'inf' is out of range"),
    ("opt-timeout-negative", None, None, ("--proofpack-timeout", "-5"), {},
     "--proofpack-timeout: '-5' is out of range"),
    ("opt-timeout-word", None, None, ("--proofpack-timeout", "soon"), {},
     "--proofpack-timeout: 'soon' is not a number"),
    ("opt-seed-40-digits", None, None, ("--proofpack-seed", "1" * 40), {},
     "--proofpack-seed: '1111111111111111111111111111111111111111' is not an integer from 0 to 4294967295"),
    ("opt-seed-negative", None, None, ("--proofpack-seed", "-1"), {}, "--proofpack-seed: -1 is out of range"),
    ("opt-seed-2-32", None, None, ("--proofpack-seed", str(2**32)), {}, "--proofpack-seed: 4294967296 is out of range"),
    ("opt-gpu-memory-word", None, None, ("--proofpack-gpu-memory", "abc"), {},
     "--proofpack-gpu-memory: 'abc' is not a number"),
    ("opt-gpu-memory-zero", None, None, ("--proofpack-gpu-memory", "0"), {},
     "--proofpack-gpu-memory: '0' is out of range"),
    ("opt-backup-ram-negative", None, None, ("--proofpack-backup-ram", "-5"), {},
     "--proofpack-backup-ram: -5 is out of range"),
    ("opt-repeats-huge", None, None, ("--proofpack-repeats", "1000"), {}, "--proofpack-repeats: 1000 is out of range"),
    ("opt-out-is-a-file", None, None, ("--proofpack-out", "good_tuned.json"), {},
     "--proofpack-out: good_tuned.json is a file; name a directory"),
    ("opt-out-under-a-file", None, None, ("--proofpack-out", "good_tuned.json/run"), {},
     "--proofpack-out: good_tuned.json/run lies under the file good_tuned.json"),
    ("opt-sign-key-missing", None, None, ("--proofpack-sign-key", "nokey.pem"), {},
     "--proofpack-sign-key: nokey.pem: cannot read an unencrypted PEM private key"),
    ("opt-sign-key-not-a-key", None, None, ("--proofpack-sign-key", "good_tuned.json"), {},
     "--proofpack-sign-key: good_tuned.json: cannot read an unencrypted PEM private key"),
    ("opt-shard-zero", None, None, ("--proofpack-shard", "0/2"), {},
     "--proofpack-shard: '0/2' needs 1 <= K <= N <= 1000"),
    ("opt-shard-too-many", None, None, ("--proofpack-shard", "1/5000"), {},
     "--proofpack-shard: '1/5000' needs 1 <= K <= N <= 1000"),
    ("opt-shard-three-parts", None, None, ("--proofpack-shard", "1/2/3"), {}, "--proofpack-shard: '1/2/3' is not K/N"),
    ("opt-shard-empty", None, None, ("--proofpack-shard", "3/3"), {},
     "--proofpack-shard 3/3: the suite runs 2 model(s), so shard 3 would run nothing; use at most 2 shards"),
    ("opt-determinism", None, None, ("--proofpack-determinism", "exact"), {},
     "--proofpack-determinism: 'exact' is not accepted; accepted: throughput, strict"),
    ("opt-device", None, None, ("--proofpack-device", "tpu"), {}, "--proofpack-device: 'tpu' is not accepted"),
    ("opt-gate-rule", None, None, ("--proofpack-gate-rule", "lower"), {},
     "--proofpack-gate-rule: 'lower' is not accepted"),
    ("opt-bos", None, None, ("--proofpack-bos", "yes"), {}, "--proofpack-bos: 'yes' is not accepted"),
    ("ini-seed", "ini", "[pytest]\nproofpack_seed = -3\n", (), {},
     "pytest.ini: proofpack_seed (ini twin of --proofpack-seed): -3 is out of range"),
    ("ini-timeout-nan", "ini", "[pytest]\nproofpack_timeout = nan\n", (), {},
     "pytest.ini: proofpack_timeout (ini twin of --proofpack-timeout): 'nan' is out of range"),
    ("env-fake-gpus-garbage", None, None, (), {"PROOFPACK_FAKE_GPUS": "garbage"},
     "PROOFPACK_FAKE_GPUS='garbage' is not understood; use NxG"),
    ("env-fake-gpus-zero", None, None, (), {"PROOFPACK_FAKE_GPUS": "0x80"},
     "PROOFPACK_FAKE_GPUS='0x80' is not understood"),
    ("env-fake-gpus-not-json", None, None, (), {"PROOFPACK_FAKE_GPUS": "good_suites.yaml"},
     "PROOFPACK_FAKE_GPUS file good_suites.yaml is not readable JSON"),
    ("env-gpu-memory-nan", None, None, (), {"GPU_MEMORY_PER_DEVICE": "nan"},
     "GPU_MEMORY_PER_DEVICE='nan' is not a positive number of GiB"),
    # scenarios.json
    ("scn-deep-json", "scenarios", DEEP_JSON, (), {}, "scenarios.json: nested deeper than 64 levels"),
    ("scn-long-integer", "scenarios", GOOD_SCENARIOS_TEXT.replace('"catastrophic_required": true',
                                                                  '"catastrophic_required": ' + "9" * 5000), (), {},
     "scenarios.json: holds a number too long to read"),
    ("scn-300-char-id", "scenarios", _scenario(0, id=LONG_ID), (), {},
     "$.scenarios[0].id: id of 300 characters is too long; at most 100"),
    ("scn-id-with-slash", "scenarios", _scenario(0, id="q/clean"), (), {},
     "$.scenarios[0].id: 'q/clean' is not a valid id"),
    ("scn-id-not-ascii", "scenarios", _scenario(0, id="q_cléan"), (), {},
     "$.scenarios[0].id: 'q_cléan' is not a valid id"),
    ("scn-unknown-top-key", "scenarios", _rename_key((), "scenarios", "scenario"), (), {},
     "$.scenario: unknown field (did you mean 'scenarios'?)"),
    ("scn-unknown-field", "scenarios", _scenario(0, strictnes="must_pass"), (), {},
     "$.scenarios[0] (q_clean).strictnes: unknown field (did you mean 'strictness'?)"),
    ("scn-unknown-generation-field", "scenarios", _rename_key(("scenarios", 0, "generation"), "edit_spec", "editspec"),
     (), {}, "$.scenarios[0] (q_clean).generation.edit_spec: missing"),
    ("scn-generation-extra-field", "scenarios", _generation(0, edit_specs="x"), (), {},
     "$.scenarios[0] (q_clean).generation.edit_specs: unknown field (did you mean 'edit_spec'?)"),
    # checkpoint scenarios (bring your own weights)
    ("ckpt-no-subject", "scenarios", _scenario(0, generation={"kind": "checkpoint"}), (), {},
     "$.scenarios[0] (q_clean).generation.subject: must be an object {source: local|gguf|hub, path | hub_id + "
     "revision}"),
    ("ckpt-bad-source", "scenarios", _scenario(0, generation={"kind": "checkpoint", "subject": {
        "source": "s3", "path": "m"}}), (), {},
     "$.scenarios[0] (q_clean).generation.subject.source: 's3' is not accepted; accepted: local, gguf, hub"),
    ("ckpt-hub-unpinned", "scenarios", _scenario(0, generation={"kind": "checkpoint", "subject": {
        "source": "hub", "hub_id": "org/model"}}), (), {},
     "$.scenarios[0] (q_clean).generation.subject.revision: a hub subject needs hub_id and a pinned revision"),
    ("ckpt-gguf-not-gguf", "scenarios", _scenario(0, generation={"kind": "checkpoint", "subject": {
        "source": "gguf", "path": "model.bin"}}), (), {},
     "$.scenarios[0] (q_clean).generation.subject.path: 'model.bin' does not end in .gguf"),
    ("ckpt-local-no-path", "scenarios", _scenario(0, generation={"kind": "checkpoint", "subject": {
        "source": "local"}}), (), {},
     "generation.subject.path: a local subject needs path: <directory with config.json + safetensors>"),
    ("ckpt-subject-unknown-field", "scenarios", _scenario(0, generation={"kind": "checkpoint", "subject": {
        "source": "local", "path": "m", "revison": "x"}}), (), {},
     "$.scenarios[0] (q_clean).generation.subject.revison: unknown field; accepted: source, path, hub_id"),
    ("ckpt-generation-extra-field", "scenarios", _scenario(0, generation={"kind": "checkpoint", "subject": {
        "source": "local", "path": "m"}, "edit_spec": "quant_rtn:8:32:ffn"}), (), {},
     "$.scenarios[0] (q_clean).generation.edit_spec: unknown field"),
    ("ckpt-as-fault", "scenarios", _scenario(2, generation={"kind": "checkpoint", "subject": {
        "source": "local", "path": "m"}}), (), {},
     "$.scenarios[2] (nan_fault).generation.kind: a checkpoint scenario is a clean (release candidate) or stress "
     "(known-bad build) scenario, not an error_injection"),
    ("ckpt-must-detect", "scenarios", _scenario(1, strictness="must_detect", generation={
        "kind": "checkpoint", "subject": {"source": "local", "path": "m"}}), (), {},
     "$.scenarios[1] (prune_stress).strictness: 'must_detect' does not apply to a checkpoint; accepted: must_pass, "
     "must_fail, informational"),
    ("scn-unknown-suite", "scenarios", _scenario(0, suites=["tiny", "smokey"]), (), {},
     "$.scenarios[0] (q_clean).suites[1]: no suite runs scenario suite 'smokey' (did you mean 'smoke'?)"),
    ("scn-env-by-model-unknown", "scenarios", _generation(2, env_by_model={"tiny-z": {"INVARLOCK_X": "1"}}), (), {},
     "generation.env_by_model.tiny-z: unknown model key 'tiny-z' (did you mean 'tiny-b'?)"),
    ("scn-env-by-model-not-object", "scenarios", _generation(2, env_by_model=5), (), {},
     "generation.env_by_model: must be an object of model key"),
    ("scn-unknown-error-type", "scenarios", _generation(2, error_type="nan_injektion"), (), {},
     "$.scenarios[2] (nan_fault).generation.error_type: unknown fault 'nan_injektion' (did you mean 'nan_injection'?)"),
    ("scn-unknown-fault-env-key", "scenarios", _generation(2, error_type="spectral_moderate_scale",
                                                           env={"INVARLOCK_SPECTRAL_SCALE_FACTR": "2"}), (), {},
     "unknown env key INVARLOCK_SPECTRAL_SCALE_FACTR (did you mean 'INVARLOCK_SPECTRAL_SCALE_FACTOR'?)"),
    ("scn-env-value-bool", "scenarios", _generation(2, env={"INVARLOCK_NAN_FRAC": True}), (), {},
     "generation.env.INVARLOCK_NAN_FRAC: values must be strings or numbers"),
    ("scn-error-type-missing", "scenarios", _drop("scenarios", 2, "generation", "error_type"), (), {},
     "$.scenarios[2] (nan_fault).generation.error_type: missing"),
    ("scn-generation-missing", "scenarios", _drop("scenarios", 0, "generation"), (), {},
     "$.scenarios[0] (q_clean).generation: must be an object"),
    ("scn-top-level-list", "scenarios", "[]", (), {}, "$: top level must be an object with schema"),
    ("scn-empty-list", "scenarios", _set("scenarios", []), (), {}, "$.scenarios: must be a non-empty list"),
    ("scn-entry-not-object", "scenarios", _set("scenarios", 0, "q_clean"), (), {}, "$.scenarios[0]: must be an object"),
    ("scn-suites-not-list", "scenarios", _scenario(0, suites="tiny"), (), {},
     "$.scenarios[0] (q_clean).suites: must be a list of suite names"),
    ("scn-requirements-not-object", "scenarios", _scenario(1, requirements=[]), (), {},
     "$.scenarios[1] (prune_stress).requirements: must be an object"),
    ("scn-requirements-unknown", "scenarios", lambda doc: doc["scenarios"][1]["requirements"].update(catastrophic=True),
     (), {}, "requirements.catastrophic: unknown field"),
    ("scn-detectors-not-list", "scenarios", lambda doc: doc["scenarios"][1]["requirements"].update(
        detectors_any_of={}), (), {}, "requirements.detectors_any_of: must be a list of detector objects"),
    ("scn-detector-min-string", "scenarios", lambda doc: doc["scenarios"][1]["requirements"].update(
        detectors_any_of=[{"kind": "spectral_caps_applied", "min": "NaN"}]), (), {},
     "spectral_caps_applied.min must be a finite number, got 'NaN'"),
    ("scn-layer-out-of-range", "scenarios", _generation(1, edit_spec="magnitude_prune:0.5:ffn@layer=999"), (), {},
     "scenarios.json: scenario prune_stress: scope 'ffn@layer=999' names layer 999, but model tiny-a has 2 layers"),
    ("scn-directory", "scenarios", "<dir>", (), {}, "scenarios.json: is a directory; pass the file itself"),
    ("scn-not-utf8", "scenarios", "<latin1>", (), {}, "cannot read"),
    ("scn-empty-file", "scenarios", "", (), {}, "scenarios.json: line 1, column 1: not valid JSON"),
    ("scn-too-large", "scenarios", "<sparse>", (), {}, "scenarios.json: larger than 32 MiB"),
    # suites.yaml
    ("suites-models-5", "suites", _set("models", 5), (), {}, "suites.yaml: $.models: must be an object of model key"),
    ("suites-billion-laughs", "suites", _billion_laughs(), (), {},
     "suites.yaml: line 2, column 10: YAML aliases (*name) are not accepted; write the value out"),
    ("suites-deep-yaml", "suites", "schema: proofpack_suites_v1\nsuites: " + "[" * 200 + "]" * 200 + "\n", (), {},
     "suites.yaml: nested deeper than 64 levels"),
    ("suites-long-integer", "suites", GOOD_SUITES_TEXT.replace("params_b: 0.001", "params_b: " + "9" * 5000), (), {},
     "suites.yaml: holds a value that cannot be read"),
    ("suites-evals-for-eval", "suites", _rename_key(("suites", "tiny"), "eval", "evals"), (), {},
     "suites.yaml: $.suites.tiny.evals: unknown field (did you mean 'eval'?)"),
    ("suites-unknown-top-key", "suites", _rename_key((), "suites", "suite"), (), {},
     "suites.yaml: $.suite: unknown field (did you mean 'suites'?)"),
    ("suites-asset-sha-not-hex", "suites", _set("assets", {"w": {
        "kind": "pypi_wheel", "package": "p", "version": "1", "sha256": "z" * 64, "members": ["*"]}}), (), {},
     "suites.yaml: $.assets.w.sha256: must be 64 lower-case hex characters"),
    ("suites-asset-unknown-field", "suites", _set("assets", {"w": {
        "kind": "pypi_wheel", "package": "p", "version": "1", "sha256": "a" * 64, "members": ["*"], "sha": "x"}}),
     (), {}, "suites.yaml: $.assets.w.sha: unknown field"),
    ("suites-assets-not-object", "suites", _set("assets", [1]), (), {}, "suites.yaml: $.assets: must be an object"),
    ("suites-params-huge", "suites", _set("models", "tiny-a", "params_b", 1e9), (), {},
     "$.models.tiny-a.params_b: 1000000000.0 must be a positive number (parameters in billions, at most 100000)"),
    ("suites-seq-len-huge", "suites", _set("suites", "tiny", "eval", "seq_len", 10**9), (), {},
     "$.suites.tiny.eval.seq_len: 1000000000 must be an integer from 1 to 1048576"),
    ("suites-eval-not-object", "suites", _set("suites", "tiny", "eval", 5), (), {},
     "$.suites.tiny.eval: must be an object of eval field: value"),
    ("suites-model-eval-unknown", "suites", _set("models", "tiny-a", "eval", {"seqlen": 8}), (), {},
     "$.models.tiny-a.eval.seqlen: unknown field (did you mean 'seq_len'?)"),
    ("suites-model-key-slash", "suites", lambda doc: doc["models"].update({"tiny/c": doc["models"]["tiny-a"]}), (), {},
     "$.models.tiny/c: 'tiny/c' is not a valid model key"),
    ("suites-model-key-long", "suites", lambda doc: doc["models"].update({"m" * 300: doc["models"]["tiny-a"]}), (), {},
     "model key of 300 characters is too long; at most 100"),
    ("suites-model-not-object", "suites", _set("models", "tiny-a", "x"), (), {}, "$.models.tiny-a: must be an object"),
    ("suites-datasets-not-object", "suites", _set("datasets", 5), (), {}, "$.datasets: must be an object"),
    ("suites-dataset-unknown-field", "suites", _set("datasets", "text", "pth", "x"), (), {},
     "$.datasets.text.pth: unknown field"),
    ("suites-suites-list", "suites", _set("suites", []), (), {}, "$.suites: must be a non-empty object"),
    ("suites-suite-models-5", "suites", _set("suites", "tiny", "models", 5), (), {},
     "$.suites.tiny.models: must be a non-empty list of model keys"),
    ("suites-suite-name-long", "suites", lambda doc: doc["suites"].update({"t" * 300: doc["suites"]["tiny"]}), (), {},
     "suite name of 300 characters is too long"),
    ("suites-directory", "suites", "<dir>", (), {}, "suites.yaml: is a directory; pass the file itself"),
    # tuned_edit_params.json
    ("tuned-deep-json", "tuned", DEEP_JSON, (), {}, "tuned.json: nested deeper than 64 levels"),
    ("tuned-top-level-list", "tuned", "[1]", (), {}, "tuned.json: $: top level must be an object"),
    ("tuned-models-5", "tuned", _set("models", 5), (), {}, "tuned.json: $.models: must be an object"),
    ("tuned-unknown-edit-type", "tuned", _rename_key(("defaults",), "quant_rtn", "quant_rtm"), (), {},
     "$.defaults.quant_rtm: 'quant_rtm' is not accepted (did you mean 'quant_rtn'?)"),
    ("tuned-schema-version", "tuned", _set("_meta", "schema_version", 2), (), {},
     "tuned.json: $._meta.schema_version: unsupported version 2"),
]

#: The file each role's changed document is written to, and the option that names it.
_CHANGED = {"scenarios": ("scenarios.json", "--proofpack-scenarios"), "suites": ("suites.yaml", "--proofpack-suites"),
            "tuned": ("tuned.json", "--proofpack-tuned-params")}


def _write_changed(path: Path, role: str, change: Change) -> None:
    """Write the good document of ``role`` to ``path`` with ``change`` applied (see STARTUP_CASES)."""
    import yaml

    if change == "<dir>":
        path.mkdir()
    elif change == "<latin1>":
        path.write_bytes((DATA / GOOD[role]).read_text().replace("q_clean", "q_cl\xe9an").encode("latin-1"))
    elif change == "<sparse>":
        with path.open("wb") as fh:
            fh.truncate(33 * 2**20)
    elif isinstance(change, str):
        path.write_text(change, encoding="utf-8")
    else:
        good = DATA / GOOD[role]
        doc = yaml.safe_load(good.read_text()) if good.suffix == ".yaml" else json.loads(good.read_text())
        assert change is not None
        change(doc)
        plain = json.loads(json.dumps(doc))  # no shared objects, so yaml writes no aliases of its own
        path.write_text(yaml.safe_dump(plain) if good.suffix == ".yaml" else json.dumps(plain), encoding="utf-8")


def _startup_catalog(pytester: pytest.Pytester, role: str | None, change: Change) -> list[str]:
    """The good catalog (and two local model configs of 2 layers) in pytester's directory with one change;
    return the pytest arguments that use it."""
    for name in GOOD.values():
        shutil.copyfile(DATA / name, pytester.path / name)
    for key in ("tiny-a", "tiny-b"):
        (pytester.path / "models" / key).mkdir(parents=True)
        (pytester.path / "models" / key / "config.json").write_text('{"num_hidden_layers": 2}')
    files = {"scenarios": GOOD["scenarios"], "suites": GOOD["suites"], "tuned": GOOD["tuned"]}
    if role == "ini":
        (pytester.path / "pytest.ini").write_text(str(change))
    elif role is not None:
        files[role] = _CHANGED[role][0]
        _write_changed(pytester.path / files[role], role, change)
    argv = ["-p", "no:cacheprovider", "--proofpack-suite", "tiny", "--proofpack-out", "run",
            "--proofpack-cache", "cache", "--proofpack-device", "cpu", "--collect-only", "-q"]
    return argv + [arg for r, (_, option) in _CHANGED.items() for arg in (option, files[r])]


@pytest.mark.parametrize(
    ("role", "change", "args", "env", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in STARTUP_CASES],
)
def test_startup_error_in_process(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, role: str | None, change: Change,
    args: tuple[str, ...], env: dict[str, str], expected: str,
) -> None:
    argv = _startup_catalog(pytester, role, change)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = _tree(pytester.path)
    result = pytester.runpytest_inprocess(*argv, *args)
    _assert_usage_error(pytester, result, before, 4, expected)


def test_good_catalog_is_accepted_in_process(pytester: pytest.Pytester) -> None:
    """The control of STARTUP_CASES: the unchanged catalog collects."""
    result = pytester.runpytest_inprocess(*_startup_catalog(pytester, None, None))
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines(["*12 tests collected*"])


# The same errors under xdist (-n 2 and -n auto), where some used to be a traceback with exit 1.
XDIST_CASES = [
    ("fake-gpus-n2", ("-n", "2"), {"PROOFPACK_FAKE_GPUS": "garbage"},
     "PROOFPACK_FAKE_GPUS='garbage' is not understood"),
    ("fake-gpus-n-auto", ("-n", "auto"), {"PROOFPACK_FAKE_GPUS": "0x80"},
     "PROOFPACK_FAKE_GPUS='0x80' is not understood"),
    ("gpu-memory-n2", ("-n", "2", "--proofpack-gpu-memory", "abc"), {},
     "--proofpack-gpu-memory: 'abc' is not a number"),
    ("gpu-memory-n-auto", ("-n", "auto", "--proofpack-gpu-memory", "abc"), {},
     "--proofpack-gpu-memory: 'abc' is not a number"),
    ("timeout-nan-n2", ("-n", "2", "--proofpack-timeout", "nan"), {}, "--proofpack-timeout: 'nan' is out of range"),
    ("seed-n-auto", ("-n", "auto", "--proofpack-seed", "1" * 40), {}, "--proofpack-seed: '1111"),
]


@pytest.mark.parametrize(("args", "env", "expected"), [pytest.param(*c[1:], id=c[0]) for c in XDIST_CASES])
def test_startup_error_under_xdist(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], env: dict[str, str],
    expected: str,
) -> None:
    before = _write_catalog(pytester, {})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    result = _run_pytest(pytester, monkeypatch, {}, args, collect=False, autoload=True)
    _assert_usage_error(pytester, result, before, 4, expected)


def test_corpus_size() -> None:
    every = (*USAGE_CASES, *STARTUP_CASES, *XDIST_CASES, *VERIFY_CASES, *CLI_CASES)
    assert len(every) >= 100, len(every)
    names = [c[0] for c in every]
    assert len(set(names)) == len(names)


# ------------------------------------------------------------------------------ proofpack CLI, in process
#
# (id, how to prepare tmp (given the signed pack's run directory copied to tmp/run), argv ({run}/{tmp}
# substituted), env, expected exit, expected substring of the one error line)


def _deep_verdict(tmp: Path) -> None:
    (tmp / "run" / "results").mkdir(exist_ok=True)
    (tmp / "run" / "results" / "final_verdict.json").write_text("[" * 100_000 + "]" * 100_000)


def _fifo_record(tmp: Path) -> None:
    os.mkfifo(tmp / "run" / "records" / "m1" / "nan_injection" / "run_9.json")


def _deep_record(tmp: Path) -> None:
    (tmp / "run" / "records" / "m1" / "nan_injection" / "run_9.json").write_text("[" * 100_000 + "]" * 100_000)


def _keys_file(tmp: Path) -> None:
    (tmp / "keys.txt").write_text("# pinned\nnot-a-fingerprint\n")


CLI_CASES: list[tuple[str, Callable[[Path], None] | None, tuple[str, ...], dict[str, str], int, str]] = [
    ("report-deep-verdict", _deep_verdict, ("report", "{run}"), {}, 4, "final_verdict.json: nested deeper than 64"),
    ("merge-fifo-record", _fifo_record, ("merge", "{run}", "--out", "{tmp}/out"), {}, 2,
     "records/m1/nan_injection/run_9.json is a symlink or special file"),
    ("merge-deep-record", _deep_record, ("merge", "{run}", "--out", "{tmp}/out"), {}, 2,
     "records/m1/nan_injection/run_9.json: nested deeper than 64 levels"),
    ("merge-not-a-shard", None, ("merge", "{run}", "--out", "{tmp}/out"), {}, 2, "not a shard"),
    ("merge-missing-dir", None, ("merge", "{tmp}/nowhere", "--out", "{tmp}/out"), {}, 2, "no such run directory"),
    ("verify-trusted-keys-garbage", _keys_file, ("verify", "{run}/proof_pack", "--trusted-keys", "{tmp}/keys.txt"),
     {}, 2, "--trusted-keys {tmp}/keys.txt: line 2 is neither a PEM key nor a 64-hex key fingerprint"),
    ("verify-trusted-keys-missing", None, ("verify", "{run}/proof_pack", "--trusted-keys", "{tmp}/nokeys"), {}, 2,
     "--trusted-keys {tmp}/nokeys: cannot read"),
    ("verify-trusted-keys-env-missing", None, ("verify", "{run}/proof_pack"),
     {"PROOFPACK_TRUSTED_KEYS": "/nonexistent/keys.pem"}, 2,
     "PROOFPACK_TRUSTED_KEYS=/nonexistent/keys.pem: cannot read"),
    ("verify-trusted-keys-empty-file", lambda tmp: (tmp / "keys.txt").write_text("# none\n"),
     ("verify", "{run}/proof_pack", "--trusted-keys", "{tmp}/keys.txt"), {}, 2, "holds no key"),
    ("report-rebuild-not-a-run", None, ("report", "--rebuild", "{tmp}"), {}, 3, "not a run directory (no run.json)"),
    ("certify-no-such-subject", None, ("certify", "--model", "smollm2-135m", "--subject", "{tmp}/nowhere"), {}, 2,
     "--subject {tmp}/nowhere: no such file or directory, and not a hub id (org/name)"),
    ("certify-hub-unpinned", None, ("certify", "--model", "smollm2-135m", "--subject", "org/model"), {}, 2,
     "--subject org/model: a hub subject needs a pinned revision: org/model@<commit sha> or --revision"),
    ("certify-file-not-gguf", None, ("certify", "--model", "smollm2-135m", "--subject", "{run}/run.json"), {}, 2,
     "a file subject must be a .gguf file; for safetensors give the directory"),
    ("certify-unknown-model", None, ("certify", "--model", "smollm3", "--subject", "{run}"), {}, 2,
     "--model: unknown model 'smollm3'"),
    ("certify-unknown-suite", None, ("certify", "--model", "smollm2-135m", "--subject", "{run}", "--suite", "smok"),
     {}, 2, "--suite: unknown suite 'smok' (did you mean 'smoke'?)"),
]


@pytest.mark.parametrize(("prepare", "args", "env", "expected_exit", "expected"),
                         [pytest.param(*case[1:], id=case[0]) for case in CLI_CASES])
def test_cli_bad_input_in_process(
    signed_pack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    prepare: Callable[[Path], None] | None, args: tuple[str, ...], env: dict[str, str], expected_exit: int,
    expected: str,
) -> None:
    shutil.copytree(signed_pack.parent, tmp_path / "run", symlinks=True)
    monkeypatch.chdir(tmp_path)  # a run that got as far as starting would make proof_pack_runs/ here
    if prepare is not None:
        prepare(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    argv = [a.format(run=tmp_path / "run", tmp=tmp_path) for a in args]
    assert cli_main(argv) == expected_exit
    out, err = capsys.readouterr()
    line = _one_error_line(err, f"proofpack {argv[0]}: error: ")
    assert expected.format(tmp=tmp_path) in line
    assert "Traceback" not in out
    assert not (tmp_path / "out").exists() and not (tmp_path / "proof_pack_runs").exists()


@pytest.fixture(autouse=True)
def _restore_cwd() -> Iterator[None]:
    cwd = os.getcwd()
    yield
    os.chdir(cwd)
