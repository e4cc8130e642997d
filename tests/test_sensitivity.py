"""Sensitivity summaries without a model: the bracketing on synthetic detectors with known thresholds, the ladder
ordering, the exact lower bound, the document's schema check, its HTML section and its place in a pack."""

from __future__ import annotations

import copy
import html
import json
import math
import random
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_html import _chromium
from test_pack import make_run_dir

from pytest_proofpack.cli import main as cli_main
from pytest_proofpack.errors import CatalogError, PackError, SpecError
from pytest_proofpack.html_sensitivity import render_page, render_sensitivity
from pytest_proofpack.pack import build_pack, verify_pack
from pytest_proofpack.sensitivity_families import builtin_families, edit_family, select_families, strength_order
from pytest_proofpack.sensitivity_summary import (
    DETECTORS,
    bracket,
    check_document,
    family_line,
    rung_rates,
    summarise_family,
)
from pytest_proofpack.verdict.binomial import clopper_pearson_lower, clopper_pearson_upper


def _runs(rungs: list[float], samples: int, detect: Any) -> list[dict[str, Any]]:
    return [{"magnitude": m, "sample": s, "fired": {"d": bool(detect(m, s))}, "ratio": 1.0, "error": None}
            for s in range(samples) for m in rungs]


def _ladder(rng: random.Random, n: int) -> list[float]:
    return sorted({round(rng.uniform(0.001, 10.0), 6) for _ in range(n)})


@pytest.mark.parametrize("trial", range(20))
def test_bracket_of_a_threshold_detector_is_the_rungs_around_its_threshold(trial: int) -> None:
    rng = random.Random(random.SystemRandom().randrange(1 << 30))
    rungs = _ladder(rng, rng.randint(3, 9))
    i = rng.randint(1, len(rungs) - 1)
    threshold = rng.uniform(rungs[i - 1], rungs[i])  # strictly between two rungs (or on the upper one)
    summary = summarise_family(rungs, _runs(rungs, rng.randint(1, 5), lambda m, s: m >= threshold), None, ["d"])
    t = summary["thresholds"]["d"]
    assert t == {"status": "bracketed", "below": rungs[i - 1], "at": rungs[i]}
    assert t["below"] < threshold <= t["at"]


@pytest.mark.parametrize("trial", range(10))
def test_bracket_when_smaller_is_stronger(trial: int) -> None:
    """RTN bits: a detector that fires at <= t bits; the ladder runs from many bits (weak) to few (strong)."""
    rng = random.Random(random.SystemRandom().randrange(1 << 30))
    bits = rng.sample(range(2, 17), rng.randint(3, 8))
    t = rng.choice(sorted(bits)[1:-1] or sorted(bits)[:1])
    rungs = strength_order(bits, "lower")
    assert rungs == sorted(bits, reverse=True)
    got = summarise_family(rungs, _runs(rungs, 3, lambda m, s: m <= t), None, ["d"])["thresholds"]["d"]
    expect_below = min(b for b in bits if b > t) if any(b > t for b in bits) else None
    assert got["at"] == t and got["below"] == expect_below
    assert got["status"] == ("bracketed" if expect_below is not None else "below_ladder")


def test_bracket_edges_and_the_95_percent_goal() -> None:
    rungs = [0.1, 0.2, 0.4, 0.8]
    assert bracket(rung_rates(rungs, _runs(rungs, 3, lambda m, s: True), "d")) == {
        "status": "below_ladder", "below": None, "at": 0.1}
    assert bracket(rung_rates(rungs, _runs(rungs, 3, lambda m, s: False), "d")) == {
        "status": "above_ladder", "below": 0.8, "at": None}
    # 19 of 20 (95 %) is enough, 18 of 20 is not: the threshold moves to the next rung
    det = {0.2: 18, 0.4: 19, 0.8: 20}
    runs = _runs(rungs, 20, lambda m, s: s < det.get(m, 0))
    assert bracket(rung_rates(rungs, runs, "d")) == {"status": "bracketed", "below": 0.2, "at": 0.4}
    # a detected weak rung followed by a missed stronger one does not count: reliability from there on
    runs = _runs(rungs, 2, lambda m, s: m in (0.1, 0.4, 0.8))
    assert bracket(rung_rates(rungs, runs, "d")) == {"status": "bracketed", "below": 0.2, "at": 0.4}


