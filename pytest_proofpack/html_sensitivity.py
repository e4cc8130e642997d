"""The sensitivity section of a pack's page: one plot per family, detection rate against magnitude.

:func:`render_sensitivity` turns a ``proofpack_sensitivity_v1`` document into an HTML fragment (a ``<section>``) of
inline SVG and tables; :func:`render_page` wraps it into a page of its own. Self-contained: no script, no external
reference. Rungs are placed at equal steps from the weakest change (left) to the strongest (right), labelled with
their magnitudes, so a ladder in bits (stronger downwards) reads the same way as one in sparsity. Each detector is
one line; whiskers are the exact 95 % intervals; the dashed line is the 95 % detection goal; the shaded band starts
at the weakest rung whose mean primary-metric ratio exceeds the tier's limit (the tier's budget).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any, Final

from pytest_proofpack.sensitivity_summary import DETECTION_GOAL, family_line

__all__ = ["render_page", "render_sensitivity"]

_COLOURS: Final = {"invariants": "#7b3294", "spectral": "#1b7837", "rmt": "#2166ac", "variance": "#e08214",
                   "primary_metric": "#b2182b", "any": "#222222"}
_CSS: Final = (
    "section.sensitivity{font-family:system-ui,sans-serif;margin:1em 0}"
    "section.sensitivity figure{display:inline-block;margin:0 1.5em 1.5em 0;vertical-align:top}"
    "section.sensitivity table{border-collapse:collapse;font-size:12px}"
    "section.sensitivity td,section.sensitivity th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
    "section.sensitivity .muted{color:#666;font-size:12px}"
    "section.sensitivity pre{white-space:pre-wrap}"
)
_W: Final = 420
_H: Final = 250
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 110, 14, 42


def _num(value: object) -> str:
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _x(i: int, n: int) -> float:
    span = _W - _LEFT - _RIGHT
    return _LEFT + (span * i / (n - 1) if n > 1 else span / 2)


def _y(rate: float) -> float:
    return _TOP + (_H - _TOP - _BOTTOM) * (1.0 - rate)


def _axes(rungs: Sequence[float], unit: str) -> list[str]:
    n = len(rungs)
    out = [f"<line x1='{_LEFT}' x2='{_W - _RIGHT}' y1='{_y(0):.1f}' y2='{_y(0):.1f}' stroke='#444'/>",
           f"<line x1='{_LEFT}' x2='{_LEFT}' y1='{_y(0):.1f}' y2='{_y(1):.1f}' stroke='#444'/>",
           f"<line x1='{_LEFT}' x2='{_W - _RIGHT}' y1='{_y(DETECTION_GOAL):.1f}' y2='{_y(DETECTION_GOAL):.1f}' "
           "stroke='#999' stroke-dasharray='4 3'/>"]
    for rate in (0.0, 0.5, 1.0):
        out.append(f"<text x='{_LEFT - 6}' y='{_y(rate) + 4:.1f}' font-size='10' text-anchor='end'>{rate:g}</text>")
    for i, m in enumerate(rungs):
        out.append(f"<text x='{_x(i, n):.1f}' y='{_y(0) + 14:.1f}' font-size='10' text-anchor='middle'>"
                   f"{escape(_num(m))}</text>")
    out.append(f"<text x='{(_LEFT + _W - _RIGHT) / 2:.1f}' y='{_H - 6}' font-size='11' text-anchor='middle'>"
               f"{escape(unit)} (weaker → stronger)</text>")
    return out


def _budget(rungs: Sequence[float], over: object, limit: object) -> list[str]:
    if not isinstance(over, int | float) or over not in rungs:
        return []
    n, i = len(rungs), list(rungs).index(over)
    x0 = _x(i, n) - (((_W - _LEFT - _RIGHT) / (n - 1)) / 2 if n > 1 and i > 0 else 0)
    label = f"ratio over {_num(limit)}" if limit is not None else "over budget"
    return [f"<rect class='over-budget' x='{x0:.1f}' y='{_y(1):.1f}' width='{_W - _RIGHT - x0:.1f}' "
            f"height='{_y(0) - _y(1):.1f}' fill='#f4a582' fill-opacity='0.25'><title>{escape(label)}: the tier's "
            "budget is exceeded from here</title></rect>",
            f"<text x='{x0 + 3:.1f}' y='{_y(0) - 4:.1f}' font-size='9' fill='#b2182b'>{escape(label)}</text>"]


def _lines(rungs: Sequence[float], rates: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    n, out = len(rungs), []
    for j, (det, rows) in enumerate(rates.items()):
        colour = _COLOURS.get(det, "#555")
        dx = (j - (len(rates) - 1) / 2) * 2.5  # coincident lines stay visible side by side
        pts = [(_x(i, n) + dx, _y(r["rate"]), r) for i, r in enumerate(rows) if r.get("rate") is not None]
        out.append(f"<g class='detector' data-detector='{escape(det)}'>")
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in pts)
            width = 2.5 if det == "any" else 1.5
            out.append(f"<polyline points='{path}' fill='none' stroke='{colour}' stroke-width='{width}'/>")
        for x, y, r in pts:
            tip = (f"{det} at {_num(r['magnitude'])}: {r['detected']}/{r['n']} detected, 95 % interval "
                   f"[{r['lower95']:.2f}, {r['upper95']:.2f}]")
            out.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{_y(r['lower95']):.1f}' y2='{_y(r['upper95']):.1f}' "
                       f"stroke='{colour}' stroke-opacity='0.35'/><circle cx='{x:.1f}' cy='{y:.1f}' r='3' "
                       f"fill='{colour}' data-rate='{r['rate']:.4f}'><title>{escape(tip)}</title></circle>")
        out.append("</g>")
        ly = _TOP + 14 * j + 6
        out.append(f"<line x1='{_W - _RIGHT + 10}' x2='{_W - _RIGHT + 26}' y1='{ly}' y2='{ly}' stroke='{colour}' "
                   f"stroke-width='2'/><text x='{_W - _RIGHT + 30}' y='{ly + 4}' font-size='10'>{escape(det)}</text>")
    return out


def _plot(name: str, family: Mapping[str, Any], limit: object) -> str:
    rungs = list(family["rungs"])
    summary = family["summary"]
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' class='sensitivity-plot' width='{_W}' height='{_H}' "
             f"viewBox='0 0 {_W} {_H}' role='img' aria-label='{escape(name)}: detection rate against magnitude'>",
             *_budget(rungs, summary.get("over_budget_from"), limit), *_axes(rungs, str(family.get("unit", ""))),
             *_lines(rungs, summary["rates"]), "</svg>"]
    rows = "".join(f"<tr><td>{escape(det)}</td><td>{escape(t['status'])}</td><td>{escape(_num(t['below']))}</td>"
                   f"<td>{escape(_num(t['at']))}</td></tr>" for det, t in summary["thresholds"].items())
    table = ("<table class='thresholds'><tr><th>detector</th><th>threshold</th><th>rung below</th>"
             f"<th>first rung ≥ {DETECTION_GOAL:.0%}</th></tr>{rows}</table>")
    caption = (f"<figcaption><b>{escape(name)}</b>: {escape(str(family.get('description', '')))}"
               f" <span class='muted'>({summary.get('runs', 0)} runs, {summary.get('errors', 0)} errors)</span>"
               "</figcaption>")
    return f"<figure class='sensitivity-family' data-family='{escape(name)}'>{caption}{''.join(parts)}{table}</figure>"


def render_sensitivity(data: Mapping[str, Any]) -> str:
    """The HTML section of a ``proofpack_sensitivity_v1`` document: per model, one figure per family (see the
    module). Values from the document are escaped; the output is deterministic."""
    limit = data.get("ratio_limit")
    out = [f"<section class='sensitivity'><style>{_CSS}</style><h2>Sensitivity: how small a change each detector "
           "catches</h2><p class='muted'>Detection rate per rung over window samples, exact 95 % intervals; dashed: "
           f"the {DETECTION_GOAL:.0%} goal; shaded: mean primary-metric ratio over the tier's limit "
           f"({escape(str(data.get('tier', '?')))}, {escape(_num(limit))}). Engine "
           f"{escape(str(data.get('engine_version', '?')))}.</p>"]
    for key, entry in (data.get("models") or {}).items():
        samples = entry.get("samples") or []
        out.append(f"<h3>{escape(str(key))} <span class='muted'>({len(samples)} window samples)</span></h3>")
        lines = "\n".join(family_line(name, fam) for name, fam in entry["families"].items())
        out.append(f"<pre class='muted'>{escape(lines)}</pre>")
        out.extend(_plot(name, fam, limit) for name, fam in entry["families"].items())
    out.append("</section>")
    return "".join(out)


def render_page(data: Mapping[str, Any]) -> str:
    """A self-contained page holding only :func:`render_sensitivity`'s section."""
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Sensitivity</title></head><body>"
            f"{render_sensitivity(data)}</body></html>\n")
