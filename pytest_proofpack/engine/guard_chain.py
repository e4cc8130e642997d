"""The guard chain: invariants -> spectral -> RMT -> variance -> invariants.

A guard's verdict is evidence; a guard that raises is not. Each guard runs under :func:`_guarded`, which turns any
exception into a :class:`~pytest_proofpack.errors.GuardError` naming the guard: the evaluation stops and the run
is an error of class ``internal``, never a failed gate that a detector could count (out-of-memory errors pass
through unchanged, for the engine's smaller-batch retry). No guard mutates the model or copies it; the invariants
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
from pytest_proofpack.errors import GuardError

#: predicted positions per chunk of a guard window: the variance guard's paired unit
VE_CHUNK: Final = 32
GUARD_ORDER: Final = ("invariants", "spectral", "rmt", "variance", "invariants")
T = TypeVar("T")


def guard_ids(preview: WindowSet, cfg: EngineConfig) -> Any:
    """The guard windows' token ids: the first ``cfg.guard_windows`` preview windows."""
    return preview.input_ids[: cfg.guard_windows]


@dataclass(frozen=True)
class GuardSections:
    """The report sections the chain produces, each guard's seconds, and the guard forward's per-window losses."""

    invariants: dict[str, Any]
    spectral: dict[str, Any]
    rmt: dict[str, Any]
    variance: dict[str, Any]
    seconds: dict[str, float]
    window_losses: list[float | None]


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, MemoryError | torch.OutOfMemoryError)


def _guarded(name: str, fn: Callable[[], T]) -> T:
    """Run guard ``name``; raises :class:`GuardError` (from the guard's exception) when it raises, except for out
    of memory, which propagates as it is."""
    try:
        return fn()
    except Exception as exc:
        if _out_of_memory(exc):
            raise
        raise GuardError.wrapping(name, exc) from exc


class _Clock:
    """Runs guards under :func:`_guarded` and adds up the seconds of each guard's runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], T]) -> T:
        t = time.perf_counter()
        try:
            return _guarded(name, fn)
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t


def run_guards(
    model: Any, baseline: BaselineState, preview: WindowSet, preset: Mapping[str, Any], cfg: EngineConfig
) -> GuardSections:
    """Run the chain of :data:`GUARD_ORDER` on ``model`` against ``baseline``'s statistics.

    Raises :class:`GuardError` when a guard raises (see the module docstring).
    """
    clock = _Clock()
    pre = clock.run("invariants", lambda: inv.validate(model, baseline.invariants))
    measured = clock.run("spectral", lambda: spectral.measure(model, cfg.seed))
    spectral_section = clock.run(
        "spectral", lambda: spectral.compare(baseline.spectral, measured, preset, _preset_max_caps(preset, cfg))
    )
    ids = guard_ids(preview, cfg)
    targets = rmt.recorded_targets(baseline.activations)
    cap = clock.run(
        "rmt",
        lambda: rmt.capture(model, ids, targets, chunk=VE_CHUNK, batch_size=cfg.batch_size, device=cfg.device),
    )
    rmt_section = clock.run("rmt", lambda: rmt.compare(baseline.activations, cap.stats, preset))
    variance_section = _variance_section(model, ids, baseline, cap, preset, cfg, clock)
    post = clock.run("invariants", lambda: inv.validate(model, baseline.invariants))
    return GuardSections(
        invariants=_invariants_section(pre, post),
        spectral=spectral_section,
        rmt=rmt_section,
        variance=variance_section,
        seconds=clock.seconds,
        window_losses=cap.window_losses,
    )


def _preset_max_caps(preset: Mapping[str, Any], cfg: EngineConfig) -> int:
    """The spectral budget: the preset's ``spectral.max_caps`` (an int) where it is above the tier's."""
    spec = preset.get("spectral", {})
    v = spec.get("max_caps") if isinstance(spec, Mapping) else None
    return max(int(v), cfg.max_caps) if isinstance(v, int) and not isinstance(v, bool) else cfg.max_caps


def _variance_section(
    model: Any,
    ids: Any,
    baseline: BaselineState,
    cap: rmt.Capture,
    preset: Mapping[str, Any],
    cfg: EngineConfig,
    clock: _Clock,
) -> dict[str, Any]:
    return clock.run(
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


def _invariants_section(pre: dict[str, Any], post: dict[str, Any]) -> dict[str, Any]:
    """The report's ``invariants`` section from the chain's first and last runs of the guard."""
    failures: list[dict[str, str]] = list(pre["failures"])
    if post["failures"] != pre["failures"]:
        failures.append(
            {
                "check": "guard_side_effect",
                "severity": "fatal",
                "detail": "invariants changed between the start and the end of the guard chain",
            }
        )
    return {
        "status": inv.status_of(failures),
        "pre": pre["status"],
        "post": post["status"],
        "failures": failures,
        "checks_performed": pre.get("checks_performed", []),
    }