def test_errored_runs_are_not_trials() -> None:
    rungs = [1.0, 2.0]
    runs = _runs(rungs, 2, lambda m, s: m >= 2.0)
    runs.append({"magnitude": 2.0, "sample": 9, "fired": {}, "ratio": None, "error": "GuardError: boom"})
    rates = rung_rates(rungs, runs, "d")
    assert [(r["n"], r["detected"]) for r in rates] == [(2, 0), (2, 2)]
    assert summarise_family(rungs, runs, 1.1, ["d"])["errors"] == 1
    failed = [{**r, "fired": {}, "error": "SpecError: no target"} for r in runs]
    summary = summarise_family(rungs, failed, 1.1, ["d"])
    assert summary["thresholds"]["d"] == {"status": "no_trials", "below": None, "at": None}
    assert "d no runs" in family_line("f", {"rungs": rungs, "stronger": "higher", "summary": summary})


def test_rates_carry_exact_intervals() -> None:
    n = random.randint(1, 60)
    k = random.randint(0, n)
    row = rung_rates([1.0], _runs([1.0], n, lambda m, s: s < k), "d")[0]
    assert (row["n"], row["detected"]) == (n, k) and row["rate"] == k / n
    assert row["lower95"] == clopper_pearson_lower(k, n) and row["upper95"] == clopper_pearson_upper(k, n)
    assert row["lower95"] <= k / n <= row["upper95"]


def test_clopper_pearson_lower_bound() -> None:
    n = random.randint(1, 200)
    assert clopper_pearson_lower(0, n) == 0.0
    assert math.isclose(clopper_pearson_lower(n, n), 0.025 ** (1 / n), rel_tol=1e-12)  # P(X = n) = p^n
    k = random.randint(1, n)
    assert math.isclose(clopper_pearson_lower(k, n), 1 - clopper_pearson_upper(n - k, n), rel_tol=1e-15)
    assert math.isclose(clopper_pearson_lower(3, 3), 0.29240177382128663, rel_tol=1e-12)


def test_ladders_run_from_weakest_to_strongest() -> None:
    families = builtin_families()
    assert {"noise_one_block", "noise_all_blocks", "scale_one_matrix", "exponent_flip", "magnitude_prune",
            "rtn_bits", "lowrank_energy"} <= set(families)
    for fam in families.values():
        step = [b - a for a, b in zip(fam.rungs, fam.rungs[1:], strict=False)]
        assert all(s > 0 for s in step) if fam.stronger == "higher" else all(s < 0 for s in step), fam.name
    assert families["rtn_bits"].stronger == "lower" and families["rtn_bits"].rungs[0] == 8
    shuffled = edit_family("p", "magnitude_prune:{m}:all", [0.3, 0.1, 0.2])
    assert shuffled.rungs == (0.1, 0.2, 0.3)
    with pytest.raises(SpecError, match="repeats"):
        edit_family("p", "magnitude_prune:{m}:all", [0.1, 0.1])
    with pytest.raises(SpecError, match="sparsity"):
        edit_family("p", "magnitude_prune:{m}:all", [0.1, 1.5])
    with pytest.raises(SpecError, match="did you mean"):
        select_families(["rtn_bit"])
    with pytest.raises(ValueError):
        strength_order([1.0], "up")


