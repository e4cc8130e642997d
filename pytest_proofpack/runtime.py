"""Per-worker state: the run context, and one loaded model with its windows, baseline and calibrated preset.

A :class:`ModelRuntime` is created by the session fixture ``proofpack_runtime`` once per model on each worker
and closed when the worker moves on to another model. Everything expensive is computed lazily and cached:

* the model (loaded once per worker; GGUF conversions cached on disk by :mod:`~pytest_proofpack.models.sources`);
* the token stream (cached on disk per corpus × tokenizer) and the evaluation windows (seeded, deterministic);
* the baseline state (per-window losses, guard statistics) on disk under
  ``<cache>/baselines/<digest>.json``, created under a FileLock so concurrent workers compute it once;
* the calibrated preset, likewise under ``<cache>/presets/``, and copied into the run directory's
  ``metadata/presets/`` (``--proofpack-presets DIR`` supplies presets instead of calibrating).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from filelock import FileLock

from pytest_proofpack import ENGINE_VERSION, progress
from pytest_proofpack.errors import GuardError, OptionError, ProofpackError, RemoteScenarioError, ScenarioTimeout
from pytest_proofpack.results import atomic_write_json, atomic_write_text, read_json_object
from pytest_proofpack.shared_cache import load_or_compute, shared_parts, stable_digest

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from pytest_proofpack.benign import BenignPlan
    from pytest_proofpack.catalog import Catalog, Suite
    from pytest_proofpack.data.windows import WindowSet
    from pytest_proofpack.engine.config import EngineConfig
    from pytest_proofpack.models import ModelEntry
    from pytest_proofpack.models.loading import LoadedModel
    from pytest_proofpack.options import Options
    from pytest_proofpack.registries import Registries
    from pytest_proofpack.tuned import ModelTuning


@dataclass
class RunContext:
    """Everything a worker needs that does not depend on the model: options, catalog, suite, paths, digests, and
    the registries (the session's own) that every edit, fault and corpus provider name resolves in."""

    options: Options
    catalog: Catalog
    suite: Suite
    run_dir: Path
    cache: Path
    config: dict[str, Any]
    config_digest: str
    dataset: Mapping[str, Any]
    worker_id: str = "master"
    timings: dict[str, float] = field(default_factory=dict)
    registries: Registries = field(kw_only=True)

    def eval_settings(self, entry: ModelEntry) -> dict[str, int]:
        merged = {"seq_len": 256, "n_preview": 4, "n_final": 16, "batch_size": 8, "bootstrap_replicates": 1000}
        merged.update(self.suite.eval)
        merged.update(entry.extra.get("eval", {}))
        return merged

    def calibration_runs(self) -> int:
        """``--proofpack-calibration-runs``, else the suite's ``eval.calibration_runs``, else 5."""
        if self.options.calibration_runs is not None:
            return self.options.calibration_runs
        return int(self.suite.eval.get("calibration_runs", 5))

    def device(self) -> str:
        if self.options.device != "auto":
            return self.options.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def engine_config(self, entry: ModelEntry) -> EngineConfig:
        from pytest_proofpack.engine.config import EngineConfig

        ev = self.eval_settings(entry)
        return EngineConfig(
            tier=self.options.tier, batch_size=ev["batch_size"], bootstrap_replicates=ev["bootstrap_replicates"],
            seed=self.options.seed, gate_rule=self.options.gate_rule, guard_windows=ev["n_preview"],
            device=self.device(),
        )


RUN_WINDOW_STRIDE = 7919


def parse_dataset_option(value: str, datasets: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``--proofpack-dataset``: a dataset name from suites.yaml, or ``provider:path-or-name``."""
    if value in datasets:
        return dict(datasets[value])
    if ":" in value:
        provider, arg = value.split(":", 1)
        if provider in ("local_text", "local_jsonl"):
            return {"provider": provider, "path": str(Path(arg).resolve())}  # relative to the cwd
        if provider in ("hf_text", "wikitext2"):
            return {"provider": provider, "name": arg}
    raise OptionError(
        f"--proofpack-dataset: {value!r} is neither a dataset of suites.yaml ({', '.join(datasets)}) nor "
        "provider:arg (local_text:FILE, local_jsonl:FILE, hf_text:NAME)"
    )


class ModelRuntime:
    """One model on one worker. Attributes load on first use; :meth:`close` frees the model."""

    def __init__(self, ctx: RunContext, entry: ModelEntry) -> None:
        self.ctx = ctx
        self.entry = entry
        self._loaded: LoadedModel | None = None
        self._windows: dict[int, tuple[WindowSet, WindowSet]] = {}
        self._tokens: npt.NDArray[np.int64] | None = None
        self._baselines: dict[int, Any] = {}
        self._preset: dict[str, Any] | None = None
        self.engine = ctx.engine_config(entry)
        from pytest_proofpack.determinism import apply_determinism

        apply_determinism(ctx.options.determinism)
        self.settings = ctx.eval_settings(entry)

    # ----------------------------------------------------------------------------------- model and data
    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            from pytest_proofpack.malloc import pin_malloc_mmap_threshold
            from pytest_proofpack.models.loading import load_model

            pin_malloc_mmap_threshold()
            from pytest_proofpack.edits.backup import BackupPolicy, set_backup_policy

            set_backup_policy(BackupPolicy(self.ctx.options.backup_ram << 20, self.ctx.cache / "scratch"))
            threads = os.environ.get("PROOFPACK_TORCH_THREADS")
            if threads and threads.isdigit():
                import torch

                torch.set_num_threads(int(threads))  # set per worker by the scheduler: no oversubscription
            t0 = time.perf_counter()
            # The command line's --proofpack-dtype beats the suite entry's dtype.
            entry = dataclasses.replace(self.entry, dtype=self.ctx.options.dtype) if self.ctx.options.dtype \
                else self.entry
            from pytest_proofpack.scheduling.gpus import device_map_for_process

            with progress.phase("load", subject=self.entry.key):
                self._loaded = load_model(
                    entry, cache=self.ctx.cache, assets=self.ctx.catalog.assets, suite=self.ctx.suite.name,
                    device=self.engine.device, dtype=self.ctx.options.dtype, allow_net=self.ctx.options.net,
                    device_map=device_map_for_process(self.engine.device),  # a multi-GPU reservation's subprocess
                )
            self.ctx.timings[f"load:{self.entry.key}"] = time.perf_counter() - t0
        return self._loaded

    @property
    def model(self) -> Any:
        return self.loaded.model

    def tokens(self) -> npt.NDArray[np.int64]:
        if self._tokens is None:
            from pytest_proofpack.data import DatasetSpec, load_text, tokenize_corpus

            providers = self.ctx.registries.providers
            spec = DatasetSpec.from_mapping(self.ctx.dataset, "dataset", providers)
            tokenizer = self.loaded.tokenizer
            with progress.subject(self.entry.key):  # reading and tokenizing report themselves on a cache miss
                corpus = load_text(spec, cache=self.ctx.cache, assets=self.ctx.catalog.assets,
                                   suite=self.ctx.suite.name, allow_net=self.ctx.options.net,
                                   base_dir=self.ctx.catalog.paths["suites"].parent, isolate=True,
                                   providers=providers)
                self.corpus_desc = corpus.source_desc
                self.corpus_digest = corpus.digest
                self._tokens = tokenize_corpus(corpus, tokenizer, cache=self.ctx.cache, isolate=True)
        return self._tokens

    def make_windows(self, seed: int, pool: str = "evaluation") -> tuple[WindowSet, WindowSet]:
        """Preview and final windows drawn with ``seed`` from ``pool``'s chunks only (see ``POOL_SHARES``)."""
        from pytest_proofpack.data.windows import make_eval_windows, pool_exclusion

        s, tokens, bos = self.settings, self.tokens(), self.bos
        stride = s["seq_len"] - (bos is not None)
        exclude = pool_exclusion(int(tokens.size), stride, pool, self.ctx.options.seed)
        return make_eval_windows(tokens, s["seq_len"], s["n_preview"], s["n_final"], seed, exclude=exclude, bos=bos)

    @functools.cached_property
    def bos(self) -> int | None:
        """The BOS id every window starts with: the tokenizer's convention (``--proofpack-bos auto``), or forced
        on or off by the option."""
        from pytest_proofpack.data.tokenization import adds_bos

        mode = self.ctx.options.bos
        tokenizer = self.loaded.tokenizer
        if mode == "off":
            return None
        if mode == "on":
            bos = getattr(tokenizer, "bos_token_id", None)
            if bos is None:
                raise OptionError(f"--proofpack-bos on: the tokenizer of {self.entry.key} has no BOS token; "
                                  "use auto or off")
            return int(bos)
        return adds_bos(tokenizer)

    def window_seed(self, run: int) -> int:
        """Run ``r`` of a scenario evaluates its own window sample, so runs are real replicates."""
        return self.ctx.options.seed + RUN_WINDOW_STRIDE * (run - 1)

    def windows(self, run: int = 1) -> tuple[WindowSet, WindowSet]:
        if run not in self._windows:
            self._windows[run] = self.make_windows(self.window_seed(run))
        return self._windows[run]

    # ----------------------------------------------------------------------------------- baseline
    def _cached(self, kind: str, digest: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Load ``<cache>/<kind>/<digest>.json`` or compute it once across workers under a FileLock."""
        path = self.ctx.cache / kind / f"{digest}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = load_or_compute(path, compute)
        assert data is not None, "a blocking acquire returns or raises"
        return data

    def baseline_digest(self, run: int = 1) -> str:
        preview, final = self.windows(run)
        return stable_digest("baseline", ENGINE_VERSION, self.loaded.fingerprint, self.loaded.dtype,
                       preview.digest, final.digest, self.engine.digest())

    def baseline(self, run: int = 1) -> Any:
        """The baseline state on run ``run``'s windows (computed on the unedited model, cached on disk)."""
        if run not in self._baselines:
            from pytest_proofpack.engine import BaselineState, prepare_baseline

            preview, final = self.windows(run)
            t0 = time.perf_counter()

            def compute() -> dict[str, Any]:
                with progress.phase("baseline", subject=self.entry.key, detail=f"run {run}"):
                    state: dict[str, Any] = prepare_baseline(self.model, preview, final, self.engine).to_json()
                    return state

            data = self._cached("baselines", self.baseline_digest(run), compute)
            self._baselines[run] = BaselineState.from_json(data)
            self.ctx.timings[f"baseline:{self.entry.key}:{run}"] = time.perf_counter() - t0
        return self._baselines[run]

    # ----------------------------------------------------------------------------------- preset
    def preset_path(self) -> Path:
        return self.ctx.run_dir / "metadata" / "presets" / f"calibrated_preset_{self.entry.key}.json"

    @property
    def preset(self) -> dict[str, Any]:
        if self._preset is None:
            self._preset = self._load_or_calibrate()
        return self._preset

    def _load_or_calibrate(self) -> dict[str, Any]:
        supplied = self.ctx.options.presets
        preset: dict[str, Any]
        if supplied is not None:
            path = supplied / f"calibrated_preset_{self.entry.key}.json"
            if not path.is_file():
                raise OptionError(f"--proofpack-presets: {path} not found; write it with "
                                  "--proofpack-calibrate-only or drop the option to calibrate")
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise OptionError(f"--proofpack-presets: {path} is not valid JSON: {exc}") from None
            if not isinstance(loaded, dict) or loaded.get("schema") != "proofpack_preset_v1":
                raise OptionError(f"--proofpack-presets: {path}: schema must be proofpack_preset_v1")
            preset = loaded
        else:
            runs = self.ctx.calibration_runs()
            from pytest_proofpack import calibration
            from pytest_proofpack.data.windows import POOL_SHARES

            plan = self.benign_plan()
            # Everything that shapes a preset keys its cache entry: a changed benign plan or floor recalibrates.
            digest = stable_digest("preset", self.baseline_digest(), runs, plan.describe(), POOL_SHARES,
                                   calibration.FLOORS, calibration.MARGIN, calibration.RUN_SEED_STRIDE,
                                   calibration.DERIVATION)
            t0 = time.perf_counter()
            found = read_json_object(self.ctx.cache / "presets" / f"{digest}.json")
            if found is None:
                with progress.phase("calibrate", subject=self.entry.key, total=runs) as phase:
                    # The runs are shared out first (no preset lock held), then one worker assembles the preset.
                    parts = self._calibration_parts(digest, runs, plan, phase.advance)
                    base = self.baseline()  # before the preset lock: never wait for a baseline while holding it
                    found = self._cached("presets", digest, lambda: self._assemble_preset(parts, base))
            preset = found
            self.ctx.timings[f"calibration:{self.entry.key}"] = time.perf_counter() - t0
        self._publish_preset(preset)
        return preset

    def benign_plan(self) -> BenignPlan:
        """Calibration's benign edits: this model's tuned clean settings and their ladder neighbours."""
        from pytest_proofpack.benign import plan_from_tuned

        return plan_from_tuned(self.model, self.tuning.entries(), self.ctx.registries.edits)

    @functools.cached_property
    def tuning(self) -> ModelTuning:
        """This model's clean-edit entries (the catalog's, else measured by the tuner)."""
        from pytest_proofpack.tuned import ModelTuning

        return ModelTuning(self)

    def _calibration_parts(self, digest: str, runs: int, plan: BenignPlan,
                           on_done: Callable[[int], None]) -> list[dict[str, Any]]:
        from pytest_proofpack.calibration import calibration_run

        # Calibration windows come from their own pool of chunks, so no scenario is judged on the very windows its
        # thresholds were fitted on.
        def run(i: int) -> dict[str, Any]:
            return calibration_run(self.model, lambda seed: self.make_windows(seed, "calibration"), self.engine, i,
                                   benign=plan, benign_per_run=plan.per_run)

        return shared_parts(self.ctx.cache / "presets" / f"{digest}.runs", runs, run, on_done)

    def _assemble_preset(self, parts: list[dict[str, Any]], base: Any) -> dict[str, Any]:
        from pytest_proofpack.calibration import assemble

        preset = assemble(parts, base, self.engine, benign=True)
        preset["calibration"]["benign_plan"] = self.benign_plan().describe()
        preset.setdefault("model", {"key": self.entry.key, "hub_id": self.entry.hub_id})
        return preset

    def _publish_preset(self, preset: dict[str, Any]) -> None:
        path = self.preset_path()
        with FileLock(str(path) + ".lock") if path.parent.is_dir() else _mkdir_lock(path):
            atomic_write_json(path, preset)
            atomic_write_text(path.with_suffix(".yaml"), yaml.safe_dump(preset, sort_keys=True))
        records = (preset.get("calibration") or {}).get("records") or []
        for i, run in enumerate(records, start=1):
            atomic_write_json(self.ctx.run_dir / "reports" / self.entry.key / "calibration" / f"run_{i}" /
                              "calibration.json", run)

    def discard_model(self) -> None:
        """Drop the loaded model (a failed restore left it edited); the next use loads it again. Baselines and the
        preset are statistics of the unedited model and stay valid."""
        self._loaded = None
        self._free()

    def close(self) -> None:
        """Drop the model and free accelerator memory."""
        self._loaded = None
        self._baselines.clear()
        self._free()

    def _free(self) -> None:
        import gc

        gc.collect()
        if os.environ.get("CUDA_VISIBLE_DEVICES", "") != "" or self.engine.device.startswith("cuda"):
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:  # pragma: no cover - torch is a dependency
                pass


def _mkdir_lock(path: Path) -> FileLock:
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


def describe_error(exc: BaseException) -> tuple[str, str]:
    """``(error_class, one-line message)`` decided from the exception's type, never from log text."""
    if isinstance(exc, ProofpackError | GuardError):
        return exc.error_class, str(exc)
    if isinstance(exc, RemoteScenarioError):
        return exc.described
    name = type(exc).__name__
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return "oom", f"{name}: {str(exc).splitlines()[0] if str(exc) else 'out of memory'}"
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    if isinstance(exc, MemoryError):
        return "oom", f"{name}: host memory exhausted"
    if isinstance(exc, ScenarioTimeout | TimeoutError):
        return "timeout", f"{name}: {exc}"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return "internal", f"{name}: {first}"
