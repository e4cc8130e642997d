"""``index.html`` of a proof pack: one self-contained page (inline CSS and SVG; no scripts, no assets).

It shows the verdict and its failed requirements, the detection matrix (models × scenarios; every cell carries
``data-model``, ``data-scenario``, ``data-outcome`` and ``data-edit``, the change its runs applied, so tools and
tests can read it) with its legend and each model's baseline, a plot of the primary
metric ratios with their confidence intervals, and per-scenario details (guards fired, gates, detectors).
Output is deterministic for a given verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any, Final

from pytest_proofpack.verdict.matrix import LEGEND
from pytest_proofpack.verdict.render import baseline_text

__all__ = ["render_index"]

_COLOURS: Final = {
    "pass": "#2e7d32",
    "fail": "#c62828",
    "missing": "#6d6d6d",
    "signal": "#1565c0",
    "quiet": "#90a4ae",
}
_CSS: Final = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#212121;max-width:1200px}
h1{margin:0 0 .5rem}
.badge{display:inline-block;padding:.2rem .8rem;border-radius:4px;color:#fff;font-weight:700}
.PASS{background:#2e7d32}.FAIL{background:#c62828}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
td.cell{color:#fff;font-family:ui-monospace,monospace;text-align:center;white-space:nowrap}
td.cell small{font-size:10px;opacity:.9}
.o-pass{background:#2e7d32}.o-fail{background:#c62828}.o-missing{background:#6d6d6d}
.o-signal{background:#1565c0}.o-quiet{background:#90a4ae}
details{margin:.3rem 0}summary{cursor:pointer}code{font-size:12px}.muted{color:#666}
"""


