"""Edits: spec grammar, scope selection per architecture, numerics against independent references, restore."""

from __future__ import annotations

import math
import re
import secrets
from typing import Any

import pytest
import torch
from tinymodels import tiny_gpt2, tiny_llama, tiny_mixtral

from pytest_proofpack.edits import (
    EditSpec,
    Scope,
    apply_edit,
    parse_edit_spec,
    parse_scope,
    resolve_clean,
)
from pytest_proofpack.edits.fp8 import fp8_dtype, fp8_round_trip, fp8_to_float32
from pytest_proofpack.edits.lowrank import lowrank_truncate, native_bf16
from pytest_proofpack.edits.prune import kth_smallest, prune_edit, prune_mask
from pytest_proofpack.edits.quant_rtn import rtn_quantize
from pytest_proofpack.edits.registry import EditRegistry, default_edit_registry
from pytest_proofpack.errors import SpecError

LAYERS = 3


def _tensors(model: Any) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (non-persistent ones such as rotary ``inv_freq`` included)."""
    out = {f"p:{k}": v for k, v in model.named_parameters(remove_duplicate=False)}
    out.update({f"b:{k}": v for k, v in model.named_buffers(remove_duplicate=False)})
    out.update(model.state_dict())
    return out


def _state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in _tensors(model).items()}


def _assert_identical(model: Any, state: dict[str, torch.Tensor]) -> None:
    now = _tensors(model)
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), k


def _llama_names(layers: range, leaves: tuple[str, ...]) -> set[str]:
    return {f"model.layers.{i}.{leaf}.weight" for i in layers for leaf in leaves}


LLAMA_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
LLAMA_FFN = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _mixtral_experts(layers: range, experts: int = 4) -> set[str]:
    return {
        f"model.layers.{i}.mlp.experts.{p}[e{e}]"
        for i in layers
        for e in range(experts)
        for p in ("gate_up_proj", "down_proj")
    }


def _gpt2(layers: range, leaves: tuple[str, ...]) -> set[str]:
    return {f"transformer.h.{i}.{leaf}.weight" for i in layers for leaf in leaves}


ALL = range(LAYERS)
SCOPE_CASES: list[tuple[str, Any, str, set[str]]] = [
    ("llama", tiny_llama, "ffn", _llama_names(ALL, LLAMA_FFN)),
    ("llama", tiny_llama, "attn", _llama_names(ALL, LLAMA_ATTN)),
    ("llama", tiny_llama, "all", _llama_names(ALL, LLAMA_ATTN + LLAMA_FFN)),
    ("llama", tiny_llama, "ffn@layer=1", _llama_names(range(1, 2), LLAMA_FFN)),
    ("llama", tiny_llama, "attn@layers=1-2", _llama_names(range(1, 3), LLAMA_ATTN)),
    ("gpt2", tiny_gpt2, "ffn", _gpt2(ALL, ("mlp.c_fc", "mlp.c_proj"))),
    ("gpt2", tiny_gpt2, "attn", _gpt2(ALL, ("attn.c_attn", "attn.c_proj"))),
    (
        "gpt2",
        tiny_gpt2,
        "all@layer=2",
        _gpt2(range(2, 3), ("mlp.c_fc", "mlp.c_proj", "attn.c_attn", "attn.c_proj")),
    ),
    ("mixtral", tiny_mixtral, "ffn", _mixtral_experts(ALL)),
    ("mixtral", tiny_mixtral, "ffn@layer=1", _mixtral_experts(range(1, 2))),
    ("mixtral", tiny_mixtral, "attn", _llama_names(ALL, LLAMA_ATTN)),
    (
        "mixtral",
        tiny_mixtral,
        "all",
        _mixtral_experts(ALL) | _llama_names(ALL, (*LLAMA_ATTN, "mlp.gate")),
    ),
]


_MODELS: dict[str, Any] = {}


def _shared(arch: str, factory: Any) -> Any:
    """One model per architecture for the scope tests: each test restores it bit-exactly (and asserts so)."""
    if arch not in _MODELS:
        _MODELS[arch] = factory(seed=11, layers=LAYERS)
    return _MODELS[arch]


@pytest.mark.parametrize(("arch", "factory", "scope", "expected"), SCOPE_CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in SCOPE_CASES])
def test_edit_touches_exactly_its_scope_and_restores(
    arch: str, factory: Any, scope: str, expected: set[str]
) -> None:
    model = _shared(arch, factory)
    before = _state(model)
    for kind in ("quant_rtn:4:16", "fp8_quant:e4m3", "magnitude_prune:0.3", "lowrank_svd:4"):
        change = apply_edit(model, parse_edit_spec(f"{kind}:{scope}"), seed=3)
        meta = change.metadata
        want = set(expected)
        if kind.startswith("lowrank"):
            # A [4, 32] MoE router already has rank <= 4: recorded as skipped, left alone.
            skipped = {s["module"] for s in meta["skipped"]}
            assert skipped == {k for k in expected if k.endswith("mlp.gate.weight")}
            want -= skipped
        assert set(meta["modules_touched"]) == want, kind
        assert meta["n_modules"] == len(want) == len(meta["modules_touched"])
        assert meta["params_changed"] > 0 and meta["seconds"] >= 0
        touched_params = {re.sub(r"\[e\d+\]$", "", k) for k in want}
        now = _tensors(model)
        for name, value in before.items():
            if name.split(":", 1)[-1] in touched_params:
                assert not torch.equal(now[name], value), (kind, name)
            else:
                assert torch.equal(now[name], value), f"{kind}: {name} outside scope {scope} changed"
        change.restore()
        _assert_identical(model, before)
        change.restore()  # idempotent
        _assert_identical(model, before)


def test_context_manager_restores_on_exception() -> None:
    model = tiny_llama(seed=5)
    before = _state(model)
    with pytest.raises(RuntimeError), apply_edit(model, parse_edit_spec("magnitude_prune:0.5:all")) as ch:
        assert ch.metadata["actual_sparsity"] == pytest.approx(0.5, abs=1e-3)
        raise RuntimeError("boom")
    _assert_identical(model, before)


def test_bf16_model_edit_casts_back_and_restores() -> None:
    model = tiny_llama(seed=2).to(torch.bfloat16)
    before = _state(model)
    with apply_edit(model, parse_edit_spec("quant_rtn:3:8:ffn")) as ch:
        w = model.model.layers[0].mlp.up_proj.weight
        assert w.dtype == torch.bfloat16
        expected, _ = rtn_quantize(before["model.layers.0.mlp.up_proj.weight"].float(), 3, 8)
        assert torch.equal(w, expected.to(torch.bfloat16))
        assert ch.metadata["n_modules"] == 3 * 2
    _assert_identical(model, before)


def test_gpt2_conv1d_is_quantized_along_its_input_dimension() -> None:
    model = tiny_gpt2(seed=4)
    stored = model.transformer.h[0].mlp.c_fc.weight.detach().clone()  # [in, out]
    with apply_edit(model, parse_edit_spec("quant_rtn:4:8:ffn")):
        expected, _ = rtn_quantize(stored.t().contiguous(), 4, 8)
        assert torch.equal(model.transformer.h[0].mlp.c_fc.weight, expected.t())


# --- numerics ---


def _rtn_reference(w: torch.Tensor, bits: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Straightforward float64 loop implementation; returns (w_q, per-element scale)."""
    w64 = w.double()
    rows, cols = w64.shape
    g = cols if group <= 0 or group >= cols else group
    qmax, qmin = max(2 ** (bits - 1) - 1, 1), -(2 ** (bits - 1))
    out = torch.empty_like(w64)
    scales = torch.empty_like(w64)
    for r in range(rows):
        for start in range(0, cols, g):
            seg = w64[r, start : start + g]
            s = max(float(seg.abs().max()) / qmax, 1e-10)
            out[r, start : start + g] = torch.clamp(torch.round(seg / s), qmin, qmax) * s
            scales[r, start : start + g] = s
    return out, scales


