"""The verdict as text: ``final_verdict.txt`` and the detection matrix as terminal lines.

Both read only the verdict dict (:func:`pytest_proofpack.verdict.compute.compute_verdict`), so a pack's text
files can be recomputed from its JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from pytest_proofpack.verdict.matrix import LEGEND

__all__ = ["GUARD_LETTERS", "MARKS", "baseline_text", "render_matrix", "render_text"]

#: One mark per matrix cell outcome.
MARKS: Final = {"pass": "P", "fail": "F", "missing": "M", "signal": "S", "quiet": "."}
#: One letter per core guard in a matrix cell, in the guard chain's order.
GUARD_LETTERS: Final = (
    ("invariants", "i"), ("spectral", "s"), ("rmt", "r"), ("variance", "v"), ("primary_metric", "m"),
)


def _terminal_ratio(cell: Mapping[str, Any]) -> str:
    """The worst ratio as the terminal writes it (3 decimals, 3 significant digits from 1000), ``-`` when none."""
    ratio = cell.get("ratio")
    key = (f"{ratio:.3f}" if ratio < 1000 else f"{ratio:.3g}") if isinstance(ratio, float) else "-"
    if cell.get("degraded") and isinstance(ratio, float):
        key += f"~{cell.get('windows_covered')}/{cell.get('windows_total')}w"
    return key


def cell_text(cell: Mapping[str, Any], ratio_text: Callable[[Mapping[str, Any]], str] = _terminal_ratio) -> str:
    """A matrix cell as the terminal and the page both show it: mark, worst ratio (as ``ratio_text`` writes it),
    the letters of the guards that fired, and the spectral caps."""
    mark = MARKS.get(str(cell.get("outcome")), "?")
    fired = set(cell.get("guards") or ())
    letters = "".join(letter for guard, letter in GUARD_LETTERS if guard in fired)
    key = f"{ratio_text(cell)} [{letters or '-'}]"
    if cell.get("caps"):
        key += f" c{cell['caps']}"
    return f"{mark} {key}"


def _cell_text(cell: Mapping[str, Any] | None) -> str:
    return "" if cell is None else cell_text(cell)


def render_matrix(verdict: Mapping[str, Any]) -> list[str]:
    """The detection matrix as terminal lines, read from the verdict's ``detection_matrix`` only (so the terminal and
    ``detection_matrix.json`` say the same): one row per scenario and one column per model, each cell a mark, the
    worst ratio, the guards that fired and the most spectral caps (the ``legend`` lines say what each means); then
    each model's baseline, the change each scenario actually applied on each model, and what made each ``S`` cell
    signal."""
    matrix = verdict.get("detection_matrix") or {}
    models = [str(m) for m in matrix.get("models", [])]
    scenarios = [str(s["id"]) for s in matrix.get("scenarios", [])]
    cells = matrix.get("cells", {})
    if not models or not scenarios:
        return ["(no planned cases)"]
    first = max(len("scenario"), *(len(s) for s in scenarios))
    widths = [max(len(m), *(len(_cell_text(cells.get(m, {}).get(s))) for s in scenarios)) for m in models]
    header = ["scenario".ljust(first), *(m.ljust(w) for m, w in zip(models, widths, strict=True))]
    lines = ["  ".join(header).rstrip()]
    lines.append("  ".join(["-" * first, *("-" * w for w in widths)]))
    for s in scenarios:
        row = [s.ljust(first)]
        row += [_cell_text(cells.get(m, {}).get(s)).ljust(w) for m, w in zip(models, widths, strict=True)]
        lines.append("  ".join(row).rstrip())
    lines.append("legend:")
    lines += [f"  {mark:<7}  {meaning}" for mark, meaning in matrix.get("legend") or LEGEND]
    lines += _baseline_lines(models, matrix.get("baselines") or {})
    lines += _per_scenario_lines("edits as run:", models, scenarios, cells, _edits_of)
    lines += _per_scenario_lines("signals (what made each S cell signal):", models, scenarios, cells, _signal_of)
    return lines


def baseline_text(baseline: Mapping[str, Any] | None) -> str:
    """One model's baseline in words, e.g. ``GGUF Q4_1 (x.gguf), dequantized to float32; evaluated in bfloat16``."""
    if not baseline:
        return "unknown (no report of this model says)"
    dtype = f"evaluated in {baseline.get('dtype')}"
    if baseline.get("source") == "gguf":
        name = str(baseline.get("source_desc") or "").rsplit("/", 1)[-1]
        return (f"GGUF {baseline.get('gguf_file_type')} ({name}), dequantized to "
                f"{baseline.get('dequantized_dtype')}; {dtype}")
    return f"{baseline.get('source_desc') or baseline.get('source')}; {dtype}"


