"""The engine's entry points: :func:`prepare_baseline` (once per model and window set) and :func:`evaluate`.

The subject is the baseline's model object with an edit applied in place, so the baseline keeps *statistics*
(JSON), never tensors. The guard chain is invariants -> spectral -> RMT -> variance -> invariants; each
guard is
run under :func:`_guarded`, so a guard that raises is recorded as an error and fails closed (invariants status
``error``, spectral/RMT not stable, no VE signal). No guard mutates the model or copies it.

The RMT guard's hooked forward of the guard windows (the first preview windows) also yields their losses, and the
preview arm of the metric takes them from there instead of running those windows again
(:func:`shared_preview_rows`), in the baseline and in every subject alike.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final, TypeVar

from pytest_proofpack.data.windows import WindowSet
from pytest_proofpack.engine.config import DEFAULT_DRIFT_BAND, EngineConfig
from pytest_proofpack.engine.guards import invariants as inv
from pytest_proofpack.engine.guards import rmt, spectral, variance
from pytest_proofpack.engine.metric import check_pairing, paired_primary_metric, window_losses
from pytest_proofpack.engine.report import REPORT_SCHEMA, REPORT_SCHEMA_VERSION, SIDECARS, EvaluationResult
from pytest_proofpack.errors import ProofpackError

BASELINE_SCHEMA: Final = "proofpack_baseline_v1"
VE_CHUNK: Final = 32
GUARD_ORDER: Final = ("invariants", "spectral", "rmt", "variance", "invariants")
T = TypeVar("T")


class BaselineMismatchError(ProofpackError):
    """A cached baseline was made under another engine configuration or schema."""

    error_class = "bad_input"


@dataclass
class BaselineState:
    """Everything needed to judge subjects against one baseline model on one pair of window sets
    (JSON-able)."""

    config_digest: str
    seq_len: int
    preview: dict[str, Any]
    final: dict[str, Any]
    invariants: dict[str, Any]
    invariants_self: dict[str, Any]
    spectral: dict[str, dict[str, Any]]
    activations: dict[str, dict[str, Any]]
    guard_chunk_losses: list[list[float | None]]
    meta: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"schema": BASELINE_SCHEMA, "schema_version": 1, **asdict(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BaselineState:
        if d.get("schema") != BASELINE_SCHEMA or d.get("schema_version") != 1:
            raise BaselineMismatchError(
                f"baseline state has schema {d.get('schema')!r} v{d.get('schema_version')!r}, expected "
                f"{BASELINE_SCHEMA} v1; delete the cached baseline so it is rebuilt"
            )
        fields = {k: v for k, v in d.items() if k not in ("schema", "schema_version")}
        return cls(**fields)


def _arm(ws: WindowSet, losses: list[float | None]) -> dict[str, Any]:
    return {"ids": list(ws.ids), "hashes": list(ws.hashes), "losses": losses, "digest": ws.digest}


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _dtype(model: Any) -> str:
    p = next(iter(model.parameters()), None)
    return str(p.dtype).replace("torch.", "") if p is not None else "unknown"


def _guard_ids(preview: WindowSet, cfg: EngineConfig) -> Any:
    return preview.input_ids[: cfg.guard_windows]


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
    losses, ``[]`` when it failed): those of :func:`shared_preview_rows`, then a forward of the rest."""
    n = shared_preview_rows(len(preview), cfg.guard_windows, cfg.batch_size) if guard_losses else 0
    rest = window_losses(model, preview, start=n, batch_size=cfg.batch_size, device=cfg.device)
    return guard_losses[:n] + rest, n


def prepare_baseline(model: Any, preview: WindowSet, final: WindowSet, cfg: EngineConfig) -> BaselineState:
    """Per-window losses of both arms, invariants snapshot, per-matrix sigma, activation statistics."""
    t0 = time.perf_counter()
    kw: dict[str, Any] = {"batch_size": cfg.batch_size, "device": cfg.device}
    snap = inv.snapshot(model)
    self_check = inv.validate(model, snap)
    sig = spectral.measure(model, cfg.seed)
    targets = rmt.activation_targets(model)
    cap = rmt.capture(model, _guard_ids(preview, cfg), targets, chunk=VE_CHUNK, **kw)
    acts = {
        t.key: {
            "module": t.module, "side": t.side, "family": t.family, "role": t.role, "layer": t.layer,
            **cap.stats[t.key],
        }
        for t in targets
        if t.key in cap.stats
    }
    t1 = time.perf_counter()
    pl, _ = _preview_losses(model, preview, cap.window_losses, cfg)
    fl = window_losses(model, final, **kw)
    t2 = time.perf_counter()
    return BaselineState(
        config_digest=cfg.digest(),
        seq_len=preview.seq_len,
        preview=_arm(preview, pl),
        final=_arm(final, fl),
        invariants=snap,
        invariants_self=self_check,
        spectral=sig,
        activations=acts,
        guard_chunk_losses=cap.chunk_losses,
        meta={
            "dtype": _dtype(model),
            "device": cfg.device,
            **_versions(),
            "guard_window_ids": list(preview.ids[: cfg.guard_windows]),
            "seconds": {"metric": t2 - t1, "guards": t1 - t0},
        },
    )


