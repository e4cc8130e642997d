"""Calibration: null and benign runs of one model -> a preset of thresholds, each with its provenance.

What varies between evaluations is what really varies in use: every evaluation draws its own window sample
(``make_windows(seed)``, from the calibration pool) and engine seed, builds that sample's baseline, then evaluates

* the unedited model (a *null* run: exactly zero on a deterministic device, evaluation noise elsewhere), or
* when ``benign`` is given, the model under a harmless edit: ``benign(model, index)`` returns a context manager
  that applies the edit on entry and restores the model on exit (:class:`~pytest_proofpack.benign.BenignPlan`:
  the model's tuned clean settings and their ladder neighbours).

Derived (each stored with ``n``, ``max``, ``q95``, ``floor``, ``margin`` of the values it came from):
``primary_metric.drift_band`` (|log preview ratio - log final ratio|), ``spectral.family_thresholds`` (per-family
max |log sigma ratio|), ``rmt.epsilon_by_family`` (family shift: the largest one-sided rise of a module's edge
statistic), ``variance.deadband`` (max |alpha-1| over the evaluations whose VE gain CI lower bound is positive) and
``variance.min_effect`` (largest CI lower bound of a VE gain). Rule: ``value = max(floor, margin * max)``.
``achieved_null_false_alarm_rate`` re-applies the derived thresholds to the calibration evaluations (in-sample);
``loo_false_alarm_rate`` does so leaving each evaluation out of the derivation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Final

import numpy as np

from pytest_proofpack.engine.baseline import BaselineState
from pytest_proofpack.engine.config import (
    DEFAULT_RMT_EPSILON,
    DEFAULT_RMT_EPSILON_BY_FAMILY,
    HYSTERESIS_RATIO,
    EngineConfig,
)
from pytest_proofpack.engine.evaluate import evaluate, prepare_baseline
from pytest_proofpack.errors import ProofpackError

PRESET_SCHEMA: Final = "proofpack_preset_v1"
MARGIN: Final = 1.5
# Floors: a threshold is never tighter than this, whatever calibration observed. The drift floor reflects that the
# preview arm has few windows (its ratio is noisy); the RMT floors are the engine's defaults per activation family
# (engine/config.py: clean edits stronger than the benign ones move the residual writers' statistic by up to ~15 %
# and the FFN intermediate's by ~3 %), so that a threshold is never learned from edits milder than those it must
# let through.
FLOORS: Final[dict[str, float]] = {
    "drift_band": 0.05,
    "spectral": 0.05,
    "rmt": DEFAULT_RMT_EPSILON,
    **{f"rmt_{f}": v for f, v in DEFAULT_RMT_EPSILON_BY_FAMILY.items()},
    "ve_deadband": 0.02,
    "ve_min_effect": 0.0,
}
RUN_SEED_STRIDE: Final = 1000
#: Names how :func:`calibration_run` and :func:`derive` compute a preset; it keys cached presets, so a change to
#: either recalibrates instead of reusing a preset the old rules made.
DERIVATION: Final = "per-evaluation window samples; VE deadband from evaluations with a positive gain CI"

WindowFactory = Callable[[int], tuple[Any, Any]]
BenignEdit = Callable[[Any, int], AbstractContextManager[Any]]


class PresetError(ProofpackError):
    """A preset file does not follow ``proofpack_preset_v1``."""

    error_class = "bad_input"


def _calibration_record(kind: str, run: int, report: Mapping[str, Any], edit: str | None = None) -> dict[str, Any]:
    """The statistics of one calibration evaluation that the derivation and the false-alarm check need."""
    pm, spec, rmt, var = report["primary_metric"], report["spectral"], report["rmt"], report["variance"]
    top = var.get("top_scales") or []
    ci = var.get("gain_ci")
    return {
        "kind": kind,
        "run": run,
        "edit": edit,
        "ratio": pm.get("ratio_vs_baseline"),
        "drift_gap": (pm.get("drift") or {}).get("log_gap"),
        "spectral_family_max": {f: v["max_abs_log_ratio"] for f, v in spec.get("families", {}).items()},
        "spectral_top": [[m["family"], abs(m["log_ratio"])] for m in spec.get("top_modules", [])],
        "spectral_fatal": spec.get("fatal_count", 0),
        "rmt_shift": dict(rmt.get("shift_by_family", {})),
        "ve_max_dev": max((abs(float(t["alpha"]) - 1.0) for t in top), default=0.0),
        "ve_gain_lo": ci[0] if ci else None,
        "invariants": report["invariants"]["status"],
        "validation": dict(report["validation"]),
    }


def _stat(values: list[float | None], floor: float) -> dict[str, Any]:
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    mx = max(finite, default=0.0)
    return {
        "value": max(floor, MARGIN * mx),
        "n": len(finite),
        "max": mx,
        "q95": float(np.quantile(finite, 0.95)) if finite else 0.0,
        "floor": floor,
        "margin": MARGIN,
        "rule": "max(floor, margin * max)",
    }


def derive(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Thresholds from calibration records (see the module docstring)."""
    fams_spec = sorted({f for r in records for f in r["spectral_family_max"]})
    fams_rmt = sorted({f for r in records for f in r["rmt_shift"]})
    return {
        "primary_metric": {"drift_band": _stat([r["drift_gap"] for r in records], FLOORS["drift_band"])},
        "spectral": {
            "family_thresholds": {
                f: _stat([r["spectral_family_max"].get(f) for r in records], FLOORS["spectral"])
                for f in fams_spec
            }
        },
        "rmt": {
            "epsilon_by_family": {
                f: _stat([r["rmt_shift"].get(f) for r in records], FLOORS.get(f"rmt_{f}", FLOORS["rmt"]))
                for f in fams_rmt
            }
        },
        "variance": {
            # A VE signal needs a proposal *and* a gain from applying it: a benign edit whose proposals would not
            # help (gain CI at or below zero) cannot raise one however far they lie, so it does not widen the
            # deadband; only the benign evaluations where rescaling would have helped do.
            "deadband": _stat([r["ve_max_dev"] if (r["ve_gain_lo"] or 0.0) > 0.0 else None for r in records],
                              FLOORS["ve_deadband"]),
            "min_effect": _stat(
                [max(0.0, r["ve_gain_lo"]) if r["ve_gain_lo"] is not None else None for r in records],
                FLOORS["ve_min_effect"],
            ),
        },
    }


