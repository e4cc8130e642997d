"""Build a proof pack from a run directory: stage its evidence, recompute the verdict, seal, swap into place.

The pack holds copies of the run's ``reports/`` and ``metadata/``, its current records and run.json, with the
building machine's absolute paths replaced (``<run_dir>``, ``~/``), so a pack names nothing about where it was
built. Its verdict is recomputed from the pack's own content, exactly as ``proofpack verify`` will.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Final

from pytest_proofpack.bounded import loads_json
from pytest_proofpack.errors import CatalogError, PackError
from pytest_proofpack.html_report import render_index
from pytest_proofpack.html_sensitivity import render_sensitivity
from pytest_proofpack.pack.coverage import run_verdict
from pytest_proofpack.pack.evidence import evidence_problem
from pytest_proofpack.pack.layout import sha256_file, walk_files
from pytest_proofpack.pack.seal import seal_pack
from pytest_proofpack.results import atomic_write_text
from pytest_proofpack.sensitivity_summary import check_document
from pytest_proofpack.signing import load_signing_key
from pytest_proofpack.verdict import dump_json, load_run, write_results

__all__ = ["build_pack"]

#: Run-directory trees copied into the pack as they are (paths scrubbed).
_PACK_DIRS: Final = ("reports", "metadata")
#: Catalog copies under metadata/, copied byte for byte: verify recomputes the catalog digest the run recorded.
_CATALOG_COPIES: Final = frozenset({"scenarios.json", "tuned_edit_params.json"})
#: What ``proofpack sensitivity --out RUN_DIR`` writes; packed as ``results/sensitivity.json``.
SENSITIVITY_FILE: Final = "sensitivity.json"
#: Packages whose versions describe the environment when the run did not record one.
_ENVIRONMENT_PACKAGES: Final = ("pytest-proofpack", "torch", "transformers", "cryptography", "numpy", "pytest")

Replacements = Sequence[tuple[str, str]]


def _scrub(value: Any, replacements: Replacements) -> Any:
    if isinstance(value, str):
        for old, new in replacements:
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, replacements) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, replacements) for v in value]
    return value


def _replacements(run_dir: Path) -> list[tuple[str, str]]:
    pairs = [(str(run_dir.resolve()), "<run_dir>"), (str(run_dir.absolute()), "<run_dir>")]
    home = os.path.expanduser("~").rstrip("/")
    if home not in ("", "~"):
        pairs.append((home + "/", "~/"))
    # longest first, so a run dir under $HOME becomes <run_dir>, not ~/...
    return sorted(set(pairs), key=lambda p: -len(p[0]))


def _copy_file(src: Path, dst: Path, replacements: Replacements) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    scrub = src.suffix == ".json" and src.name not in _CATALOG_COPIES
    if scrub and any(old.encode() in data for old, _ in replacements):
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            obj = None
        if obj is not None:
            # allow_nan: evidence may hold NaN ratios; key order kept as the engine wrote it
            text = json.dumps(_scrub(obj, replacements), indent=2, ensure_ascii=False) + "\n"
            dst.write_text(text, encoding="utf-8")
            return
    dst.write_bytes(data)


def _copy_tree(src: Path, dst: Path, replacements: Replacements) -> None:
    if not src.is_dir():
        return
    for path in walk_files(src):
        if path.is_symlink() or not path.is_file():
            raise PackError(f"{path}: run directory holds a symlink or special file; replace it with a file")
        _copy_file(path, dst / path.relative_to(src), replacements)


def _restamp_evidence(run_dir: Path, stage: Path, rel: Path) -> None:
    """The staged record's evidence digests, for the staged (path-scrubbed) copies of files that still match the
    digests the run recorded (all of them: :func:`_stage` refuses a run whose evidence changed)."""
    record = json.loads((stage / rel).read_text(encoding="utf-8"))
    evidence = record.get("evidence_sha256")
    if not isinstance(evidence, dict):
        return
    restamped = {}
    for name, recorded in evidence.items():
        source, copy = run_dir / name, stage / name
        unchanged = source.is_file() and copy.is_file() and sha256_file(source) == recorded
        restamped[name] = sha256_file(copy) if unchanged else recorded
    if restamped != evidence:
        record["evidence_sha256"] = restamped
        (stage / rel).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _environment() -> dict[str, Any]:
    packages = {}
    for name in _ENVIRONMENT_PACKAGES:
        try:
            packages[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return {
        "schema": "proofpack_environment_v1",
        "recorded_by": "proofpack pack builder (the run did not record its environment)",
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": packages,
    }


def _stage(run_dir: Path, stage: Path) -> None:
    loaded = load_run(run_dir)
    problem = evidence_problem(run_dir, str(loaded.run.get("config_digest")))
    if problem is not None:
        raise PackError(f"{run_dir}: {problem}; no pack is sealed over evidence changed after the run", exit_code=6)
    replacements = _replacements(run_dir)
    for name in _PACK_DIRS:
        _copy_tree(run_dir / name, stage / name, replacements)
    digest = loaded.run.get("config_digest")
    for rec in sorted((run_dir / "records").glob("*/*/run_*.json")):
        if json.loads(rec.read_text(encoding="utf-8")).get("config_digest") == digest:
            _copy_file(rec, stage / rec.relative_to(run_dir), replacements)
            _restamp_evidence(run_dir, stage, rec.relative_to(run_dir))
    (stage / "metadata").mkdir(parents=True, exist_ok=True)
    run = _scrub(dict(loaded.run), replacements)
    if run.get("config") != loaded.run.get("config"):
        run["config_scrubbed"] = True  # its digest was taken before the machine's paths were replaced
    atomic_write_text(stage / "metadata" / "run.json", dump_json(run))
    if not (stage / "metadata" / "environment.json").is_file():
        atomic_write_text(stage / "metadata" / "environment.json", dump_json(_environment()))
    # The pack's verdict is computed from the pack's own content, exactly as `verify` will recompute it.
    packed = load_run(stage)
    verdict = run_verdict(packed)
    write_results(stage / "results", verdict)
    sensitivity = _copy_sensitivity(run_dir, stage)
    reports = {r.path: r.report for r in packed.results if r.path and r.report is not None}
    extra = [render_sensitivity(sensitivity)] if sensitivity is not None else []
    atomic_write_text(stage / "index.html", render_index(verdict, reports, extra_sections=extra))


def _copy_sensitivity(run_dir: Path, stage: Path) -> dict[str, Any] | None:
    """The run directory's sensitivity.json (``proofpack sensitivity --out RUN_DIR``), checked against its schema,
    as ``results/sensitivity.json``: a results file the checksums cover like every other. Returns the document
    (for the page's sensitivity section), or None when the run has none."""
    src = run_dir / SENSITIVITY_FILE
    if not src.is_file():
        return None
    try:
        document = loads_json(src.read_text(encoding="utf-8"))
        check_document(document, str(src))
    except (ValueError, CatalogError) as exc:
        raise PackError(f"{src}: not a sensitivity document ({exc}); rewrite it with proofpack sensitivity or "
                        "remove it") from None
    shutil.copyfile(src, stage / "results" / SENSITIVITY_FILE)
    return dict(document)


def _swap_into_place(stage: Path, dest: Path) -> None:
    stage.chmod(0o755)
    if not dest.exists():
        os.rename(stage, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
    os.rename(dest, old / dest.name)
    os.rename(stage, dest)
    shutil.rmtree(old, ignore_errors=True)


def build_pack(
    run_dir: Path, *, sign_key: Path | None = None, gpg: bool = False, out: Path | None = None
) -> Path:
    """Build ``<run_dir>/proof_pack`` (or ``out``) from a run directory and return its path.

    The pack is staged in a temporary sibling directory and renamed into place, replacing an older pack,
    so a crash never leaves a half-written pack. ``sign_key`` is an Ed25519 PEM private key (ephemeral
    if ``None``).
    Raises :class:`PackError` for unreadable run directories or keys, and (exit code 6) for a run whose evidence
    was changed after its record was written.
    """
    key = load_signing_key(sign_key)
    dest = out if out is not None else run_dir / "proof_pack"
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp.", dir=dest.parent))
    try:
        _stage(run_dir, stage)
        seal_pack(stage, key, gpg=gpg)
        _swap_into_place(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return dest
