"""The ``--suites PATH`` / ``--cache DIR`` pair that the ``proofpack`` subcommands reading the catalog and the asset
cache share: one declaration and one way to resolve them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_catalog_options(parser: argparse.ArgumentParser) -> None:
    """Declare ``--suites`` and ``--cache`` on ``parser``."""
    parser.add_argument("--suites", metavar="PATH", help="suites.yaml to read instead of the shipped one")
    parser.add_argument("--cache", metavar="DIR", help="cache root (default $PROOFPACK_CACHE or "
                        "~/.cache/pytest_proofpack)")


def catalog_and_cache(args: argparse.Namespace) -> tuple[Any, Path]:
    """The catalog (with ``--suites`` when given) and the cache root (``--cache``, else the default)."""
    from pytest_proofpack.assets import cache_root
    from pytest_proofpack.catalog import load_catalog

    catalog = load_catalog(suites=Path(args.suites) if args.suites else None)
    return catalog, (Path(args.cache).expanduser() if args.cache else cache_root())
