"""One scenario run on a worker: apply the edit or fault in memory, evaluate through the hook, restore.

The baseline and the calibrated preset are materialised *before* the model is touched (they describe the
unedited model). The change is restored in a ``finally`` block, so a failing evaluation never leaks an edit into
the next scenario of the same worker.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_proofpack.deadline import uninterrupted
from pytest_proofpack.detectors import GUARD_ERROR_STATUS
from pytest_proofpack.errors import EngineUnavailableError, GuardError, ProofpackError
from pytest_proofpack.scheduling.gpus import RESERVED_DEVICES_ENV

if TYPE_CHECKING:
    import pytest

    from pytest_proofpack.catalog import Case
    from pytest_proofpack.runtime import ModelRuntime


@dataclass
class CaseResult:
    """A normalised evaluation: the report dict and its sidecar files (``name -> dict``)."""

    report: dict[str, Any]
    sidecars: dict[str, dict[str, Any]] = field(default_factory=dict)


def probes_for(case: Case) -> list[str]:
    """Which cross-model probes a scenario's detectors read: ``rmt`` (rmt_probe.*) and/or ``ve`` (ve_probe.*)."""
    kinds = {d.get("kind") for group in ("detectors_any_of", "detectors_all_of")
             for d in case.scenario.requirements.get(group, []) if isinstance(d, Mapping)}
    return [p for p, k in (("rmt", "rmt_probe"), ("ve", "ve_probe")) if k in kinds]


def relative_defaults() -> dict[str, float]:
    """The engine's uncalibrated thresholds a relative probe strength falls back to (as the guards do)."""
    from pytest_proofpack.engine.config import DEFAULT_SPECTRAL_THRESHOLD, DEFAULT_VE_DEADBAND

    return {"spectral": DEFAULT_SPECTRAL_THRESHOLD, "ve_deadband": DEFAULT_VE_DEADBAND}


def apply_change(case: Case, runtime: ModelRuntime) -> Any:
    """Apply the scenario's edit, fault or checkpoint subject to ``runtime.model`` in place, resolved in the run's
    registries; returns the reversible change."""
    seed = runtime.ctx.options.seed + case.run
    registries = runtime.ctx.registries
    if case.scenario.kind == "checkpoint":
        from pytest_proofpack.checkpoint import apply_checkpoint

        return apply_checkpoint(case, runtime)
    if case.scenario.kind == "edit":
        from pytest_proofpack.edits import apply_edit, parse_edit_spec

        assert case.edit_spec is not None
        spec = parse_edit_spec(case.edit_spec, registry=registries.edits)
        if spec.clean:  # the catalog has no tuned entry for this model: the tuner's measured one applies
            entry = runtime.tuning.entry(spec.kind)
            if entry.get("status") == "skipped":
                import pytest

                pytest.skip(f"tuning: {entry.get('reason')}")
        return apply_edit(runtime.model, runtime.tuning.concrete(spec), seed=seed, registry=registries.edits)
    from pytest_proofpack.faults import apply_fault
    from pytest_proofpack.faults.relative import resolve_relative

    gen = case.scenario.generation
    merged = {**(gen.get("env") or {}), **((gen.get("env_by_model") or {}).get(case.model.key) or {})}
    env, relative = resolve_relative({str(k): str(v) for k, v in merged.items()}, runtime.preset, relative_defaults())
    change = apply_fault(runtime.model, str(case.scenario.generation["error_type"]), env, seed=seed,
                         registry=registries.faults)
    if relative:
        change.metadata["relative_env"] = relative
    return change


def run_case(config: pytest.Config, case: Case, runtime: ModelRuntime) -> CaseResult:
    """Evaluate one case: baseline and preset first, then change → ``pytest_proofpack_evaluate`` → restore."""
    runtime.baseline(case.run)  # materialised on the unedited model, before the change
    runtime.preset  # noqa: B018
    change = apply_change(case, runtime)
    try:
        metadata = dict(change.metadata)
        if runtime.ctx.options.save_models and case.scenario.kind != "checkpoint":  # a subject is on disk already
            save_edited(runtime, case)
        result = config.hook.pytest_proofpack_evaluate(case=case, runtime=runtime, change=metadata)
        repeats = [config.hook.pytest_proofpack_evaluate(case=case, runtime=runtime, change=metadata)
                   for _ in range(runtime.ctx.options.repeats if is_repeat_case(case, runtime) else 0)]
    finally:
        with uninterrupted():  # a deadline expiring here waits: the next scenario needs the baseline weights
            try:
                change.restore()
            except BaseException:
                runtime.discard_model()  # its weights are no longer the baseline's: the next scenario reloads them
                raise
    if result is None:
        raise EngineUnavailableError(
            "no evaluation engine is available: no pytest_proofpack_evaluate implementation returned a result; "
            "install pytest-proofpack with its engine or implement the hook in a conftest.py")
    out = normalise(result, case)
    if isinstance(metadata.get("subject"), Mapping):  # a checkpoint: what was certified, for report and pack
        out.report["subject_provenance"] = dict(metadata["subject"])
    if repeats:
        out.report["determinism_repeats"] = repeat_spread(out.report, [normalise(r, case).report for r in repeats])
    return out