@pytest.mark.parametrize(("bits", "group"), [(2, 16), (3, 32), (4, 32), (4, 0), (5, -1), (8, 128), (4, 500)])
def test_rtn_matches_float64_reference_and_lies_on_grid(bits: int, group: int) -> None:
    gen = torch.Generator().manual_seed(bits * 100 + group)
    w = torch.randn(23, 100, generator=gen) * torch.rand(23, 1, generator=gen) * 3  # 100 % 32 != 0: padding
    q, _ = rtn_quantize(w, bits, group)
    ref, scales = _rtn_reference(w, bits, group)
    assert q.shape == w.shape and q.dtype == torch.float32
    # On the grid: q / scale is an integer in [qmin, qmax] (fp32 math, so allow fp32 rounding of the scale).
    levels = q.double() / scales
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert int(levels.round().min()) >= -(2 ** (bits - 1)) and int(levels.round().max()) <= max(
        2 ** (bits - 1) - 1, 1
    )
    # Equal to the float64 reference except where w/scale sits within fp32 rounding of a .5 tie.
    ratio = w.double() / scales
    near_tie = ((ratio - ratio.floor()) - 0.5).abs() < 1e-4
    close = (q.double() - ref).abs() <= 1e-5 * scales
    assert bool((close | near_tie).all())
    assert int(close.sum()) >= w.numel() - 2


