"""Numbers and small HTML pieces for ``index.html``: one notation everywhere, non-finite values named as such.

Numbers are written in engineering notation (:func:`eng`): plain with four significant digits from 0.001 to 9999
(a ratio near 1 keeps its fourth digit: ``1.023``), otherwise a mantissa from 1 to 999 times a power of ten that
is a multiple of three (``35.6×10⁹``). A value that is not a finite number is never shown as a number: ``NaN``,
``+∞``, or, for a ratio the verdict stores as ``null``, what the report says made it non-finite.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any, Final

__all__ = [
    "COLOURS",
    "OUTCOME_WORDS",
    "as_number",
    "cell_anchor",
    "eng",
    "kv_table",
    "nonfinite_ratio_text",
    "rows_table",
    "value_text",
]

#: Fill colour of each matrix outcome, shared by the matrix, the chart and the legend.
COLOURS: Final = {
    "pass": "#2e7d32",
    "fail": "#c62828",
    "missing": "#6d6d6d",
    "signal": "#1565c0",
    "quiet": "#90a4ae",
}
#: What each outcome colour means, in the legend's words.
OUTCOME_WORDS: Final = {
    "pass": "pass: every run judged as its scenario expects",
    "fail": "fail: a run judged wrong, or a required probe's primary guard or detectors missed",
    "missing": "missing: a run without a judged report",
    "signal": "signal: informational, a detector hit or a core guard fired",
    "quiet": "quiet: informational, no signal",
}
_SUPERSCRIPT: Final = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def as_number(value: object) -> float | None:
    """``value`` as a float when it is an int or float (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def eng(value: float, digits: int = 3, *, keep_zeros: bool = True) -> str:
    """``value`` in engineering notation (see the module docstring); ``digits`` significant digits outside the
    plain range, four inside it, trailing zeros kept (``1.000``) unless ``keep_zeros`` is false (axis ticks).
    ``NaN`` and ``±∞`` are spelled out."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+∞" if value > 0 else "−∞"
    if value == 0:
        return "0"
    sign = "−" if value < 0 else ""
    magnitude = abs(value)
    if 1e-3 <= magnitude < 1e4:
        text = f"{magnitude:#.4g}" if keep_zeros else f"{magnitude:.4g}"
        if "e" not in text:
            return sign + text.rstrip(".")
    exponent = 3 * math.floor(math.log10(magnitude) / 3)
    mantissa = float(f"{magnitude / 10.0**exponent:.{digits}g}")
    if mantissa >= 1000:  # rounding carried into the next group: 999.96e3 is 1.00e6
        exponent += 3
        mantissa = float(f"{mantissa / 1000:.{digits}g}")
    shown = f"{mantissa:#.{digits}g}".rstrip(".") if keep_zeros else f"{mantissa:.{digits}g}"
    return f"{sign}{shown}×10{str(exponent).translate(_SUPERSCRIPT)}"


def value_text(value: object) -> str:
    """Any report value as short text: numbers by :func:`eng` without trailing zeros (integers below 10⁴ as they
    are), booleans ``yes``/``no``, ``None`` as ``n/a``, short lists joined by commas (longer ones counted)."""
    number = as_number(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10_000:
        return str(value)  # counts and indices stay integers
    if number is not None:
        return eng(number, keep_zeros=False)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "n/a"
    if isinstance(value, list | tuple):
        if len(value) > 8:
            return ", ".join(value_text(v) for v in value[:8]) + f", … ({len(value)} in all)"
        return ", ".join(value_text(v) for v in value) or "none"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}={value_text(v)}" for k, v in value.items()) or "none"
    return str(value)


def nonfinite_ratio_text(degraded_reason: object = None, invariants_status: object = None) -> str:
    """How a ratio the verdict stores as ``null`` is shown: it is not a finite number, and why, from the report's
    ``degraded_reason`` and the invariants' status when they say (``non-finite — invariants fail``)."""
    why = [f"invariants {invariants_status}"] if invariants_status not in (None, "", "pass") else []
    if isinstance(degraded_reason, str) and degraded_reason:
        why.append(degraded_reason.replace(";", ", "))
    return "non-finite" + (" — " + "; ".join(why) if why else "")


def cell_anchor(model: str, scenario: str) -> str:
    """The fragment that opens a cell's drill-down: ``cell=<model>/<scenario>``."""
    return f"cell={model}/{scenario}"


def kv_table(pairs: Iterable[tuple[str, object]], css: str = "kv") -> str:
    """A two-column table of ``(name, value)`` pairs whose value is present (``None`` pairs are left out)."""
    rows = "".join(
        f"<tr><th>{escape(name)}</th><td>{escape(value_text(value))}</td></tr>"
        for name, value in pairs
        if value is not None
    )
    return f"<table class='{css}'>{rows}</table>" if rows else ""


def rows_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], css: str = "rows") -> str:
    """A table with one row per mapping and the given columns (a column no row has is left out)."""
    shown = [c for c in columns if any(c in r for r in rows)]
    if not rows or not shown:
        return ""
    head = "".join(f"<th>{escape(c)}</th>" for c in shown)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(value_text(r.get(c)))}</td>" for c in shown) + "</tr>" for r in rows
    )
    return f"<table class='{css}'><tr>{head}</tr>{body}</table>"
