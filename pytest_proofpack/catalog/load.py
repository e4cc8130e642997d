"""Loading the catalog: the three files, each checked by its own validator, combined into one :class:`Catalog`."""

from __future__ import annotations

from pathlib import Path

from pytest_proofpack.catalog.expansion import Catalog
from pytest_proofpack.catalog.files import default_paths
from pytest_proofpack.catalog.scenarios import load_scenarios
from pytest_proofpack.catalog.suites import load_suites
from pytest_proofpack.catalog.tuned import load_tuned

__all__ = ["load_catalog"]


def load_catalog(scenarios: Path | None = None, suites: Path | None = None,
                 tuned: Path | None = None) -> Catalog:
    """Load and validate the three catalog files (the shipped defaults where a path is ``None``).

    Raises :class:`~pytest_proofpack.errors.CatalogError` with one line naming the file, the JSON path and the fix.
    """
    defaults = default_paths()
    paths = {
        "scenarios": Path(scenarios) if scenarios else defaults["scenarios"],
        "suites": Path(suites) if suites else defaults["suites"],
        "tuned": Path(tuned) if tuned else defaults["tuned"],
    }
    scenario_list = load_scenarios(paths["scenarios"])
    suites_file = load_suites(paths["suites"], {s for scenario in scenario_list for s in scenario.suites})
    tuned_doc = load_tuned(paths["tuned"])
    return Catalog(scenario_list, suites_file.suites, suites_file.models, suites_file.datasets, suites_file.assets,
                   tuned_doc, paths)
