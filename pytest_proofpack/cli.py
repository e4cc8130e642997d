"""``proofpack`` console script: ``verify``, ``merge``, ``report``, ``fetch``, ``suites``, ``tune`` and ``certify``.

Each subcommand is one ``_add_<name>(subparsers)`` function that registers its parser and sets
``func`` to a handler ``(args) -> int``; adding a subcommand is one such function plus one line in
:data:`_SUBCOMMANDS`. A :class:`ProofpackError` never shows a traceback: one line on stderr and
its exit code (``PackError.exit_code``, else 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_proofpack.certify_command import add_certify
from pytest_proofpack.cli_args import add_catalog_options, catalog_and_cache
from pytest_proofpack.errors import PackError, ProofpackError
from pytest_proofpack.report_command import add_report
from pytest_proofpack.sensitivity_command import add_sensitivity
from pytest_proofpack.suites_command import add_suites
from pytest_proofpack.tune_command import add_tune

__all__ = ["build_parser", "main", "version_text"]

_Subparsers = Any  # argparse's _SubParsersAction is private; its type is not worth importing


def _cmd_verify(args: argparse.Namespace) -> int:
    from pytest_proofpack.pack import verify_pack
    from pytest_proofpack.results import atomic_write_text
    from pytest_proofpack.verdict import dump_json

    pack = Path(args.pack)
    json_out = Path(args.json) if args.json else None
    if json_out is not None and pack.is_dir():
        resolved = json_out.resolve()
        if resolved == pack.resolve() or pack.resolve() in resolved.parents:
            raise PackError(f"--json {json_out}: must be written outside the pack {pack}", exit_code=2)
    result = verify_pack(
        pack, strict=args.strict, public_key=Path(args.public_key) if args.public_key else None,
        trusted_keys=Path(args.trusted_keys) if args.trusted_keys else None,
    )
    if json_out is not None:
        atomic_write_text(json_out, dump_json(result.to_dict()))
    stream = sys.stdout if result.ok else sys.stderr
    for line in result.human():
        print(line, file=stream)
    return result.exit_code


def _add_verify(subparsers: _Subparsers) -> None:
    p = subparsers.add_parser(
        "verify",
        help="verify a proof pack (signature, signer, checksums, manifest, recomputed verdict, catalog and plan)",
        description="Exit codes: 0 ok, 2 usage, 3 missing files, 4 schema, 5 signature (or a signer that is not "
        "a pinned key), 6 integrity, 7 verdict mismatch, 8 provenance (catalog, config or plan differs from the "
        "run's record or the signed statement). Pin signers with --public-key, --trusted-keys or "
        "PROOFPACK_TRUSTED_KEYS (a file path, or the keys themselves).",
    )
    p.add_argument("pack", help="the proof_pack directory")
    p.add_argument("--strict", action="store_true", help="fail on any file outside checksums.sha256 (archiver "
                   "litter included); warn when no signer is pinned")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON to OUT (outside the pack)")
    p.add_argument("--public-key", metavar="KEY", help="PEM Ed25519 key the pack must be signed with")
    p.add_argument("--trusted-keys", metavar="FILE", help="file of PEM Ed25519 public keys and/or 64-hex "
                   "fingerprints; the pack must be signed by one of them")
    p.set_defaults(func=_cmd_verify)


def _cmd_merge(args: argparse.Namespace) -> int:
    from pytest_proofpack.pack import merge_runs

    pack = merge_runs([Path(d) for d in args.run_dirs], Path(args.out), allow_partial=args.allow_partial,
                      sign_key=Path(args.sign_key) if args.sign_key else None)
    print(f"merged {len(args.run_dirs)} run directories into {args.out}; pack: {pack}")
    return 0


def _add_merge(subparsers: _Subparsers) -> None:
    p = subparsers.add_parser(
        "merge", help="merge the shard run directories of one command line into one run directory and pack",
        description="Each shard is checked (its records' evidence checksums, its catalog and plan); every shard "
        "of the plan must be given unless --allow-partial. Exit codes: 0 merged, 2 refused.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of the shards")
    p.add_argument("--out", required=True, metavar="DIR", help="new run directory to create")
    p.add_argument("--allow-partial", action="store_true", help="merge although shards are missing; the verdict "
                   "is then PARTIAL (or FAIL)")
    p.add_argument("--sign-key", metavar="PEM", help="Ed25519 private key that signs the pack (default: an "
                   "ephemeral key)")
    p.set_defaults(func=_cmd_merge)


def _add_fetch(subparsers: _Subparsers) -> None:
    p = subparsers.add_parser("fetch", help="fetch a suite's assets (model files, corpora) into the cache")
    p.add_argument("--suite", metavar="NAME", help="fetch what this suite needs (default: every asset)")
    p.add_argument("--asset", action="append", default=[], metavar="NAME", help="fetch only this asset")
    add_catalog_options(p)
    p.set_defaults(func=_cmd_fetch)


def _cmd_fetch(args: argparse.Namespace) -> int:
    from pytest_proofpack import progress
    from pytest_proofpack.fetch import fetch

    catalog, cache = catalog_and_cache(args)
    with progress.reporting(progress.print_sink()):  # a download (minutes for a model) says so while it runs
        fetched = fetch(catalog, cache, suite=args.suite, assets=args.asset)
    for name, where in fetched:
        print(f"{name}: {where}")
    return 0


_SUBCOMMANDS: list[Callable[[_Subparsers], None]] = [
    _add_verify, _add_merge, add_report, _add_fetch, add_suites, add_tune, add_certify, add_sensitivity,
]


def version_text() -> str:
    """``proofpack --version``: the installed distribution's version (package metadata) and the engine and edits
    versions that key cached baselines, presets and records."""
    from importlib.metadata import PackageNotFoundError, version

    from pytest_proofpack import EDITS_VERSION, ENGINE_VERSION, __version__

    try:
        installed = version("pytest-proofpack")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        installed = f"{__version__} (not installed)"
    return f"proofpack {installed} (engine {ENGINE_VERSION}, edits {EDITS_VERSION})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proofpack", description="Work with pytest-proofpack proof packs.")
    parser.add_argument("--version", action="version", version=version_text())
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the console script; return its exit code (argparse usage errors exit 2)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        code: int = args.func(args)
    except ProofpackError as exc:
        print(f"proofpack {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, PackError) else 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