def _fmt(value: object, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return "n/a" if value is None else str(value)


def _counts(verdict: Mapping[str, Any]) -> str:
    counts = verdict.get("counts") or {}
    rows = "".join(
        f"<tr><th>{escape(str(k))}</th><td>{escape(str(counts[k]))}</td></tr>" for k in sorted(counts)
    )
    return f"<table class='counts'>{rows}</table>"


def _failed(verdict: Mapping[str, Any]) -> str:
    failed = verdict.get("failed_requirements") or []
    if not failed:
        return "<p>All requirements met.</p>"
    items = "".join(
        f"<li><b>{escape(str(f.get('requirement')))}</b>: {escape(str(f.get('message')))}</li>"
        for f in failed
    )
    return f"<h2>Failed requirements</h2><ul class='failed'>{items}</ul>"


def _matrix(verdict: Mapping[str, Any]) -> str:
    matrix = verdict.get("detection_matrix") or {}
    models = [str(m) for m in matrix.get("models", [])]
    scenarios = matrix.get("scenarios", [])
    cells = matrix.get("cells", {})
    head = "".join(f"<th>{escape(m)}</th>" for m in models)
    rows = []
    for s in scenarios:
        sid = str(s.get("id"))
        tds = []
        for m in models:
            cell = cells.get(m, {}).get(sid)
            if cell is None:
                tds.append("<td class='empty'></td>")
                continue
            tds.append(_cell(m, sid, cell))
        meta = f"{s.get('category')}, {s.get('strictness')}"
        rows.append(
            f"<tr><th>{escape(sid)} <span class='muted'>({escape(meta)})</span></th>{''.join(tds)}</tr>"
        )
    legend = " ".join(
        f"<span class='badge' style='background:{c}'>{escape(o)}</span>" for o, c in _COLOURS.items()
    )
    marks = "".join(f"<li><code>{escape(str(mark))}</code> {escape(str(meaning))}</li>"
                    for mark, meaning in matrix.get("legend") or LEGEND)
    baselines = matrix.get("baselines") or {}
    rows_b = "".join(f"<tr><th>{escape(m)}</th><td class='baseline' data-model='{escape(m)}'>"
                     f"{escape(baseline_text(baselines.get(m)))}</td></tr>" for m in models)
    return (
        "<h2>Detection matrix</h2>"
        f"<table class='matrix'><tr><th>scenario</th>{head}</tr>{''.join(rows)}</table><p>{legend}</p>"
        f"<details><summary>What the marks mean</summary><ul class='legend'>{marks}</ul></details>"
        f"<h2>Baselines</h2><table class='baselines'>{rows_b}</table>"
    )


def _cell(model: str, sid: str, cell: Mapping[str, Any]) -> str:
    """One matrix cell: outcome colour, worst ratio, caps and the change each run applied."""
    outcome = str(cell.get("outcome"))
    ratio = cell.get("ratio")
    label = escape(_fmt(ratio, 3) if isinstance(ratio, float) else outcome)
    if cell.get("caps"):
        label += escape(f" c{cell['caps']}")
    specs = " | ".join(str(x) for x in cell.get("edit_specs") or [])
    if specs:
        label += f"<br><small class='spec'>{escape(specs)}</small>"
    guards = ", ".join(cell.get("guards") or []) or "none"
    detectors = "; ".join(cell.get("detectors_hit") or []) or "none"
    title = (
        f"{model} / {sid}: {outcome}; runs ok {cell.get('runs_ok')}/{cell.get('runs_judged')}, "
        f"missing {cell.get('runs_missing')}; guards fired: {guards}; detectors hit: {detectors}; "
        f"as run: {specs or 'n/a'}"
    )
    return (
        f"<td class='cell o-{escape(outcome)}' data-model='{escape(model)}' data-scenario='{escape(sid)}' "
        f"data-outcome='{escape(outcome)}' data-edit='{escape(specs)}' title='{escape(title)}'>{label}</td>"
    )


def _chart(records: Sequence[Mapping[str, Any]]) -> str:
    points = [r for r in records if isinstance(r.get("ratio"), float) and math.isfinite(r["ratio"])]
    if not points:
        return "<p class='muted'>No finite primary-metric ratios to plot.</p>"
    values = [1.0]
    for r in points:
        values.append(r["ratio"])
        values.extend(v for v in (r.get("ci") or []) if isinstance(v, float) and math.isfinite(v))
    # log scale: catastrophic ratios (x10) must not flatten the clean ones (x1.01)
    lo, hi = math.log(min(values)), math.log(max(values))
    if hi - lo < 1e-6:
        lo, hi = lo - 0.01, hi + 0.01
    width, height, left, top, bottom = max(360, 18 * len(points) + 80), 260, 60, 10, 30
    plot_h = height - top - bottom

    def y(v: float) -> float:
        return top + plot_h * (1 - (math.log(v) - lo) / (hi - lo))

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' class='ratios' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' role='img' aria-label='primary metric ratios with CI'>",
        f"<line x1='{left}' x2='{width - 10}' y1='{y(1.0):.1f}' y2='{y(1.0):.1f}' stroke='#999' "
        "stroke-dasharray='4 3'/>",
        f"<text x='4' y='{y(1.0) + 4:.1f}' font-size='11'>1.0</text>",
        f"<text x='4' y='{top + 10}' font-size='11'>{math.exp(hi):.3g}</text>",
        f"<text x='4' y='{top + plot_h}' font-size='11'>{math.exp(lo):.3g}</text>",
    ]
    for i, r in enumerate(points):
        x = left + 10 + 18 * i
        colour = _COLOURS["pass"] if r.get("ok") else _COLOURS["fail"]
        ci = [v for v in (r.get("ci") or []) if isinstance(v, float) and math.isfinite(v)]
        title = escape(f"{r.get('model')} / {r.get('name')} run {r.get('run_num')}: ratio {_fmt(r['ratio'])}")
        parts.append(
            f"<g class='point' data-model='{escape(str(r.get('model')))}' "
            f"data-scenario='{escape(str(r.get('name')))}'><title>{title}</title>"
        )
        if len(ci) == 2:
            parts.append(
                f"<line x1='{x}' x2='{x}' y1='{y(ci[0]):.1f}' y2='{y(ci[1]):.1f}' stroke='{colour}'/>"
                f"<line x1='{x - 4}' x2='{x + 4}' y1='{y(ci[0]):.1f}' y2='{y(ci[0]):.1f}' stroke='{colour}'/>"
                f"<line x1='{x - 4}' x2='{x + 4}' y1='{y(ci[1]):.1f}' y2='{y(ci[1]):.1f}' stroke='{colour}'/>"
            )
        parts.append(f"<circle cx='{x}' cy='{y(r['ratio']):.1f}' r='3.5' fill='{colour}'/></g>")
    parts.append("</svg>")
    return "<h2>Primary metric ratio vs baseline (log scale, CI whiskers)</h2>" + "".join(parts)


