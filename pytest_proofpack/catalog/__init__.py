"""The catalog: scenarios.json + suites.yaml + tuned_edit_params.json, validated and expanded into cases.

* :mod:`.files`: reading a file, the one-line error format, the schema check and the shipped defaults;
* :mod:`.scenarios`, :mod:`.suites`, :mod:`.tuned`: one validator per file format;
* :mod:`.entries`: the value classes (:class:`Scenario`, :class:`Suite`, :class:`Case`);
* :mod:`.expansion`: :class:`Catalog`, its model resolution and :meth:`Catalog.expand` into cases;
* :mod:`.load`: :func:`load_catalog`, the three validators combined.

Any problem in a file raises :class:`~pytest_proofpack.errors.CatalogError` with one line:
``<file>: <json path>: <what is wrong>; <what is accepted>``. This package imports neither torch nor pytest.
"""

from __future__ import annotations

from pytest_proofpack.catalog.entries import Case, Scenario, Suite
from pytest_proofpack.catalog.expansion import Catalog, parse_shard
from pytest_proofpack.catalog.files import default_paths
from pytest_proofpack.catalog.load import load_catalog

__all__ = ["Case", "Catalog", "Scenario", "Suite", "default_paths", "load_catalog", "parse_shard"]
