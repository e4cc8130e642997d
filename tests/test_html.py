"""index.html: self-contained, and its detection matrix renders in a real browser (headless Chromium)."""

from __future__ import annotations

import html
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_verdict import _as_run, _edit, catalog, make_results

from pytest_proofpack.html_report import render_index
from pytest_proofpack.verdict import compute_verdict


def _chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _verdict() -> dict[str, Any]:
    scenarios = catalog()
    planned, results = make_results(scenarios, ["m1", "m<2>"], [1], seed=random.randrange(1 << 30))
    results = _edit(
        results, "quant_4bit_clean", lambda r: r["validation"].update(invariants_pass=False), model="m<2>"
    )
    results = [r for r in results if not (r.model == "m1" and r.scenario == "shape_mismatch")]
    return compute_verdict(scenarios, planned, results)


def test_page_is_self_contained() -> None:
    verdict = _verdict()
    page = render_index(verdict)
    assert page == render_index(verdict)  # deterministic
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    assert "m&lt;2&gt;" in page and "m<2>" not in page  # escaped
    assert "<svg" in page and page.count("<circle") == len(
        [r for r in verdict["records"] if isinstance(r["ratio"], float)]
    )


def test_matrix_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (ci/ installs Debian's chromium)")
    verdict = _verdict()
    index = tmp_path / "index.html"
    index.write_text(render_index(verdict), encoding="utf-8")
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", index.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    cells = re.findall(
        r"<td class=\"cell o-(\w+)\" data-model=\"([^\"]+)\" data-scenario=\"([^\"]+)\" "
        r"data-outcome=\"(\w+)\"",
        dom,
    )
    found = {(m.replace("&lt;", "<").replace("&gt;", ">"), s): o for cls, m, s, o in cells if cls == o}
    expected = {
        (model, sid): cell["outcome"]
        for model, row in verdict["detection_matrix"]["cells"].items()
        for sid, cell in row.items()
    }
    assert found == expected
    assert found[("m<2>", "quant_4bit_clean")] == "fail"
    assert found[("m1", "shape_mismatch")] == "missing"
    assert found[("m1", "quant_4bit_clean")] == "pass"
    assert re.search(r'id="verdict"[^>]*>FAIL<', dom)


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
    for mark, meaning in verdict["detection_matrix"]["legend"]:
        assert html.escape(f"{mark}") in page and html.escape(meaning) in page
