"""Loading the catalog: the three files, each checked by its own validator, combined into one :class:`Catalog`."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from pytest_proofpack.catalog.entries import Scenario, Suite
from pytest_proofpack.catalog.expansion import Catalog
from pytest_proofpack.catalog.files import default_paths, error_at, read_document
from pytest_proofpack.catalog.scenarios import load_scenarios
from pytest_proofpack.catalog.suites import load_suites
from pytest_proofpack.catalog.tuned import load_tuned
from pytest_proofpack.errors import ProofpackError
from pytest_proofpack.registries import Registries, default_registries
from pytest_proofpack.suggest import did_you_mean

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
    scenario_list = load_scenarios(paths["scenarios"], edits=registries.edits, faults=registries.faults)
    suites_file = load_suites(paths["suites"], {s for scenario in scenario_list for s in scenario.suites},
                              providers=registries.providers)
    _check_scenario_suites(paths["scenarios"], scenario_list, suites_file.suites)
    _check_env_by_model(paths["scenarios"], scenario_list, suites_file.models)
    tuned_doc = load_tuned(paths["tuned"], edits=registries.edits)
    return Catalog(scenario_list, suites_file.suites, suites_file.models, suites_file.datasets, suites_file.assets,
                   tuned_doc, paths)


def _shipped_scenario_suites() -> set[str]:
    """The scenario suites the shipped suites.yaml runs (empty when it cannot be read)."""
    try:
        doc = read_document(default_paths()["suites"])
    except ProofpackError:
        return set()
    suites = doc.get("suites") if isinstance(doc, Mapping) else None
    if not isinstance(suites, Mapping):
        return set()
    return {str(raw.get("scenario_suite", name)) if isinstance(raw, Mapping) else str(name)
            for name, raw in suites.items()}


def _check_scenario_suites(path: Path, scenarios: Sequence[Scenario], suites: Mapping[str, Suite]) -> None:
    """Every suite a scenario lists is run by some suite: of the suites file in use, or of the shipped one (a
    scenarios file may serve several suites files). A misspelt name would silently drop the scenario."""
    known = {suite.scenario_suite for suite in suites.values()}
    shipped: set[str] | None = None
    for index, scenario in enumerate(scenarios):
        for i, name in enumerate(scenario.suites):
            if name in known:
                continue
            shipped = _shipped_scenario_suites() if shipped is None else shipped
            if name in shipped:
                continue
            accepted = sorted(known | shipped)
            raise error_at(path, f"$.scenarios[{index}] ({scenario.id}).suites[{i}]",
                           f"no suite runs scenario suite {name!r}{did_you_mean(name, accepted)}; "
                           f"accepted: {', '.join(accepted)}")


def _check_env_by_model(path: Path, scenarios: Sequence[Scenario], models: Collection[str]) -> None:
    """``env_by_model`` keys are model keys of the suites file (an unknown key would silently never apply)."""
    for index, scenario in enumerate(scenarios):
        by_model = scenario.generation.get("env_by_model") or {}
        for key in by_model:
            if key not in models:
                raise error_at(path, f"$.scenarios[{index}] ({scenario.id}).generation.env_by_model.{key}",
                               f"unknown model key {key!r}{did_you_mean(str(key), models)}; "
                               f"accepted: {', '.join(sorted(models))}")
