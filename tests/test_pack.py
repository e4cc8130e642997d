"""Proof pack build, verify (every tamper class pinned to its exit code) and merge."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_verdict import catalog, passing_report

from pytest_proofpack.catalog.expansion import plan_cases, shard_models
from pytest_proofpack.errors import PackError
from pytest_proofpack.pack import CONTROL_FILES, build_pack, merge_runs, seal_pack, sha256_file, verify_pack
from pytest_proofpack.pack.coverage import plan_digest
from pytest_proofpack.pack.provenance import config_digest_of, metadata_catalog_digest
from pytest_proofpack.pack.seal import signed_claims
from pytest_proofpack.pack.verify import UNPINNED_WARNING
from pytest_proofpack.results import Record, with_evidence
from pytest_proofpack.signing import load_signing_key, make_statement, sign_statement
from pytest_proofpack.verdict import compute_verdict, dump_json, load_run


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")


def make_run_dir(
    root: Path,
    models: Sequence[str] | None = None,
    runs: Sequence[int] = (1,),
    *,
    seed: int | None = None,
    config_extra: dict[str, Any] | None = None,
    scenarios: list[dict[str, Any]] | None = None,
    plan_models: Sequence[str] | None = None,
    shard: tuple[int, int] | None = None,
) -> Path:
    """Write a schema-complete run directory whose reports make every scenario behave as expected.

    The run is consistent as the plugin writes one: run.json's config holds the catalog digest of ``metadata/``,
    the config digest is the config's, the plan is ``plan_models`` x the scenarios x ``len(runs)`` clean/stress
    runs (one run per fault), ``shard=(k, n)`` keeps that shard's models, and each record lists its evidence
    digests. ``models`` (default: the plan's, or the shard's) are the models whose records are written; the plan's
    models default to ``models`` (an unsharded run of them), else ``m1, m2``.
    ``config_extra`` adds config values (a different configuration). Probe sidecars are separate files (as the
    engine writes them); each model has calibration evidence; the environment mentions the run directory's
    absolute path (the pack must scrub it).
    """
    rng = random.Random(seed)
    scenarios = scenarios if scenarios is not None else catalog()
    plan_models = list(plan_models or (models if models is not None and shard is None else ("m1", "m2")))
    covered = shard_models(plan_models, shard) if shard else plan_models
    models = list(models) if models is not None else covered
    root.mkdir(parents=True, exist_ok=True)
    meta = root / "metadata"
    _write(meta / "scenarios.json", {"schema": "proof_pack_scenarios_v1", "schema_version": 1, "scenarios": scenarios})
    (meta / "suites.yaml").write_text("subset:\n  models: [m1, m2, m3]\n")
    _write(meta / "tuned_edit_params.json", {"quant_rtn": {"bits": 4, "group_size": 32}})
    _write(meta / "model_revisions.json", {m: {"revision": "abc"} for m in models})
    _write(meta / "environment.json",
           {"python_version": "3.11", "platform": "linux", "cache": str(root.absolute() / "cache")})
    digest = metadata_catalog_digest(root)
    config = {"suite": "subset", "catalog_digest": digest, "models": sorted(plan_models), **(config_extra or {})}
    config_digest = config_digest_of(config)
    every = plan_cases(plan_models, scenarios, "subset", len(runs), len(runs))
    planned = plan_cases(covered, scenarios, "subset", len(runs), len(runs))
    _write(root / "run.json", {
        "schema": "proofpack_run_v1", "suite": "subset", "config_digest": config_digest, "config": config,
        "scenarios_digest": digest, "engine_version": "proofpack-engine-1",
        "models": [{"key": m, "hub_id": f"org/{m}", "revision": hashlib.sha1(m.encode()).hexdigest()}
                   for m in covered],
        "plan": {"models": plan_models, "scenario_suite": "subset", "clean_runs": len(runs),
                 "stress_runs": len(runs), "cases": len(every), "digest": plan_digest(every)},
        "shard": {"index": shard[0], "count": shard[1], "models": covered} if shard else None,
        "planned": [list(p) for p in planned],
        "options": {"out": str(root.absolute()), "runs": len(runs)},
    })
    for m in models:
        _write(root / "reports" / m / "calibration" / "run_1" / "calibration.json",
               {"null_runs": 3, "false_alarm_rate": rng.random() / 10})
    for m, sid, r in planned:
        if m in models:
            _write_case(root, m, sid, r, config_digest, rng)
    return root


def _write_case(root: Path, m: str, sid: str, r: int, config_digest: str, rng: random.Random) -> None:
    """One case's report (probe sidecars apart) and its record, with the evidence digests the controller takes."""
    report = passing_report(m, sid, r, rng)
    rel = f"reports/{m}/{sid}/run_{r}"
    for side in ("rmt_probe", "ve_probe"):
        if side in report:
            _write(root / rel / f"{side}.json", report.pop(side))
    _write(root / rel / "evaluation.report.json", report)
    record = Record(m, sid, r, config_digest, "passed", None, None, f"{rel}/evaluation.report.json",
                    round(rng.uniform(0.1, 3.0), 3), f"anchor::{m}::{sid}[run{r}]")
    _write(root / "records" / m / sid / f"run_{r}.json", with_evidence(record, root).to_json())