def _guarded(fn: Callable[[], T]) -> tuple[T | None, str | None]:
    """Run one guard; a raise becomes ``(None, "<Type>: <message>")`` so the caller fails it closed."""
    try:
        return fn(), None
    except Exception as exc:  # fail closed: any guard error is reported, never a pass
        return None, f"{type(exc).__name__}: {exc}"[:500]


def _preset_band(preset: Mapping[str, Any]) -> float:
    pm = preset.get("primary_metric", {})
    band = pm.get("drift_band") if isinstance(pm, Mapping) else None
    if isinstance(band, Mapping):
        band = band.get("value")
    return float(band) if isinstance(band, int | float) and not isinstance(band, bool) else DEFAULT_DRIFT_BAND


def _preset_max_caps(preset: Mapping[str, Any], cfg: EngineConfig) -> int:
    spec = preset.get("spectral", {})
    v = spec.get("max_caps") if isinstance(spec, Mapping) else None
    return max(int(v), cfg.max_caps) if isinstance(v, int) and not isinstance(v, bool) else cfg.max_caps


def _run_guards(
    model: Any, baseline: BaselineState, preview: WindowSet, preset: Mapping[str, Any], cfg: EngineConfig
) -> dict[str, Any]:
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], T]) -> tuple[T | None, str | None]:
        t = time.perf_counter()
        out = _guarded(fn)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t
        return out

    pre, pre_err = timed("invariants", lambda: inv.validate(model, baseline.invariants))
    spec_now, spec_err = timed("spectral", lambda: spectral.measure(model, cfg.seed))
    spec: dict[str, Any]
    if spec_now is not None:
        spec = spectral.compare(baseline.spectral, spec_now, preset, _preset_max_caps(preset, cfg))
    else:
        spec = {
            "stable": False,
            "caps_applied": 0,
            "max_caps": cfg.max_caps,
            "caps_exceeded": False,
            "families": {},
            "top_modules": [],
            "estimator": spectral.ESTIMATOR,
            "error": spec_err,
            "thresholds_source": "n/a",
        }
    ids = _guard_ids(preview, cfg)
    kw: dict[str, Any] = {"batch_size": cfg.batch_size, "device": cfg.device}
    targets = [
        rmt.Target(str(a["module"]), str(a["family"]), str(a["role"]), a.get("layer"), str(a["side"]))
        for a in baseline.activations.values()
    ]
    cap, cap_err = timed("rmt", lambda: rmt.capture(model, ids, targets, chunk=VE_CHUNK, **kw))
    rmt_sec: dict[str, Any]
    var_sec: dict[str, Any]
    if cap is not None:
        stats_now, chunks_now, _ = cap
        rmt_sec = rmt.compare(baseline.activations, stats_now, preset)
        var, var_err = timed(
            "variance",
            lambda: variance.assess(
                model,
                ids,
                baseline.activations,
                stats_now,
                chunks_now,
                preset,
                replicates=cfg.bootstrap_replicates,
                alpha=cfg.alpha,
                seed=cfg.seed,
                **kw,
            ),
        )
        var_sec = (
            var
            if var is not None
            else {"signal": False, "proposed_scales": 0, "error": var_err, "signal_reasons": ["guard_error"]}
        )
    else:
        rmt_sec = {
            "stable": False,
            "edge_risk_by_family_base": {},
            "edge_risk_by_family": {},
            "epsilon_by_family": {},
            "violations": [],
            "estimator": rmt.ESTIMATOR,
            "error": cap_err,
        }
        var_sec = {
            "signal": False,
            "proposed_scales": 0,
            "error": cap_err,
            "signal_reasons": ["capture_error"],
        }
    post, post_err = timed("invariants", lambda: inv.validate(model, baseline.invariants))
    inv_sec = _invariants_section(pre, pre_err, post, post_err)
    return {
        "invariants": inv_sec,
        "spectral": spec,
        "rmt": rmt_sec,
        "variance": var_sec,
        "seconds": seconds,
        "guard_window_losses": cap.window_losses if cap is not None else [],
    }


