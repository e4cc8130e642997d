"""Primary metric: batched per-window losses, pairing, ratio/CI, degraded windows, gates and drift."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest
import torch
from tinymodels import tiny_gpt2, tiny_llama, tiny_mixtral

from pytest_proofpack.data.windows import WindowSet, token_hash
from pytest_proofpack.engine import metric
from pytest_proofpack.engine.config import EngineConfig
from pytest_proofpack.engine.metric import window_losses
from pytest_proofpack.engine.pairing import PairingError, check_pairing, paired_primary_metric


def make_windows(n: int, seq_len: int, seed: int, vocab: int = 128, offset: int = 0) -> WindowSet:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq_len), generator=g)
    return WindowSet(
        tuple(f"w{offset + i * seq_len}" for i in range(n)),
        tuple(token_hash(r.numpy().tobytes()) for r in ids),
        ids,
    )


def _fresh_seed() -> int:
    return random.SystemRandom().randrange(2**31)


def test_window_losses_match_unbatched_reference() -> None:
    model = tiny_llama(seed=_fresh_seed() % 1000)
    ws = make_windows(5, 24, _fresh_seed())
    got = window_losses(model, ws, batch_size=2, device="cpu")
    with torch.no_grad():
        for i in range(len(ws)):
            ids = ws.input_ids[i : i + 1]
            hf = model(input_ids=ids, labels=ids).loss  # HF's own shifted mean CE over L-1 positions
            assert got[i] == pytest.approx(float(hf), rel=1e-5)


def test_window_losses_from_a_batch_boundary() -> None:
    model = tiny_llama()
    ws = make_windows(7, 24, _fresh_seed())
    full = window_losses(model, ws, batch_size=3, device="cpu")
    assert window_losses(model, ws, batch_size=3, device="cpu", start=3) == full[3:]
    assert window_losses(model, ws, batch_size=3, device="cpu", start=7) == []
    for bad in (-1, 2, 8):
        with pytest.raises(ValueError, match=f"start={bad} is not a batch boundary"):
            window_losses(model, ws, batch_size=3, device="cpu", start=bad)


def test_noop_ratio_is_exactly_one_with_unit_ci() -> None:
    model = tiny_llama()
    p, f = make_windows(6, 32, _fresh_seed()), make_windows(6, 32, _fresh_seed(), offset=10_000)
    cfg = EngineConfig(bootstrap_replicates=300)
    bp = window_losses(model, p, batch_size=4, device="cpu")
    bf = window_losses(model, f, batch_size=4, device="cpu")
    sp = window_losses(model, p, batch_size=3, device="cpu")
    sf = window_losses(model, f, batch_size=3, device="cpu")
    pm, ok, drift_ok = paired_primary_metric(sp, sf, bp, bf, cfg, seq_len=32, drift_band=0.0)
    assert pm["ratio_vs_baseline"] == 1.0
    assert pm["ci"] == [1.0, 1.0]
    assert pm["log_ci"] == [0.0, 0.0]
    assert ok and drift_ok  # drift band 0: a noop is exactly drift-free
    assert pm["degraded"] is False and pm["non_finite_windows"] == 0


def test_ratio_is_exp_mean_paired_delta_and_gate_rules() -> None:
    rng = np.random.default_rng(_fresh_seed())
    base = rng.uniform(2.0, 4.0, size=40)
    shift = rng.normal(0.08, 0.02, size=40)  # ~8 % worse: inside balanced's 1.10 as a point estimate
    subj = base + shift
    cfg = EngineConfig(bootstrap_replicates=500, gate_rule="point")
    pm, ok, _ = paired_primary_metric(
        list(subj), list(subj), list(base), list(base), cfg, seq_len=16, drift_band=0.05
    )
    assert pm["ratio_vs_baseline"] == pytest.approx(math.exp(float(np.mean(shift))), rel=1e-12)
    assert pm["final"] / pm["baseline_final"] == pytest.approx(pm["ratio_vs_baseline"], rel=1e-12)
    lo, hi = pm["log_ci"]
    assert lo < float(np.mean(shift)) < hi
    assert ok is (pm["ratio_vs_baseline"] <= 1.102)
    strict = EngineConfig(bootstrap_replicates=500, gate_rule="upper", tier="conservative")
    pm2, ok2, _ = paired_primary_metric(
        list(subj), list(subj), list(base), list(base), strict, seq_len=16, drift_band=0.05
    )
    assert pm2["gate_rule"] == "upper"
    assert ok2 is (math.exp(pm2["log_ci"][1]) <= 1.05)


def test_nan_window_keeps_slot_and_degrades() -> None:
    rng = np.random.default_rng(_fresh_seed())
    base = list(rng.uniform(2, 3, size=10))
    subj: list[float | None] = list(base)
    bad = int(rng.integers(0, 10))
    subj[bad] = None
    pm, ok, drift_ok = paired_primary_metric(
        base, subj, base, base, EngineConfig(bootstrap_replicates=100), seq_len=8, drift_band=1.0
    )
    assert pm["degraded"] is True and ok is False and drift_ok is False
    assert pm["non_finite_windows"] == 1
    assert pm["n_windows"] == 10
    assert pm["ratio_vs_baseline"] == 1.0  # the other nine still pair id-for-id
    assert "non_finite_windows:1" in str(pm["degraded_reason"])


def test_nan_weight_gives_none_loss_in_its_slot() -> None:
    model = tiny_llama()
    ws = make_windows(4, 16, _fresh_seed())
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] = float("nan")
    losses = window_losses(model, ws, batch_size=4, device="cpu")
    assert losses == [None] * 4


def test_corrupted_window_is_caught_by_pairing() -> None:
    ws = make_windows(5, 16, _fresh_seed())
    ids = ws.input_ids.clone()
    row = random.SystemRandom().randrange(5)
    ids[row, 3] = (ids[row, 3] + 1) % 128
    changed = WindowSet(ws.ids, tuple(token_hash(r.numpy().tobytes()) for r in ids), ids)
    check_pairing(ws, ws.ids, ws.hashes, "final")
    with pytest.raises(PairingError, match=f"final window {row} "):
        check_pairing(changed, ws.ids, ws.hashes, "final")
    reordered = WindowSet(ws.ids[::-1], ws.hashes[::-1], ws.input_ids.flip(0))
    with pytest.raises(PairingError):
        check_pairing(reordered, ws.ids, ws.hashes, "final")
    with pytest.raises(PairingError):
        check_pairing(WindowSet(ws.ids[:4], ws.hashes[:4], ws.input_ids[:4]), ws.ids, ws.hashes, "preview")


def test_drift_compares_both_arms_against_baseline() -> None:
    rng = np.random.default_rng(_fresh_seed())
    bp, bf = rng.uniform(2, 3, size=12), rng.uniform(2, 3, size=12)
    cfg = EngineConfig(bootstrap_replicates=100)
    uniform: Any = paired_primary_metric(
        list(bp + 0.3), list(bf + 0.3), list(bp), list(bf), cfg, seq_len=8, drift_band=0.01
    )
    assert uniform[2] is True  # uniform degradation is not drift (the gate catches it instead)
    assert uniform[1] is False
    skew: Any = paired_primary_metric(
        list(bp + 0.05), list(bf), list(bp), list(bf), cfg, seq_len=8, drift_band=0.01
    )
    assert skew[2] is False
    assert skew[0]["drift"]["log_gap"] == pytest.approx(0.05, abs=1e-12)


def test_a_gap_that_sampling_explains_is_not_drift() -> None:
    rng = np.random.default_rng(_fresh_seed())
    bp, bf = rng.uniform(2, 3, size=4), rng.uniform(2, 3, size=16)
    noise_p, noise_f = rng.normal(0, 0.05, size=4), rng.normal(0, 0.05, size=16)
    cfg = EngineConfig(bootstrap_replicates=100)
    pm, _, drift_ok = paired_primary_metric(list(bp + noise_p), list(bf + noise_f), list(bp), list(bf), cfg,
                                            seq_len=8, drift_band=0.0)
    drift = pm["drift"]
    pooled = np.concatenate([noise_p - noise_p.mean(), noise_f - noise_f.mean()])
    se = math.sqrt(float(pooled @ pooled) / 18 * (1 / 4 + 1 / 16))
    assert drift["se"] == pytest.approx(se, rel=1e-9) and drift["band_used"] == pytest.approx(drift["z"] * se)
    assert drift_ok == (drift["log_gap"] <= drift["z"] * se)
    shifted, _, shifted_ok = paired_primary_metric(
        list(bp + noise_p + 10 * drift["z"] * se), list(bf + noise_f), list(bp), list(bf), cfg, seq_len=8,
        drift_band=0.0)
    assert shifted_ok is False and shifted["drift"]["log_gap"] > shifted["drift"]["band_used"]


# ----------------------------------------------------------------------------------------- chunked token NLL


def _plain_nll(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """The previous implementation: full-vocabulary logits of the whole batch, then cross-entropy."""
    out = model(input_ids=ids, use_cache=False)
    logits = out.logits[:, :-1, :].float()
    target = ids[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    return nll.view(target.shape)


def _tiny_softcapped(cap: float | None) -> Any:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(_fresh_seed())
    cfg = Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, vocab_size=128, final_logit_softcapping=cap)
    return Gemma2ForCausalLM(cfg).eval()


def _tiny_scaled_head() -> Any:
    from transformers import CohereConfig, CohereForCausalLM

    torch.manual_seed(_fresh_seed())
    cfg = CohereConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=128, logit_scale=0.0625)
    return CohereForCausalLM(cfg).eval()


@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_llama, tiny_mixtral], ids=["gpt2", "llama", "mixtral"])
def test_chunked_nll_matches_full_logits(factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = factory(seed=_fresh_seed() % 1000)
    seq_len = 37
    per_chunk = random.SystemRandom().randrange(2, 12)  # several uneven chunks per row
    monkeypatch.setattr(metric, "LOGITS_CHUNK_BYTES", per_chunk * 4 * 128)
    ws = make_windows(5, seq_len, _fresh_seed())
    with torch.inference_mode():
        want = _plain_nll(model, ws.input_ids)
    calls: list[int] = []
    handle = model.get_output_embeddings().register_forward_hook(lambda _m, _i, out: calls.append(out.numel()))
    with torch.inference_mode():
        got = metric.token_nll(model, ws.input_ids)
    handle.remove()
    assert metric.plain_head(model, ws.input_ids) is True
    assert got.shape == want.shape and got.dtype == torch.float32
    assert torch.allclose(got, want, rtol=0, atol=1e-5)
    assert (got.double().mean(1) - want.double().mean(1)).abs().max() <= 1e-6
    # every head call saw at most one chunk's logits, never the batch's [b, L, V]
    assert calls and max(calls) <= per_chunk * 128
    windows = window_losses(model, ws, batch_size=2, device="cpu")
    assert windows == pytest.approx(want.double().mean(1).tolist(), abs=1e-6)


def test_head_chunks_are_canonically_strided() -> None:
    """A head chunk sliced out of the batch keeps the batch's stride on its size-1 dim; with a weight that needs no
    grad (how a loaded model is evaluated) ``torch.matmul`` then does not fold it into one mm but broadcasts the
    weight into a bmm, copying the whole head matrix for every chunk (110 ms of a 125 ms bf16 SmolLM2 chunk). Every
    chunk the head sees must carry the canonical strides of its shape."""
    model = tiny_llama(seed=_fresh_seed() % 1000)
    for p in model.parameters():
        p.requires_grad_(False)
    seen: list[tuple[torch.Size, tuple[int, ...]]] = []
    handle = model.get_output_embeddings().register_forward_pre_hook(
        lambda _m, args: seen.append((args[0].shape, args[0].stride()))
    )
    ws = make_windows(3, 29, _fresh_seed())
    try:
        with torch.inference_mode():
            metric.token_nll(model, ws.input_ids)
    finally:
        handle.remove()
    assert len(seen) >= 3 and all(stride == torch.empty(shape).stride() for shape, stride in seen)


@pytest.mark.parametrize("make", [lambda: _tiny_softcapped(0.5), _tiny_scaled_head], ids=["softcap", "logit_scale"])
def test_post_processed_head_falls_back_to_plain_forward(make: Any) -> None:
    model = make()
    ws = make_windows(3, 20, _fresh_seed())
    with torch.inference_mode():
        decoder, head = model.get_decoder(), model.get_output_embeddings()
        unprocessed = torch.nn.functional.cross_entropy(
            head(decoder(input_ids=ws.input_ids).last_hidden_state)[:, :-1].reshape(-1, 128).float(),
            ws.input_ids[:, 1:].reshape(-1), reduction="none").view(3, 19)
        want = _plain_nll(model, ws.input_ids)
        got = metric.token_nll(model, ws.input_ids)
    assert metric.plain_head(model, ws.input_ids) is False
    assert torch.equal(got, want)
    assert (unprocessed - want).abs().max() > 1e-3  # the head's post-processing matters: chunking would be wrong


def test_structure_change_is_probed_again() -> None:
    model = _tiny_softcapped(None)
    ws = make_windows(2, 16, _fresh_seed())
    assert metric.plain_head(model, ws.input_ids) is True
    model.config.final_logit_softcapping = 0.5  # a config value the forward reads: the verdict must not be reused
    assert metric.plain_head(model, ws.input_ids) is False
    with torch.inference_mode():
        assert torch.equal(metric.token_nll(model, ws.input_ids), _plain_nll(model, ws.input_ids))


def test_probe_leaves_no_trace_in_forward_hooks() -> None:
    model = tiny_llama(seed=_fresh_seed() % 1000)
    ws = make_windows(3, 24, _fresh_seed())
    seen: list[int] = []
    layer = model.model.layers[0]
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(int(out[0].shape[1]) if isinstance(
        out, tuple) else int(out.shape[1])))
    pre = layer.register_forward_pre_hook(lambda _m, args: seen.append(-1))
    with torch.inference_mode():
        metric.token_nll(model, ws.input_ids)  # first call on this model: the probe runs
    assert seen == [-1, 24]  # one pre-hook and one hook call, both for the real batch (24 tokens, not 8)
    assert layer._forward_hooks and layer._forward_pre_hooks  # restored
    handle.remove()
    pre.remove()


def test_nan_poisoned_subject_keeps_nan_losses_and_verdict() -> None:
    model = tiny_llama(seed=_fresh_seed() % 1000)
    ws = make_windows(3, 16, _fresh_seed())
    fresh = tiny_llama(seed=_fresh_seed() % 1000)
    with torch.no_grad():
        fresh.model.embed_tokens.weight.fill_(float("nan"))  # poisoned before it was ever probed
    with torch.inference_mode():
        assert bool(metric.token_nll(fresh, ws.input_ids).isnan().all())
        assert bool(_plain_nll(fresh, ws.input_ids).isnan().all())
        metric.token_nll(model, ws.input_ids)
    assert metric.plain_head(fresh, ws.input_ids) is True  # NaN in the same places on both paths
    assert fresh not in metric._PLAIN_HEAD  # and not remembered: a restored model is probed again
    assert metric.plain_head(model, ws.input_ids) is True
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    metric._PLAIN_HEAD[model] = (("stale",), False)  # force a new probe; the earlier verdict says False
    assert metric.plain_head(model, ws.input_ids) is False  # an all-NaN probe proves nothing: the verdict stays
    assert metric._PLAIN_HEAD[model] == (("stale",), False)
    assert window_losses(model, ws, batch_size=2, device="cpu") == [None] * 3