def restamp(run_dir: Path) -> None:
    """Re-take every record's evidence digests, as if the reports edited by a test had been written that way."""
    for path in (run_dir / "records").glob("*/*/run_*.json"):
        record = Record.from_json(json.loads(path.read_text()))
        path.write_text(json.dumps(with_evidence(record, run_dir).to_json(), indent=2))


def _key(tmp: Path) -> Path:
    path = tmp / "signer.pem"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def _public(tmp: Path, private: Path) -> Path:
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    path = tmp / (private.stem + ".pub")
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def _files(pack: Path) -> list[str]:
    return sorted(p.relative_to(pack).as_posix() for p in pack.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    tmp = tmp_path_factory.mktemp("built")
    run_dir = make_run_dir(tmp / "run", models=("m1",))
    key = _key(tmp)
    build_pack(run_dir, sign_key=key)
    yield run_dir / "proof_pack", key


@pytest.fixture
def pack_copy(built: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    pack, key = built
    dest = tmp_path / "pack"
    shutil.copytree(pack, dest, symlinks=True)
    return dest, key


def test_build_and_verify_strict(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path / "run", seed=random.randrange(1 << 30))
    pack = build_pack(run_dir)
    assert pack == run_dir / "proof_pack"
    result = verify_pack(pack, strict=True, public_key=None)
    assert result.exit_code == 0, result.message
    assert result.verdict == "PASS" and result.warnings == [UNPINNED_WARNING]
    assert result.signer is not None and result.signer["ephemeral"] is True and result.signer["pinned"] is None
    files = _files(pack)
    for expected in (
        "index.html",
        "checksums.sha256",
        "manifest.json",
        "manifest.signature.json",
        "results/final_verdict.json",
        "results/detection_matrix.json",
        "metadata/run.json",
        "metadata/scenarios.json",
        "metadata/environment.json",
        "reports/m2/calibration/run_1/calibration.json",
        "reports/m1/rmt_norm_noise/run_1/rmt_probe.json",
        "records/m2/nan_injection/run_1.json",
    ):
        assert expected in files
    lines = (pack / "checksums.sha256").read_text().splitlines()
    assert [line.split("  ./", 1)[1] for line in lines] == sorted(set(files) - CONTROL_FILES)
    for line in lines:
        digest, rel = line.split("  ./", 1)
        assert sha256_file(pack / rel) == digest
    manifest = json.loads((pack / "manifest.json").read_text())
    assert manifest["format"] == "proof-pack-v1" and manifest["schema_version"] == 1
    assert manifest["generated_at"].endswith("Z") and manifest["verdict"] == "PASS"
    assert manifest["checksums_sha256_digest"] == sha256_file(pack / "checksums.sha256")
    assert manifest["subject"]["digest"] == "sha256:" + sha256_file(pack / "results/final_verdict.json")
    assert {m["name"] for m in manifest["materials"]} >= {"scenarios", "run", "model_revisions"}
    assert [m["key"] for m in manifest["models"]] == ["m1", "m2"]
    assert manifest["signing"]["ephemeral"] is True
    envelope = json.loads((pack / "manifest.signature.json").read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert [s["name"] for s in statement["subject"]] == ["results/final_verdict.json", "checksums.sha256"]
    assert statement["predicate"]["manifest"]["digest"]["sha256"] == sha256_file(pack / "manifest.json")
    # no absolute path of the building machine anywhere in the pack
    for rel in files:
        text = (pack / rel).read_bytes()
        assert str(tmp_path).encode() not in text, rel
    # the pack verdict equals the run directory's
    loaded = load_run(run_dir)
    assert json.loads((pack / "results/final_verdict.json").read_text()) == compute_verdict(
        loaded.scenarios, loaded.planned, loaded.results
    )


def test_rebuild_is_atomic_and_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = make_run_dir(tmp_path / "run", models=("m1",))
    key = _key(tmp_path)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first = build_pack(run_dir, sign_key=key)
    snapshot = {rel: (first / rel).read_bytes() for rel in _files(first)}
    (first / "stray.txt").write_text("old pack content")
    second = build_pack(run_dir, sign_key=key)
    assert {rel: (second / rel).read_bytes() for rel in _files(second)} == snapshot
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "metadata",
        "proof_pack",
        "records",
        "reports",
        "run.json",
    ]
    assert json.loads((second / "manifest.json").read_text())["generated_at"] == "2023-11-14T22:13:20Z"


def _flip(path: Path) -> bytes:
    data = path.read_bytes()
    pos = len(data) // 2
    path.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :])
    return data


