"""``proofpack fetch``: bring the assets a suite needs (model files, corpora) into the cache, sha256-checked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pytest_proofpack.assets import fetch_asset
from pytest_proofpack.catalog import Catalog
from pytest_proofpack.errors import CatalogError


def suite_assets(catalog: Catalog, suite: str, models: Sequence[str] = ()) -> list[str]:
    """Names of the assets used by the suite's models and dataset, in a stable order."""
    suite_entry = catalog.suite(suite)
    entries = catalog.resolve_models(suite_entry, list(models) or None)
    names = [e.asset for e in entries if e.asset]
    dataset_asset = catalog.datasets[suite_entry.dataset].get("asset")
    if dataset_asset:
        names.append(str(dataset_asset))
    return list(dict.fromkeys(names))


def fetch(catalog: Catalog, cache: Path, *, suite: str | None, assets: Sequence[str] = ()) -> list[tuple[str, Path]]:
    """Fetch ``assets`` (or every asset of ``suite``, or every asset at all); returns ``(name, directory)``."""
    if assets:
        names = list(assets)
    elif suite:
        names = suite_assets(catalog, suite)
    else:
        names = sorted(catalog.assets)
    out: list[tuple[str, Path]] = []
    for name in names:
        if name not in catalog.assets:
            known = ", ".join(sorted(catalog.assets))
            raise CatalogError(f"proofpack fetch: unknown asset {name!r}; accepted: {known}")
        out.append((name, fetch_asset(catalog.assets[name], cache)))
    return out
