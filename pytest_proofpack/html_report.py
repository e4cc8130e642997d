"""``index.html`` of a proof pack: one self-contained page (inline CSS, SVG and one small script; no assets, no
network).

It shows the verdict and its failed requirements; the detection matrix (models × scenarios; every cell carries
``data-model``, ``data-scenario``, ``data-outcome`` and ``data-edit``, the change its runs applied, so tools and
tests can read it; its text is the terminal matrix's: mark, worst ratio, guards fired, caps) with each model's
baseline; the chart of every run's ratio (:mod:`pytest_proofpack.html_chart`); the legend of every colour and mark;
the false-alarm rate with its bound; the counts; and a drill-down per cell (:mod:`pytest_proofpack.html_drilldown`).
The script only opens the drill-down that the address names (``#cell=<model>/<scenario>``, also set by clicking a
cell): with scripts off every drill-down is a ``<details>`` a reader opens by hand. Later sections (sensitivity
curves) are passed in ready-made as ``extra_sections``. Output is deterministic for a given input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any, Final

from pytest_proofpack.html_chart import SHAPES, render_chart
from pytest_proofpack.html_drilldown import render_drilldowns
from pytest_proofpack.html_format import (
    COLOURS,
    OUTCOME_WORDS,
    as_number,
    cell_anchor,
    eng,
    kv_table,
    nonfinite_ratio_text,
    value_text,
)
from pytest_proofpack.verdict.matrix import LEGEND
from pytest_proofpack.verdict.render import baseline_text, cell_text

__all__ = ["render_index"]

_CSS: Final = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#212121;max-width:1200px}
h1{margin:0 0 .5rem}h5{margin:.6rem 0 .2rem;font-size:13px}h4{margin:.8rem 0 .2rem}
.badge{display:inline-block;padding:.2rem .8rem;border-radius:4px;color:#fff;font-weight:700}
.PASS{background:#2e7d32}.FAIL{background:#c62828}
table{border-collapse:collapse;margin:.3rem 0 1rem}
th,td{border:1px solid #ccc;padding:.2rem .45rem;text-align:left;vertical-align:top}
td.cell{color:#fff;font-family:ui-monospace,monospace;text-align:center;white-space:nowrap}
td.cell a{color:inherit;text-decoration:none}
td.cell small{font-size:10px;opacity:.9;white-space:normal;overflow-wrap:anywhere;display:block;max-width:20rem;
margin:auto}
table.matrix th{white-space:nowrap}table.matrix th small{font-weight:400}
.o-pass{background:#2e7d32}.o-fail{background:#c62828}.o-missing{background:#6d6d6d}
.o-signal{background:#1565c0}.o-quiet{background:#90a4ae}
.dot{display:inline-block;width:.8em;height:.8em;border-radius:50%;margin-right:.4em;vertical-align:-1px}
details{margin:.3rem 0}summary{cursor:pointer}code{font-size:12px}.muted{color:#666}
details.drill{border:1px solid #ddd;border-radius:4px;padding:.2rem .6rem}details.drill[open]{background:#fcfcfc}
div.run{display:flex;flex-wrap:wrap;gap:0 1.2rem;align-items:flex-start}div.run h4{flex-basis:100%}
.facts{max-width:100%}
.facts table{font-size:12px;margin:.1rem 0 .4rem}.facts td{word-break:break-all;max-width:36rem}
p.sub{margin:.2rem 0 0;font-size:12px;font-style:italic}
.chart-wrap{overflow-x:auto}svg.chart{max-width:100%;height:auto;font-family:system-ui,sans-serif}
ul.legend{columns:2;padding-left:1.2rem}
"""
#: Opens the drill-down the address names; everything it opens is a ``<details>`` a reader can open by hand.
_SCRIPT: Final = """
function openCell(){var h;try{h=decodeURIComponent(location.hash.slice(1));}catch(e){return;}
if(h.indexOf('cell=')!==0)return;
var key=h.slice(5),all=document.querySelectorAll('details.drill');
for(var i=0;i<all.length;i++){if(all[i].getAttribute('data-cell')===key){all[i].open=true;all[i].scrollIntoView();}}}
window.addEventListener('hashchange',openCell);document.addEventListener('DOMContentLoaded',openCell);
"""