def _expected_flip_code(rel: str) -> int:
    if rel in ("manifest.json", "manifest.signature.json"):
        return 5  # the signed manifest digest / the envelope no longer verify
    return 6  # checksums.sha256 breaks the digest binding; every other file its checksum


def test_flip_one_byte_in_every_file(built: tuple[Path, Path]) -> None:
    pack, key = built
    public = _public(pack.parent, key)
    files = _files(pack)
    assert len(files) > 50
    codes = {}
    for rel in files:
        original = _flip(pack / rel)
        try:
            codes[rel] = verify_pack(pack, strict=True, public_key=public).exit_code
        finally:
            (pack / rel).write_bytes(original)
    assert codes == {rel: _expected_flip_code(rel) for rel in files}
    assert verify_pack(pack, strict=True, public_key=public).exit_code == 0


def _resign(pack: Path, key: Path) -> None:
    """Re-sign the pack's current manifest/checksums/verdict bytes (what an attacker holding the key does)."""
    try:
        manifest = json.loads((pack / "manifest.json").read_text())
    except ValueError:
        manifest = {}
    statement = make_statement(
        [
            ("results/final_verdict.json", sha256_file(pack / "results/final_verdict.json")),
            ("checksums.sha256", sha256_file(pack / "checksums.sha256")),
        ],
        {"manifest": {"name": "manifest.json", "digest": {"sha256": sha256_file(pack / "manifest.json")}},
         "verdict": manifest.get("verdict"), "suite": manifest.get("suite"),
         **signed_claims(json.loads((pack / "metadata/run.json").read_text()))},
    )
    (pack / "manifest.signature.json").write_text(dump_json(sign_statement(statement, load_signing_key(key))))


def _edit_manifest(pack: Path, key: Path, edit: Any) -> None:
    manifest = json.loads((pack / "manifest.json").read_text())
    edit(manifest)
    (pack / "manifest.json").write_text(dump_json(manifest))
    _resign(pack, key)


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (lambda m: m.update(format="proof-pack-v0"), 4),
        (lambda m: m.pop("checksums_sha256_digest"), 4),
        (lambda m: m["subject"].update(digest="sha256:1234"), 4),
        (lambda m: m.update(generated_at="yesterday"), 4),
        (lambda m: m.update(suite="full"), 0),  # a re-signed, consistent manifest edit is not a failure
        (lambda m: m["materials"][0].update(digest="sha256:" + "0" * 64), 6),
        (
            lambda m: m["materials"].append(
                {"name": "x", "path": "metadata/x.json", "digest": "sha256:" + "0" * 64}
            ),
            6,
        ),
        (lambda m: m["signing"].update(fingerprint="0" * 64), 5),
    ],
)
def test_manifest_schema_and_references(pack_copy: tuple[Path, Path], edit: Any, code: int) -> None:
    pack, key = pack_copy
    _edit_manifest(pack, key, edit)
    assert verify_pack(pack, strict=True).exit_code == code