def test_fp8_equals_plain_cast_and_saturates() -> None:
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(64, 48, generator=gen) * 2
    for fmt, dtype in (("e4m3fn", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)):
        out, saturated = fp8_round_trip(w, fmt)
        assert saturated == 0
        assert torch.equal(out, w.to(dtype).to(torch.float32))
    big = w.clone()
    big[0, :3] = torch.tensor([1e6, -1e6, 500.0])
    out, saturated = fp8_round_trip(big, "e5m2")
    assert saturated == 2 and bool(torch.isfinite(out).all()) and float(out.abs().max()) == 57344.0
    out, saturated = fp8_round_trip(big, "e4m3fn")
    assert saturated == 3 and float(out.abs().max()) == 448.0


@pytest.mark.parametrize("fmt", ["e4m3fn", "e5m2"])
def test_fp8_decode_is_torchs_cast_bit_for_bit(fmt: str) -> None:
    dtype = fp8_dtype(fmt)
    codes = torch.arange(256, dtype=torch.uint8).view(dtype)  # every fp8 value, NaNs included
    assert torch.equal(fp8_to_float32(codes).view(torch.int32), codes.to(torch.float32).view(torch.int32))
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    w = (torch.randn(33, 65, generator=gen) * 300).t()  # non-contiguous, some values beyond e4m3's 448
    w[0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e9])
    fmax = torch.finfo(dtype).max
    over = torch.isfinite(w) & (w.abs() > fmax)
    reference = torch.where(over, w.clamp(-fmax, fmax), w).to(dtype).to(torch.float32)
    out, saturated = fp8_round_trip(w, fmt)
    assert saturated == int(over.sum()) > 0
    assert torch.equal(out.view(torch.int32), reference.view(torch.int32))