def _counts(verdict: Mapping[str, Any]) -> str:
    counts = verdict.get("counts") or {}
    return "<h2 id='counts'>Counts</h2>" + kv_table([(str(k), counts[k]) for k in sorted(counts)], "counts")


def _failed(verdict: Mapping[str, Any]) -> str:
    failed = verdict.get("failed_requirements") or []
    if not failed:
        return "<p>All requirements met.</p>"
    items = "".join(
        f"<li><b>{escape(str(f.get('requirement')))}</b>: {escape(str(f.get('message')))}</li>" for f in failed
    )
    return f"<h2>Failed requirements</h2><ul class='failed'>{items}</ul>"


def _ratio_text(cell: Mapping[str, Any]) -> str:
    """The worst ratio in the page's notation; a ratio that is not finite named as such."""
    ratio = as_number(cell.get("ratio"))
    if ratio is None:
        return nonfinite_ratio_text(None, cell.get("invariants_status")) if cell.get("runs_judged") else "-"
    key = eng(ratio)
    if cell.get("degraded"):
        key += f"~{cell.get('windows_covered')}/{cell.get('windows_total')}w"
    return key


def _cell(model: str, sid: str, cell: Mapping[str, Any]) -> str:
    """One matrix cell: outcome colour, the terminal's text, and the change each run applied; it links to its
    drill-down."""
    outcome = str(cell.get("outcome"))
    label = escape(cell_text(cell, _ratio_text))
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
        f"data-outcome='{escape(outcome)}' data-edit='{escape(specs)}' title='{escape(title)}'>"
        f"<a href='#{escape(cell_anchor(model, sid))}'>{label}</a></td>"
    )


def _matrix(verdict: Mapping[str, Any]) -> str:
    matrix = verdict.get("detection_matrix") or {}
    models = [str(m) for m in matrix.get("models", [])]
    cells = matrix.get("cells", {})
    head = "".join(f"<th>{escape(m)}</th>" for m in models)
    rows = []
    for s in matrix.get("scenarios", []):
        sid = str(s.get("id"))
        tds = "".join(
            _cell(m, sid, cells[m][sid]) if sid in cells.get(m, {}) else "<td class='empty'></td>" for m in models
        )
        meta = f"{s.get('category')}, {s.get('strictness')}"
        rows.append(f"<tr><th>{escape(sid)}<br><small class='muted'>{escape(meta)}</small></th>{tds}</tr>")
    baselines = matrix.get("baselines") or {}
    rows_b = "".join(f"<tr><th>{escape(m)}</th><td class='baseline' data-model='{escape(m)}'>"
                     f"{escape(baseline_text(baselines.get(m)))}</td></tr>" for m in models)
    return (
        "<h2 id='matrix'>Detection matrix</h2>"
        f"<table class='matrix'><tr><th>scenario</th>{head}</tr>{''.join(rows)}</table>"
        f"<h2 id='baselines'>Baselines</h2><table class='baselines'>{rows_b}</table>"
    )


