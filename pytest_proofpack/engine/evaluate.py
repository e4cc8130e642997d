"""The engine's entry points: :func:`prepare_baseline` (once per model and window set) and :func:`evaluate`.

The subject is the baseline's model object with an edit applied in place, so the baseline keeps statistics, never
tensors (:mod:`~pytest_proofpack.engine.baseline`). :func:`evaluate` runs the guard chain
(:mod:`~pytest_proofpack.engine.guard_chain`), then the primary metric's forward and its comparison with the
baseline (:mod:`~pytest_proofpack.engine.pairing`), and assembles the report
(:mod:`~pytest_proofpack.engine.report` gives its contract).

The RMT guard's hooked forward of the guard windows (the first preview windows) also yields their losses, and the
preview arm of the metric takes them from there instead of running those windows again
(:func:`shared_preview_rows`), in the baseline and in every subject alike.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

from pytest_proofpack.data.windows import WindowSet
from pytest_proofpack.engine.baseline import BaselineMismatchError, BaselineState
from pytest_proofpack.engine.config import DEFAULT_DRIFT_BAND, EngineConfig
from pytest_proofpack.engine.guard_chain import GUARD_ORDER, VE_CHUNK, GuardSections, guard_ids, run_guards
from pytest_proofpack.engine.guards import invariants as inv
from pytest_proofpack.engine.guards import rmt, spectral, variance
from pytest_proofpack.engine.metric import window_losses
from pytest_proofpack.engine.pairing import check_pairing, paired_primary_metric
from pytest_proofpack.engine.preset import preset_number
from pytest_proofpack.engine.report import REPORT_SCHEMA, REPORT_SCHEMA_VERSION, SIDECARS, EvaluationResult


def _arm(ws: WindowSet, losses: list[float | None]) -> dict[str, Any]:
    return {"ids": list(ws.ids), "hashes": list(ws.hashes), "losses": losses, "digest": ws.digest}


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _dtype(model: Any) -> str:
    p = next(iter(model.parameters()), None)
    return str(p.dtype).replace("torch.", "") if p is not None else "unknown"


def shared_preview_rows(n_preview: int, guard_windows: int, batch_size: int) -> int:
    """How many leading preview windows the guard forward evaluates in the batches the metric would use.

    The guard windows are the first ``guard_windows`` preview windows, run ``batch_size`` at a time from the
    first, like :func:`window_losses`: every whole batch matches, and so does a last partial batch when the
    guard windows are the whole preview arm. Those rows' losses are taken from the guard forward (the same
    computation on the same batch, so the same bits) instead of a second forward.
    """
    g = min(guard_windows, n_preview)
    return g if g == n_preview else batch_size * (g // batch_size)


def _preview_losses(
    model: Any, preview: WindowSet, guard_losses: list[float | None], cfg: EngineConfig
) -> tuple[list[float | None], int]:
    """The preview arm's window losses and how many came from ``guard_losses`` (the guard forward's per-window
    losses): those of :func:`shared_preview_rows`, then a forward of the rest."""
    n = shared_preview_rows(len(preview), cfg.guard_windows, cfg.batch_size) if guard_losses else 0
    rest = window_losses(model, preview, start=n, batch_size=cfg.batch_size, device=cfg.device)
    return guard_losses[:n] + rest, n


def prepare_baseline(model: Any, preview: WindowSet, final: WindowSet, cfg: EngineConfig) -> BaselineState:
    """Per-window losses of both arms, invariants snapshot, per-matrix sigma, activation statistics."""
    t0 = time.perf_counter()
    snap = inv.snapshot(model)
    self_check = inv.validate(model, snap)
    sigma = spectral.measure(model, cfg.seed)
    targets = rmt.activation_targets(model)
    cap = rmt.capture(
        model, guard_ids(preview, cfg), targets, chunk=VE_CHUNK, batch_size=cfg.batch_size, device=cfg.device
    )
    activations = rmt.activation_records(targets, cap.stats)
    t1 = time.perf_counter()
    preview_losses, _ = _preview_losses(model, preview, cap.window_losses, cfg)
    final_losses = window_losses(model, final, batch_size=cfg.batch_size, device=cfg.device)
    t2 = time.perf_counter()
    return BaselineState(
        config_digest=cfg.digest(),
        seq_len=preview.seq_len,
        preview=_arm(preview, preview_losses),
        final=_arm(final, final_losses),
        invariants=snap,
        invariants_self=self_check,
        spectral=sigma,
        activations=activations,
        guard_chunk_losses=cap.chunk_losses,
        meta={
            "dtype": _dtype(model),
            "device": cfg.device,
            **_versions(),
            "guard_window_ids": list(preview.ids[: cfg.guard_windows]),
            "seconds": {"metric": t2 - t1, "guards": t1 - t0},
        },
    )


def _preset_band(preset: Mapping[str, Any]) -> float:
    band = preset_number(preset, "primary_metric", "drift_band")
    return band if band is not None else DEFAULT_DRIFT_BAND


def _preset_digest(preset: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(preset, sort_keys=True, default=str).encode()).hexdigest()[:16]


def evaluate(
    model: Any,
    baseline: BaselineState,
    preview: WindowSet,
    final: WindowSet,
    preset: Mapping[str, Any],
    cfg: EngineConfig,
    *,
    context: Mapping[str, object],
) -> EvaluationResult:
    """Judge the (edited) ``model`` against ``baseline``; see the report module for the output's contract.

    Raises :class:`~pytest_proofpack.engine.baseline.BaselineMismatchError` when ``baseline`` was made under another
    config, :class:`~pytest_proofpack.engine.pairing.PairingError` when the windows are not the baseline's and
    :class:`~pytest_proofpack.errors.GuardError` when a guard raises: the run is an error, never a detection.
    """
    _check_baseline(baseline, preview, final, cfg)
    t0 = time.perf_counter()
    guards = run_guards(model, baseline, preview, preset, cfg)
    t1 = time.perf_counter()
    subject_preview, subject_final, n_shared, forward_error = _subject_losses(model, preview, final, guards, cfg)
    t2 = time.perf_counter()
    pm, pm_ok, drift_ok = paired_primary_metric(
        subject_preview,
        subject_final,
        baseline.preview["losses"],
        baseline.final["losses"],
        cfg,
        seq_len=final.seq_len,
        drift_band=_preset_band(preset),
        forward_error=forward_error,
    )
    report: dict[str, Any] = {
        **_header(context),
        "validation": _validation(pm_ok, drift_ok, guards),
        "primary_metric": pm,
        "invariants": guards.invariants,
        "spectral": guards.spectral,
        "rmt": guards.rmt,
        "variance": guards.variance,
        "guards": {"order": list(GUARD_ORDER), "seconds": guards.seconds},
        "edit": context.get("edit"),
        "provenance": {
            "windows": _window_provenance(preview, final, cfg, n_shared),
            "seeds": _seeds(cfg, pm["bootstrap"]["seed"]),  # type: ignore[index]
            **_run_provenance(model, baseline, preset, cfg),
        },
        "timing": _timing(guards_s=t1 - t0, metric_s=t2 - t1, total_s=t2 - t0),
    }
    sidecars = _attach_probes(report, context, guards)
    return EvaluationResult(report=report, sidecars=sidecars)


def _check_baseline(baseline: BaselineState, preview: WindowSet, final: WindowSet, cfg: EngineConfig) -> None:
    if baseline.config_digest != cfg.digest():
        raise BaselineMismatchError(
            f"baseline config digest {baseline.config_digest} != engine config {cfg.digest()}; rebuild the "
            "baseline with the same EngineConfig"
        )
    check_pairing(preview, baseline.preview["ids"], baseline.preview["hashes"], "preview")
    check_pairing(final, baseline.final["ids"], baseline.final["hashes"], "final")


def _subject_losses(
    model: Any, preview: WindowSet, final: WindowSet, guards: GuardSections, cfg: EngineConfig
) -> tuple[list[float | None], list[float | None], int, str | None]:
    """``(preview losses, final losses, preview rows taken from the guard forward, forward error)``.

    A subject whose forward raises cannot run: every loss is ``None`` and the error's type name marks the metric
    degraded, not a crash.
    """
    n_shared = 0
    try:
        subject_preview, n_shared = _preview_losses(model, preview, guards.window_losses, cfg)
        subject_final = window_losses(model, final, batch_size=cfg.batch_size, device=cfg.device)
    except (RuntimeError, IndexError, ValueError) as exc:
        return [None] * len(preview), [None] * len(final), n_shared, type(exc).__name__
    return subject_preview, subject_final, n_shared, None


def _header(context: Mapping[str, object]) -> dict[str, Any]:
    from pytest_proofpack import ENGINE_VERSION

    return {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "engine_version": ENGINE_VERSION,
        "model": context.get("model"),
        "scenario": context.get("scenario"),
        "run": context.get("run"),
    }


def _validation(pm_ok: bool, drift_ok: bool, guards: GuardSections) -> dict[str, bool]:
    return {
        "primary_metric_acceptable": pm_ok,
        "preview_final_drift_acceptable": drift_ok,
        "invariants_pass": guards.invariants["status"] in ("pass", "warn"),
        "spectral_stable": bool(guards.spectral.get("stable", False)),
        "rmt_stable": bool(guards.rmt.get("stable", False)),
    }


def _window_provenance(preview: WindowSet, final: WindowSet, cfg: EngineConfig, n_shared: int) -> dict[str, Any]:
    return {
        "preview_digest": preview.digest,
        "final_digest": final.digest,
        "seq_len": final.seq_len,
        "bos_token_id": final.bos,
        "bos_prefixed": final.bos is not None,
        "n_preview": len(preview),
        "n_final": len(final),
        "guard_window_ids": list(preview.ids[: cfg.guard_windows]),
        "preview_losses_from_guard_forward": n_shared,
    }


def _seeds(cfg: EngineConfig, bootstrap_final: object) -> dict[str, object]:
    return {
        "engine": cfg.seed,
        "bootstrap_final": bootstrap_final,
        "spectral": cfg.seed,
        "variance_bootstrap": cfg.seed + variance.VE_SEED_OFFSET,
    }


def _run_provenance(
    model: Any, baseline: BaselineState, preset: Mapping[str, Any], cfg: EngineConfig
) -> dict[str, Any]:
    return {
        "dtype": _dtype(model),
        "device": cfg.device,
        **_versions(),
        "config": cfg.to_json(),
        "config_digest": cfg.digest(),
        "preset_source": str(preset.get("source", "calibrated" if preset else "default")),
        "preset_digest": _preset_digest(preset),
        "baseline_meta": baseline.meta,
    }


def _timing(*, guards_s: float, metric_s: float, total_s: float) -> dict[str, float | None]:
    return {
        "guards_s": guards_s,
        "primary_metric_s": metric_s,
        "total_s": total_s,
        "guards_over_metric": guards_s / metric_s if metric_s > 0 else None,
    }


def _attach_probes(
    report: dict[str, Any], context: Mapping[str, object], guards: GuardSections
) -> dict[str, dict[str, Any]]:
    """Add the probe sections ``context["probes"]`` asks for (``rmt``, ``ve``) to ``report``; returns the same
    bodies as sidecar files."""
    sidecars: dict[str, dict[str, Any]] = {}
    probes = context.get("probes") or []
    if isinstance(probes, list | tuple) and "rmt" in probes:
        body = {"probe": "rmt_cross_model_v1", **guards.rmt, "epsilon_violations": guards.rmt.get("violations", [])}
        report["rmt_probe"] = body
        sidecars[SIDECARS["rmt"]] = body
    if isinstance(probes, list | tuple) and "ve" in probes:
        body = {"probe": "ve_probe_v1", **guards.variance}
        report["ve_probe"] = body
        sidecars[SIDECARS["ve"]] = body
    return sidecars