def _document(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    families = {}
    for name, stronger in (("noise<b>", "higher"), ("rtn_bits", "lower")):
        rungs = strength_order(_ladder(rng, 4), stronger)
        t = rng.choice(rungs[1:])
        runs = [{"magnitude": m, "sample": s, "ratio": 1.0 + 0.1 * i,
                 "fired": {d: (rungs.index(m) >= rungs.index(t)) for d in DETECTORS}, "error": None}
                for s in range(3) for i, m in enumerate(rungs)]
        families[name] = {"description": "d", "unit": "u", "rungs": rungs, "stronger": stronger, "source": {},
                          "runs": runs, "summary": summarise_family(rungs, runs, 1.1)}
    return {"schema": "proofpack_sensitivity_v1", "schema_version": 1, "engine_version": "e", "tier": "balanced",
            "ratio_limit": 1.1, "models": {"m<1>": {"samples": [0, 1, 2], "families": families}}}


@pytest.mark.parametrize(("path", "mutate"), [
    ("$.schema", lambda d: d.update(schema="other")),
    ("$.models", lambda d: d.update(models=[])),
    (".rungs", lambda d: d["models"]["m<1>"]["families"]["noise<b>"]["rungs"].reverse()),
    (".stronger", lambda d: d["models"]["m<1>"]["families"]["rtn_bits"].update(stronger="down")),
    (".runs[0]", lambda d: d["models"]["m<1>"]["families"]["rtn_bits"]["runs"][0].update(magnitude=-1)),
    (".summary", lambda d: d["models"]["m<1>"]["families"]["rtn_bits"].pop("summary")),
])
def test_schema_check_names_file_path_and_fix(path: str, mutate: Any) -> None:
    doc = _document(random.randrange(1 << 30))
    assert check_document(json.loads(json.dumps(doc)), "s.json") == doc
    bad = copy.deepcopy(doc)
    mutate(bad)
    with pytest.raises(CatalogError, match=re.escape(path)) as info:
        check_document(bad, "s.json")
    assert str(info.value).startswith("s.json: $")


def test_terminal_line_per_family() -> None:
    doc = _document(random.randrange(1 << 30))
    fam = doc["models"]["m<1>"]["families"]["rtn_bits"]
    line = family_line("rtn_bits", fam)
    t = fam["summary"]["thresholds"]["any"]
    assert line.startswith("rtn_bits [u: ") and "stronger=lower" in line
    assert f"any {t['below']:g}..{t['at']:g}" in line and "\n" not in line


def test_html_section_is_self_contained_and_escaped() -> None:
    doc = _document(random.randrange(1 << 30))
    section = render_sensitivity(doc)
    assert section == render_sensitivity(doc) and section.startswith("<section class='sensitivity'>")
    assert "<script" not in section.lower() and "url(" not in section
    assert "//" not in section.replace("'http://www.w3.org/2000/svg'", "")
    assert "noise&lt;b&gt;" in section and "noise<b>" not in section and "m&lt;1&gt;" in section
    assert section.count("<svg") == 2 and section.count("class='over-budget'") == 2


@pytest.mark.parametrize("where", ["sensitivity.html", "the pack's index.html"])
def test_html_renders_in_headless_chromium(tmp_path: Path, where: str) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (ci/ installs Debian's chromium)")
    doc = _document(random.randrange(1 << 30))
    if where == "sensitivity.html":
        page = tmp_path / "sensitivity.html"
        page.write_text(render_page(doc), encoding="utf-8")
    else:
        run_dir = make_run_dir(tmp_path / "run", seed=random.randrange(1 << 30))
        (run_dir / "sensitivity.json").write_text(json.dumps(doc), encoding="utf-8")
        page = build_pack(run_dir) / "index.html"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = re.findall(r'<figure class="sensitivity-family" data-family="([^"]+)"', proc.stdout)
    assert figures == ["noise&lt;b&gt;", "rtn_bits"]
    rates = [float(x) for x in re.findall(r'data-rate="([0-9.]+)"', proc.stdout)]
    assert len(rates) == 2 * len(DETECTORS) * 4 and set(rates) <= {0.0, 1.0}


def test_pack_carries_a_valid_sensitivity_document(tmp_path: Path) -> None:
    run_dir = make_run_dir(tmp_path / "run", seed=random.randrange(1 << 30))
    doc = _document(random.randrange(1 << 30))
    (run_dir / "sensitivity.json").write_text(json.dumps(doc), encoding="utf-8")
    pack = build_pack(run_dir)
    assert json.loads((pack / "results/sensitivity.json").read_text()) == doc
    assert "./results/sensitivity.json" in (pack / "checksums.sha256").read_text()
    assert verify_pack(pack, strict=True, public_key=None).exit_code == 0
    page = (pack / "index.html").read_text()
    assert page.count("<section class='sensitivity'>") == 1  # the page shows the curves the pack carries
    families = {name for entry in doc["models"].values() for name in entry["families"]}
    assert families and all(html.escape(name) in page for name in families)
    (pack / "results/sensitivity.json").write_text(json.dumps({**doc, "tier": "x"}), encoding="utf-8")
    assert verify_pack(pack, strict=True, public_key=None).exit_code == 6  # covered by the checksums
    (run_dir / "sensitivity.json").write_text(json.dumps({**doc, "schema_version": 9}), encoding="utf-8")
    with pytest.raises(PackError, match=r"schema_version"):
        build_pack(run_dir)


def test_cli_sensitivity_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["sensitivity", "--help"]) == 0
    assert "--fault-family" in capsys.readouterr().out
    assert cli_main(["sensitivity", "--out", str(tmp_path)]) == 2  # --model is required
    code = cli_main(["sensitivity", "--model", "smollm2-135m", "--out", str(tmp_path), "--fault-family", "bad"])
    assert code == 2 and "NAME=FAULT:ENV_KEY" in capsys.readouterr().err
    code = cli_main(["sensitivity", "--model", "smollm2-135m", "--out", str(tmp_path), "--families", "rtn"])
    assert code == 2 and "unknown sensitivity family 'rtn'" in capsys.readouterr().err
    assert not (tmp_path / "sensitivity.json").exists()
