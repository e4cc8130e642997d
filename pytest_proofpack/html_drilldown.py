"""The drill-downs of ``index.html``: one ``<details>`` per detection-matrix cell, saying why the cell is what it is.

Each is ``<details class='drill' id='cell=<model>/<scenario>' data-cell='<model>/<scenario>'>`` (the page's script
opens the one a URL's ``#cell=<model>/<scenario>`` names; without scripts a reader opens it by hand). It holds the
scenario's facts, and per run the verdict's judgement (gates, reasons, detectors) and, when the run's report is
given, its gates (``validation`` and ``primary_metric``), every guard's statistics with its per-family and
top-module tables, the edit's actual parameters, the windows, the provenance and the timing. Every value shown is
a field of the verdict or of the report, printed generically where its shape allows, so nothing is made up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any, Final

from pytest_proofpack.html_format import (
    as_number,
    cell_anchor,
    eng,
    kv_table,
    nonfinite_ratio_text,
    rows_table,
    value_text,
)

__all__ = ["render_drilldowns"]

#: The report's guard sections and probe sidecars, in the guard chain's order.
_GUARD_SECTIONS: Final = ("invariants", "spectral", "rmt", "variance", "rmt_probe", "ve_probe")


def _scalar(value: object) -> bool:
    if isinstance(value, list | tuple):
        return all(not isinstance(v, Mapping | list | tuple) for v in value)
    return not isinstance(value, Mapping)


def _seconds(value: object) -> object:
    number = as_number(value)
    return f"{eng(number, keep_zeros=False)} s" if number is not None else value


def _with_units(key: str, value: object) -> object:
    return _seconds(value) if key.endswith("_s") or key == "seconds" else value


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update((str(k), None) for k in row)
    return list(seen)


def _body(body: Mapping[str, Any], skip: Iterable[str] = ()) -> str:
    """Every field of a report section: scalars as one table, ``*_by_family`` maps joined into one table by family,
    maps of maps (families) and lists of maps (top modules, failures) as their own tables, other maps nested."""
    skipped = set(skip)
    items = [(str(k), v) for k, v in body.items() if str(k) not in skipped]
    out = [kv_table((k, _with_units(k, v)) for k, v in items if _scalar(v))]
    by_family = {k: v for k, v in items if k.endswith("_by_family") and isinstance(v, Mapping)}
    if by_family:
        families = sorted({str(f) for v in by_family.values() for f in v})
        rows = [{"family": f, **{k.removesuffix("_by_family"): v.get(f) for k, v in by_family.items()}}
                for f in families]
        out.append(rows_table(rows, _columns(rows)))
    for key, value in items:
        if key in by_family or _scalar(value):
            continue
        if isinstance(value, Mapping) and value and all(isinstance(v, Mapping) for v in value.values()):
            rows = [{key: name, **dict(v)} for name, v in value.items()]
            out.append(f"<p class='sub'>{escape(key)}</p>" + rows_table(rows, _columns(rows)))
        elif isinstance(value, list | tuple) and value and all(isinstance(v, Mapping) for v in value):
            out.append(f"<p class='sub'>{escape(key)} ({len(value)})</p>" + rows_table(value, _columns(value)))
        elif isinstance(value, Mapping) and value:
            out.append(f"<p class='sub'>{escape(key)}</p>" + _body(value))
        elif isinstance(value, list | tuple):
            out.append(kv_table([(key, "none" if not value else value_text(value))]))
    return "".join(out)


def _section(title: str, html: str, css: str) -> str:
    return f"<div class='facts {css}'><h5>{escape(title)}</h5>{html}</div>" if html else ""


def _gates(report: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    validation = report.get("validation")
    html = kv_table(validation.items()) if isinstance(validation, Mapping) else ""
    pm = report.get("primary_metric")
    if isinstance(pm, Mapping):
        ratio = as_number(pm.get("ratio_vs_baseline"))
        shown = eng(ratio) if ratio is not None and math.isfinite(ratio) else nonfinite_ratio_text(
            pm.get("degraded_reason"), record.get("invariants_status"))
        html += "<p class='sub'>primary_metric</p>" + _body({"ratio_vs_baseline": shown, **{
            k: v for k, v in pm.items() if k != "ratio_vs_baseline"}})
    return _section("gates", html, "gates")


def _guards(report: Mapping[str, Any]) -> str:
    out = []
    for name in _GUARD_SECTIONS:
        body = report.get(name)
        if isinstance(body, Mapping):
            out.append(_section(name, _body(body) or "<p class='muted'>(empty)</p>", f"guard guard-{name}"))
    return "".join(out)


def _edit(report: Mapping[str, Any]) -> str:
    edit = report.get("edit")
    return _section("edit as applied", _body(edit), "edit") if isinstance(edit, Mapping) else ""


def _windows(report: Mapping[str, Any]) -> str:
    provenance = report.get("provenance")
    windows = provenance.get("windows") if isinstance(provenance, Mapping) else None
    return _section("windows", _body(windows), "windows") if isinstance(windows, Mapping) else ""


def _provenance(report: Mapping[str, Any]) -> str:
    provenance = report.get("provenance")
    html = ""
    if isinstance(provenance, Mapping):
        html += _body(provenance, skip=("windows",))
    for key in ("baseline_provenance", "engine_version"):
        if key in report:
            html += kv_table([(key, report[key])]) if _scalar(report[key]) else (
                f"<p class='sub'>{escape(key)}</p>" + _body(report[key]))
    return _section("provenance", html, "provenance")


def _timing(report: Mapping[str, Any]) -> str:
    pairs: list[tuple[str, object]] = []
    timing = report.get("timing")
    if isinstance(timing, Mapping):
        pairs += [(str(k), _with_units(str(k), v)) for k, v in timing.items()]
    guards = report.get("guards")
    seconds = guards.get("seconds") if isinstance(guards, Mapping) else None
    if isinstance(seconds, Mapping):
        pairs += [(f"guard {k}", _seconds(v)) for k, v in seconds.items()]
    edit = report.get("edit")
    if isinstance(edit, Mapping) and "seconds" in edit:
        pairs.append(("edit applied", _seconds(edit["seconds"])))
    html = kv_table(pairs)
    execution = report.get("execution")
    if isinstance(execution, Mapping):
        html += "<p class='sub'>execution</p>" + _body(execution)
    return _section("timing", html, "timing")


def _judgement(record: Mapping[str, Any], report: Mapping[str, Any] | None) -> str:
    ratio = as_number(record.get("ratio"))
    if ratio is not None:
        ratio_text = eng(ratio)
    else:
        pm = (report or {}).get("primary_metric")
        ratio_text = nonfinite_ratio_text(pm.get("degraded_reason") if isinstance(pm, Mapping) else None,
                                          record.get("invariants_status"))
    ci = [as_number(v) for v in record.get("ci") or []]
    shown_ci = [eng(v) if v is not None else "n/a" for v in ci]
    ci_text = f"[{', '.join(shown_ci)}]" if any(v is not None for v in ci) else None
    fired = [k for k, v in sorted((record.get("guard_flags") or {}).items()) if v]
    pairs: list[tuple[str, object]] = [
        ("judged as expected", record.get("ok")),
        ("gates passed", record.get("passed")),
        ("reasons", ", ".join(record.get("reasons") or []) or "none"),
        ("ratio vs baseline", ratio_text),
        ("CI", ci_text),
        ("degraded", record.get("degraded")),
        ("final windows covered", f"{record.get('windows_covered')} of {record.get('windows_total')}"
         if record.get("windows_covered") is not None else None),
        ("guard flags raised", ", ".join(fired) or "none"),
        ("spectral caps applied", record.get("spectral_caps_applied")),
        ("invariants status", record.get("invariants_status")),
        ("primary guard hit", record.get("primary_guard_hit")),
        ("signaled", record.get("signaled")),
        ("change as applied", record.get("edit_spec")),
        ("report", record.get("path")),
    ]
    for probe in ("rmt_probe", "ve_probe"):
        if isinstance(record.get(probe), Mapping):
            pairs.append((probe, record[probe]))
    html = kv_table(pairs)
    detectors = record.get("detectors") or []
    if detectors:
        html += "<p class='sub'>detectors</p>" + rows_table(detectors, _columns(detectors))
    return _section("verdict on this run", html, "judgement")


def _run(record: Mapping[str, Any], report: Mapping[str, Any] | None) -> str:
    head = f"<h4>run {escape(str(record.get('run_num')))}</h4>"
    parts = [_judgement(record, report)]
    if report is None:
        parts.append("<p class='muted'>The run's report was not given to the page: only the verdict's record.</p>")
    else:
        parts += [_gates(report, record), _guards(report), _edit(report), _windows(report), _timing(report),
                  _provenance(report)]
    return f"<div class='run' data-run='{escape(str(record.get('run_num')))}'>{head}{''.join(parts)}</div>"


def _summary(model: str, sid: str, cell: Mapping[str, Any]) -> str:
    outcome = str(cell.get("outcome"))
    ratio = as_number(cell.get("ratio"))
    if ratio is not None:
        ratio_text = f"worst ratio {eng(ratio)}"
    elif cell.get("runs_judged"):
        ratio_text = "ratio " + nonfinite_ratio_text(None, cell.get("invariants_status"))
    else:
        ratio_text = "no judged run"
    guards = ", ".join(cell.get("guards") or []) or "none"
    return (f"<span class='dot o-{escape(outcome)}'></span><b>{escape(model)} / {escape(sid)}</b> — "
            f"{escape(outcome)}; {escape(ratio_text)}; guards fired: {escape(guards)}; runs as expected "
            f"{escape(str(cell.get('runs_ok')))}/{escape(str(cell.get('runs_judged')))}"
            + (f", {escape(str(cell.get('runs_missing')))} missing" if cell.get("runs_missing") else ""))


def _scenario_facts(summary: Mapping[str, Any] | None, cell: Mapping[str, Any]) -> str:
    pairs: list[tuple[str, object]] = []
    if summary is not None:
        pairs += [(k, summary.get(k)) for k in ("category", "strictness", "intent", "primary_guard",
                                                 "primary_guard_required")]
    pairs += [("detectors that decided", ", ".join(cell.get("detectors_hit") or []) or "none"),
              ("changes as run", " | ".join(cell.get("edit_specs") or []) or None)]
    return _section("scenario", kv_table(pairs), "scenario")


def render_drilldowns(verdict: Mapping[str, Any], reports: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The drill-down section: one closed ``<details>`` per matrix cell, in matrix order (scenario, then model)."""
    matrix = verdict.get("detection_matrix") or {}
    models = [str(m) for m in matrix.get("models", [])]
    cells = matrix.get("cells") or {}
    summaries = {str(s.get("id")): s for s in verdict.get("scenario_signal_summary") or []}
    records = verdict.get("records") or []
    missing = (verdict.get("missing") or {}).get("cases") or []
    out = ["<h2 id='drilldown'>Why each cell is what it is</h2><p class='muted'>One entry per matrix cell; a matrix "
           "cell or a chart point opens its entry (the address <code>#cell=&lt;model&gt;/&lt;scenario&gt;</code> "
           "does too).</p>"]
    for scenario in matrix.get("scenarios", []):
        sid = str(scenario.get("id"))
        for model in models:
            cell = cells.get(model, {}).get(sid)
            if cell is None:
                continue
            runs = [r for r in records if r.get("model") == model and r.get("name") == sid]
            body = [_scenario_facts(summaries.get(sid), cell)]
            body += [_run(r, (reports or {}).get(str(r.get("path")))) for r in runs]
            gone = [m for m in missing if m.get("model") == model and m.get("scenario") == sid]
            if gone:
                rows = [{"run": m.get("run"), "gating": m.get("gating"), "reason": m.get("reason")} for m in gone]
                body.append(_section("missing runs", rows_table(rows, ["run", "gating", "reason"]), "missing"))
            anchor = escape(cell_anchor(model, sid))
            out.append(
                f"<details class='drill' id='{anchor}' data-cell='{escape(f'{model}/{sid}')}' "
                f"data-model='{escape(model)}' data-scenario='{escape(sid)}'>"
                f"<summary>{_summary(model, sid, cell)}</summary>{''.join(body)}</details>"
            )
    return "".join(out)
