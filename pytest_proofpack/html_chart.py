"""The chart of ``index.html``: every run's primary-metric ratio on a log axis, one labelled row per scenario.

An inline SVG, read from the verdict's ``records`` and ``detection_matrix`` and the reports' ``primary_metric``:
rows in the matrix's scenario order, one lane per model inside a row (a marker shape per model), each run a marker
at its ratio with its CI as a whisker, filled in its matrix cell's outcome colour (hollow when the ratio is
degraded); a run whose ratio is not finite is an ``✕`` in the *non-finite* column, never a point on the axis. The
tier limit is a dashed vertical line (class ``tier-limit``), one per distinct limit, labelled with its value, gate
rule and tier, and with its models when they differ. Axis ticks are chosen so that no two labels overlap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any, Final

from pytest_proofpack.html_format import COLOURS, as_number, cell_anchor, eng, nonfinite_ratio_text

__all__ = ["SHAPES", "TierLimit", "render_chart", "tier_limits"]

#: Marker shape of the i-th model (cycled), as the legend names it.
SHAPES: Final = ("circle", "square", "diamond", "triangle")
_WIDTH: Final = 980
_CHAR_PX: Final = 7.4  # width of one 12 px monospace character, so row labels never run into the plot
_NONFINITE_W: Final = 96
_LANE_H: Final = 16
_MIN_TICK_GAP: Final = 64


@dataclass(frozen=True)
class TierLimit:
    """One distinct gate limit of the reports: value, gate rule, the tiers its reports name and its models."""

    limit: float
    gate_rule: str | None
    tiers: tuple[str, ...]
    models: tuple[str, ...]

    def label(self, all_models: Sequence[str]) -> str:
        """``tier limit 1.1 (balanced; gate point ≤ limit)``, with ``for m1, m2`` when not every model shares it."""
        parts = ["/".join(self.tiers), f"gate {self.gate_rule} ≤ limit" if self.gate_rule else ""]
        shown = "; ".join(p for p in parts if p)
        text = f"tier limit {eng(self.limit, keep_zeros=False)}" + (f" ({shown})" if shown else "")
        return text + ("" if set(self.models) >= set(all_models) else f" for {', '.join(self.models)}")


def tier_limits(
    records: Sequence[Mapping[str, Any]], reports: Mapping[str, Mapping[str, Any]] | None
) -> list[TierLimit]:
    """The distinct ``(primary_metric.limit, gate_rule)`` pairs of the runs' reports, with the tiers their reports'
    ``provenance.config.tier`` name, sorted by limit."""
    found: dict[tuple[float, str], tuple[set[str], set[str]]] = {}
    for r in records:
        report = (reports or {}).get(str(r.get("path"))) or {}
        pm = report.get("primary_metric")
        limit = as_number(pm.get("limit")) if isinstance(pm, Mapping) else None
        if limit is None or not math.isfinite(limit) or limit <= 0 or not isinstance(pm, Mapping):
            continue
        provenance = report.get("provenance")
        config = provenance.get("config") if isinstance(provenance, Mapping) else None
        tier = config.get("tier") if isinstance(config, Mapping) else None
        models, tiers = found.setdefault((limit, str(pm.get("gate_rule") or "")), (set(), set()))
        models.add(str(r.get("model")))
        tiers.update([str(tier)] if tier else [])
    return [TierLimit(limit, rule or None, tuple(sorted(tiers)), tuple(sorted(models)))
            for (limit, rule), (models, tiers) in sorted(found.items())]


def _finite_positive(values: Sequence[object]) -> list[float]:
    return [v for x in values if (v := as_number(x)) is not None and math.isfinite(v) and v > 0]


class _Axis:
    """A log axis from ``lo`` to ``hi`` drawn between pixels ``x0`` and ``x1``."""

    def __init__(self, values: Sequence[float], x0: float, x1: float) -> None:
        lo, hi = math.log10(min(values)), math.log10(max(values))
        pad = max((hi - lo) * 0.06, 0.004)
        self.lo, self.hi, self.x0, self.x1 = lo - pad, hi + pad, x0, x1

    def x(self, value: float) -> float:
        return self.x0 + (self.x1 - self.x0) * (math.log10(value) - self.lo) / (self.hi - self.lo)

    def ticks(self) -> list[float]:
        """Tick values, most telling first kept: 1 (the baseline), then decades, then 2× and 5× of each decade on a
        wide axis, or round steps on a narrow one; a tick closer than ``_MIN_TICK_GAP`` px to a kept one is dropped."""
        lo, hi = 10**self.lo, 10**self.hi
        candidates = [1.0]
        if self.hi - self.lo >= 1:
            decades = range(math.ceil(self.lo - 1), math.floor(self.hi) + 1)
            candidates += [10.0**k for k in decades]
            candidates += [m * 10.0**k for k in decades for m in (2, 5)]
            candidates += [m * 10.0**k for k in decades for m in (3, 4, 6, 7, 8, 9)]
        else:
            raw = (hi - lo) / 6
            base = 10 ** math.floor(math.log10(raw))
            step = next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= raw)
            first = math.ceil(lo / step)
            candidates += [round(k * step, 12) for k in range(first, math.floor(hi / step) + 1)]
        kept: list[float] = []
        for value in candidates:
            if lo <= value <= hi and all(abs(self.x(value) - self.x(k)) >= _MIN_TICK_GAP for k in kept):
                kept.append(value)
        return sorted(kept)


def _marker(shape: str, x: float, y: float, colour: str, hollow: bool) -> str:
    fill, stroke = ("#fff", colour) if hollow else (colour, "#fff")
    style = f"fill='{fill}' stroke='{stroke}' stroke-width='1.5'"
    if shape == "square":
        return f"<rect x='{x - 4.5:.1f}' y='{y - 4.5:.1f}' width='9' height='9' {style}/>"
    if shape == "diamond":
        return f"<path d='M{x:.1f} {y - 6:.1f}l6 6l-6 6l-6-6z' {style}/>"
    if shape == "triangle":
        return f"<path d='M{x:.1f} {y - 6:.1f}l6 10.4h-12z' {style}/>"
    return f"<circle cx='{x:.1f}' cy='{y:.1f}' r='5' {style}/>"


def _run_svg(r: Mapping[str, Any], axis: _Axis, y: float, shape: str, outcome: str, nonfinite_x: float,
             reports: Mapping[str, Mapping[str, Any]] | None) -> str:
    model, sid = str(r.get("model")), str(r.get("name"))
    colour = COLOURS.get(outcome, "#000")
    ratio = as_number(r.get("ratio"))
    head = (f"<a href='#{escape(cell_anchor(model, sid))}'><g class='run' data-model='{escape(model)}' "
            f"data-scenario='{escape(sid)}' data-run='{escape(str(r.get('run_num')))}'>")
    if ratio is None or not math.isfinite(ratio) or ratio <= 0:
        pm = ((reports or {}).get(str(r.get("path"))) or {}).get("primary_metric")
        why = nonfinite_ratio_text(pm.get("degraded_reason") if isinstance(pm, Mapping) else None,
                                   r.get("invariants_status"))
        title = f"{model} / {sid} run {r.get('run_num')}: ratio {why}; {outcome}"
        return (f"{head}<title>{escape(title)}</title><text class='nonfinite' x='{nonfinite_x - 10:.1f}' "
                f"y='{y + 4:.1f}' fill='{colour}' font-size='13' text-anchor='middle'>✕</text></g></a>")
    ci = _finite_positive(r.get("ci") or [])
    parts = [head]
    ci_text = ""
    if len(ci) == 2:
        a, b = axis.x(ci[0]), axis.x(ci[1])
        ci_text = f" CI [{eng(ci[0])}, {eng(ci[1])}]"
        parts.append(f"<path class='ci' d='M{a:.1f} {y:.1f}H{b:.1f}M{a:.1f} {y - 4:.1f}v8M{b:.1f} {y - 4:.1f}v8' "
                     f"stroke='{colour}' stroke-width='1.5' fill='none'/>")
    degraded = bool(r.get("degraded"))
    cover = f" (degraded: {r.get('windows_covered')} of {r.get('windows_total')} windows)" if degraded else ""
    title = f"{model} / {sid} run {r.get('run_num')}: ratio {eng(ratio)}{ci_text}{cover}; {outcome}"
    parts.insert(1, f"<title>{escape(title)}</title>")
    parts.append(_marker(shape, axis.x(ratio), y, colour, degraded) + "</g></a>")
    return "".join(parts)


def _row_svg(sid: str, y0: float, row_h: float, label_w: float, models: Sequence[str],
             cells: Mapping[str, Any], records: Sequence[Mapping[str, Any]], axis: _Axis, nonfinite_x: float,
             reports: Mapping[str, Mapping[str, Any]] | None) -> str:
    """One scenario's row: its label, then one lane per model with that model's runs and missing runs."""
    parts = [f"<g class='chart-row' data-scenario='{escape(sid)}'><text class='row-label' x='{label_w - 6:.1f}' "
             f"y='{y0 + row_h / 2 + 4:.1f}' font-size='12' "
             f"text-anchor='end' font-family='ui-monospace,monospace'>{escape(sid)}</text>"]
    for lane, model in enumerate(models):
        y = y0 + (row_h - len(models) * _LANE_H) / 2 + _LANE_H * (lane + 0.5)
        cell = cells.get(model, {}).get(sid) or {}
        outcome = str(cell.get("outcome", "missing"))
        for r in records:
            if r.get("model") == model and r.get("name") == sid:
                parts.append(_run_svg(r, axis, y, SHAPES[lane % len(SHAPES)], outcome, nonfinite_x, reports))
        missing = cell.get("runs_missing") or 0
        if missing:
            why = escape(f"{model} / {sid}: {missing} run(s) without a judged report")
            parts.append(f"<text class='missing-run' x='{nonfinite_x + 26:.1f}' y='{y + 4:.1f}' font-size='11' "
                         f"fill='{COLOURS['missing']}'><title>{why}</title>M{missing if missing > 1 else ''}"
                         "</text>")
    return "".join(parts) + "</g>"


def _limit_lines(limits: Sequence[TierLimit], models: Sequence[str], axis: _Axis, top: float, bottom: float) -> str:
    out = []
    for i, limit in enumerate(limits):
        x = axis.x(limit.limit)
        anchor, dx = ("end", -4) if x > (axis.x0 + axis.x1) / 2 else ("start", 4)
        label_y = 14 + 14 * i
        out.append(
            f"<g class='tier-limit' id='tier-limit-{i}' data-limit='{limit.limit!r}'>"
            f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{label_y + 2}' y2='{bottom:.1f}' stroke='#b71c1c' "
            "stroke-width='1.5' stroke-dasharray='6 3'/>"
            f"<text class='tier-limit-label' x='{x + dx:.1f}' y='{label_y}' text-anchor='{anchor}' font-size='11' "
            f"fill='#b71c1c'>{escape(limit.label(models))}</text></g>"
        )
    return "".join(out)


def render_chart(verdict: Mapping[str, Any], reports: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The chart section: heading, a note when no report gives a tier limit, and the SVG."""
    matrix = verdict.get("detection_matrix") or {}
    models = [str(m) for m in matrix.get("models", [])]
    scenarios = [str(s.get("id")) for s in matrix.get("scenarios", [])]
    cells = matrix.get("cells") or {}
    records = [r for r in verdict.get("records") or [] if str(r.get("name")) in scenarios]
    limits = tier_limits(records, reports)
    values = [1.0, *(lim.limit for lim in limits)]
    for r in records:
        values += _finite_positive([r.get("ratio"), *(r.get("ci") or [])])
    if not scenarios or not models:
        return "<h2 id='chart'>Primary-metric ratios</h2><p class='muted'>No planned cases.</p>"
    label_w = 12 + _CHAR_PX * max(len(s) for s in scenarios)
    lanes = len(models)
    row_h = max(24, lanes * _LANE_H + 8)
    top = 14 + 14 * max(len(limits), 1) + 8
    height = top + row_h * len(scenarios) + 44
    nonfinite_x = _WIDTH - _NONFINITE_W / 2
    axis = _Axis(values, label_w + 10, _WIDTH - _NONFINITE_W - 16)
    bottom = top + row_h * len(scenarios)
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' class='chart' id='ratio-chart' viewBox='0 0 {_WIDTH} {height}' "
        f"width='{_WIDTH}' height='{height}' role='img' aria-label='primary-metric ratio per run, log axis'>",
        f"<rect x='{_WIDTH - _NONFINITE_W}' y='{top}' width='{_NONFINITE_W}' height='{bottom - top}' fill='#fff3f3'/>",
        f"<text x='{nonfinite_x:.1f}' y='{top - 6}' font-size='11' text-anchor='middle' fill='#555'>"
        "no finite ratio</text>",
    ]
    parts += [f"<rect class='band' x='0' y='{top + row_h * i}' width='{_WIDTH - _NONFINITE_W}' height='{row_h}' "
              "fill='#f5f5f5'/>" for i in range(1, len(scenarios), 2)]
    for value in axis.ticks():
        x = axis.x(value)
        parts.append(f"<g class='tick'><line x1='{x:.1f}' x2='{x:.1f}' y1='{top}' y2='{bottom + 4}' "
                     f"stroke='{'#9e9e9e' if value == 1.0 else '#e0e0e0'}'/><text x='{x:.1f}' y='{bottom + 17}' "
                     f"font-size='11' text-anchor='middle'>{escape(eng(value, keep_zeros=False))}</text></g>")
    for i, sid in enumerate(scenarios):
        parts.append(_row_svg(sid, top + row_h * i, row_h, label_w, models, cells, records,
                              axis, nonfinite_x, reports))
    parts.append(_limit_lines(limits, models, axis, top, bottom))
    parts.append(f"<text x='{(axis.x0 + axis.x1) / 2:.1f}' y='{bottom + 36}' font-size='12' text-anchor='middle'>"
                 "primary-metric ratio vs baseline (log scale), whiskers: the run's CI</text></svg>")
    note = ("" if limits else "<p class='muted'>No report gives <code>primary_metric.limit</code>: "
            "no tier limit is drawn.</p>")
    return ("<h2 id='chart'>Primary-metric ratio of every run</h2>" + note
            + "<div class='chart-wrap'>" + "".join(parts) + "</div>")
