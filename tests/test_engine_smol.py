"""Real-model checks on SmolLM2-135M (CPU, slow): a noop passes every gate, 50 % pruning fails the metric.

The model and the text come from the smoke suite's fetched assets through the package's own loaders (see
``fetched_assets``); without them (no ``proofpack fetch --suite smoke``) the tests skip and say so.
"""

from __future__ import annotations

from typing import Any

import pytest
from fetched_assets import SUITE, load_smol, smoke_catalog, smoke_tokens

from pytest_proofpack.data.windows import WindowSet, make_eval_windows
from pytest_proofpack.edits import apply_edit, parse_edit_spec
from pytest_proofpack.engine.baseline import BaselineState
from pytest_proofpack.engine.config import EngineConfig
from pytest_proofpack.engine.evaluate import evaluate, prepare_baseline

pytestmark = pytest.mark.slow
CFG = EngineConfig(bootstrap_replicates=1000, guard_windows=2, batch_size=4)
# Far fewer windows than the suite's 4 + 16: the point is exactness (noop) and a gross failure (pruning), not power.
N_PREVIEW, N_FINAL = CFG.guard_windows, 4


@pytest.fixture(scope="module")
def smol() -> tuple[Any, BaselineState, WindowSet, WindowSet]:
    import torch

    loaded = load_smol()
    assert loaded.dtype == "float32" and loaded.device == "cpu" and loaded.model.training is False
    seq_len = smoke_catalog().suite(SUITE).eval["seq_len"]
    preview, final = make_eval_windows(smoke_tokens(loaded.tokenizer), seq_len, N_PREVIEW, N_FINAL, seed=42)
    torch.manual_seed(0)
    return loaded.model, prepare_baseline(loaded.model, preview, final, CFG), preview, final


def test_noop_passes_all_gates(smol: Any) -> None:
    model, base, p, f = smol
    rep = evaluate(model, base, p, f, {}, CFG, context={"probes": ["rmt", "ve"]}).report
    # The metric scored every window it was given, each at the suite's full length, and all of them finite.
    pm, seq_len = rep["primary_metric"], smoke_catalog().suite(SUITE).eval["seq_len"]
    assert (pm["n_windows"], pm["n_preview_windows"]) == (N_FINAL, N_PREVIEW)
    assert pm["n_tokens"] == N_FINAL * (seq_len - 1) and pm["non_finite_windows"] == 0
    windows = rep["provenance"]["windows"]
    assert (windows["preview_digest"], windows["final_digest"]) == (p.digest, f.digest)
    assert rep["primary_metric"]["ratio_vs_baseline"] == 1.0 and rep["primary_metric"]["ci"] == [1.0, 1.0]
    assert all(rep["validation"].values()), rep["validation"]
    assert rep["spectral"]["caps_applied"] == 0 and rep["rmt_probe"]["stable"] is True
    assert rep["ve_probe"]["signal"] is False and rep["ve_probe"]["proposed_scales"] == 0


def test_half_magnitude_pruning_fails_the_metric(smol: Any) -> None:
    model, base, p, f = smol
    with apply_edit(model, parse_edit_spec("magnitude_prune:0.5:all")) as change:
        assert change.metadata["actual_sparsity"] >= 0.5
        rep = evaluate(model, base, p, f, {}, CFG, context={"probes": []}).report
    assert rep["primary_metric"]["ratio_vs_baseline"] > 2.0
    assert rep["validation"]["primary_metric_acceptable"] is False
    assert rep["primary_metric"]["ci"][0] > 1.0
    assert rep["validation"]["invariants_pass"] is True