def _details(verdict: Mapping[str, Any], reports: Mapping[str, Mapping[str, Any]] | None) -> str:
    records = verdict.get("records") or []
    out = ["<h2>Scenarios</h2>"]
    for summary in verdict.get("scenario_signal_summary") or []:
        sid = str(summary.get("id"))
        recs = [r for r in records if r.get("name") == sid]
        head = (
            f"{sid} — {summary.get('category')}, {summary.get('strictness')}, primary guard "
            f"{summary.get('primary_guard')}: {summary.get('ok')}/{summary.get('reports')} as expected, "
            f"{summary.get('missing')} missing"
        )
        rows = []
        for r in recs:
            fired = ", ".join(k for k, v in sorted((r.get("guard_flags") or {}).items()) if v) or "none"
            dets = (
                "; ".join(
                    str(d.get("description")) + (" ✓" if d.get("hit") else " ✗")
                    for d in r.get("detectors") or []
                )
                or "none declared"
            )
            extra = ""
            report = (reports or {}).get(str(r.get("path")))
            if report is not None:
                pm = report.get("primary_metric") or {}
                extra = f" gate {pm.get('gate_rule')} ≤ {pm.get('limit')}" if isinstance(pm, Mapping) else ""
            ci = r.get("ci") or [None, None]
            rows.append(
                f"<tr><td>{escape(str(r.get('model')))}</td><td>{escape(str(r.get('run_num')))}</td>"
                f"<td>{'yes' if r.get('ok') else 'NO'}</td><td>{'pass' if r.get('passed') else 'fail'}</td>"
                f"<td>{escape(_fmt(r.get('ratio')))} [{escape(_fmt(ci[0]))}, {escape(_fmt(ci[1]))}]"
                f"{escape(extra)}</td><td>{escape(fired)}</td><td>{escape(str(r.get('spectral_caps_applied')))}</td>"
                f"<td>{escape(', '.join(r.get('reasons') or []) or '-')}</td><td>{escape(dets)}</td></tr>"
            )
        table = (
            "<table><tr><th>model</th><th>run</th><th>as expected</th><th>gates</th><th>ratio [CI]</th>"
            "<th>guards fired</th><th>caps</th><th>reasons</th><th>detectors</th></tr>"
            + "".join(rows)
            + "</table>"
        )
        out.append(
            f"<details data-scenario='{escape(sid)}'><summary>{escape(head)}</summary>{table}</details>"
        )
    return "".join(out)


def render_index(verdict: Mapping[str, Any], reports: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """Render the pack's ``index.html`` from a verdict (:func:`pytest_proofpack.verdict.compute_verdict`).

    ``reports`` optionally maps a record's ``path`` to its evaluation report for extra detail (gate rule).
    """
    v = str(verdict.get("verdict", "FAIL"))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>Proof pack — {escape(v)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Proof pack verdict <span class='badge {escape(v)}' id='verdict'>{escape(v)}</span></h1>"
        f"{_failed(verdict)}{_matrix(verdict)}{_chart(verdict.get('records') or [])}"
        f"<h2>Counts</h2>{_counts(verdict)}{_details(verdict, reports)}"
        "</body></html>\n"
    )
