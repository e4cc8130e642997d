"""What a corpus provider is given: the suite's dataset fields and the context of the load.

These two types are all a provider's module needs, so the built-in providers depend on nothing above them;
:class:`~pytest_proofpack.data.registry.DatasetSpec` adds the validation against the registered providers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pytest_proofpack.models import AssetRef

__all__ = ["DatasetFields", "LoadContext"]


@dataclass(frozen=True)
class DatasetFields:
    """Which text a suite evaluates on. Empty strings mean "provider default"."""

    provider: str
    name: str = ""
    config: str = ""
    split: str = ""
    text_field: str = "text"
    path: str = ""
    asset: str = ""


@dataclass(frozen=True)
class LoadContext:
    """What a provider may use: the cache root, the suite's assets, the suite name and the network switch.

    ``base_dir`` resolves a relative ``path`` (``None``: the current directory).
    """

    cache: Path
    assets: Mapping[str, AssetRef]
    suite: str
    allow_net: bool
    base_dir: Path | None = None
