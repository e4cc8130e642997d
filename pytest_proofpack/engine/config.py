"""Engine configuration, tier tables and the documented defaults used when no calibrated preset is given.

Every number the engine gates on is either a tier constant below (the reference's tier catalogue, §6 of the engine
reference) or comes from a calibrated preset (:mod:`pytest_proofpack.calibration`). The defaults below are what an
*uncalibrated* run uses; the report records which one applied (``thresholds_source``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Final

from pytest_proofpack.errors import OptionError

TIERS: Final[tuple[str, ...]] = ("conservative", "balanced", "aggressive")
#: Primary-metric ratio limit per tier (reference ``pm_ratio.ratio_limit_base``).
RATIO_LIMIT: Final[dict[str, float]] = {"conservative": 1.05, "balanced": 1.10, "aggressive": 1.20}
HYSTERESIS_RATIO: Final = 0.002
#: Spectral budget: how many matrices may exceed their threshold before ``spectral_stable`` is false.
MAX_CAPS: Final[dict[str, int]] = {"conservative": 3, "balanced": 5, "aggressive": 8}
GATE_RULES: Final[tuple[str, ...]] = ("point", "upper")

# Uncalibrated defaults (natural-log scale unless stated).
#: |log(preview_ratio) - log(final_ratio)| band; 0.05 matches the reference's 0.95-1.05 drift band width.
DEFAULT_DRIFT_BAND: Final = 0.05
#: |log(sigma_now / sigma_base)| per matrix; 0.10 is a ~10.5 % change of the largest singular value.
DEFAULT_SPECTRAL_THRESHOLD: Final = 0.10
#: sigma ratios outside [1/10, 10] (or a non-finite sigma) are fatal degeneracy, whatever the budget.
SPECTRAL_FATAL_RATIO: Final = 10.0
#: largest increase over a family's modules of log(r_now / r_base) (activation edge statistic). The FFN's
#: intermediate activation (family ``ffn_act``) is a steady statistic that clean 4-bit/FP8/prune/low-rank edits raise
#: by a few percent at most, so 0.10 (~10.5 %). The residual writers' outputs (attn_out, ffn_down) are dominated by a
#: few massive-activation tokens and move with the window sample, so clean edits raise them several times as much:
#: 0.20 (~22 %).
DEFAULT_RMT_EPSILON: Final = 0.20
DEFAULT_RMT_EPSILON_BY_FAMILY: Final[dict[str, float]] = {"ffn_act": 0.10}
#: VE proposes a scale for a layer when |alpha - 1| >= deadband (reference balanced tier: 0.02).
DEFAULT_VE_DEADBAND: Final = 0.02
#: VE signals only when the CI lower bound of the mean log-loss gain exceeds this.
DEFAULT_VE_MIN_EFFECT: Final = 0.0


@dataclass(frozen=True)
class EngineConfig:
    """How the engine evaluates. ``digest()`` identifies every field that changes a baseline or a report."""

    tier: str = "balanced"
    batch_size: int = 8
    bootstrap_replicates: int = 2000
    alpha: float = 0.05
    seed: int = 42
    gate_rule: str = "point"
    guard_windows: int = 4
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise OptionError(f"engine tier {self.tier!r} is not one of {', '.join(TIERS)}; pick one of them")
        if self.gate_rule not in GATE_RULES:
            raise OptionError(f"engine gate_rule {self.gate_rule!r} is not one of point, upper; pick one of them")
        if self.batch_size < 1 or self.guard_windows < 1 or self.bootstrap_replicates < 1:
            raise OptionError("engine batch_size, guard_windows and bootstrap_replicates must be >= 1; raise them")
        if not 0.0 < self.alpha < 1.0:
            raise OptionError(f"engine alpha {self.alpha} must lie in (0, 1); use e.g. 0.05")

    @property
    def ratio_limit(self) -> float:
        return RATIO_LIMIT[self.tier]

    @property
    def max_caps(self) -> int:
        return MAX_CAPS[self.tier]

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    def digest(self) -> str:
        """sha256 (16 hex) over the sorted JSON of every field. ``device`` is included: losses computed on
        another device differ in the last bits, and a noop must pair to exactly 1.0."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]