def test_manifest_not_json_is_schema_error(pack_copy: tuple[Path, Path]) -> None:
    pack, key = pack_copy
    (pack / "manifest.json").write_text("{not json")
    _resign(pack, key)
    result = verify_pack(pack, strict=True)
    assert (result.exit_code, result.message) == (4, "manifest.json is not valid JSON")


@pytest.mark.parametrize(
    ("rel", "code"),
    [
        ("manifest.json", 3),
        ("checksums.sha256", 3),
        ("results/final_verdict.json", 3),
        ("manifest.signature.json", 5),
        ("reports/m1/nan_injection/run_1/evaluation.report.json", 6),
        ("reports/m1/rmt_norm_noise/run_1/rmt_probe.json", 6),
        ("metadata/run.json", 6),
        ("index.html", 6),
    ],
)
@pytest.mark.parametrize("strict", [True, False])
def test_delete_a_file(pack_copy: tuple[Path, Path], rel: str, code: int, strict: bool) -> None:
    pack, _ = pack_copy
    (pack / rel).unlink()
    assert verify_pack(pack, strict=strict).exit_code == code


def test_missing_pack_dir(tmp_path: Path) -> None:
    assert verify_pack(tmp_path / "nope", strict=False).exit_code == 3


def test_extra_file_strict_only(pack_copy: tuple[Path, Path]) -> None:
    pack, _ = pack_copy
    (pack / "reports" / "m1" / "notes.txt").write_text("added later")
    strict = verify_pack(pack, strict=True)
    assert strict.exit_code == 6 and "reports/m1/notes.txt" in strict.message
    loose = verify_pack(pack, strict=False)
    assert loose.exit_code == 0 and any("notes.txt" in w for w in loose.warnings)
    (pack / "reports" / "m1" / "notes.txt").unlink()
    assert verify_pack(pack, strict=True).exit_code == 0
    (pack / ".DS_Store").write_text("finder")  # archiver litter is an unlisted file like any other
    strict = verify_pack(pack, strict=True)
    assert strict.exit_code == 6 and ".DS_Store" in strict.message


def test_rename_a_file(pack_copy: tuple[Path, Path]) -> None:
    pack, _ = pack_copy
    src = pack / "reports/m1/quant_4bit_clean/run_1/evaluation.report.json"
    src.rename(src.with_name("evaluation.report.old.json"))
    for strict in (True, False):
        result = verify_pack(pack, strict=strict)
        assert result.exit_code == 6 and "listed file is missing" in result.message


def test_symlinks_are_integrity_failures(pack_copy: tuple[Path, Path], tmp_path: Path) -> None:
    pack, _ = pack_copy
    target = pack / "reports/m1/inf_injection/run_1/evaluation.report.json"
    outside = tmp_path / "outside.json"
    shutil.copy(target, outside)
    target.unlink()
    target.symlink_to(outside)  # same bytes, but a link out of the pack
    result = verify_pack(pack, strict=False)
    assert result.exit_code == 6 and "symlink" in result.message
    target.unlink()
    shutil.copy(outside, target)
    assert verify_pack(pack, strict=True).exit_code == 0
    (pack / "reports" / "linked").symlink_to(tmp_path)
    assert verify_pack(pack, strict=False).exit_code == 6


def _rebind_checksums(pack: Path, key: Path, text: str) -> None:
    (pack / "checksums.sha256").write_text(text)
    _edit_manifest(
        pack, key, lambda m: m.update(checksums_sha256_digest=sha256_file(pack / "checksums.sha256"))
    )


def test_path_escape(pack_copy: tuple[Path, Path], tmp_path: Path) -> None:
    pack, key = pack_copy
    (pack.parent / "escape.txt").write_text("outside")
    original = (pack / "checksums.sha256").read_text()
    line = f"{sha256_file(pack.parent / 'escape.txt')}  ./../escape.txt\n"
    _rebind_checksums(pack, key, original + line)
    result = verify_pack(pack, strict=True)
    assert result.exit_code == 6 and "escapes the pack" in result.message
    _rebind_checksums(pack, key, original + f"{'0' * 64}  /etc/passwd\n")
    assert verify_pack(pack, strict=True).exit_code == 4  # not even a checksum line
    _rebind_checksums(pack, key, original)
    assert verify_pack(pack, strict=True).exit_code == 0


