"""Probe strengths relative to the model: env values that name the model's own calibrated threshold.

A subtle probe must be strong enough for its guard to see and weak enough for the perplexity gate to accept, and
where that lies depends on the model. A scenario can therefore write a probe's strength in units of the guard's
calibrated threshold instead of as an absolute number:

* ``spectral_threshold*K`` (for ``INVARLOCK_SPECTRAL_SCALE_FACTOR``): the factor ``exp(K * t)``, ``t`` being the
  calibrated spectral threshold (``|log sigma ratio|``) of the probe's target family in the model's preset. Scaling
  a whole matrix by ``f`` scales its largest singular value by exactly ``f``, so with ``K > 1`` every scaled matrix
  exceeds its family's threshold by the same margin on every model.

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
_RELATIVE: Final = re.compile(r"^spectral_threshold\*(\d+(?:\.\d+)?)$")
#: Fault target families and the spectral guard's family of the same matrices.
_GUARD_FAMILY: Final = {"attn": "attn", "ffn": "ffn", "mlp": "ffn"}


def resolve_relative(env: Mapping[str, str], preset: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """``env`` with relative values replaced by numbers, and ``{key: {value, threshold, family, ...}}`` of each one.

    Raises :class:`SpecError` naming the key when a relative value is malformed or its threshold is unknown.
    """
    out = dict(env)
    resolved: dict[str, Any] = {}
    raw = env.get(_SPECTRAL_FACTOR)
    if raw is None or not raw.startswith("spectral_threshold"):
        return out, resolved
    match = _RELATIVE.match(raw.strip())
    if match is None:
        raise SpecError(f"env {_SPECTRAL_FACTOR}={raw!r}: write spectral_threshold*K with a number K, e.g. "
                        "spectral_threshold*2")
    target = env.get(_SPECTRAL_FAMILY, "attn")
    family = _GUARD_FAMILY.get(target)
    thresholds = ((preset.get("spectral") or {}).get("family_thresholds") or {})
    entry = thresholds.get(family) if family else None
    value = entry.get("value") if isinstance(entry, Mapping) else None
    if not isinstance(value, int | float) or not value > 0:
        raise SpecError(f"env {_SPECTRAL_FACTOR}={raw!r}: the preset has no spectral threshold for family "
                        f"{family or target!r}; calibrate the model or give an absolute factor")
    multiple = float(match.group(1))
    factor = math.exp(multiple * float(value))
    out[_SPECTRAL_FACTOR] = repr(factor)
    resolved[_SPECTRAL_FACTOR] = {"written": raw, "value": factor, "family": family, "threshold": float(value),
                                  "multiple": multiple}
    return out, resolved
