"""The memory plan: each term by hand, device counts, CPU mode."""

from __future__ import annotations

import math
import random

import pytest

from pytest_proofpack.models import ModelEntry
from pytest_proofpack.scheduling.plan import PlanSettings, plan_model

GIB = 2**30


def test_terms_from_hf_config() -> None:
    L, h, a, kv, V, inter = 4, 256, 8, 2, random.randint(1000, 5000), 1024
    cfg = {
        "num_hidden_layers": L,
        "hidden_size": h,
        "num_attention_heads": a,
        "num_key_value_heads": kv,
        "vocab_size": V,
        "intermediate_size": inter,
    }
    s = PlanSettings(batch_size=random.randint(1, 8), seq_len=random.choice([64, 128, 256]))
    p = random.uniform(0.01, 0.5)
    plan = plan_model(ModelEntry("m", "x", p, "llama"), s, 80.0, cfg)
    tok = s.batch_size * s.seq_len
    weights = p * 1e9 * 2 / GIB
    act = (tok * V * 4 + (L + 1) * tok * h * 2 + 2 * L * tok * kv * (h // a) * 2) / GIB
    edit = max(V * h, h * inter) * 4 / GIB + 0.1 * weights
    assert plan.weights_gb == pytest.approx(weights)
    assert plan.activation_gb == pytest.approx(act)
    assert plan.edit_overhead_gb == pytest.approx(edit)
    assert plan.overhead_gb == pytest.approx(edit + s.overhead_gb)
    assert plan.need_gb == pytest.approx(weights + act + edit + s.overhead_gb)
    assert plan.required_gpus == 1


def test_required_gpus_ceil() -> None:
    s = PlanSettings()
    entry = ModelEntry("big", "x", random.uniform(60, 200), "llama")
    for dev in (24.0, 40.0, 80.0, 141.0):
        plan = plan_model(entry, s, dev)
        assert plan.required_gpus == max(1, math.ceil(plan.need_gb / (dev * s.usable_frac)))
    assert plan_model(entry, s, 0.0).required_gpus == 1  # CPU mode


def test_heuristic_grows_with_params_and_covers_weights() -> None:
    s = PlanSettings()
    small = plan_model(ModelEntry("a", "x", 7.0, "llama"), s, 80.0)
    large = plan_model(ModelEntry("b", "x", 70.0, "llama"), s, 80.0)
    assert small.need_gb > small.weights_gb + s.overhead_gb
    assert large.activation_gb > small.activation_gb and large.need_gb > small.need_gb
    assert large.required_gpus >= 2 and small.required_gpus == 1
