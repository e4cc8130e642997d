"""The verdict as text: ``final_verdict.txt`` and the detection matrix as terminal lines.

Both read only the verdict dict (:func:`pytest_proofpack.verdict.compute.compute_verdict`), so a pack's text
files can be recomputed from its JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["render_matrix", "render_text"]

#: One mark per matrix cell outcome.
_MARKS: Final = {"pass": "P", "fail": "F", "missing": "M", "signal": "S", "quiet": "."}
#: One letter per core guard in a matrix cell, in the guard chain's order.
_GUARD_LETTERS: Final = (
    ("invariants", "i"), ("spectral", "s"), ("rmt", "r"), ("variance", "v"), ("primary_metric", "m"),
)


def _cell_text(cell: Mapping[str, Any] | None) -> str:
    if cell is None:
        return ""
    mark = _MARKS.get(str(cell.get("outcome")), "?")
    ratio = cell.get("ratio")
    key = (f"{ratio:.3f}" if ratio < 1000 else f"{ratio:.3g}") if isinstance(ratio, float) else "-"
    if cell.get("degraded") and isinstance(ratio, float):
        key += f"~{cell.get('windows_covered')}/{cell.get('windows_total')}w"
    fired = set(cell.get("guards") or ())
    letters = "".join(letter for guard, letter in _GUARD_LETTERS if guard in fired)
    key += f" [{letters or '-'}]"
    if cell.get("caps"):
        key += f" c{cell['caps']}"
    return f"{mark} {key}"


def render_matrix(verdict: Mapping[str, Any]) -> list[str]:
    """The detection matrix as terminal lines: one row per scenario, one column per model. Each cell is a
    mark (P as expected, F wrong, M missing, S informational signal, . quiet), the worst ratio, the guards that
    fired on any run (``[i s r v m]``: invariants, spectral, RMT, variance, primary metric; ``[-]`` none) and
    ``c<N>``, the most spectral caps of a run. A degraded ratio is followed by ``~k/nw``: it is the mean over
    only the ``k`` of ``n`` final windows whose loss stayed finite."""
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
    lines.append("P as expected  F wrong  M missing  S signal  . quiet  (number: worst ratio, cN: spectral caps)")
    lines.append("~k/nw: a degraded ratio, the mean over the k of n final windows whose loss stayed finite")
    lines.append("guards fired: i invariants  s spectral  r RMT  v variance  m primary metric  - none")
    return lines


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