def _alarm(rec: Mapping[str, Any], th: Mapping[str, Any], cfg: EngineConfig) -> list[str]:
    """Which gates the derived thresholds ``th`` would trip on calibration record ``rec``."""
    out: list[str] = []
    ratio = rec["ratio"]
    if ratio is None or ratio > cfg.ratio_limit + HYSTERESIS_RATIO:
        out.append("primary_metric")
    gap = rec["drift_gap"]
    if gap is None or gap > th["primary_metric"]["drift_band"]["value"]:
        out.append("drift")
    fam_thr = th["spectral"]["family_thresholds"]
    # top_modules holds the 10 largest statistics, and every tier's max_caps is below 10, so this count is
    # exact
    caps = sum(1 for fam, v in rec["spectral_top"] if v > fam_thr.get(fam, {"value": 0.0})["value"])
    if caps > cfg.max_caps or rec["spectral_fatal"]:
        out.append("spectral")
    eps = th["rmt"]["epsilon_by_family"]
    if any(v is None or v > eps.get(f, {"value": 0.0})["value"] for f, v in rec["rmt_shift"].items()):
        out.append("rmt")
    if rec["invariants"] not in ("pass", "warn"):
        out.append("invariants")
    return out


def calibration_run(
    model: Any,
    make_windows: WindowFactory,
    cfg: EngineConfig,
    run: int,
    *,
    benign: BenignEdit | None = None,
    benign_per_run: int = 1,
) -> dict[str, Any]:
    """Calibration run ``run`` (0-based): ``{"window": {seed, digests}, "windows": [...], "records": [...]}``.

    With ``benign``, the run evaluates ``benign_per_run`` benign edits, ``benign(model, run * benign_per_run + j)``
    for ``j < benign_per_run``, edit ``j`` on its own window sample (seed ``run seed + j``, its own baseline): a
    guard statistic varies with the windows as much as with the edit, and each scenario run has its own windows,
    so the thresholds must see as many samples as there are evaluations. A run depends only on its index, the
    model and ``cfg``, so runs can be computed by different processes and assembled by :func:`assemble` in index
    order. The model is left as it was found.
    """
    seed = cfg.seed + RUN_SEED_STRIDE * (run + 1)
    ctx: dict[str, object] = {"model": None, "scenario": "calibration", "run": run, "edit": None, "probes": []}
    # On the CPU a forward pass is deterministic: a null run re-evaluates the baseline and its statistics are
    # exactly zero, so with benign edits available it adds cost and no information and is skipped.
    deterministic = str(cfg.device).startswith("cpu")
    records: list[dict[str, Any]] = []
    windows: list[dict[str, Any]] = []

    def sample(offset: int) -> tuple[Any, Any, Any, EngineConfig]:
        run_cfg = dataclasses.replace(cfg, seed=seed + offset)
        preview, final = make_windows(seed + offset)
        windows.append({"seed": seed + offset, "preview_digest": preview.digest, "final_digest": final.digest})
        return prepare_baseline(model, preview, final, run_cfg), preview, final, run_cfg

    null_sample = sample(0) if benign is None or not deterministic else None
    if null_sample is not None:
        state, preview, final, run_cfg = null_sample
        report = evaluate(model, state, preview, final, {}, run_cfg, context=ctx).report
        records.append(_calibration_record("null", run, report))
    if benign is not None:
        for j in range(benign_per_run):
            state, preview, final, run_cfg = null_sample if j == 0 and null_sample is not None else sample(j)
            with benign(model, run * benign_per_run + j) as change:
                report = evaluate(model, state, preview, final, {}, run_cfg, context=ctx).report
            records.append(_calibration_record("benign", run, report, _edit_label(change)))
    return {"window": windows[0], "windows": windows, "records": records}