def _invariants_section(
    pre: dict[str, Any] | None, pre_err: str | None, post: dict[str, Any] | None, post_err: str | None
) -> dict[str, Any]:
    failures: list[dict[str, str]] = []
    for err, when in ((pre_err, "pre"), (post_err, "post")):
        if err is not None:
            failures.append({"check": "guard_error", "severity": "fatal", "detail": f"{when}: {err}"})
    if pre is not None:
        failures.extend(pre["failures"])
    if pre is not None and post is not None and post["failures"] != pre["failures"]:
        failures.append(
            {
                "check": "guard_side_effect",
                "severity": "fatal",
                "detail": "invariants changed between the start and the end of the guard chain",
            }
        )
    status = "error" if (pre_err or post_err) else inv.status_of(failures)
    return {
        "status": status,
        "pre": pre["status"] if pre else "error",
        "post": post["status"] if post else "error",
        "failures": failures,
        "checks_performed": (pre or post or {}).get("checks_performed", []),
    }


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


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

    Raises :class:`BaselineMismatchError` when ``baseline`` was made under another config and
    :class:`~pytest_proofpack.engine.metric.PairingError` when the windows are not the baseline's.
    """
    from pytest_proofpack import ENGINE_VERSION

    if baseline.config_digest != cfg.digest():
        raise BaselineMismatchError(
            f"baseline config digest {baseline.config_digest} != engine config {cfg.digest()}; rebuild the "
            "baseline with the same EngineConfig"
        )
    check_pairing(preview, baseline.preview["ids"], baseline.preview["hashes"], "preview")
    check_pairing(final, baseline.final["ids"], baseline.final["hashes"], "final")
    t0 = time.perf_counter()
    guards = _run_guards(model, baseline, preview, preset, cfg)
    t1 = time.perf_counter()
    kw: dict[str, Any] = {"batch_size": cfg.batch_size, "device": cfg.device}
    forward_error: str | None = None
    n_shared = 0
    try:
        sp, n_shared = _preview_losses(model, preview, guards["guard_window_losses"], cfg)
        sf = window_losses(model, final, **kw)
    except (
        RuntimeError,
        IndexError,
        ValueError,
    ) as exc:  # a broken subject cannot run: degraded, not a crash
        forward_error = type(exc).__name__
        sp, sf = [None] * len(preview), [None] * len(final)
    t2 = time.perf_counter()
    pm, pm_ok, drift_ok = paired_primary_metric(
        sp,
        sf,
        baseline.preview["losses"],
        baseline.final["losses"],
        cfg,
        seq_len=final.seq_len,
        drift_band=_preset_band(preset),
        forward_error=forward_error,
    )
    inv_sec, spec, rmt_sec, var_sec = (
        guards["invariants"],
        guards["spectral"],
        guards["rmt"],
        guards["variance"],
    )
    guards_s = t1 - t0
    metric_s = t2 - t1
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "engine_version": ENGINE_VERSION,
        "model": context.get("model"),
        "scenario": context.get("scenario"),
        "run": context.get("run"),
        "validation": {
            "primary_metric_acceptable": pm_ok,
            "preview_final_drift_acceptable": drift_ok,
            "invariants_pass": inv_sec["status"] in ("pass", "warn"),
            "spectral_stable": bool(spec.get("stable", False)),
            "rmt_stable": bool(rmt_sec.get("stable", False)),
        },
        "primary_metric": pm,
        "invariants": inv_sec,
        "spectral": spec,
        "rmt": rmt_sec,
        "variance": var_sec,
        "guards": {"order": list(GUARD_ORDER), "seconds": guards["seconds"]},
        "edit": context.get("edit"),
        "provenance": {
            "windows": {
                "preview_digest": preview.digest,
                "final_digest": final.digest,
                "seq_len": final.seq_len,
                "n_preview": len(preview),
                "n_final": len(final),
                "guard_window_ids": list(preview.ids[: cfg.guard_windows]),
                "preview_losses_from_guard_forward": n_shared,
            },
            "seeds": {
                "engine": cfg.seed,
                "bootstrap_final": pm["bootstrap"]["seed"],  # type: ignore[index]
                "spectral": cfg.seed,
                "variance_bootstrap": cfg.seed + variance.VE_SEED_OFFSET,
            },
            "dtype": _dtype(model),
            "device": cfg.device,
            **_versions(),
            "config": cfg.to_json(),
            "config_digest": cfg.digest(),
            "preset_source": str(preset.get("source", "calibrated" if preset else "default")),
            "preset_digest": _digest(preset),
            "baseline_meta": baseline.meta,
        },
        "timing": {
            "guards_s": guards_s,
            "primary_metric_s": metric_s,
            "total_s": t2 - t0,
            "guards_over_metric": guards_s / metric_s if metric_s > 0 else None,
        },
    }
    sidecars: dict[str, dict[str, Any]] = {}
    probes = context.get("probes") or []
    if isinstance(probes, list | tuple) and "rmt" in probes:
        body = {"probe": "rmt_cross_model_v1", **rmt_sec, "epsilon_violations": rmt_sec.get("violations", [])}
        report["rmt_probe"] = body
        sidecars[SIDECARS["rmt"]] = body
    if isinstance(probes, list | tuple) and "ve" in probes:
        body = {"probe": "ve_probe_v1", **var_sec}
        report["ve_probe"] = body
        sidecars[SIDECARS["ve"]] = body
    return EvaluationResult(report=report, sidecars=sidecars)
