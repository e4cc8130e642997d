"""Attacks on a real proof pack, each pinned to the exit code ``proofpack verify`` must give.

The pack is built once for the module by a real pytest session (oracle engine, one tiny model, a kept signing
key) in which one detection is missed, so the genuine verdict is FAIL. Each attack works on a private copy:
byte flips and deletions, hostile files (FIFOs, sockets, symlinks, 100 000-deep JSON, archiver litter) that must
neither hang nor crash verify, and forgeries re-sealed with an attacker's own key (a FAIL turned into a PASS,
gate flags flipped, the plan cut, the config edited). A forgery that rewrites every digest consistently is caught
only by a pinned key; the test pins that limit too. No attack may produce a traceback.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from e2e_support import run_session, write_suite

from pytest_proofpack.cli import main
from pytest_proofpack.pack import seal_pack, sha256_file
from pytest_proofpack.pack.coverage import plan_digest, run_verdict
from pytest_proofpack.pack.provenance import config_digest_of, metadata_catalog_digest
from pytest_proofpack.pack.seal import signed_claims
from pytest_proofpack.signing import load_signing_key, make_statement, sign_statement
from pytest_proofpack.verdict import dump_json, load_run, write_results

MISSED = "scale_explosion"  # the oracle engine misses this detection, so the genuine verdict is FAIL
REPORT = "reports/tiny-a/quant_4bit_clean/run_1/evaluation.report.json"
RECORD = "records/tiny-a/quant_4bit_clean/run_1.json"


@dataclass(frozen=True)
class Keys:
    genuine: Path  # private key the session signed with
    genuine_public: Path
    attacker: Path


def _write_key(path: Path) -> Path:
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _public(private: Path) -> Path:
    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    out = private.with_suffix(".pub")
    out.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return out


@pytest.fixture(scope="module")
def genuine(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Keys]:
    """A genuine FAIL pack of a real session, and the keys."""
    root = tmp_path_factory.mktemp("tamper")
    keys = Keys(_write_key(root / "genuine.pem"), Path(), _write_key(root / "attacker.pem"))
    keys = Keys(keys.genuine, _public(keys.genuine), keys.attacker)
    args = write_suite(root, model_dirs)
    proc = run_session(root, [*args, "--proofpack-models", "tiny-a", "--proofpack-sign-key", str(keys.genuine)],
                       env={"PROOFPACK_TEST_MISS": MISSED})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    pack = root / "run" / "proof_pack"
    assert json.loads((pack / "results" / "final_verdict.json").read_text())["verdict"] == "FAIL"
    return pack, keys


# ------------------------------------------------------------------------------------------ attacker's tools


def _flip(rel: str) -> Callable[[Path, Keys], None]:
    def attack(pack: Path, keys: Keys) -> None:
        data = (pack / rel).read_bytes()
        pos = len(data) // 2
        (pack / rel).write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :])

    return attack


def _delete(rel: str) -> Callable[[Path, Keys], None]:
    return lambda pack, keys: (pack / rel).unlink()


def _fifo(rel: str) -> Callable[[Path, Keys], None]:
    def attack(pack: Path, keys: Keys) -> None:
        (pack / rel).parent.mkdir(parents=True, exist_ok=True)
        (pack / rel).unlink(missing_ok=True)
        os.mkfifo(pack / rel)

    return attack


def _socket(rel: str) -> Callable[[Path, Keys], None]:
    def attack(pack: Path, keys: Keys) -> None:
        (pack / rel).unlink(missing_ok=True)
        cwd = os.getcwd()
        os.chdir((pack / rel).parent)  # AF_UNIX paths are short; bind a relative name
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind((pack / rel).name)
        finally:
            os.chdir(cwd)

    return attack


def _write(rel: str, text: str) -> Callable[[Path, Keys], None]:
    def attack(pack: Path, keys: Keys) -> None:
        (pack / rel).parent.mkdir(parents=True, exist_ok=True)
        (pack / rel).write_text(text)

    return attack


def _json(pack: Path, rel: str) -> dict:  # type: ignore[type-arg]
    return json.loads((pack / rel).read_text())


def _put(pack: Path, rel: str, obj: object) -> None:
    (pack / rel).write_text(json.dumps(obj, indent=2))


def reseal(pack: Path, key: Path, *, recompute: bool = True) -> None:
    """What an attacker does after an edit: recompute results/ (so they match the evidence) and seal again with
    ``key`` (checksums, manifest, signature)."""
    if recompute:
        write_results(pack / "results", run_verdict(load_run(pack)))
    seal_pack(pack, load_signing_key(key))


def _resign(pack: Path, key: Path, **predicate: object) -> None:
    """Sign a statement over the pack's current bytes, with ``predicate`` values overriding the true claims."""
    manifest = _json(pack, "manifest.json")
    claims = {"manifest": {"name": "manifest.json", "digest": {"sha256": sha256_file(pack / "manifest.json")}},
              "verdict": manifest.get("verdict"), "suite": manifest.get("suite"),
              **signed_claims(_json(pack, "metadata/run.json")), **predicate}
    statement = make_statement([("results/final_verdict.json", sha256_file(pack / "results/final_verdict.json")),
                                ("checksums.sha256", sha256_file(pack / "checksums.sha256"))], claims)
    (pack / "manifest.signature.json").write_text(dump_json(sign_statement(statement, load_signing_key(key))))


