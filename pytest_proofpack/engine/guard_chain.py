"""The guard chain: invariants -> spectral -> RMT -> variance -> invariants, each guard run fail-closed.

Each guard runs under :func:`_guarded`, so a guard that raises is recorded as an error and fails closed (invariants
status ``error``, spectral/RMT not stable, no VE signal). No guard mutates the model or copies it; the invariants
run again at the end of the chain, and a difference from the start is itself a fatal failure
(``guard_side_effect``). The RMT guard's hooked forward of the guard windows also yields their per-window losses,
which the primary metric reuses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from pytest_proofpack.data.windows import WindowSet
from pytest_proofpack.engine.baseline import BaselineState
from pytest_proofpack.engine.config import EngineConfig
from pytest_proofpack.engine.guards import invariants as inv
from pytest_proofpack.engine.guards import rmt, spectral, variance

#: predicted positions per chunk of a guard window: the variance guard's paired unit
VE_CHUNK: Final = 32
GUARD_ORDER: Final = ("invariants", "spectral", "rmt", "variance", "invariants")
T = TypeVar("T")


def guard_ids(preview: WindowSet, cfg: EngineConfig) -> Any:
    """The guard windows' token ids: the first ``cfg.guard_windows`` preview windows."""
    return preview.input_ids[: cfg.guard_windows]


@dataclass(frozen=True)
class GuardSections:
    """The report sections the chain produces, each guard's seconds, and the guard forward's per-window losses
    (``[]`` when the RMT capture failed)."""

    invariants: dict[str, Any]
    spectral: dict[str, Any]
    rmt: dict[str, Any]
    variance: dict[str, Any]
    seconds: dict[str, float]
    window_losses: list[float | None]


def _guarded(fn: Callable[[], T]) -> tuple[T | None, str | None]:
    """Run one guard; a raise becomes ``(None, "<Type>: <message>")`` so the caller fails it closed."""
    try:
        return fn(), None
    except Exception as exc:  # fail closed: any guard error is reported, never a pass
        return None, f"{type(exc).__name__}: {exc}"[:500]


class _Clock:
    """Runs guards under :func:`_guarded` and adds up the seconds of each guard's runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], T]) -> tuple[T | None, str | None]:
        t = time.perf_counter()
        out = _guarded(fn)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
        return out


def run_guards(
    model: Any, baseline: BaselineState, preview: WindowSet, preset: Mapping[str, Any], cfg: EngineConfig
) -> GuardSections:
    """Run the chain of :data:`GUARD_ORDER` on ``model`` against ``baseline``'s statistics."""
    clock = _Clock()
    pre, pre_err = clock.run("invariants", lambda: inv.validate(model, baseline.invariants))
    spectral_section = _spectral_section(model, baseline, preset, cfg, clock)
    ids = guard_ids(preview, cfg)
    targets = rmt.recorded_targets(baseline.activations)
    cap, cap_err = clock.run(
        "rmt",
        lambda: rmt.capture(model, ids, targets, chunk=VE_CHUNK, batch_size=cfg.batch_size, device=cfg.device),
    )
    if cap is not None:
        rmt_section = rmt.compare(baseline.activations, cap.stats, preset)
        variance_section = _variance_section(model, ids, baseline, cap, preset, cfg, clock)
    else:
        rmt_section, variance_section = _rmt_failed(cap_err), _variance_failed(cap_err, "capture_error")
    post, post_err = clock.run("invariants", lambda: inv.validate(model, baseline.invariants))
    return GuardSections(
        invariants=_invariants_section(pre, pre_err, post, post_err),
        spectral=spectral_section,
        rmt=rmt_section,
        variance=variance_section,
        seconds=clock.seconds,
        window_losses=cap.window_losses if cap is not None else [],
    )


def _preset_max_caps(preset: Mapping[str, Any], cfg: EngineConfig) -> int:
    """The spectral budget: the preset's ``spectral.max_caps`` (an int) where it is above the tier's."""
    spec = preset.get("spectral", {})
    v = spec.get("max_caps") if isinstance(spec, Mapping) else None
    return max(int(v), cfg.max_caps) if isinstance(v, int) and not isinstance(v, bool) else cfg.max_caps


def _spectral_section(
    model: Any, baseline: BaselineState, preset: Mapping[str, Any], cfg: EngineConfig, clock: _Clock
) -> dict[str, Any]:
    measured, err = clock.run("spectral", lambda: spectral.measure(model, cfg.seed))
    if measured is not None:
        return spectral.compare(baseline.spectral, measured, preset, _preset_max_caps(preset, cfg))
    return {
        "stable": False,
        "caps_applied": 0,
        "max_caps": cfg.max_caps,
        "caps_exceeded": False,
        "families": {},
        "top_modules": [],
        "estimator": spectral.ESTIMATOR,
        "error": err,
        "thresholds_source": "n/a",
    }


def _variance_section(
    model: Any,
    ids: Any,
    baseline: BaselineState,
    cap: rmt.Capture,
    preset: Mapping[str, Any],
    cfg: EngineConfig,
    clock: _Clock,
) -> dict[str, Any]:
    assessed, err = clock.run(
        "variance",
        lambda: variance.assess(
            model,
            ids,
            baseline.activations,
            cap.stats,
            cap.chunk_losses,
            preset,
            replicates=cfg.bootstrap_replicates,
            alpha=cfg.alpha,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            device=cfg.device,
        ),
    )
    return assessed if assessed is not None else _variance_failed(err, "guard_error")


def _rmt_failed(err: str | None) -> dict[str, Any]:
    return {
        "stable": False,
        "edge_risk_by_family_base": {},
        "edge_risk_by_family": {},
        "epsilon_by_family": {},
        "violations": [],
        "estimator": rmt.ESTIMATOR,
        "error": err,
    }


def _variance_failed(err: str | None, reason: str) -> dict[str, Any]:
    return {"signal": False, "proposed_scales": 0, "error": err, "signal_reasons": [reason]}


def _invariants_section(
    pre: dict[str, Any] | None, pre_err: str | None, post: dict[str, Any] | None, post_err: str | None
) -> dict[str, Any]:
    """The report's ``invariants`` section from the chain's first and last runs of the guard."""
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
