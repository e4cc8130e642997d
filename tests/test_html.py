"""index.html: self-contained, its numbers in one notation, and its chart, legend and drill-downs as a browser
shows them (headless Chromium, JavaScript on)."""

from __future__ import annotations

import html
import itertools
import math
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_verdict import _as_run, _edit, catalog, make_results

from pytest_proofpack.html_format import eng, nonfinite_ratio_text
from pytest_proofpack.html_report import render_index
from pytest_proofpack.verdict import RunResult, compute_verdict

HUGE = 35561536356.961  # a ratio the old page printed digit by digit


def _chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _path(r: RunResult) -> str:
    return f"reports/{r.model}/{r.scenario}/run_{r.run}/evaluation.report.json"


def _rich(report: dict[str, Any]) -> None:
    """What the real engine adds to a report: guard statistics, top modules, the edit, windows and timing."""
    report["spectral"].update(stable=False, families={"ffn": {"count": 90, "max_abs_log_ratio": 0.4, "threshold": 0.05,
                                                              "violations": 3}},
                              top_modules=[{"module": "model.layers.9.mlp.down_proj.weight", "family": "ffn",
                                            "log_ratio": 0.4, "sigma_base": 25.44, "sigma_now": 37.96}])
    report["rmt"].update(edge_risk_by_family={"ffn": 11.37}, epsilon_by_family={"ffn": 0.2303})
    report["edit"] = {"error_type": "rank_collapse", "mode": "rank1", "params": {"max_params": 8},
                      "modified_count": 8, "seconds": 0.0123}
    report["provenance"] = {"windows": {"seq_len": 256, "n_preview": 4, "n_final": 16, "final_digest": "de0c2b9d"},
                            "config": {"tier": "balanced"}}
    report["timing"] = {"guards_s": 9.8097, "primary_metric_s": 25.277, "total_s": 35.086}