def _stable_sort_prune_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The definition: the first k positions of a stable ascending sort of |w| (row-major, NaN last)."""
    flat = w.reshape(-1).abs()
    k = round(flat.numel() * sparsity)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[torch.sort(flat, stable=True).indices[:k]] = True
    return mask.view(w.shape)


def _prune_input(kind: str, gen: torch.Generator) -> torch.Tensor:
    rows, cols = (int(torch.randint(1, 90, (1,), generator=gen)) for _ in range(2))
    w = torch.randn(rows, cols, generator=gen) * float(torch.rand(1, generator=gen) * 4 + 1e-3)
    if kind == "ties":  # few distinct magnitudes, both signs: thresholds fall inside long runs of ties
        w = (w * 2).round() / 2
    elif kind == "zeros":  # most of the matrix exactly +-0: the threshold can be 0 itself
        w = torch.where(torch.rand(w.shape, generator=gen) < 0.6, torch.zeros(()), w)
        w[0, 0] = -0.0
    elif kind == "bf16":  # a bf16 checkpoint's values: every histogram bin is a single value
        w = w.to(torch.bfloat16).float()
    elif kind == "nonfinite":  # NaN (both signs) sorts last; inf just before
        flat = w.view(-1)
        flat[torch.randperm(flat.numel(), generator=gen)[: max(1, flat.numel() // 4)]] = float("nan")
        flat[-1] = -float("nan")
        flat[0] = float("inf")
    return w


@pytest.mark.parametrize("kind", ["normal", "ties", "zeros", "bf16", "nonfinite"])
def test_prune_equals_the_stable_sort_definition(kind: str) -> None:
    seed = secrets.randbits(31)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(12):
        w = _prune_input(kind, gen)
        for sparsity in (0.0, 0.01, 0.12, 0.5, 0.731, 0.97, 0.999, 1.0):
            where = f"seed {seed}, {kind}, shape {tuple(w.shape)}, sparsity {sparsity}"
            expected = _stable_sort_prune_mask(w, sparsity)
            assert torch.equal(prune_mask(w, sparsity), expected), where
            out, stats = prune_edit(w, {"sparsity": sparsity})
            # Bit for bit: pruned elements are +0.0, every kept one keeps its bits (NaN payloads, -0.0 included).
            assert torch.equal(out.view(torch.int32), w.masked_fill(expected, 0.0).view(torch.int32)), where
            assert stats == {"pruned": int(expected.sum()), "zeros": int((out == 0).sum()), "numel": w.numel()}, where


def test_prune_of_a_transposed_view_follows_its_row_major_order() -> None:
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    w = ((torch.randn(40, 24, generator=gen) * 2).round() / 2).t()  # a Conv1D-style non-contiguous [out, in] view
    out, _ = prune_edit(w, {"sparsity": 0.4})
    assert torch.equal(out, w.masked_fill(_stable_sort_prune_mask(w.contiguous(), 0.4), 0.0))
    assert not w.is_contiguous() and out.shape == w.shape


@pytest.mark.parametrize("kind", ["normal", "ties", "nonfinite"])
def test_kth_smallest_equals_kthvalue(kind: str) -> None:
    seed = secrets.randbits(31)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(300_000, generator=gen)
    if kind == "ties":
        x = (x * 4).round() / 4  # a handful of distinct values: the threshold's bin is one long tie
    elif kind == "nonfinite":
        x[torch.randperm(x.numel(), generator=gen)[:1000]] = float("nan")
        x[:10] = float("inf")
    for k in (1, 2999, 37_500, 150_000, 298_990, 299_000, 299_001, 300_000):
        got, want = kth_smallest(x, k), torch.kthvalue(x.abs(), k).values
        assert torch.equal(got, want) or (bool(got.isnan()) and bool(want.isnan())), (seed, k, got, want)


def test_prune_ties_break_by_index() -> None:
    w = torch.tensor([[1.0, -1.0, 1.0, 2.0], [1.0, 0.5, -1.0, 3.0]])
    mask = prune_mask(w, 0.5)  # k = 4: 0.5 and the first three of the five |1.0| in row-major order
    assert mask.tolist() == [[True, True, True, False], [False, True, False, False]]


def test_prune_edit_metadata_reports_actual_sparsity() -> None:
    model = tiny_llama(seed=9)
    with apply_edit(model, parse_edit_spec("magnitude_prune:0.25:ffn")) as ch:
        n = ch.metadata["params_in_scope"]
        assert ch.metadata["pruned"] == sum(round(m.numel() * 0.25) for m in _ffn_mats(model))
        zeros = sum(int((m == 0).sum()) for m in _ffn_mats(model))
        assert ch.metadata["actual_sparsity"] == pytest.approx(zeros / n)


def _ffn_mats(model: Any) -> list[torch.Tensor]:
    return [
        getattr(layer.mlp, p).weight
        for layer in model.model.layers
        for p in ("gate_proj", "up_proj", "down_proj")
    ]


@pytest.mark.parametrize(("shape", "rank"), [((40, 24), 5), ((24, 64), 1), ((33, 33), 20)])
def test_lowrank_equals_exact_truncated_svd(shape: tuple[int, int], rank: int) -> None:
    gen = torch.Generator().manual_seed(rank)
    w = torch.randn(*shape, generator=gen)
    out, energy, method = lowrank_truncate(w, rank)
    assert method == "exact"
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    ref = (u[:, :rank] * s[:rank]) @ vh[:rank]
    assert torch.allclose(out.double(), ref, atol=1e-4)
    assert int(torch.linalg.matrix_rank(out.double(), atol=1e-4)) <= rank
    assert energy == pytest.approx(float((s[:rank] ** 2).sum() / (s**2).sum()), rel=1e-6)


@pytest.mark.parametrize("low", [True, False])
def test_lowrank_randomized_path_is_seeded_and_leaves_global_rng_alone(low: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(1030, 1100, generator=gen)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, energy, method = lowrank_truncate(w, 8, seed=5, low_precision=low)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is untouched
    b, _, _ = lowrank_truncate(w, 8, seed=5, low_precision=low)
    assert method == f"randomized-{'bf16' if low else 'fp32'}" and torch.equal(a, b) and 0 < energy < 1
    # rank <= 8 without a full SVD of the big matrix: a random 12-column sketch has only 8 non-zero values.
    sketch = torch.linalg.svdvals(a.double() @ torch.randn(1100, 12, generator=gen, dtype=torch.float64))
    assert float(sketch[8:].max()) < 1e-6 * float(sketch[0])  # fp32 reconstruction noise only


def _decaying(m: int, n: int, seed: int, *, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``m x n`` fp32 matrix with singular values ``0.8**i`` (all zero past ``rank``) and its values."""
    gen = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64)).Q
    s = 0.8 ** torch.arange(k, dtype=torch.float64)
    if rank is not None:
        s[rank:] = 0.0
    return ((u * s) @ v.T).float(), s