def _edit_manifest(pack: Path, key: Path, edit: Callable[[dict], object] = lambda m: None,  # type: ignore[type-arg]
                   **predicate: object) -> None:
    """Name ``key`` in the manifest, apply ``edit``, and sign a statement over the result (``predicate``
    overriding the true claims)."""
    manifest = _json(pack, "manifest.json")
    signer = load_signing_key(key)
    manifest["signing"].update(fingerprint=signer.fingerprint, public_key_pem=signer.public_pem, ephemeral=False)
    edit(manifest)
    (pack / "manifest.json").write_text(dump_json(manifest))
    _resign(pack, key, **predicate)


def _rebind_checksums(pack: Path, key: Path, text: str) -> None:
    (pack / "checksums.sha256").write_text(text)
    _edit_manifest(pack, key, lambda m: m.update(checksums_sha256_digest=sha256_file(pack / "checksums.sha256")))


def _drop_missed_scenario(pack: Path) -> None:
    """The forgery of the issue: the failing scenario removed from the catalog and from ``planned``."""
    catalog = _json(pack, "metadata/scenarios.json")
    catalog["scenarios"] = [s for s in catalog["scenarios"] if s["id"] != MISSED]
    _put(pack, "metadata/scenarios.json", catalog)
    run = _json(pack, "metadata/run.json")
    run["planned"] = [p for p in run["planned"] if p[1] != MISSED]
    _put(pack, "metadata/run.json", run)


def forge_pass(pack: Path, keys: Keys) -> None:
    _drop_missed_scenario(pack)
    reseal(pack, keys.attacker)


def forge_pass_consistently(pack: Path, keys: Keys) -> None:
    """The forgery with every digest of run.json recomputed: only a pinned key can tell."""
    _drop_missed_scenario(pack)
    run = _json(pack, "metadata/run.json")
    digest = metadata_catalog_digest(pack)
    run["config"]["catalog_digest"] = run["scenarios_digest"] = digest
    run["config_digest"] = config_digest_of(run["config"])
    run["plan"].update(cases=len(run["planned"]), digest=plan_digest(run["planned"]))
    _put(pack, "metadata/run.json", run)
    for path in (pack / "records").glob("*/*/run_*.json"):  # the records follow the new config digest
        record = json.loads(path.read_text())
        record["config_digest"] = run["config_digest"]
        path.write_text(json.dumps(record))
    reseal(pack, keys.attacker)


def flip_gate_flags(pack: Path, keys: Keys) -> None:
    rel = f"reports/tiny-a/{MISSED}/run_1/evaluation.report.json"
    report = _json(pack, rel)
    report["spectral"]["caps_applied"] = 9
    report["validation"]["spectral_stable"] = False
    _put(pack, rel, report)
    reseal(pack, keys.attacker)


def cut_planned(pack: Path, keys: Keys) -> None:
    run = _json(pack, "metadata/run.json")
    run["planned"] = run["planned"][:1]
    _put(pack, "metadata/run.json", run)
    reseal(pack, keys.attacker)


def edit_config(pack: Path, keys: Keys) -> None:
    run = _json(pack, "metadata/run.json")
    run["config"]["tier"] = "aggressive"
    _put(pack, "metadata/run.json", run)
    reseal(pack, keys.attacker)