def test_consistently_edited_verdict_is_caught(pack_copy: tuple[Path, Path]) -> None:
    pack, key = pack_copy
    path = pack / "results/final_verdict.json"
    verdict = json.loads(path.read_text())
    verdict["counts"]["clean_pass"] -= 1
    path.write_text(dump_json(verdict))
    seal_pack(pack, load_signing_key(key))
    public = _public(pack.parent, key)
    result = verify_pack(pack, strict=True, public_key=public)
    assert result.exit_code == 7
    assert "counts.clean_pass" in result.message


def test_consistently_edited_report_is_caught(pack_copy: tuple[Path, Path]) -> None:
    pack, key = pack_copy
    path = pack / "reports/m1/quant_4bit_clean/run_1/evaluation.report.json"
    report = json.loads(path.read_text())
    report["validation"]["invariants_pass"] = False
    path.write_text(json.dumps(report))
    seal_pack(pack, load_signing_key(key))
    result = verify_pack(pack, strict=True)
    assert result.exit_code == 7 and "final_verdict.json" in result.message


def test_public_key_pins_the_signer(pack_copy: tuple[Path, Path], tmp_path: Path) -> None:
    pack, key = pack_copy
    assert verify_pack(pack, strict=True, public_key=_public(tmp_path, key)).exit_code == 0
    (tmp_path / "x").mkdir()
    other_key = _key(tmp_path / "x")
    result = verify_pack(pack, strict=False, public_key=_public(tmp_path / "x", other_key))
    assert result.exit_code == 5 and "not by the expected key" in result.message
    # a pack re-signed with another key, even if self-consistent, fails the pin
    seal_pack(pack, load_signing_key(other_key))
    assert verify_pack(pack, strict=True).exit_code == 0
    assert verify_pack(pack, strict=True, public_key=_public(tmp_path, key)).exit_code == 5
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(PackError) as info:
        verify_pack(pack, strict=True, public_key=tmp_path / "bad.pem")
    assert info.value.exit_code == 2


def test_stale_records_are_left_out(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path / "run", models=("m1",))
    rec = run_dir / "records/m1/quant_4bit_clean/run_1.json"
    stale = json.loads(rec.read_text())
    stale["config_digest"] = "old"
    rec.write_text(json.dumps(stale))
    loaded = load_run(run_dir)
    assert loaded.stale_records == 1
    pack = build_pack(run_dir)
    assert not (pack / "records/m1/quant_4bit_clean/run_1.json").exists()
    verdict = json.loads((pack / "results/final_verdict.json").read_text())
    assert verdict["verdict"] == "FAIL"
    assert verdict["missing"]["cases"][0]["scenario"] == "quant_4bit_clean"
    assert verify_pack(pack, strict=True).exit_code == 0


def _shards_of(full: Path, tmp: Path, count: int) -> list[Path]:
    """The shard run directories of ``full``'s command line, each holding a copy of its shard's evidence."""
    plan = json.loads((full / "run.json").read_text())["plan"]
    shards = []
    for k in range(1, count + 1):
        shard = make_run_dir(tmp / f"shard{k}", models=(), plan_models=plan["models"], shard=(k, count),
                             runs=tuple(range(1, plan["clean_runs"] + 1)))
        for model in shard_models(plan["models"], (k, count)):
            for sub in ("records", "reports"):
                shutil.copytree(full / sub / model, shard / sub / model)
        shards.append(shard)
    return shards