@pytest.mark.parametrize("low", [True, False])
def test_lowrank_randomized_path_matches_exact_truncation(low: bool) -> None:
    """Where the spectrum decays, the randomized path gives the optimal rank-r truncation: the exact SVD's matrix to
    1e-5 and its energy to 2e-6 (worst of 600 draws: 3.9e-6 and 2.6e-7 with bf16 power iterations, 5.0e-7 and
    2.1e-7 with fp32 ones)."""
    rank = 12
    w, _s = _decaying(300, 260, secrets.randbits(31))
    out, energy, method = lowrank_truncate(w, rank, seed=3, low_precision=low)
    assert method.startswith("randomized")
    u, sv, vh = torch.linalg.svd(w.double(), full_matrices=False)
    exact = (u[:, :rank] * sv[:rank]) @ vh[:rank]
    assert float((out.double() - exact).norm() / exact.norm()) < 1e-5
    assert energy == pytest.approx(float((sv[:rank] ** 2).sum() / (sv**2).sum()), abs=2e-6)


@pytest.mark.parametrize("low", [True, False])
def test_lowrank_randomized_path_on_a_rank_deficient_matrix(low: bool) -> None:
    """A matrix of rank 5 truncated to rank 8 comes back unchanged (to round-off) and finite: the zero singular
    values are never divided by. With bf16 power iterations too: the last half-iteration in fp32 puts the basis in
    the row space (without it, bf16 rounding left 1.2e-3 of a rank-20 1536 x 576 matrix out; with it, the worst of
    600 draws here is 5.1e-7)."""
    w, _ = _decaying(260, 300, secrets.randbits(31), rank=5)
    out, energy, method = lowrank_truncate(w, 8, seed=1, low_precision=low)
    assert method.startswith("randomized") and torch.isfinite(out).all()
    assert float((out - w).norm() / w.norm()) < 1e-5 and energy == pytest.approx(1.0, abs=1e-6)
    zero = torch.zeros(260, 300)
    out, energy, _method = lowrank_truncate(zero, 8, seed=1, low_precision=low)
    assert torch.equal(out, zero) and energy == 1.0


def test_lowrank_power_iterations_precision_follows_the_hardware() -> None:
    """Default precision: bf16 exactly where the device multiplies it natively; the metadata says which ran."""
    w, _ = _decaying(300, 260, 4)
    auto = lowrank_truncate(w, 12, seed=2)
    low = native_bf16(w.device)
    explicit = lowrank_truncate(w, 12, seed=2, low_precision=low)
    assert auto[2] == explicit[2] == ("randomized-bf16" if low else "randomized-fp32")
    assert torch.equal(auto[0], explicit[0])
    model = tiny_llama(seed=2, hidden=64)
    with apply_edit(model, parse_edit_spec("lowrank_svd:4:ffn")) as ch:
        assert ch.metadata["methods"] == {auto[2]: ch.metadata["n_modules"]}


def test_lowrank_skips_matrices_already_low_rank() -> None:
    model = tiny_llama(seed=1)  # k_proj/v_proj are [16, 32]
    with apply_edit(model, parse_edit_spec("lowrank_svd:16:attn@layer=0")) as ch:
        skipped = {s["module"] for s in ch.metadata["skipped"]}
        assert skipped == {"model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight"}
        assert set(ch.metadata["modules_touched"]) == {
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.o_proj.weight",
        }
        assert 0 < ch.metadata["avg_energy_retained"] < 1


# --- spec grammar ---