def drop_failing_evidence(pack: Path, keys: Keys) -> None:
    shutil.rmtree(pack / "records" / "tiny-a" / MISSED)
    shutil.rmtree(pack / "reports" / "tiny-a" / MISSED)
    reseal(pack, keys.attacker)


def edit_results_only(pack: Path, keys: Keys) -> None:
    verdict = _json(pack, "results/final_verdict.json")
    verdict["verdict"], verdict["failed_requirements"] = "PASS", []
    (pack / "results/final_verdict.json").write_text(dump_json(verdict))
    reseal(pack, keys.attacker, recompute=False)


def unsign(pack: Path, keys: Keys) -> None:
    (pack / "manifest.signature.json").unlink()
    manifest = _json(pack, "manifest.json")
    manifest.pop("signing")
    (pack / "manifest.json").write_text(dump_json(manifest))


def borrow_genuine_fingerprint(pack: Path, keys: Keys) -> None:
    genuine = _json(pack, "manifest.json")["signing"]
    reseal(pack, keys.attacker, recompute=False)
    _edit_manifest(pack, keys.attacker, lambda m: m.update(signing=genuine))


def listed_fifo(pack: Path, keys: Keys) -> None:
    os.mkfifo(pack / "records" / "tiny-a" / "pipe.json")
    text = (pack / "checksums.sha256").read_text() + f"{'0' * 64}  ./records/tiny-a/pipe.json\n"
    _rebind_checksums(pack, keys.attacker, text)


def listed_deep_json(pack: Path, keys: Keys) -> None:
    (pack / REPORT).write_text("[" * 100_000 + "]" * 100_000)
    reseal(pack, keys.attacker, recompute=False)


def listed_long_integer(pack: Path, keys: Keys) -> None:
    report = (pack / REPORT).read_text()
    (pack / REPORT).write_text(report.replace('"schema"', '"n": ' + "9" * 5000 + ', "schema"', 1))
    reseal(pack, keys.attacker, recompute=False)


def _symlink_report(pack: Path, keys: Keys) -> None:
    outside = pack.parent / "outside.json"
    shutil.copy(pack / REPORT, outside)
    (pack / REPORT).unlink()
    (pack / REPORT).symlink_to(outside)


def _lines(edit: Callable[[list[str]], list[str]]) -> Callable[[Path, Keys], None]:
    def attack(pack: Path, keys: Keys) -> None:
        lines = (pack / "checksums.sha256").read_text().splitlines(keepends=True)
        _rebind_checksums(pack, keys.attacker, "".join(edit(lines)))

    return attack


def _deep(rel: str) -> Callable[[Path, Keys], None]:
    return _write(rel, "[" * 100_000 + "]" * 100_000)


Attack = tuple[str, Callable[[Path, Keys], object], tuple[str, ...], int]
NO_PIN: tuple[str, ...] = ("--strict",)
PIN: tuple[str, ...] = ("--strict", "--public-key", "{public}")

