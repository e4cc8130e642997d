"""Loading the catalog: the three files, each checked by its own validator, combined into one :class:`Catalog`."""

from __future__ import annotations

from pathlib import Path

from pytest_proofpack.catalog.expansion import Catalog
from pytest_proofpack.catalog.files import default_paths
from pytest_proofpack.catalog.scenarios import load_scenarios
from pytest_proofpack.catalog.suites import load_suites
from pytest_proofpack.catalog.tuned import load_tuned
from pytest_proofpack.registries import Registries, default_registries

__all__ = ["load_catalog"]


def load_catalog(scenarios: Path | None = None, suites: Path | None = None,
                 tuned: Path | None = None, *, registries: Registries | None = None) -> Catalog:
    """Load and validate the three catalog files (the shipped defaults where a path is ``None``).

    Edit specs and dataset providers are checked against ``registries``: a pytest session's own, else (code
    outside a session) :func:`~pytest_proofpack.registries.default_registries`.

    Raises :class:`~pytest_proofpack.errors.CatalogError` with one line naming the file, the JSON path and the fix.
    """
    defaults = default_paths()
    paths = {
        "scenarios": Path(scenarios) if scenarios else defaults["scenarios"],
        "suites": Path(suites) if suites else defaults["suites"],
        "tuned": Path(tuned) if tuned else defaults["tuned"],
    }
    if registries is None:
        registries = default_registries()
    scenario_list = load_scenarios(paths["scenarios"], edits=registries.edits)
    suites_file = load_suites(paths["suites"], {s for scenario in scenario_list for s in scenario.suites},
                              providers=registries.providers)
    tuned_doc = load_tuned(paths["tuned"], edits=registries.edits)
    return Catalog(scenario_list, suites_file.suites, suites_file.models, suites_file.datasets, suites_file.assets,
                   tuned_doc, paths)