def _edit_label(change: object) -> str | None:
    """The spec of an applied edit, from its metadata when it carries one."""
    meta = getattr(change, "metadata", None)
    return str(meta["spec"]) if isinstance(meta, Mapping) and "spec" in meta else None


def assemble(
    parts: list[dict[str, Any]], baseline: BaselineState, cfg: EngineConfig, *, benign: bool
) -> dict[str, Any]:
    """The preset (``proofpack_preset_v1``, JSON-able) from the :func:`calibration_run` results of runs
    ``0..len(parts)-1``, in that order.

    ``baseline`` is the model's main baseline; its config digest is recorded so a preset is never used with a
    baseline made under another configuration.
    """
    from pytest_proofpack import ENGINE_VERSION

    if not parts:
        raise PresetError("calibration runs must be >= 1; raise --proofpack-calibration-runs")
    records = [dict(r) for part in parts for r in part["records"]]
    windows = [w for part in parts for w in part.get("windows", [part["window"]])]
    deterministic = str(cfg.device).startswith("cpu")
    th = derive(records)
    th["spectral"]["max_caps"] = cfg.max_caps
    alarms = [_alarm(r, th, cfg) for r in records]
    loo = [
        _alarm(r, derive(records[:i] + records[i + 1 :]), cfg) if len(records) > 1 else []
        for i, r in enumerate(records)
    ]
    for r, a, b in zip(records, alarms, loo, strict=True):
        r["alarms"], r["loo_alarms"] = a, b
    return {
        "schema": PRESET_SCHEMA,
        "schema_version": 1,
        "source": "calibrated",
        "tier": cfg.tier,
        "engine_version": ENGINE_VERSION,
        "config_digest": cfg.digest(),
        "baseline_config_digest": baseline.config_digest,
        **th,
        "calibration": {
            "runs": len(parts),
            "benign": benign,
            "null_runs_skipped": benign and deterministic,
            "n_evaluations": len(records),
            "windows": windows,
            "achieved_null_false_alarm_rate": sum(1 for a in alarms if a) / len(records),
            "loo_false_alarm_rate": sum(1 for a in loo if a) / len(records),
            "records": records,
        },
    }


def calibrate(
    model: Any,
    make_windows: WindowFactory,
    baseline: BaselineState,
    cfg: EngineConfig,
    *,
    runs: int = 5,
    benign: BenignEdit | None = None,
) -> dict[str, Any]:
    """Run ``runs`` calibration runs in this process and return the preset (see :func:`assemble`).

    The model is left as it was found (``benign`` must restore it).
    """
    if runs < 1:
        raise PresetError("calibration runs must be >= 1; raise --proofpack-calibration-runs")
    parts = [calibration_run(model, make_windows, cfg, run, benign=benign) for run in range(runs)]
    return assemble(parts, baseline, cfg, benign=benign is not None)


def check_preset(preset: Mapping[str, Any], source: str = "preset") -> None:
    """Raise :class:`PresetError` unless ``preset`` is a ``proofpack_preset_v1`` document."""
    if preset.get("schema") != PRESET_SCHEMA or preset.get("schema_version") != 1:
        raise PresetError(
            f"{source}: schema must be {PRESET_SCHEMA} version 1; regenerate it with calibrate()"
        )
    for key in ("primary_metric", "spectral", "rmt", "variance"):
        if not isinstance(preset.get(key), Mapping):
            raise PresetError(f"{source}: field {key!r} missing or not a mapping; regenerate the preset")


def preset_to_yaml(preset: Mapping[str, Any]) -> str:
    """The preset as YAML (block style, keys in their natural order)."""
    import yaml

    from pytest_proofpack.engine.report import json_safe

    text: str = yaml.safe_dump(json_safe(preset), sort_keys=False, default_flow_style=False)
    return text