# (id, attack, verify arguments beyond the pack, expected exit code)
ATTACKS: list[Attack] = [
    *[(f"flip-{rel}", _flip(rel), NO_PIN, code) for rel, code in (
        (REPORT, 6), (RECORD, 6), ("metadata/run.json", 6), ("metadata/scenarios.json", 6),
        ("metadata/suites.yaml", 6), ("results/final_verdict.json", 6), ("results/final_verdict.txt", 6),
        ("index.html", 6), ("checksums.sha256", 6), ("manifest.json", 5), ("manifest.signature.json", 5))],
    *[(f"delete-{rel}", _delete(rel), NO_PIN, code) for rel, code in (
        ("manifest.json", 3), ("checksums.sha256", 3), ("results/final_verdict.json", 3),
        ("manifest.signature.json", 5), (REPORT, 6), (RECORD, 6))],
    ("fifo-in-macosx-strict", _fifo("records/__MACOSX/x/run_1.json"), NO_PIN, 6),
    ("fifo-in-macosx-loose", _fifo("records/__MACOSX/x/run_1.json"), (), 0),
    ("fifo-unlisted-record-loose", _fifo("records/tiny-a/extra/run_1.json"), (), 0),
    ("fifo-as-listed-report", _fifo(REPORT), (), 6),
    ("fifo-listed-and-resealed", listed_fifo, (), 6),
    ("socket-as-listed-report", _socket(REPORT), (), 6),
    ("socket-unlisted-strict", _socket("reports/tiny-a/sock"), NO_PIN, 6),
    ("directory-as-listed-report", lambda p, k: ((p / REPORT).unlink(), (p / REPORT).mkdir()), (), 6),
    ("deep-json-in-macosx-strict", _deep("records/__MACOSX/x/run_1.json"), NO_PIN, 6),
    ("deep-json-in-macosx-loose", _deep("records/__MACOSX/x/run_1.json"), (), 0),
    ("deep-json-listed", listed_deep_json, (), 4),
    ("long-integer-listed", listed_long_integer, (), 4),
    ("ds-store-strict", _write("reports/.DS_Store", "finder"), NO_PIN, 6),
    ("ds-store-loose", _write("reports/.DS_Store", "finder"), (), 0),
    ("macosx-litter-strict", _write("__MACOSX/._index.html", "x"), NO_PIN, 6),
    ("unlisted-file-strict", _write("reports/tiny-a/notes.txt", "later"), NO_PIN, 6),
    ("symlink-as-report", _symlink_report, (), 6),
    ("symlinked-directory", lambda p, k: (p / "reports" / "linked").symlink_to(p.parent), (), 6),
    ("checksums-path-escape", _lines(lambda ls: [*ls, f"{'0' * 64}  ./../outside.json\n"]), (), 6),
    ("checksums-lists-control-file", _lines(lambda ls: [*ls, f"{'0' * 64}  ./manifest.json\n"]), (), 4),
    ("checksums-duplicate-line", _lines(lambda ls: [*ls, ls[0]]), (), 4),
    ("checksums-drops-a-report", _lines(lambda ls: [x for x in ls if REPORT not in x]), NO_PIN, 6),
    ("forged-pass-unpinned", forge_pass, NO_PIN, 8),
    ("forged-pass-pinned", forge_pass, PIN, 5),
    ("forged-pass-trusted-keys-file", forge_pass, ("--strict", "--trusted-keys", "{public}"), 5),
    ("forged-pass-loose", forge_pass, (), 8),
    ("forged-pass-consistent-unpinned", forge_pass_consistently, NO_PIN, 0),
    ("forged-pass-consistent-pinned", forge_pass_consistently, PIN, 5),
    ("flipped-gate-flags-resealed", flip_gate_flags, NO_PIN, 8),
    ("cut-planned-resealed", cut_planned, NO_PIN, 8),
    ("edited-config-resealed", edit_config, NO_PIN, 8),
    ("dropped-failing-evidence-resealed", drop_failing_evidence, NO_PIN, 0),
    ("edited-results-resealed", edit_results_only, NO_PIN, 7),
    ("statement-claims-pass", lambda p, k: _edit_manifest(p, k.attacker, verdict="PASS"), NO_PIN, 7),
    ("statement-claims-other-catalog", lambda p, k: _edit_manifest(p, k.attacker, catalog_digest="0" * 64),
     NO_PIN, 8),
    ("statement-claims-other-plan", lambda p, k: _edit_manifest(p, k.attacker, plan_digest="0" * 64), NO_PIN, 8),
    ("statement-names-the-genuine-key", lambda p, k: _resign(p, k.attacker), NO_PIN, 5),
    ("manifest-claims-pass", lambda p, k: _edit_manifest(p, k.attacker, lambda m: m.update(verdict="PASS"),
                                                         verdict="FAIL"), NO_PIN, 7),
    ("unsigned", unsign, (), 5),
    ("borrowed-genuine-fingerprint", borrow_genuine_fingerprint, (), 5),
    ("resealed-by-attacker-pinned", lambda p, k: reseal(p, k.attacker, recompute=False), PIN, 5),
]


