"""Probe strengths relative to the model: env values that name the model's own calibrated threshold.

A subtle probe must be strong enough for its guard to see and weak enough for the perplexity gate to accept, and
where that lies depends on the model. A scenario can therefore write a probe's strength in units of the guard's
calibrated threshold instead of as an absolute number:

* ``spectral_threshold*K`` (for ``INVARLOCK_SPECTRAL_SCALE_FACTOR``): the factor ``exp(K * t)``, ``t`` being the
  calibrated spectral threshold (``|log sigma ratio|``) of the probe's target family in the model's preset. Scaling
  a whole matrix by ``f`` scales its largest singular value by exactly ``f``, so with ``K > 1`` every scaled matrix
  exceeds its family's threshold by the same margin on every model.
* ``ve_deadband*K`` (for ``INVARLOCK_VE_SCALE_FACTOR``): the factor ``1 / (1 + K * d)``, ``d`` being the calibrated
  variance deadband (``|alpha - 1|``). Scaling an MLP output projection by ``f`` makes the variance guard propose
  ``alpha = 1 / f`` to restore it, so with ``K > 1`` the proposal clears the deadband by the same margin everywhere.

:func:`resolve_relative` rewrites such values into numbers before the fault runs and says what it resolved.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

from pytest_proofpack.errors import SpecError

_SPECTRAL_FACTOR: Final = "INVARLOCK_SPECTRAL_SCALE_FACTOR"
_SPECTRAL_FAMILY: Final = "INVARLOCK_SPECTRAL_TARGET_FAMILY"
_VE_FACTOR: Final = "INVARLOCK_VE_SCALE_FACTOR"
#: Fault target families and the spectral guard's family of the same matrices.
_GUARD_FAMILY: Final = {"attn": "attn", "ffn": "ffn", "mlp": "ffn"}


def resolve_relative(
    env: Mapping[str, str], preset: Mapping[str, Any], defaults: Mapping[str, float] | None = None
) -> tuple[dict[str, str], dict[str, Any]]:
    """``env`` with relative values replaced by numbers, and ``{key: {value, threshold, source, ...}}`` of each.

    A threshold comes from ``preset``, else from ``defaults`` (``{"spectral": t, "ve_deadband": d}``: the
    engine's uncalibrated defaults, as the guards themselves use them). Raises :class:`SpecError` naming the key when
    a relative value is malformed or its threshold is in neither.
    """
    fallback = dict(defaults or {})
    out = dict(env)
    resolved: dict[str, Any] = {}
    spectral = env.get(_SPECTRAL_FACTOR)
    if spectral is not None and spectral.strip().startswith("spectral_threshold"):
        family = _GUARD_FAMILY.get(env.get(_SPECTRAL_FAMILY, "attn"), env.get(_SPECTRAL_FAMILY, "attn"))
        thresholds = (preset.get("spectral") or {}).get("family_thresholds") or {}
        multiple, value = _relative(_SPECTRAL_FACTOR, spectral, "spectral_threshold", thresholds.get(family),
                                    f"spectral threshold for family {family!r}", fallback.get("spectral"))
        resolved[_SPECTRAL_FACTOR] = {"written": spectral, "value": math.exp(multiple * value), "family": family,
                                      "threshold": value, "multiple": multiple}
    ve = env.get(_VE_FACTOR)
    if ve is not None and ve.strip().startswith("ve_deadband"):
        multiple, value = _relative(_VE_FACTOR, ve, "ve_deadband", (preset.get("variance") or {}).get("deadband"),
                                    "variance deadband", fallback.get("ve_deadband"))
        resolved[_VE_FACTOR] = {"written": ve, "value": 1.0 / (1.0 + multiple * value), "threshold": value,
                                "multiple": multiple}
    out.update({key: repr(entry["value"]) for key, entry in resolved.items()})
    return out, resolved


def _relative(key: str, raw: str, unit: str, entry: object, what: str, default: float | None) -> tuple[float, float]:
    """``(K, threshold)`` of ``raw`` = ``<unit>*K``, the threshold read from the preset's ``entry``, else
    ``default``."""
    match = re.match(rf"^{unit}\*(\d+(?:\.\d+)?)$", raw.strip())
    if match is None:
        raise SpecError(f"env {key}={raw!r}: write {unit}*K with a number K, e.g. {unit}*2")
    value = entry.get("value") if isinstance(entry, Mapping) else default
    if not isinstance(value, int | float) or not value > 0:
        raise SpecError(f"env {key}={raw!r}: the preset has no {what}; calibrate the model or give an absolute "
                        "factor")
    return float(match.group(1)), float(value)