def _run(models: tuple[str, ...] = ("m1", "m<2>")) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A verdict and its reports: a wrong clean run on m<2>, a missing fault on m1, a NaN fault, a huge ratio and
    one rich report (m1/rank_collapse)."""
    scenarios = catalog()
    planned, results = make_results(scenarios, list(models), [1], seed=random.randrange(1 << 30))
    results = _as_run(results) if set(models) <= {"m1", "m2"} else results
    results = _edit(results, "quant_4bit_clean", lambda r: r["validation"].update(invariants_pass=False),
                    model=models[-1])
    results = _edit(results, "nan_injection", lambda r: r["primary_metric"].update(
        ratio_vs_baseline=math.nan, ci=None, degraded=True, degraded_reason="non_finite_windows:6"))
    results = _edit(results, "prune_50pct_stress", lambda r: r["primary_metric"].update(
        ratio_vs_baseline=HUGE, ci=[HUGE * 0.9, HUGE * 1.1]))
    results = _edit(results, "rank_collapse", _rich)
    results = [r for r in results if not (r.model == "m1" and r.scenario == "shape_mismatch")]
    verdict = compute_verdict(scenarios, planned, results)
    return verdict, {_path(r): dict(r.report or {}) for r in results}


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.0, "1.000"), (1.0228011454572385, "1.023"), (0.99966, "0.9997"), (10.375, "10.38"), (512.0, "512.0"),
     (HUGE, "35.6×10⁹"), (817578253238.192, "818×10⁹"), (999_960.0, "1.00×10⁶"), (0.000123, "123×10⁻⁶"),
     (-2.5e-7, "−250×10⁻⁹"), (0.0, "0"), (math.nan, "NaN"), (math.inf, "+∞"), (-math.inf, "−∞")],
)
def test_engineering_notation(value: float, text: str) -> None:
    assert eng(value) == text


def test_engineering_notation_reads_back_within_its_digits() -> None:
    rng = random.Random()
    for _ in range(2000):
        value = math.copysign(10 ** rng.uniform(-12, 15), rng.choice((-1, 1)))
        text = eng(value)
        found = re.fullmatch(r"(−?)([0-9.]+)(?:×10([⁻⁰¹²³⁴⁵⁶⁷⁸⁹]+))?", text)
        assert found, text
        exponent = int(found[3].translate(str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789"))) if found[3] else 0
        assert exponent % 3 == 0 and (exponent == 0 or 1 <= float(found[2]) < 1000), text
        back = float(found[2]) * 10.0**exponent * (-1 if found[1] else 1)
        assert math.isclose(back, value, rel_tol=5e-3), (value, text)


def test_a_nan_fault_is_shown_as_non_finite_never_as_a_pass_number() -> None:
    verdict, reports = _run()
    page = render_index(verdict, reports)
    cell = re.search(r"<td [^>]*data-model='m1' data-scenario='nan_injection'[^>]*><a [^>]*>([^<]*)<", page)
    assert cell is not None
    assert cell.group(1) == html.escape("P non-finite — invariants fail [im]")
    assert "non-finite — invariants fail; non_finite_windows:6" in html.unescape(page)
    assert nonfinite_ratio_text("a;b", "pass") == "non-finite — a, b"
    assert "35561536356" not in page and "35.6×10⁹" in page


def test_page_is_self_contained_deterministic_and_escaped() -> None:
    verdict, reports = _run()
    page = render_index(verdict, reports)
    assert page == render_index(verdict, reports)
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", page)
    assert not re.search(r"<script[^>]*\bsrc\b", page) and page.count("<script") == 1
    assert "@import" not in page and "url(" not in page and "<link" not in page
    assert "m&lt;2&gt;" in page and "m<2>" not in page
    finite = [r for r in verdict["records"] if isinstance(r["ratio"], float)]
    assert len(re.findall(r"<g class='run' ", page)) == len(verdict["records"])
    assert page.count("class='nonfinite'") == len(verdict["records"]) - len(finite) == 1
    cells = verdict["detection_matrix"]["cells"]
    assert page.count("<details class='drill'") == sum(len(row) for row in cells.values())


def test_a_run_without_reports_still_renders_every_scenario() -> None:
    scenarios = catalog()
    planned, _ = make_results(scenarios, ["m1"], [1])
    verdict = compute_verdict(scenarios, planned, [])
    page = render_index(verdict)
    assert page.count("<g class='chart-row' ") == len(scenarios) and "<g class='run' " not in page
    assert page.count("class='missing-run'") == len(scenarios) and "no benign evaluation was judged" in page
    assert page.count("<details class='drill'") == len(scenarios)
    assert not re.search(r"<details[^>]*\sopen", page)  # closed until a reader, or the address, opens one


def test_chart_rows_ticks_and_tier_limit() -> None:
    verdict, reports = _run()
    page = render_index(verdict, reports)
    rows = re.findall(r"<g class='chart-row' data-scenario='([^']+)'><text class='row-label' x='[^']+' "
                      r"y='([^']+)'", page)
    assert [s for s, _ in rows] == [s["id"] for s in verdict["detection_matrix"]["scenarios"]]
    ys = [float(y) for _, y in rows]
    assert all(b - a >= 20 for a, b in itertools.pairwise(ys))  # one row each, never on top of another
    ticks = [float(x) for x in re.findall(r"<g class='tick'><line x1='([^']+)'", page)]
    assert len(ticks) >= 3 and all(b - a >= 60 for a, b in itertools.pairwise(ticks))
    labels = re.findall(r"<g class='tick'><line [^>]*/><text [^>]*>([^<]+)</text></g>", page)
    assert len(labels) == len(ticks) and labels[-1].endswith("×10⁹")  # the axis reaches the huge ratio in decades
    limits = re.findall(r"<g class='tier-limit' id='tier-limit-(\d)' data-limit='([^']+)'>.*?>([^<]+)</text>", page)
    assert limits == [("0", "1.1", "tier limit 1.1 (balanced; gate ci_upper ≤ limit)")]


def test_tier_limits_differ_by_model_or_are_absent() -> None:
    verdict, reports = _run(("m1", "m2"))
    for path, report in reports.items():
        if path.startswith("reports/m2/"):
            report["primary_metric"]["limit"] = 1.25
    page = render_index(verdict, reports)
    labels = re.findall(r"class='tier-limit-label'[^>]*>([^<]+)<", page)
    assert labels == ["tier limit 1.1 (balanced; gate ci_upper ≤ limit) for m1",
                      "tier limit 1.25 (gate ci_upper ≤ limit) for m2"]
    bare = render_index(verdict)
    assert "class='tier-limit'" not in bare and "no tier limit is drawn" in bare


def test_drill_down_shows_the_report_facts_of_its_cell() -> None:
    verdict, reports = _run()
    page = render_index(verdict, reports)
    drill = re.search(r"<details class='drill' id='cell=m1/rank_collapse'.*?</details>", page)
    assert drill is not None
    text = html.unescape(re.sub(r"(<[^>]+>)+", "|", drill.group(0)))
    for fact in ("model.layers.9.mlp.down_proj.weight", "|sigma_now|", "|37.96|", "|max_params|8|", "|rank1|",
                 "|guards_s|9.81 s|", "|total_s|35.09 s|", "|edit applied|0.0123 s|",
                 "|seq_len|256|", "|final_digest|de0c2b9d|", "|tier|balanced|",
                 "|family|edge_risk|epsilon|ffn|11.37|0.2303|",
                 "|spectral_stable|no|", "|limit|1.1|", "|judged as expected|yes|"):
        assert fact in text, fact
    other = re.search(r"<details class='drill' id='cell=m1/norm_collapse'.*?</details>", page)
    assert other is not None and "down_proj" not in other.group(0)
    missing = re.search(r"<details class='drill' id='cell=m1/shape_mismatch'.*?</details>", page)
    assert missing is not None and "not run" in missing.group(0)


def test_legend_false_alarms_and_extra_sections() -> None:
    verdict, reports = _run()
    page = render_index(verdict, reports, extra_sections=["<section id='sensitivity'>curves</section>"])
    for mark, meaning in verdict["detection_matrix"]["legend"]:
        assert html.escape(f"{mark}") in page and html.escape(meaning) in page
    assert page.index("id='chart'") < page.index("id='sensitivity'") < page.index("id='legend'")
    fa = verdict["false_alarm_rate"]
    headline = re.search(r"<p class='false-alarm-rate'>([^<]+)</p>", page)
    assert headline is not None
    assert html.unescape(headline.group(1)) == (
        f"{fa['alarms']} of {fa['evaluations']} benign evaluations alarmed: rate {eng(fa['rate'])} "
        f"({eng(100 * fa['rate'])} %), 95 % upper bound {eng(fa['upper_95_clopper_pearson'])} "
        f"({eng(100 * fa['upper_95_clopper_pearson'])} %, exact Clopper–Pearson)")
    assert html.escape(fa["sample"]["windows"]) in page and "m&lt;2&gt;:quant_4bit_clean[run1]" in page


def test_page_in_headless_chromium(tmp_path: Path) -> None:
    """JavaScript on: the matrix cells, one labelled chart row per scenario, the tier-limit line, and the drill-down
    that the address names opened; a screenshot is kept next to the page."""
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (ci/test.sh installs Debian's chromium)")
    verdict, reports = _run()
    index = tmp_path / "index.html"
    index.write_text(render_index(verdict, reports), encoding="utf-8")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu"]
    proc = subprocess.run([*flags, "--dump-dom", index.as_uri() + "#cell=m1/quant_4bit_clean"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    cells = re.findall(r"<td class=\"cell o-(\w+)\" data-model=\"([^\"]+)\" data-scenario=\"([^\"]+)\" "
                       r"data-outcome=\"(\w+)\"", dom)
    found = {(html.unescape(m), s): o for cls, m, s, o in cells if cls == o}
    expected = {(model, sid): cell["outcome"] for model, row in verdict["detection_matrix"]["cells"].items()
                for sid, cell in row.items()}
    assert found == expected
    assert found[("m<2>", "quant_4bit_clean")] == "fail" and found[("m1", "shape_mismatch")] == "missing"
    assert re.search(r'id="verdict"[^>]*>FAIL<', dom)
    rows = re.findall(r"<g class=\"chart-row\" data-scenario=\"([^\"]+)\"><text class=\"row-label\"[^>]*>([^<]+)<", dom)
    assert rows == [(s["id"], s["id"]) for s in verdict["detection_matrix"]["scenarios"]]
    assert re.search(r"<g class=\"tier-limit\" id=\"tier-limit-0\"[^>]*><line ", dom)
    opened = re.findall(r"<details class=\"drill\"[^>]*data-cell=\"([^\"]+)\"[^>]*\sopen=\"\"", dom)
    assert opened == ["m1/quant_4bit_clean"]
    shot = tmp_path / "index.png"
    proc = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2400", index.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_page_shows_what_was_run_and_each_baseline() -> None:
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1", "m2"], [1])
    verdict = compute_verdict(scenarios, planned, _as_run(results))
    page = render_index(verdict)
    for model, spec in (("m1", "lowrank_svd:512:ffn@layer=15"), ("m2", "lowrank_svd:64:ffn@layer=1")):
        cell = re.search(rf"<td [^>]*data-model='{model}' data-scenario='svd_rank32_l31_clean'[^>]*>", page)
        assert cell is not None and f"data-edit='{spec}'" in cell.group(0)
        assert f"<small class='spec'>{spec}</small>" in page
    assert ("<td class='baseline' data-model='m1'>GGUF Q4_1 (SmolLM2-135M-Instruct.Q4_1.gguf), dequantized to "
            "float32; evaluated in bfloat16</td>") in page
