"""``proofpack certify``: judge one checkpoint against its model's baseline and write a signed pack.

The short form of a one-scenario run: it writes a scenarios file holding a single ``checkpoint`` scenario (a
release candidate, ``must_pass``, or with ``--expect fail`` a known-bad build, ``must_fail``) into the run
directory, then runs pytest on it with the plugin's options, in a subprocess, and returns pytest's exit code:
0 the expectation held and the verdict passed, 1 it did not, 2-4 interrupted, internal or usage error. The model's
baseline, windows, calibrated preset and guards are its suite's, cached as for any run.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from pytest_proofpack.cli_args import add_catalog_options
from pytest_proofpack.errors import CatalogError, OptionError
from pytest_proofpack.results import atomic_write_text

__all__ = ["SCENARIO_ID", "add_certify", "certify_scenarios", "subject_of"]

#: The id of the one scenario a certify run holds (its reports are under ``reports/<model>/certify/``).
SCENARIO_ID: Final = "certify"
_HUB_ID: Final = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: A known-bad build must be caught by at least one of these (any gate failing, or a degraded metric).
_FAIL_DETECTORS: Final = [
    {"kind": "validation_flag", "flag": flag, "expected": False}
    for flag in ("primary_metric_acceptable", "invariants_pass", "spectral_stable", "rmt_stable")
] + [{"kind": "primary_metric", "field": "degraded", "expected": True}]


def add_certify(subparsers: Any) -> None:
    """Register ``proofpack certify`` on the console script's subparsers."""
    p = subparsers.add_parser(
        "certify", help="judge your own checkpoint (directory, .gguf file or hub id) against a model's baseline "
                        "and write a signed pack",
        description="Runs one checkpoint scenario of --model's suite with pytest and writes the pack under --out. "
        "Exit codes are pytest's: 0 the expectation held and the verdict passed, 1 it did not, 2 interrupted, "
        "3 internal error, 4 usage error (a subject that does not fit the model is a usage error of the item).")
    p.add_argument("--model", required=True, metavar="KEY", help="model key (or hub id) of the baseline in the "
                   "suites file")
    p.add_argument("--subject", required=True, metavar="PATH|ID",
                   help="the checkpoint: a directory (config.json + safetensors), a .gguf file, or a hub id at a "
                        "pinned revision (ID@REVISION or --revision)")
    p.add_argument("--revision", metavar="SHA", help="the pinned revision of a hub subject")
    p.add_argument("--suite", metavar="NAME", help="suite whose eval settings and dataset apply (default: the "
                   "first suite listing --model)")
    p.add_argument("--expect", choices=("pass", "fail"), default="pass",
                   help="pass: a release candidate (must_pass, default); fail: a known-bad build (must_fail)")
    p.add_argument("--out", type=Path, metavar="DIR", help="run directory (default proof_pack_runs/certify-<model>)")
    p.add_argument("--tuned-params", type=Path, metavar="PATH", help="tuned_edit_params.json instead of the shipped")
    add_catalog_options(p)
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, metavar="-- PYTEST_ARGS",
                   help="further pytest arguments after --, e.g. -- --proofpack-calibration-runs 3")
    p.set_defaults(func=run_certify)


def subject_of(text: str, revision: str | None) -> dict[str, str]:
    """The ``generation.subject`` of ``--subject``: an existing directory (``local``), an existing ``.gguf`` file
    (``gguf``), else a hub id at ``ID@REV`` or ``--revision``. Raises :class:`OptionError` naming the option."""
    path = Path(text).expanduser()
    if path.is_dir():
        return {"source": "local", "path": str(path.resolve())}
    if path.is_file():
        if path.suffix != ".gguf":
            raise OptionError(f"--subject {text}: a file subject must be a .gguf file; for safetensors give the "
                              "directory holding config.json and the weights")
        return {"source": "gguf", "path": str(path.resolve())}
    hub_id, _, rev = text.partition("@")
    rev = rev or (revision or "")
    if not _HUB_ID.match(hub_id):
        raise OptionError(f"--subject {text[:200]}: no such file or directory, and not a hub id (org/name)")
    if not rev:
        raise OptionError(f"--subject {hub_id}: a hub subject needs a pinned revision: {hub_id}@<commit sha> or "
                          "--revision <commit sha>")
    return {"source": "hub", "hub_id": hub_id, "revision": rev}


def certify_scenarios(subject: dict[str, str], expect: str) -> dict[str, Any]:
    """The scenarios document of a certify run: one checkpoint scenario for ``subject``."""
    scenario: dict[str, Any] = {
        "id": SCENARIO_ID, "category": "clean" if expect == "pass" else "stress",
        "failure_class": "checkpoint", "strictness": "must_pass" if expect == "pass" else "must_fail",
        "intent": "clean_control" if expect == "pass" else "catastrophic_failure",
        "primary_guard": "primary_metric",
        "generation": {"kind": "checkpoint", "subject": subject, "version": "certify"},
    }
    if expect == "fail":
        scenario["requirements"] = {"detectors_any_of": _FAIL_DETECTORS}
    return {"schema": "proof_pack_scenarios_v1", "schema_version": 1,
            "_meta": {"purpose": "written by proofpack certify: one checkpoint judged against its baseline"},
            "scenarios": [scenario]}


def _suite_for(args: argparse.Namespace) -> tuple[str, str]:
    """``(suite name, model key)``: ``--suite`` or the first suite listing ``--model``."""
    from pytest_proofpack.catalog import load_catalog

    catalog = load_catalog(suites=Path(args.suites) if args.suites else None, tuned=args.tuned_params)
    try:
        key = catalog.resolve_models(catalog.suite(next(iter(catalog.suites))), [args.model], env={})[0].key
    except CatalogError as exc:
        raise OptionError(str(exc).replace("--proofpack-models", "--model")) from None
    if args.suite:
        try:
            catalog.suite(args.suite)
        except CatalogError as exc:
            raise OptionError(str(exc).replace("--proofpack-suite", "--suite")) from None
        return args.suite, key
    for name, suite in catalog.suites.items():
        if key in suite.models:
            return name, key
    raise OptionError(f"--model {args.model}: no suite lists it; name one with --suite")


def run_certify(args: argparse.Namespace) -> int:
    subject = subject_of(args.subject, args.revision)
    suite, key = _suite_for(args)
    out = (args.out or Path("proof_pack_runs") / f"certify-{key}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    scenarios = out / "certify_scenarios.json"
    atomic_write_text(scenarios, json.dumps(certify_scenarios(subject, args.expect), indent=2) + "\n")
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(out),
            f"--proofpack-suite={suite}", f"--proofpack-models={key}", f"--proofpack-scenarios={scenarios}",
            f"--proofpack-out={out}", "--proofpack-clean-runs=1", "--proofpack-stress-runs=1", "--proofpack-rerun"]
    for flag, value in (("suites", args.suites), ("cache", args.cache), ("tuned-params", args.tuned_params)):
        if value:
            argv.append(f"--proofpack-{flag}={Path(value).expanduser().resolve()}")
    extra = list(args.pytest_args or [])
    argv += extra[1:] if extra[:1] == ["--"] else extra
    print(f"proofpack certify: {key} ({suite}) against {subject.get('path') or subject.get('hub_id')}; "
          f"run directory {out}", flush=True)
    return subprocess.run(argv, check=False).returncode