def _baseline_lines(models: list[str], baselines: Mapping[str, Any]) -> list[str]:
    return ["baselines:", *(f"  {m}: {baseline_text(baselines.get(m))}" for m in models)]


def _edits_of(cell: Mapping[str, Any]) -> str | None:
    specs = [str(s) for s in cell.get("edit_specs") or []]
    return " | ".join(specs) if specs else None


def _signal_of(cell: Mapping[str, Any]) -> str | None:
    if cell.get("outcome") != "signal":
        return None
    hit = [str(d) for d in cell.get("detectors_hit") or []]
    fired = "".join(letter for guard, letter in GUARD_LETTERS if guard in set(cell.get("guards") or ()))
    return "; ".join([*hit, *([f"guards [{fired}]"] if fired else [])]) or "?"


def _per_scenario_lines(title: str, models: list[str], scenarios: list[str], cells: Mapping[str, Any],
                        text_of: Callable[[Mapping[str, Any]], str | None]) -> list[str]:
    """``title``, then one line per scenario with each model's ``text_of`` its cell (``all models:`` when every
    planned model's is the same); scenarios where no cell has one are left out."""
    lines = [title]
    for s in scenarios:
        texts = {m: text_of(cells[m][s]) for m in models if s in cells.get(m, {})}
        shown = {m: t for m, t in texts.items() if t is not None}
        if not shown:
            continue
        if len(models) > 1 and len(shown) == len(models) and len(set(shown.values())) == 1:
            lines.append(f"  {s}: all models: {next(iter(shown.values()))}")
        else:
            lines.append(f"  {s}: " + "; ".join(f"{m}: {t}" for m, t in shown.items()))
    return lines if len(lines) > 1 else [title, "  (none)"]


def render_text(verdict: Mapping[str, Any]) -> str:
    """``final_verdict.txt``: the human summary."""
    counts = verdict.get("counts", {})
    lines = [
        "PYTEST-PROOFPACK — FINAL VERDICT",
        "=" * 32,
        f"verdict: {verdict.get('verdict')}",
        "",
        "counts:",
    ]
    lines += [f"  {k}: {counts[k]}" for k in sorted(counts)]
    lines += ["", "categories:"]
    for cat, summ in sorted((verdict.get("category_summary") or {}).items()):
        lines.append(f"  {cat}: " + ", ".join(f"{k}={v}" for k, v in sorted(summ.items())))
    lines += ["", "guard signals:"]
    for guard, summ in sorted(((verdict.get("guard_signal_summary") or {}).get("signals") or {}).items()):
        lines.append(f"  {guard}: flagged={summ['flagged']} unique={summ['unique']}")
    lines += ["", "detection matrix:", *("  " + line for line in render_matrix(verdict))]
    missing = verdict.get("missing") or {}
    lines += ["", f"missing: {missing.get('total', 0)}"]
    for case in missing.get("cases", []):
        gating = "gating" if case.get("gating") else "informational"
        lines.append(f"  {case['model']}/{case['scenario']}[run{case['run']}] ({gating}): {case['reason']}")
    failed = verdict.get("failed_requirements") or []
    lines += ["", f"failed requirements: {len(failed)}"]
    lines += [f"  {f['requirement']}: {f['message']}" for f in failed]
    return "\n".join(lines) + "\n"