def test_merge_of_shards_equals_unsharded(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    full = make_run_dir(tmp_path / "full", models=("m1", "m2", "m3"), runs=(1, 2), seed=seed)
    shards = _shards_of(full, tmp_path, 2)
    assert json.loads((shards[0] / "run.json").read_text())["shard"]["models"] == ["m1", "m3"]
    pack = merge_runs(shards, tmp_path / "merged")
    assert pack == tmp_path / "merged" / "proof_pack"
    result = verify_pack(pack, strict=True)
    assert result.exit_code == 0, result.message
    full_pack = build_pack(full)
    merged_verdict = json.loads((pack / "results/final_verdict.json").read_text())
    assert merged_verdict == json.loads((full_pack / "results/final_verdict.json").read_text())
    assert merged_verdict["verdict"] == "PASS"
    assert json.loads((tmp_path / "merged/run.json").read_text())["planned"] == sorted(
        json.loads((full / "run.json").read_text())["planned"]
    )


def test_a_shard_alone_is_partial_and_merge_refuses_it(tmp_path: Path) -> None:
    full = make_run_dir(tmp_path / "full", models=("m1", "m2", "m3"))
    shards = _shards_of(full, tmp_path, 3)
    alone = build_pack(shards[0])
    verdict = json.loads((alone / "results/final_verdict.json").read_text())
    assert verdict["verdict"] == "PARTIAL" and verdict["partial"]["missing_shards"] == [2, 3]
    assert verify_pack(alone, strict=True).exit_code == 0
    with pytest.raises(PackError, match=r"shard\(s\) 2/3, 3/3 missing \(models m2, m3\)"):
        merge_runs(shards[:1], tmp_path / "out")
    pack = merge_runs(shards[:2], tmp_path / "out", allow_partial=True)
    verdict = json.loads((pack / "results/final_verdict.json").read_text())
    assert verdict["verdict"] == "PARTIAL" and verdict["partial"]["missing_shards"] == [3]
    assert verify_pack(pack, strict=True).exit_code == 0


def test_merge_refuses_inconsistent_runs(tmp_path: Path) -> None:
    a = make_run_dir(tmp_path / "a", shard=(1, 2))
    b = make_run_dir(tmp_path / "b", shard=(2, 2), config_extra={"tier": "conservative"})
    with pytest.raises(PackError) as info:
        merge_runs([a, b], tmp_path / "out")
    assert "config_digest differs" in str(info.value) and "\n" not in str(info.value)
    c = make_run_dir(tmp_path / "c", shard=(2, 2), runs=(1, 2))
    with pytest.raises(PackError, match="its plan differs"):
        merge_runs([a, c], tmp_path / "out")
    d = make_run_dir(tmp_path / "d", shard=(1, 2), seed=1)
    with pytest.raises(PackError, match="given twice"):
        merge_runs([a, d], tmp_path / "out")
    e = make_run_dir(tmp_path / "e", models=("m1",))
    with pytest.raises(PackError, match="not a shard"):
        merge_runs([e], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    os.makedirs(tmp_path / "taken")
    (tmp_path / "taken" / "x").write_text("x")
    with pytest.raises(PackError, match="not empty"):
        merge_runs([a], tmp_path / "taken")


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg not installed")
def test_gpg_detached_signature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="gpg", dir="/tmp"))  # short: gpg-agent socket paths are limited
    home.chmod(0o700)
    monkeypatch.setenv("GNUPGHOME", str(home))
    try:
        gen = subprocess.run(
            [
                "gpg",
                "--batch",
                "--passphrase",
                "",
                "--quick-gen-key",
                "Proofpack Test <t@example.invalid>",
                "ed25519",
                "sign",
                "never",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if gen.returncode != 0:
            pytest.skip(f"cannot create a throwaway gpg key: {gen.stderr.strip()[-200:]}")
        run_dir = make_run_dir(tmp_path / "run", models=("m1",))
        pack = build_pack(run_dir, gpg=True)
        assert (pack / "manifest.json.asc").read_text().startswith("-----BEGIN PGP SIGNATURE-----")
        result = verify_pack(pack, strict=True)
        assert result.exit_code == 0 and any(c["check"] == "gpg" for c in result.checks)
        # a genuine signature, but of other bytes
        subprocess.run(
            [
                "gpg",
                "--batch",
                "--yes",
                "--armor",
                "--detach-sign",
                "--output",
                str(pack / "manifest.json.asc"),
                str(pack / "checksums.sha256"),
            ],
            capture_output=True,
            check=True,
            timeout=60,
        )
        assert verify_pack(pack, strict=True).exit_code == 5
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def test_absolute_paths_scrubbed_even_with_nan(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path / "run", models=("m1",))
    rel = "reports/m1/extreme_quant/run_1/evaluation.report.json"
    report = json.loads((run_dir / rel).read_text())
    report["primary_metric"].update(ratio_vs_baseline=float("nan"), degraded=True)
    report["subject_path"] = str((run_dir / "models" / "extreme_quant").absolute())
    report["cache"] = os.path.expanduser("~/.cache/pytest_proofpack/x")
    (run_dir / rel).write_text(json.dumps(report))
    restamp(run_dir)
    pack = build_pack(run_dir)
    packed = json.loads((pack / rel).read_text())
    assert packed["subject_path"] == "<run_dir>/models/extreme_quant"
    assert packed["cache"] == "~/.cache/pytest_proofpack/x"
    assert math.isnan(packed["primary_metric"]["ratio_vs_baseline"])
    assert verify_pack(pack, strict=True).exit_code == 0
    rec = next(
        r
        for r in json.loads((pack / "results/final_verdict.json").read_text())["records"]
        if r["name"] == "extreme_quant"
    )
    assert rec["ratio"] is None and rec["ok"] is True


def test_load_run_errors_name_the_file(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path / "run", models=("m1",))
    rec_path = run_dir / "records/m1/nan_injection/run_1.json"
    cases: list[tuple[Path, str, int, str]] = [
        (rec_path, json.dumps({"schema": "proofpack_record_v0"}), 4, "proofpack_record_v1"),
        (rec_path, "{broken", 4, "not valid JSON"),
        (
            rec_path,
            json.dumps({**json.loads(rec_path.read_text()), "report": "../../etc/passwd"}),
            6,
            "must be relative and stay inside",
        ),
        (
            run_dir / "run.json",
            json.dumps({"schema": "proofpack_run_v1", "planned": [["m1", "x"]]}),
            4,
            "planned",
        ),
        (
            run_dir / "metadata/scenarios.json",
            json.dumps({"schema": "proof_pack_scenarios_v1", "scenarios": []}),
            4,
            "non-empty",
        ),
    ]
    for path, text, code, needle in cases:
        original = path.read_text()
        path.write_text(text)
        try:
            with pytest.raises(PackError) as info:
                load_run(run_dir)
            assert info.value.exit_code == code and needle in str(info.value), str(info.value)
            assert "\n" not in str(info.value)
        finally:
            path.write_text(original)
    (run_dir / "run.json").unlink()
    with pytest.raises(PackError) as info:
        build_pack(run_dir)
    assert info.value.exit_code == 3 and "run.json" in str(info.value)
    assert not (run_dir / "proof_pack").exists()
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == []


def test_signing_key_errors_and_recorded_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    run_dir = make_run_dir(tmp_path / "run", models=("m1",))
    with pytest.raises(PackError, match="cannot read an unencrypted PEM private key"):
        build_pack(run_dir, sign_key=tmp_path / "absent.pem")
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(PackError, match="must be Ed25519"):
        build_pack(run_dir, sign_key=ec_key)
    key = _key(tmp_path)
    pack = build_pack(run_dir, sign_key=key)
    signing = json.loads((pack / "manifest.json").read_text())["signing"]
    public = serialization.load_pem_private_key(key.read_bytes(), password=None).public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert signing["fingerprint"] == hashlib.sha256(raw).hexdigest() and signing["ephemeral"] is False
    envelope = json.loads((pack / "manifest.signature.json").read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert envelope["signatures"][0]["keyid"] == signing["fingerprint"]


def test_build_refuses_evidence_changed_after_the_run(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path / "run", models=("m1",))
    report = run_dir / "reports/m1/quant_4bit_clean/run_1/evaluation.report.json"
    original = report.read_text()
    report.write_text(original.replace("true", "false", 1))
    with pytest.raises(PackError) as info:
        build_pack(run_dir)
    assert info.value.exit_code == 6 and "\n" not in str(info.value)
    assert "reports/m1/quant_4bit_clean/run_1/evaluation.report.json was changed after the run" in str(info.value)
    report.write_text(original)
    (report.parent / "late.json").write_text("{}")
    with pytest.raises(PackError, match=r"late\.json was added after records/m1/quant_4bit_clean/run_1\.json"):
        build_pack(run_dir)
    (report.parent / "late.json").unlink()
    assert verify_pack(build_pack(run_dir), strict=True).exit_code == 0
