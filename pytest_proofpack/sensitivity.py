"""The sensitivity sweep: every family at every rung on several window samples, judged by the real engine.

For one loaded model, :func:`sweep_model` takes each window sample in turn (its own evaluation-pool windows and
bootstrap seed, its baseline computed once), then applies every family's change at every rung in place, evaluates
it with :func:`~pytest_proofpack.engine.evaluate.evaluate` against that baseline and restores it bit for bit before
the next. Each evaluation becomes one *run*: which detectors fired (:func:`fired`), the primary-metric ratio, the
change's own description, or the error that stopped it (a guard that raises is an error, never a detection). The
summary of the runs (:mod:`pytest_proofpack.sensitivity_summary`) is recomputed from them, so runs of several
processes (samples split across them) merge into one document (``sensitivity_summary.merge_documents``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from pytest_proofpack import progress
from pytest_proofpack.errors import GuardError, SpecError
from pytest_proofpack.expectations import guard_flags, primary_guard_hit

if TYPE_CHECKING:
    from pytest_proofpack.data.windows import WindowSet
    from pytest_proofpack.engine.config import EngineConfig
    from pytest_proofpack.sensitivity_families import Family

__all__ = ["DETECTORS", "SweepTarget", "fired", "sample_seed", "sweep_model"]

#: The detectors a run records: each guard, the primary-metric gate and their union.
DETECTORS: Final = ("invariants", "spectral", "rmt", "variance", "primary_metric", "any")

#: Window samples' seeds, far from the scenario runs' (seed + 7919 * (run - 1)), calibration's and the
#: false-alarm study's (500_009 + 104_729 * i).
SEED_OFFSET: Final = 900_007
SEED_STRIDE: Final = 15_485_863

OnRun = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class SweepTarget:
    """What a sweep needs of one loaded model: the model, its key, its calibrated preset, the engine config and
    ``windows(seed) -> (preview, final)`` drawing a window sample from the evaluation pool."""

    model: Any
    key: str
    preset: Mapping[str, Any]
    engine: EngineConfig
    windows: Callable[[int], tuple[WindowSet, WindowSet]]


def sample_seed(base_seed: int, sample: int) -> int:
    """The seed of window sample ``sample`` (0-based): its windows, bootstrap and the change's own randomness."""
    return base_seed + SEED_OFFSET + SEED_STRIDE * sample


def fired(report: Mapping[str, Any]) -> dict[str, bool]:
    """Which detectors fired on ``report``: invariants (failed, not merely warned); spectral, RMT and variance as a
    scenario's primary guard counts a hit (``expectations.primary_guard_hit``: unstable, or caps applied, an
    unstable RMT probe, a VE correction proposed); the primary-metric gate (failed, degraded or invalid); ``any``
    of them."""
    flags = guard_flags(report)
    out = {"invariants": bool(flags["invariants_fail"])}
    out.update({name: primary_guard_hit(name, report, flags) for name in ("spectral", "rmt", "variance")})
    out["primary_metric"] = bool(flags["primary_metric"])
    out["any"] = any(out.values())
    return out


def _run(target: SweepTarget, family: Family, magnitude: float, sample: int, state: Any,
         windows: tuple[WindowSet, WindowSet], cfg: EngineConfig) -> dict[str, Any]:
    from pytest_proofpack.engine.evaluate import evaluate

    ctx = {"model": target.key, "scenario": f"sensitivity:{family.name}", "run": sample,
           "edit": f"{family.name}@{magnitude:g}", "probes": ["rmt", "ve"]}
    row: dict[str, Any] = {"magnitude": magnitude, "sample": sample, "fired": {}, "ratio": None, "error": None}
    t0 = time.perf_counter()
    try:
        with family.apply(target.model, magnitude, cfg.seed) as change:
            row["change"] = {k: change.metadata.get(k) for k in ("mode", "params", "modified_count",
                                                                  "actual_sparsity", "avg_energy_retained")
                             if change.metadata.get(k) is not None}
            report = evaluate(target.model, state, *windows, target.preset, cfg, context=ctx).report
    except (GuardError, SpecError) as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    else:
        row["fired"] = fired(report)
        row["ratio"] = report["primary_metric"].get("ratio_vs_baseline")
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def sweep_model(target: SweepTarget, families: Sequence[Family], samples: Iterable[int], *,
                on_run: OnRun | None = None) -> dict[str, Any]:
    """Sweep ``families`` on ``target`` over window ``samples`` (0-based indices); return the model's entry of a
    sensitivity document (``families`` with their runs; ``sensitivity_summary.document`` adds the summaries).
    ``on_run`` is called with the family name and each run as it finishes."""
    from pytest_proofpack.engine.evaluate import prepare_baseline

    runs: dict[str, list[dict[str, Any]]] = {f.name: [] for f in families}
    done: list[int] = []
    chosen = list(samples)
    with progress.phase("sweep", subject=target.key, total=len(chosen) * sum(len(f.rungs) for f in families)) as ph:
        for sample in chosen:
            seed = sample_seed(target.engine.seed, sample)
            windows = target.windows(seed)
            cfg = dataclasses.replace(target.engine, seed=seed)
            state = prepare_baseline(target.model, *windows, cfg)
            for family in families:
                for magnitude in family.rungs:
                    row = _run(target, family, magnitude, sample, state, windows, cfg)
                    runs[family.name].append(row)
                    ph.advance(sum(len(r) for r in runs.values()))
                    if on_run is not None:
                        on_run(family.name, row)
            done.append(sample)
    return {"samples": done, "families": {f.name: {**f.describe(), "runs": runs[f.name]} for f in families}}
