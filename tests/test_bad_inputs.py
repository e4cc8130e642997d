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
from collections.abc import Iterator
from pathlib import Path

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
        "-p", "no:cacheprovider", "--proofpack-suite", "tiny", "--proofpack-suites", str(root / "suites.yaml"),
        "--proofpack-scenarios", str(root / GOOD["scenarios"]), "--proofpack-tuned-params",
        str(root / GOOD["tuned"]), "--proofpack-out", str(root / "run"), "--proofpack-cache", str(root / "cache"),
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


@pytest.fixture(autouse=True)
def _restore_cwd() -> Iterator[None]:
    cwd = os.getcwd()
    yield
    os.chdir(cwd)