def run_and_record(config: pytest.Config, case: Case, runtime: ModelRuntime, process: str,
                   **extra: Any) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """:func:`run_case`, then the report's ``execution`` and ``baseline_provenance`` blocks (where it ran; what the
    unedited model is: :meth:`~pytest_proofpack.models.loading.LoadedModel.provenance`) and its files written into
    the run directory.

    Returns the report and the test's properties (unprefixed): where the report is, which model revision and
    source it evaluated. The same in a worker and in a multi-GPU reservation's subprocess.
    """
    from pytest_proofpack.results import report_dir, report_relpath

    result = run_case(config, case, runtime)
    device_map = getattr(runtime.model, "hf_device_map", None)
    if isinstance(device_map, dict):  # loaded with a device map: the devices its layers were spread over
        extra = {**extra, "devices_used": sorted({str(d) for d in device_map.values()})}
    result.report["execution"] = execution_evidence(process, **extra)
    result.report["baseline_provenance"] = runtime.loaded.provenance()
    write_evidence(report_dir(runtime.ctx.run_dir, *case.key), result)
    props = [("report", report_relpath(*case.key)), ("model_revision", runtime.loaded.revision),
             ("model_source", runtime.loaded.source_desc)]
    return result.report, props


def execution_evidence(process: str, **extra: Any) -> dict[str, Any]:
    """Where a scenario ran, for its report's ``execution`` block: ``process`` (``worker`` or ``subprocess``),
    pid, xdist worker id, ``CUDA_VISIBLE_DEVICES``/reserved devices as this process sees them, the process's peak
    RSS so far (``peak_rss_mib``: the scenario where it jumps is the one that drove a worker's memory), the
    ``GLIBC_TUNABLES`` it started with (see :mod:`pytest_proofpack.malloc`), and ``extra``."""
    return {
        "process": process,
        "pid": os.getpid(),
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "master"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "reserved_devices": os.environ.get(RESERVED_DEVICES_ENV),
        "peak_rss_mib": peak_rss_mib(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        **extra,
    }


def peak_rss_mib() -> float | None:
    """This process's peak resident set size so far in MiB (``getrusage``); ``None`` where unavailable."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux


def is_repeat_case(case: Case, runtime: ModelRuntime) -> bool:
    """``--proofpack-repeats`` re-evaluates run 1 of the suite's first must_pass scenario of each model."""
    first = next((s.id for s in runtime.ctx.catalog.scenarios if s.strictness == "must_pass"
                  and (not s.suites or runtime.ctx.suite.scenario_suite in s.suites)), None)
    return case.run == 1 and case.scenario.id == first


def repeat_spread(report: Mapping[str, Any], repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios of the first evaluation and its repeats, and their spread (max - min)."""
    ratios = [r.get("primary_metric", {}).get("ratio_vs_baseline") for r in [dict(report), *repeats]]
    finite = [float(x) for x in ratios if isinstance(x, int | float)]
    return {"n": len(ratios), "ratios": ratios, "min": min(finite, default=None), "max": max(finite, default=None),
            "spread": (max(finite) - min(finite)) if finite else None,
            "identical": len(set(finite)) <= 1 and len(finite) == len(ratios)}


def normalise(result: Any, case: Case) -> CaseResult:
    """The engine's result as a :class:`CaseResult` with the report's identity filled in.

    Raises :class:`ProofpackError` for a report without ``validation``, and :class:`GuardError` for one whose
    ``invariants.status`` is a guard's error status: an engine's guard error is an error of the run, not a verdict.
    """
    if isinstance(result, Mapping):
        report, sidecars = dict(result), {}
    else:
        report, sidecars = dict(result.report), {k: dict(v) for k, v in dict(result.sidecars).items()}
    if not isinstance(report.get("validation"), Mapping):
        raise ProofpackError(f"the evaluation of {case.model.key}:{case.scenario.id} returned a report without a "
                             "'validation' object; an engine must return the report fields listed in the README")
    invariants = report.get("invariants")
    status = invariants.get("status") if isinstance(invariants, Mapping) else None
    if isinstance(status, str) and status.strip().lower() == GUARD_ERROR_STATUS:
        raise GuardError("invariants", f"an error: the engine's report gives invariants.status {status!r}")
    report.setdefault("model", case.model.key)
    report.setdefault("scenario", case.scenario.id)
    report.setdefault("run", case.run)
    for name, side in sidecars.items():
        report.setdefault(name.removesuffix(".json"), side)
    return CaseResult(report, sidecars)


def write_evidence(directory: Path, result: CaseResult) -> list[Path]:
    """Write ``evaluation.report.json`` and the sidecars atomically into ``directory``."""
    from pytest_proofpack.engine.report import atomic_write_json  # strict JSON: non-finite numbers become null

    written = []
    for name, data in result.sidecars.items():
        atomic_write_json(directory / name, data)
        written.append(directory / name)
    atomic_write_json(directory / "evaluation.report.json", result.report)
    written.append(directory / "evaluation.report.json")
    return written


def save_edited(runtime: ModelRuntime, case: Case) -> Path:
    """``--proofpack-save-models``: the edited model as safetensors under ``<run_dir>/models/``."""
    out = runtime.ctx.run_dir / "models" / case.model.key / case.scenario.id
    out.mkdir(parents=True, exist_ok=True)
    runtime.model.save_pretrained(out, safe_serialization=True)
    runtime.loaded.tokenizer.save_pretrained(out)
    return out