#: The verdict a pack that passes verify after an attack must carry: the genuine FAIL, except for the forgery
#: that rewrites every digest consistently, which only a pinned key catches.
PASSING_VERDICT = {"forged-pass-consistent-unpinned": "PASS"}
#: What the result line must say for some attacks (the exit code alone could come from another check).
MESSAGES = {
    "fifo-in-macosx-strict": "records/__MACOSX/x/run_1.json",
    "fifo-in-macosx-loose": "not covered by checksums.sha256 (never read): records/__MACOSX/x/run_1.json",
    "fifo-as-listed-report": "is a FIFO, not a regular file",
    "fifo-listed-and-resealed": "records/tiny-a/pipe.json: is a FIFO",
    "socket-as-listed-report": "is a socket, not a regular file",
    "directory-as-listed-report": "is a directory, not a regular file",
    "deep-json-listed": "nested deeper than 64 levels",
    "long-integer-listed": "holds a number too long to read",
    "ds-store-strict": "reports/.DS_Store",
    "symlink-as-report": "is a symlink",
    "checksums-path-escape": "escapes the pack",
    "forged-pass-unpinned": "a scenario, suite or tuned value was changed",
    "forged-pass-loose": "a scenario, suite or tuned value was changed",
    "forged-pass-pinned": "not by the expected key",
    "forged-pass-consistent-unpinned": "authenticity is not",
    "flipped-gate-flags-resealed": "was changed after the run",
    "cut-planned-resealed": "planned holds 1 cases, the plan gives 20",
    "edited-config-resealed": "the config was edited after the run",
    "edited-results-resealed": "differs from the recomputed verdict",
    "statement-claims-pass": "the signed statement says verdict 'PASS'",
    "statement-claims-other-catalog": "signed statement's catalog_digest",
    "statement-claims-other-plan": "signed statement's plan_digest",
    "manifest-claims-pass": "the manifest.json says verdict 'PASS'",
    "unsigned": "manifest.signature.json is missing",
    "borrowed-genuine-fingerprint": "signing key does not match the envelope's key",
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("name", "attack", "args", "expected"), [pytest.param(*a, id=a[0]) for a in ATTACKS])
def test_attack(genuine: tuple[Path, Keys], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                attack: Callable[[Path, Keys], object], args: tuple[str, ...], expected: int) -> None:
    source, keys = genuine
    pack = tmp_path / "pack"
    shutil.copytree(source, pack, symlinks=True)
    attack(pack, keys)
    capsys.readouterr()
    argv = [a.format(public=keys.genuine_public) for a in args]
    code = main(["verify", str(pack), *argv])
    out, err = capsys.readouterr()
    assert code == expected, out + err
    assert "Traceback" not in out + err
    assert "signer: " in out + err
    assert MESSAGES.get(name, "") in out + err
    if expected == 0:
        verdict = json.loads((pack / "results" / "final_verdict.json").read_text())["verdict"]
        assert verdict == PASSING_VERDICT.get(name, "FAIL"), out


def test_corpus_size() -> None:
    assert len(ATTACKS) >= 40
    assert len({a[0] for a in ATTACKS}) == len(ATTACKS)


def test_genuine_pack_verifies_with_its_pinned_key(genuine: tuple[Path, Keys], capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pack, keys = genuine
    assert main(["verify", str(pack), "--strict", "--public-key", str(keys.genuine_public)]) == 0
    out = capsys.readouterr().out
    assert "a kept key; matches the pinned key from --public-key" in out and "authenticity is not" not in out
    monkeypatch.setenv("PROOFPACK_TRUSTED_KEYS", keys.genuine_public.read_text())
    assert main(["verify", str(pack), "--strict"]) == 0
    assert "matches the pinned key from PROOFPACK_TRUSTED_KEYS" in capsys.readouterr().out
    monkeypatch.setenv("PROOFPACK_TRUSTED_KEYS", str(_public(keys.attacker)))
    assert main(["verify", str(pack)]) == 5
    assert "matches none of the keys pinned by PROOFPACK_TRUSTED_KEYS" in capsys.readouterr().err
    monkeypatch.delenv("PROOFPACK_TRUSTED_KEYS")
    assert main(["verify", str(pack), "--strict"]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "warning:" in line]
    assert warnings == ["  warning: integrity is shown, authenticity is not: no pinned key (--public-key, "
                        "--trusted-keys or PROOFPACK_TRUSTED_KEYS), so anyone could have re-signed this pack with "
                        "a key of their own"]
    statement = json.loads(base64.b64decode(json.loads((pack / "manifest.signature.json").read_text())["payload"]))
    assert {"verdict", "catalog_digest", "config_digest", "planned_digest", "plan_digest"} <= set(
        statement["predicate"])
