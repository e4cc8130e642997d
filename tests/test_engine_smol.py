"""Real-model checks on SmolLM2-135M (CPU, slow): a noop passes every gate, 50 % pruning fails the metric."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pytest_proofpack.data.windows import WindowSet, token_hash
from pytest_proofpack.engine.config import EngineConfig
from pytest_proofpack.engine.evaluate import BaselineState, evaluate, prepare_baseline
from pytest_proofpack.models.adapters import matrix, weight_refs

SMOL = Path(os.environ.get("PROOFPACK_SMOL_DIR", "/tmp/smol/hf"))
TOKENS = Path(os.environ.get("PROOFPACK_SMOL_TOKENS", "/tmp/smol/shakespeare_tokens.npy"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (SMOL / "config.json").exists() or not TOKENS.exists(),
        reason="SmolLM2 HF dir or token file not present (set PROOFPACK_SMOL_DIR/_TOKENS)",
    ),
]
CFG = EngineConfig(bootstrap_replicates=1000, guard_windows=2, batch_size=4)
SEQ = 256


def _windows(tokens: Any, start: int, n: int) -> WindowSet:
    import torch

    ids = torch.stack([torch.as_tensor(tokens[start + i * SEQ : start + (i + 1) * SEQ]) for i in range(n)])
    return WindowSet(
        tuple(f"w{start + i * SEQ}" for i in range(n)),
        tuple(token_hash(r.numpy().tobytes()) for r in ids),
        ids,
    )


@pytest.fixture(scope="module")
def smol() -> tuple[Any, BaselineState, WindowSet, WindowSet]:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(SMOL, dtype=torch.float32).eval()
    tokens = np.load(TOKENS).astype(np.int64)
    p, f = _windows(tokens, 200_000, 4), _windows(tokens, 400_000, 6)
    return model, prepare_baseline(model, p, f, CFG), p, f


def test_noop_passes_all_gates(smol: Any) -> None:
    model, base, p, f = smol
    rep = evaluate(model, base, p, f, {}, CFG, context={"probes": ["rmt", "ve"]}).report
    assert rep["primary_metric"]["ratio_vs_baseline"] == 1.0 and rep["primary_metric"]["ci"] == [1.0, 1.0]
    assert all(rep["validation"].values()), rep["validation"]
    assert rep["spectral"]["caps_applied"] == 0 and rep["rmt_probe"]["stable"] is True
    assert rep["ve_probe"]["signal"] is False and rep["ve_probe"]["proposed_scales"] == 0


def test_half_magnitude_pruning_fails_the_metric(smol: Any) -> None:
    import torch

    model, base, p, f = smol
    saved = []
    with torch.no_grad():
        for ref in weight_refs(model):
            if ref.family in ("attn", "ffn"):
                w = matrix(model, ref)
                saved.append((w, w.clone()))
                thr = w.abs().flatten().kthvalue(w.numel() // 2).values
                w.masked_fill_(w.abs() < thr, 0.0)
    try:
        rep = evaluate(model, base, p, f, {}, CFG, context={"probes": []}).report
    finally:
        with torch.no_grad():
            for w, orig in saved:
                w.copy_(orig)
    assert rep["primary_metric"]["ratio_vs_baseline"] > 2.0
    assert rep["validation"]["primary_metric_acceptable"] is False
    assert rep["primary_metric"]["ci"][0] > 1.0
    assert rep["validation"]["invariants_pass"] is True