def _legend(verdict: Mapping[str, Any]) -> str:
    """Every colour and every mark of the matrix and the chart."""
    matrix = verdict.get("detection_matrix") or {}
    models = [str(m) for m in matrix.get("models", [])]
    colours = "".join(f"<li><span class='dot' style='background:{c}'></span>{escape(OUTCOME_WORDS[o])}</li>"
                      for o, c in COLOURS.items())
    marks = "".join(f"<li><code>{escape(str(mark))}</code> {escape(str(meaning))}</li>"
                    for mark, meaning in matrix.get("legend") or LEGEND)
    shapes = "".join(f"<li>{escape(SHAPES[i % len(SHAPES)])}: model {escape(m)}</li>" for i, m in enumerate(models))
    chart = (
        f"{shapes}<li>filled marker: the run's primary-metric ratio vs its baseline; hollow: a degraded ratio (the "
        "mean over only the final windows whose loss stayed finite)</li><li>whisker: the run's confidence interval "
        "of that ratio</li><li>dashed red line: the tier limit of the primary-metric gate, as the reports give it"
        "</li><li>grey line: ratio 1 (no change)</li><li><code>✕</code> in the <i>no finite ratio</i> column: the "
        "run's ratio is not a finite number (e.g. NaN losses); <code>M</code>: runs without a judged report</li>"
    )
    return (
        "<h2 id='legend'>Legend</h2><h3>Outcome colours (matrix cells, chart markers)</h3>"
        f"<ul class='legend colours'>{colours}</ul><h3>Matrix marks</h3><ul class='legend'>{marks}</ul>"
        f"<h3>Chart marks</h3><ul class='legend chart-marks'>{chart}</ul>"
    )


def _false_alarms(verdict: Mapping[str, Any]) -> str:
    fa = verdict.get("false_alarm_rate")
    if not isinstance(fa, Mapping):
        return ""
    rate, upper = as_number(fa.get("rate")), as_number(fa.get("upper_95_clopper_pearson"))
    n = fa.get("evaluations")
    headline = (f"{fa.get('alarms')} of {n} benign evaluations alarmed: rate {eng(rate)} "
                f"({eng(100 * rate)} %), 95 % upper bound {eng(upper)} ({eng(100 * upper)} %, exact "
                "Clopper–Pearson)" if rate is not None and upper is not None else "no benign evaluation was judged")
    sample = fa.get("sample")
    pairs: list[tuple[str, object]] = [("definition", fa.get("definition"))]
    if isinstance(sample, Mapping):
        pairs += [(f"sample: {k}", v) for k, v in sample.items()]
    pairs += [("alarmed cases", ", ".join(fa.get("alarmed_cases") or []) or "none"),
              ("unjudged (not evaluations)", ", ".join(fa.get("unjudged_cases") or []) or "none")]
    return (f"<h2 id='false-alarms'>False alarms on benign edits</h2><p class='false-alarm-rate'>{escape(headline)}"
            f"</p>{kv_table(pairs, 'kv false-alarms')}")


def _missing(verdict: Mapping[str, Any]) -> str:
    cases = (verdict.get("missing") or {}).get("cases") or []
    if not cases:
        return ""
    items = "".join(
        f"<li>{escape(str(c.get('model')))}/{escape(str(c.get('scenario')))}[run{escape(value_text(c.get('run')))}]"
        f" ({'gating' if c.get('gating') else 'informational'}): {escape(str(c.get('reason')))}</li>" for c in cases
    )
    return f"<h2 id='missing'>Missing runs</h2><ul class='missing'>{items}</ul>"


def render_index(
    verdict: Mapping[str, Any],
    reports: Mapping[str, Mapping[str, Any]] | None = None,
    extra_sections: Sequence[str] = (),
) -> str:
    """Render the pack's ``index.html`` from a verdict (:func:`pytest_proofpack.verdict.compute_verdict`).

    ``reports`` maps a record's ``path`` to its evaluation report: the tier limit of the chart and the drill-downs'
    gates, guard statistics, edit, windows and timing come from there (without them the page shows the verdict's
    records only). ``extra_sections`` are ready-made, self-contained HTML fragments placed after the chart, in order
    (e.g. the sensitivity curves). Pure and deterministic.
    """
    v = str(verdict.get("verdict", "FAIL"))
    sections = [
        _failed(verdict), _matrix(verdict), render_chart(verdict, reports), *extra_sections, _legend(verdict),
        _false_alarms(verdict), _missing(verdict), _counts(verdict), render_drilldowns(verdict, reports),
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>Proof pack — {escape(v)}</title><style>{_CSS}</style><script>{_SCRIPT}</script></head><body>"
        f"<h1>Proof pack verdict <span class='badge {escape(v)}' id='verdict'>{escape(v)}</span></h1>"
        f"{''.join(sections)}</body></html>\n"
    )
