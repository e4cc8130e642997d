"""Calibration on a tiny model: null runs give floors, benign runs raise thresholds, presets drive the
engine."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from test_metric import make_windows
from tinymodels import tiny_llama

from pytest_proofpack.calibration import (
    FLOORS,
    MARGIN,
    PresetError,
    assemble,
    calibrate,
    calibration_run,
    check_preset,
    preset_to_yaml,
)
from pytest_proofpack.data.windows import WindowSet
from pytest_proofpack.engine.config import EngineConfig
from pytest_proofpack.engine.evaluate import evaluate, prepare_baseline
from pytest_proofpack.engine.report import json_safe
from pytest_proofpack.models.adapters import matrix, weight_refs
from pytest_proofpack.shared_cache import shared_parts

CFG = EngineConfig(bootstrap_replicates=200, guard_windows=2, batch_size=4)


def _factory(seed: int) -> tuple[WindowSet, WindowSet]:
    return make_windows(4, 32, seed), make_windows(4, 32, seed + 1, offset=50_000)


@contextmanager
def rtn8(model: Any, run: int) -> Iterator[None]:
    """Per-row symmetric 8-bit RTN of every FFN matrix; restores the exact weights on exit."""
    saved = []
    with torch.no_grad():
        for ref in weight_refs(model):
            if ref.family == "ffn":
                w = matrix(model, ref)
                saved.append((w, w.clone()))
                scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 127
                w.copy_(torch.round(w / scale).clamp(-128, 127) * scale)
    try:
        yield
    finally:
        with torch.no_grad():
            for w, orig in saved:
                w.copy_(orig)


def test_null_only_calibration_gives_floors_and_zero_alarms() -> None:
    model = tiny_llama()
    p, f = _factory(random.SystemRandom().randrange(2**20))
    base = prepare_baseline(model, p, f, CFG)
    preset = calibrate(model, _factory, base, CFG, runs=2)
    check_preset(preset)
    assert preset["source"] == "calibrated" and preset["calibration"]["n_evaluations"] == 2
    assert preset["primary_metric"]["drift_band"]["value"] == FLOORS["drift_band"]
    assert preset["primary_metric"]["drift_band"]["max"] == 0.0  # a deterministic null is exactly zero
    for entry in preset["spectral"]["family_thresholds"].values():
        assert entry["value"] == FLOORS["spectral"] and entry["n"] == 2
    assert preset["calibration"]["achieved_null_false_alarm_rate"] == 0.0
    seeds = [w["seed"] for w in preset["calibration"]["windows"]]
    digests = {w["final_digest"] for w in preset["calibration"]["windows"]}
    assert len(set(seeds)) == 2 and len(digests) == 2  # runs vary the window sample and the seed


def test_benign_runs_set_thresholds_and_restore_the_model() -> None:
    model = tiny_llama(layers=2, hidden=64)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    p, f = _factory(random.SystemRandom().randrange(2**20))
    base = prepare_baseline(model, p, f, CFG)
    preset = calibrate(model, _factory, base, CFG, runs=2, benign=rtn8)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    recs = [r for r in preset["calibration"]["records"] if r["kind"] == "benign"]
    assert len(recs) == 2
    ffn = preset["spectral"]["family_thresholds"]["ffn"]
    observed = max(r["spectral_family_max"]["ffn"] for r in recs)
    assert observed > 0.0 and ffn["max"] == observed
    assert ffn["value"] == max(FLOORS["spectral"], MARGIN * observed)
    eps = preset["rmt"]["epsilon_by_family"]["ffn"]
    assert eps["value"] == max(FLOORS["rmt"], MARGIN * max(r["rmt_shift"]["ffn"] for r in recs))
    act = preset["rmt"]["epsilon_by_family"]["ffn_act"]  # the FFN intermediate has its own, tighter floor
    assert act["floor"] == FLOORS["rmt_ffn_act"] < FLOORS["rmt"]
    assert act["value"] == max(FLOORS["rmt_ffn_act"], MARGIN * max(r["rmt_shift"]["ffn_act"] for r in recs))
    assert 0.0 <= preset["calibration"]["loo_false_alarm_rate"] <= 1.0
    assert preset["calibration"]["achieved_null_false_alarm_rate"] == 0.0

    # the preset drives the engine and is recorded as the thresholds' source
    rep = evaluate(model, base, p, f, preset, CFG, context={"probes": []}).report
    assert rep["spectral"]["thresholds_source"] == "preset"
    assert rep["rmt"]["epsilon_by_family"]["ffn"] == eps["value"]
    assert rep["primary_metric"]["drift"]["band"] == preset["primary_metric"]["drift_band"]["value"]
    assert rep["provenance"]["preset_source"] == "calibrated"
    assert all(rep["validation"].values())


def test_preset_yaml_round_trip_and_schema_check() -> None:
    model = tiny_llama()
    p, f = _factory(7)
    preset = calibrate(model, _factory, prepare_baseline(model, p, f, CFG), CFG, runs=1)
    assert yaml.safe_load(preset_to_yaml(preset)) == json_safe(preset)
    with pytest.raises(PresetError, match="schema"):
        check_preset({"schema": "other"})
    with pytest.raises(PresetError, match="'rmt'"):
        check_preset({k: v for k, v in preset.items() if k != "rmt"})
    with pytest.raises(PresetError):
        calibrate(model, _factory, prepare_baseline(model, p, f, CFG), CFG, runs=0)


def test_runs_computed_apart_and_stored_as_json_assemble_the_same_preset() -> None:
    """What parallel calibration does (each run computed on its own, kept as JSON, assembled in index order) gives
    the preset that one process calibrating alone gives."""
    model = tiny_llama(layers=2, hidden=64)
    p, f = _factory(random.SystemRandom().randrange(2**20))
    base = prepare_baseline(model, p, f, CFG)
    whole = calibrate(model, _factory, base, CFG, runs=3, benign=rtn8)
    parts = [json.loads(json.dumps(calibration_run(model, _factory, CFG, i, benign=rtn8))) for i in (2, 0, 1)]
    apart = assemble([parts[1], parts[2], parts[0]], base, CFG, benign=True)
    assert json.dumps(json_safe(apart), sort_keys=True) == json.dumps(json_safe(whole), sort_keys=True)
    with pytest.raises(PresetError, match="calibration runs must be >= 1"):
        assemble([], base, CFG, benign=True)


def _part(i: int) -> dict[str, Any]:
    return {"i": i, "pid": os.getpid()}


def test_shared_parts_skips_a_held_part_then_waits_for_it(tmp_path: Path) -> None:
    from filelock import FileLock

    computed: list[int] = []

    def compute(i: int) -> dict[str, Any]:
        computed.append(i)
        return _part(i)

    held = FileLock(str(tmp_path / "part_1.json") + ".lock")
    held.acquire()
    result: list[list[dict[str, Any]]] = []
    worker = threading.Thread(target=lambda: result.append(shared_parts(tmp_path, 4, compute)), daemon=True)
    try:
        worker.start()
        deadline = time.monotonic() + 30
        while sorted(computed) != [0, 2, 3] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(computed) == [0, 2, 3] and worker.is_alive()  # the others are done; part 1 is awaited
        (tmp_path / "part_1.json").write_text(json.dumps({"i": 1, "pid": "another process"}), encoding="utf-8")
    finally:
        held.release()
    worker.join(30)
    assert computed == [0, 2, 3]  # part 1 was read, not computed
    assert [r["i"] for r in result[0]] == [0, 1, 2, 3] and result[0][1]["pid"] == "another process"
    # a second call reads every part; a corrupt one is computed again
    (tmp_path / "part_2.json").write_text("{oops", encoding="utf-8")
    assert shared_parts(tmp_path, 4, compute) == [*result[0][:2], _part(2), result[0][3]]
    assert computed == [0, 2, 3, 2]


SHARED_PROBE = """
import json, os, sys, time
from pathlib import Path
from pytest_proofpack.shared_cache import shared_parts

root = Path(sys.argv[1])
(root / f"ready_{os.getpid()}").touch()
while len(list(root.glob("ready_*"))) < 2:  # start together
    time.sleep(0.005)

def compute(i):
    time.sleep(0.5)
    return {"i": i, "pid": os.getpid()}

print(json.dumps(shared_parts(root / "parts", 6, compute)))
"""


def test_two_processes_split_the_parts_and_agree(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", SHARED_PROBE, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] and [r["i"] for r in outs[0]] == list(range(6))
    by = {r["pid"] for r in outs[0]}
    assert by == {p.pid for p in procs}  # each process computed some parts, each part once