@pytest.mark.parametrize(
    ("text", "kind", "params", "scope"),
    [
        ("quant_rtn:4:32:ffn", "quant_rtn", (("bits", 4), ("group_size", 32)), Scope("ffn")),
        ("fp8_quant:E4M3:attn", "fp8_quant", (("format", "e4m3fn"),), Scope("attn")),
        ("magnitude_prune:0.5:all", "magnitude_prune", (("sparsity", 0.5),), Scope("all")),
        ("lowrank_svd:32:ffn@layer=31", "lowrank_svd", (("rank", 32),), Scope("ffn", (31, 31))),
        ("lowrank_svd:8:attn@layers=2-5", "lowrank_svd", (("rank", 8),), Scope("attn", (2, 5))),
        ("lowrank_svd:8:ffn@layers=4", "lowrank_svd", (("rank", 8),), Scope("ffn", (0, 3))),
    ],
)
def test_parse_valid_specs(text: str, kind: str, params: Any, scope: Scope) -> None:
    spec = parse_edit_spec(text)
    assert (spec.kind, spec.params, spec.scope, spec.clean) == (kind, params, scope, False)
    assert parse_edit_spec(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (
            "quant_rtn:5x:32:ffn",
            ["bits '5x' is not an integer in 2..8", "accepted: quant_rtn:<bits>:<group>:<scope>"],
        ),
        ("quant_rtn:9:32:ffn", ["bits '9'"]),
        ("quant_rtn:4:g:ffn", ["group 'g'"]),
        ("quant_rtn:4:ffn", ["expected 2 parameter(s)"]),
        ("fp8_quant:e3m4:ffn", ["format 'e3m4'", "e4m3, e4m3fn, e5m2"]),
        ("magnitude_prune:1.5:all", ["sparsity '1.5'", "[0, 1)"]),
        ("lowrank_svd:0:all", ["rank '0'"]),
        ("lowrank_svd:8:mlp", ["unknown base 'mlp'", "ffn | attn | all"]),
        ("lowrank_svd:8:ffn@layer=x", ["'@layer=x'", "layers=A-B"]),
        ("lowrank_svd:8:ffn@layers=5-2", ["'@layers=5-2'"]),
        ("quant_rtm:4:32:ffn", ["unknown edit kind 'quant_rtm'", "did you mean 'quant_rtn'"]),
        ("quant_rtn:clean:ffn:extra", ["clean sentinel takes only a scope"]),
        ("", ["empty"]),
    ],
)
def test_bad_specs_are_one_line_errors(text: str, needles: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        parse_edit_spec(text)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_clean_sentinel_and_resolution() -> None:
    spec = parse_edit_spec("quant_rtn:clean:ffn")
    assert spec.clean and spec.params == () and str(spec) == "quant_rtn:clean:ffn"
    with pytest.raises(SpecError, match="resolve_clean"):
        apply_edit(tiny_llama(), spec)
    resolved = resolve_clean(
        spec, {"status": "selected", "bits": 5, "group_size": 64, "scope": "ffn@layer=1"}
    )
    assert resolved == EditSpec("quant_rtn", (("bits", 5), ("group_size", 64)), Scope("ffn", (1, 1)))
    svd = resolve_clean(parse_edit_spec("lowrank_svd:clean:ffn"), {"rank": 16})
    assert svd.param("rank") == 16 and svd.scope == Scope("ffn")
    fp8 = resolve_clean(parse_edit_spec("fp8_quant:clean:ffn"), {"format": "e5m2", "scope": "ffn"})
    assert fp8.param("format") == "e5m2"
    with pytest.raises(SpecError, match="missing field"):
        resolve_clean(parse_edit_spec("magnitude_prune:clean:ffn"), {"status": "selected", "scope": "ffn"})
    with pytest.raises(SpecError, match="status 'skipped'"):
        resolve_clean(parse_edit_spec("magnitude_prune:clean:ffn"), {"status": "skipped", "sparsity": 0.1})
    with pytest.raises(SpecError, match="bits '12'"):
        resolve_clean(spec, {"bits": 12, "group_size": 32})


def test_scope_matching_nothing_is_an_error() -> None:
    model = tiny_llama(layers=2)
    with pytest.raises(SpecError, match=r"names layer 7, but LlamaForCausalLM has 2 blocks \(layers 0-1\)"):
        apply_edit(model, parse_edit_spec("lowrank_svd:4:ffn@layer=7"))
    assert parse_scope("ALL@Layer=3") == Scope("all", (3, 3))


def test_a_layer_range_past_the_last_block_is_an_error_not_a_clip() -> None:
    model = tiny_llama(layers=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SpecError, match=r"scope 'ffn@layers=1-5' names layer 5, but .* has 3 blocks"):
        apply_edit(model, parse_edit_spec("magnitude_prune:0.5:ffn@layers=1-5"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_registry_extension_and_typos() -> None:
    reg = EditRegistry()

    def parse(args: Any) -> Any:
        return (("factor", float(args[0])),)

    def scale(matrix: torch.Tensor, params: Any, *, seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
        return matrix * params["factor"], {}

    reg.register("scale_by", parse, scale, param_names=("factor",))
    with pytest.raises(SpecError, match="already registered"):
        reg.register("scale_by", parse, scale)
    spec = parse_edit_spec("scale_by:2:attn@layer=0", registry=reg)
    model = tiny_llama(seed=3)
    q = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    with apply_edit(model, spec, registry=reg) as ch:
        assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, q * 2)
        assert ch.metadata["avg_relative_error"] == pytest.approx(1.0)

    def scale_in_place(matrix: torch.Tensor, params: Any, *, seed: int = 0) -> tuple[torch.Tensor, Any]:
        return matrix.mul_(params["factor"]), {}  # writes into its input: restore must still be exact

    reg.register("scale_inplace", parse, scale_in_place, param_names=("factor",))
    before = _state(model)
    with apply_edit(model, parse_edit_spec("scale_inplace:3:all", registry=reg), registry=reg) as ch:
        assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, q * 3)
        assert ch.metadata["n_modules"] == 2 * 7
    _assert_identical(model, before)
    with pytest.raises(SpecError, match="did you mean 'scale_by'"):
        parse_edit_spec("scale_bi:2:attn", registry=reg)
    assert default_edit_registry.names() == ["fp8_quant", "lowrank_svd", "magnitude_prune", "quant_rtn"]


def test_metadata_relative_error_and_counts() -> None:
    model = tiny_llama(seed=8)
    mlp = model.model.layers[0].mlp
    names = ("gate_proj", "up_proj", "down_proj")
    originals = [getattr(mlp, p).weight.detach().clone() for p in names]
    with apply_edit(model, parse_edit_spec("quant_rtn:2:0:ffn@layer=0")) as ch:
        edited = [getattr(mlp, p).weight.detach() for p in names]
        errors = [
            float(torch.linalg.vector_norm(e - o) / torch.linalg.vector_norm(o))
            for e, o in zip(edited, originals, strict=True)
        ]
        pairs = list(zip(edited, originals, strict=True))
        assert ch.metadata["params_changed"] == sum(int((e != o).sum()) for e, o in pairs)
        assert ch.metadata["params_in_scope"] == 3 * 64 * 32
        assert ch.metadata["avg_relative_error"] == pytest.approx(sum(errors) / 3, rel=1e-5)
        assert ch.metadata["changed_fraction"] == pytest.approx(ch.metadata["params_changed"] / (3 * 64 * 32))


@pytest.mark.parametrize("block", [37, 1500, 1 << 18])  # many ragged blocks, exactly one block, one partial block
def test_blockwise_difference_equals_the_whole_matrix_difference(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest_proofpack.edits.apply as apply_module

    monkeypatch.setattr(apply_module, "DIFF_BLOCK", block)
    g = torch.Generator().manual_seed(secrets.randbits(31))
    old = torch.randn(50, 30, generator=g)
    new = old.clone()
    changed = torch.rand(50, 30, generator=g) < 0.4
    new[changed] += torch.randn(int(changed.sum()), generator=g) * 0.1
    norms, count = apply_module._difference(new, old)
    assert int(count) == int((new != old).sum())
    assert float(norms[0]) == pytest.approx(float(torch.linalg.vector_norm(new.double() - old.double())), rel=1e-6)
    assert float(norms[1]) == pytest.approx(float(torch.linalg.vector_norm(old.double())), rel=1e-6)
    new[7, 3] = float("nan")  # a non-finite difference anywhere makes the norm non-finite (recounted exactly later)
    assert not math.isfinite(float(apply_module._difference(new, old)[0][0]))


def test_metadata_counts_changes_exactly_around_nan_and_inf() -> None:
    model = tiny_llama(seed=4)
    mlp = model.model.layers[0].mlp
    with torch.no_grad():
        mlp.up_proj.weight[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    names = ("gate_proj", "up_proj", "down_proj")
    originals = [getattr(mlp, p).weight.detach().clone() for p in names]
    with apply_edit(model, parse_edit_spec("fp8_quant:e4m3:ffn@layer=0")) as ch:
        edited = [getattr(mlp, p).weight.detach() for p in names]
        # NaN stays NaN (unchanged), e4m3fn has no inf (changed): new - old cannot tell these apart.
        expected = sum(int(((e != o) & ~(e.isnan() & o.isnan())).sum()) for e, o in zip(edited, originals, strict=True))
        assert ch.metadata["params_changed"] == expected
        assert math.isfinite(ch.metadata["avg_relative_error"])
    for p, o in zip(names, originals, strict=True):
        assert torch.equal(getattr(mlp, p).weight.view(torch.int32), o.view(torch.int32)), p  # bit-exact, NaN too


def test_cpu_edits_run_on_one_thread_and_give_the_callers_count_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest_proofpack.edits.cpu_threads as apply_module

    default_serial_max = apply_module.SERIAL_MAX_NUMEL
    seen: list[int] = []

    def probe(matrix: torch.Tensor, params: Any, *, seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
        seen.append(torch.get_num_threads())
        return matrix * 2, {}

    reg = EditRegistry()
    reg.register("probe", lambda args: (("factor", float(args[0])),), probe, param_names=("factor",))
    spec = parse_edit_spec("probe:1:attn", registry=reg)
    model = tiny_llama(seed=3)
    before = _state(model)
    callers = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with apply_edit(model, spec, registry=reg):
            assert torch.get_num_threads() == 2
        assert seen and set(seen) == {1}  # small CPU matrices: one intra-op thread
        _assert_identical(model, before)
        seen.clear()
        monkeypatch.setattr(apply_module, "SERIAL_MAX_NUMEL", 0)  # every matrix "big": the caller's threads
        with apply_edit(model, spec, registry=reg):
            pass
        assert set(seen) == {2}
        monkeypatch.setattr(apply_module, "SERIAL_MAX_NUMEL", default_serial_max)  # back to the module's default
        seen.clear()
        with pytest.raises(RuntimeError), apply_edit(model, spec, registry=reg):
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2 and set(seen) == {1}
        _assert_identical(model, before)
    finally:
        torch.set_num_threads(callers)


def test_thread_safe_kinds_edit_cpu_matrices_on_worker_threads_with_one_intra_op_thread() -> None:
    import threading

    seen: list[tuple[str, int]] = []

    def probe(matrix: torch.Tensor, params: Any, *, seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return matrix * 2, {}

    reg = EditRegistry()
    reg.register("probe", lambda args: (("factor", float(args[0])),), probe, param_names=("f",), thread_safe=True)
    model = tiny_llama(seed=6)
    before = _state(model)
    callers = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with apply_edit(model, parse_edit_spec("probe:1:all", registry=reg), registry=reg) as ch:
            assert ch.metadata["n_modules"] == 7 * len(model.model.layers)
            assert ch.metadata["avg_relative_error"] == pytest.approx(1.0)
            up = "model.layers.1.mlp.up_proj.weight"
            assert torch.equal(model.get_parameter(up), 2 * before[f"p:{up}"])
        assert {n.split("_")[0] for n, _ in seen} == {"proofpack-edit"} and {t for _, t in seen} == {1}
        assert torch.get_num_threads() == 2
        _assert_identical(model, before)
    finally:
        torch.set_num_threads(callers)


def test_built_in_kinds_are_thread_safe_exactly_when_they_leave_the_global_rng_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``thread_safe`` is a claim (no global RNG, no shared state): check it against what each kind's function does.

    Each built-in kind is parsed from a spec and run on CPU matrices large enough for every code path (64 x 96 puts
    ``lowrank_svd:4`` on its randomized path); a kind "uses the global RNG" if it seeds it or
    leaves its state changed. Thread-safe kinds must also give bit-identical results on worker threads.
    """
    from concurrent.futures import ThreadPoolExecutor

    args = {"fp8_quant": "e4m3", "lowrank_svd": "4", "magnitude_prune": "0.3", "quant_rtn": "8:32"}
    seeded: list[int] = []
    real_manual_seed = torch.manual_seed

    def spy_manual_seed(seed: int) -> Any:
        seeded.append(seed)
        return real_manual_seed(seed)

    monkeypatch.setattr(torch, "manual_seed", spy_manual_seed)
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    matrices = [torch.randn(64, 96, generator=gen) for _ in range(4)]
    names = default_edit_registry.names()
    assert names == sorted(args)
    uses_global_rng: dict[str, bool] = {}
    for name in names:
        kind = default_edit_registry.get(name)
        params = parse_edit_spec(f"{name}:{args[name]}:all").param_dict
        seeded.clear()
        state = torch.get_rng_state()
        serial = [kind.fn(m.clone(), params, seed=i) for i, m in enumerate(matrices)]
        uses_global_rng[name] = bool(seeded) or not torch.equal(state, torch.get_rng_state())
        for m, (out, _stats) in zip(matrices, serial, strict=True):
            assert out.shape == m.shape and torch.isfinite(out).all() and not torch.equal(out, m), name
        if kind.thread_safe:
            with ThreadPoolExecutor(max_workers=len(matrices)) as pool:
                futures = [pool.submit(kind.fn, m.clone(), params, seed=i) for i, m in enumerate(matrices)]
                threaded = [f.result() for f in futures]
            for (a, stats_a), (b, stats_b) in zip(serial, threaded, strict=True):
                assert torch.equal(a, b) and stats_a == stats_b, name
    assert uses_global_rng == {name: not default_edit_registry.get(name).thread_safe for name in names}
    assert {name: default_edit_registry.get(name).thread_safe for name in names} == {
        "fp8_quant": True,
        "lowrank_svd": True,  # its range finder draws from a local generator
        "magnitude_prune": True,
        "quant_rtn": True,
    }
