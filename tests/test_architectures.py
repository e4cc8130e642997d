"""Every supported architecture, on a tiny random-init model built from transformers' own config class (no download):
the adapter finds each family, every edit and every registered fault applies and restores bit-exactly, and the
guards run through the engine's ``evaluate``, where a noop edit passes. A weight the engine cannot interpret is a
clear error naming it and the architecture."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from test_metric import make_windows
from tinymodels import model_snapshot

from pytest_proofpack.edits.apply import apply_edit
from pytest_proofpack.edits.spec import parse_edit_spec, parse_scope, scope_matches
from pytest_proofpack.engine.config import EngineConfig
from pytest_proofpack.engine.evaluate import evaluate, prepare_baseline
from pytest_proofpack.errors import UnsupportedArchitectureError
from pytest_proofpack.execute import relative_defaults
from pytest_proofpack.faults import apply_fault, default_fault_registry
from pytest_proofpack.faults.relative import resolve_relative
from pytest_proofpack.models.adapters import (
    describe,
    find_blocks,
    matrix,
    norm_modules,
    norm_weight_offset,
    tied_pairs,
    weight_refs,
)

VOCAB, HIDDEN, LAYERS, EXPERTS = 128, 32, 2, 4
SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios" / "scenarios.json"
_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
_DECODER = {
    "hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
    "num_key_value_heads": 2, "vocab_size": VOCAB, "max_position_embeddings": 256, **_IDS,
}
_GEMMA = {**_DECODER, "head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": 16,
          "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0}
_LLAMA_ATTN = {"self_attn.q_proj.weight": "q", "self_attn.k_proj.weight": "k", "self_attn.v_proj.weight": "v",
               "self_attn.o_proj.weight": "attn_out"}
_LLAMA_FFN = {"mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down"}


@dataclass(frozen=True)
class Arch:
    """A tiny model of one architecture and what its adapter must find: weights inside each block by path and
    role, expert tensors, routers, embeddings, the untied head (``None``: tied) and the norm modules."""

    config: str
    model: str
    kwargs: Mapping[str, Any]
    blocks: str
    attn: Mapping[str, str]
    ffn: Mapping[str, str]
    experts: Mapping[str, str] = field(default_factory=dict)
    router: tuple[str, ...] = ()
    embeds: tuple[str, ...] = ("model.embed_tokens.weight",)
    head: str | None = "lm_head.weight"
    norms: int = 2 * LAYERS + 1
    norm_offset: float = 0.0


ARCHS: dict[str, Arch] = {
    "llama": Arch("LlamaConfig", "LlamaForCausalLM", _DECODER, "model.layers", _LLAMA_ATTN, _LLAMA_FFN),
    "mistral": Arch("MistralConfig", "MistralForCausalLM", {**_DECODER, "sliding_window": 16}, "model.layers",
                    _LLAMA_ATTN, _LLAMA_FFN),
    "qwen2": Arch("Qwen2Config", "Qwen2ForCausalLM", {**_DECODER, "tie_word_embeddings": True}, "model.layers",
                  _LLAMA_ATTN, _LLAMA_FFN, head=None),
    "mixtral": Arch("MixtralConfig", "MixtralForCausalLM",
                    {**_DECODER, "num_local_experts": EXPERTS, "num_experts_per_tok": 2}, "model.layers",
                    _LLAMA_ATTN, {}, experts={"mlp.experts.gate_up_proj": "ffn_gate_up",
                                              "mlp.experts.down_proj": "ffn_down"}, router=("mlp.gate.weight",)),
    "gemma2": Arch("Gemma2Config", "Gemma2ForCausalLM", _GEMMA, "model.layers", _LLAMA_ATTN, _LLAMA_FFN,
                   head=None, norms=4 * LAYERS + 1, norm_offset=1.0),
    "gemma3": Arch("Gemma3TextConfig", "Gemma3ForCausalLM",
                   {**_GEMMA, "layer_types": ["sliding_attention", "full_attention"]}, "model.layers",
                   _LLAMA_ATTN, _LLAMA_FFN, head=None, norms=6 * LAYERS + 1, norm_offset=1.0),
    "phi3": Arch("Phi3Config", "Phi3ForCausalLM", _DECODER, "model.layers",
                 {"self_attn.qkv_proj.weight": "qkv", "self_attn.o_proj.weight": "attn_out"},
                 {"mlp.gate_up_proj.weight": "ffn_gate_up", "mlp.down_proj.weight": "ffn_down"}),
    "gpt2": Arch("GPT2Config", "GPT2LMHeadModel",
                 {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": 4, "vocab_size": VOCAB, "n_positions": 256, **_IDS},
                 "transformer.h", {"attn.c_attn.weight": "qkv", "attn.c_proj.weight": "attn_out"},
                 {"mlp.c_fc.weight": "ffn_up", "mlp.c_proj.weight": "ffn_down"},
                 embeds=("transformer.wte.weight", "transformer.wpe.weight"), head=None),
    "gpt_neox": Arch("GPTNeoXConfig", "GPTNeoXForCausalLM",
                     {k: v for k, v in _DECODER.items() if k != "num_key_value_heads"}, "gpt_neox.layers",
                     {"attention.query_key_value.weight": "qkv", "attention.dense.weight": "attn_out"},
                     {"mlp.dense_h_to_4h.weight": "ffn_up", "mlp.dense_4h_to_h.weight": "ffn_down"},
                     embeds=("gpt_neox.embed_in.weight",)),
    "olmo2": Arch("Olmo2Config", "Olmo2ForCausalLM", _DECODER, "model.layers", _LLAMA_ATTN, _LLAMA_FFN,
                  norms=4 * LAYERS + 1),
    # beyond the list: QK-norm over head_dim, a shared expert with its scalar gate, transposed experts with biases
    "qwen3": Arch("Qwen3Config", "Qwen3ForCausalLM", {**_DECODER, "head_dim": 8}, "model.layers", _LLAMA_ATTN,
                  _LLAMA_FFN, norms=4 * LAYERS + 1),
    "qwen2_moe": Arch("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                      {**_DECODER, "num_experts": EXPERTS, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                       "shared_expert_intermediate_size": 2 * HIDDEN}, "model.layers", _LLAMA_ATTN,
                      {f"mlp.shared_expert.{k}_proj.weight": f"ffn_{k}" for k in ("gate", "up", "down")},
                      experts={"mlp.experts.gate_up_proj": "ffn_gate_up", "mlp.experts.down_proj": "ffn_down"},
                      router=("mlp.gate.weight", "mlp.shared_expert_gate.weight")),
    "gpt_oss": Arch("GptOssConfig", "GptOssForCausalLM",
                    {**_DECODER, "num_local_experts": EXPERTS, "num_experts_per_tok": 2, "head_dim": 8,
                     "sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"]},
                    "model.layers", _LLAMA_ATTN, {},
                    experts={"mlp.experts.gate_up_proj": "ffn_gate_up", "mlp.experts.down_proj": "ffn_down"},
                    router=("mlp.router.weight",)),
}
_MODELS: dict[str, Any] = {}


def _build(name: str) -> Any:
    arch = ARCHS[name]
    config_cls, model_cls = getattr(transformers, arch.config, None), getattr(transformers, arch.model, None)
    if config_cls is None or model_cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {arch.config}/{arch.model}")
    torch.manual_seed(0)
    return model_cls(config_cls(**arch.kwargs)).eval()


def _model(name: str) -> Any:
    """One model per architecture, shared by the tests: each one restores it and asserts the restore is exact."""
    if name not in _MODELS:
        _MODELS[name] = _build(name)
    return _MODELS[name]


def _expected_refs(arch: Arch) -> set[tuple[str, str, str, int | None]]:
    """``(key, family, role, layer)`` of every weight matrix the adapter must list."""
    out: set[tuple[str, str, str, int | None]] = set()
    for i in range(LAYERS):
        block = f"{arch.blocks}.{i}."
        out |= {(block + path, "attn", role, i) for path, role in arch.attn.items()}
        out |= {(block + path, "ffn", role, i) for path, role in arch.ffn.items()}
        out |= {(block + path, "router", "router", i) for path in arch.router}
        out |= {(f"{block}{path}[e{e}]", "expert_ffn", role, i)
                for path, role in arch.experts.items() for e in range(EXPERTS)}
    out |= {(name, "embed", "embed", None) for name in arch.embeds}
    if arch.head is not None:
        out.add((arch.head, "other", "head", None))
    return out


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(
        a.detach().reshape(-1).view(torch.uint8), b.detach().reshape(-1).view(torch.uint8)
    )


def _changed(model: Any, before: dict[str, Any]) -> list[str]:
    """Names of what differs from snapshot ``before`` bit for bit (so a NaN written where a NaN was is no change)."""
    after = model_snapshot(model)
    out = [key for key in ("params", "modules", "config", "tied") if after[key] != before[key]]
    if after["tensors"].keys() != before["tensors"].keys():
        out.append("tensor names")
    now = after["tensors"]
    out += [n for n, v in before["tensors"].items() if n in now and not _bits_equal(now[n], v)]
    return out


ARCH_NAMES = list(ARCHS)


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_adapter_finds_every_family(name: str) -> None:
    arch, model = ARCHS[name], _model(name)
    path, blocks = find_blocks(model)
    assert (path, len(blocks)) == (arch.blocks, LAYERS)
    refs = weight_refs(model)
    assert {(r.key, r.family, r.role, r.layer) for r in refs} == _expected_refs(arch)
    assert len(refs) == len({r.key for r in refs})
    # every parameter of two or more dimensions is a listed matrix (or tied to one) or a bias: none is left out
    listed = {r.name for r in refs}
    for pname, p in model.named_parameters(remove_duplicate=False):
        assert p.dim() < 2 or pname in listed or pname.endswith("bias") or any(
            p is model.get_parameter(n) for n in listed
        ), pname
    # [out, in] orientation, whatever the storage (Linear, Conv1D, fused experts)
    for ref in refs:
        out_dim, in_dim = matrix(model, ref).shape
        if ref.role in ("q", "k", "v", "qkv", "ffn_gate", "ffn_up", "ffn_gate_up", "router", "embed", "head"):
            assert in_dim == HIDDEN, ref
        if ref.role in ("attn_out", "ffn_down"):
            assert out_dim == HIDDEN, ref
    norms = dict(norm_modules(model))
    assert len(norms) == arch.norms
    assert {norm_weight_offset(model, n) for n in norms} == {arch.norm_offset}
    assert bool(tied_pairs(model)) is (arch.head is None)
    info = describe(model)
    assert info["moe"] is bool(arch.experts) and info["n_layers"] == LAYERS and info["norms"] == arch.norms


KINDS = ("quant_rtn:4:16", "fp8_quant:e4m3", "magnitude_prune:0.3", "lowrank_svd:4")
SCOPES = ("ffn", "attn", "all", "ffn@layer=1")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ARCH_NAMES)
def test_every_edit_touches_its_scope_and_restores_bit_exactly(name: str, kind: str) -> None:
    model = _model(name)
    expected = _expected_refs(ARCHS[name])
    for scope_text in SCOPES:
        before = model_snapshot(model)
        scope = parse_scope(scope_text)
        refs = {r.key: r for r in weight_refs(model)}
        in_scope = {key for key, *_ in expected if scope_matches(scope, refs[key])}
        assert in_scope, scope_text
        with apply_edit(model, parse_edit_spec(f"{kind}:{scope_text}"), seed=3) as change:
            meta = change.metadata
            skipped = {s["module"] for s in meta["skipped"]}
            if kind.startswith("lowrank_svd"):  # a matrix of rank <= 4 already (a 4-expert router) is left alone
                assert skipped == {k for k in in_scope if min(matrix(model, refs[k]).shape) <= 4}
            else:
                assert not skipped
            assert set(meta["modules_touched"]) == in_scope - skipped, (kind, scope_text)
            for key, ref in refs.items():
                now, was = matrix(model, ref), _ref_before(before, model, ref)
                assert _bits_equal(now, was) is (key not in in_scope - skipped), (kind, scope_text, key)
        assert _changed(model, before) == [], (kind, scope_text)


def _ref_before(before: dict[str, Any], model: Any, ref: Any) -> torch.Tensor:
    """Ref ``ref``'s matrix as it was in snapshot ``before``."""
    saved = before["tensors"][f"p:{ref.name}"]
    param = model.get_parameter(ref.name)
    view = matrix(model, ref)
    # the same view of the saved copy: offsets and strides of ``view`` relative to the parameter's storage
    return saved.as_strided(view.shape, view.stride(), view.storage_offset() - param.storage_offset())


def _scenario_faults() -> list[tuple[str, dict[str, str]]]:
    return [
        (s["id"], resolve_relative(dict(s["generation"].get("env") or {}), {}, relative_defaults())[0])
        for s in json.loads(SCENARIOS.read_text())["scenarios"]
        if s["generation"].get("error_type")
    ]


#: (test id, fault, env): every registered fault with its defaults, every fault scenario with its env, the other modes
FAULT_CASES: list[tuple[str, str, dict[str, str]]] = [
    *((f"{n}-defaults", n, {}) for n in default_fault_registry.names()),
    *((sid, sid, env) for sid, env in _scenario_faults() if env),
    ("norm_noise", "rmt_norm_noise",
     {"INVARLOCK_RMT_PROBE_MODE": "norm_noise", "INVARLOCK_RMT_NORM_INCLUDE_GLOBAL": "1"}),
    ("row_scale", "rmt_norm_noise", {"INVARLOCK_RMT_PROBE_MODE": "row_scale"}),
    ("spectral_pair_inverse", "spectral_moderate_scale",
     {"INVARLOCK_SPECTRAL_PAIR_INVERSE": "1", "INVARLOCK_SPECTRAL_TARGET_FAMILY": "mlp"}),
    ("ve_every_layer", "ve_mlp_scale_skew", {"INVARLOCK_VE_MAX_PARAMS": "0"}),
]


@pytest.mark.parametrize(("error_type", "env"), [c[1:] for c in FAULT_CASES], ids=[c[0] for c in FAULT_CASES])
@pytest.mark.parametrize("name", ARCH_NAMES)
def test_every_fault_applies_and_restores_bit_exactly(name: str, error_type: str, env: dict[str, str]) -> None:
    model = _model(name)
    before = model_snapshot(model)
    with apply_fault(model, error_type, env, seed=1) as change:
        assert change.metadata["modified_count"] >= 1
        assert _changed(model, before), f"{error_type} reports {change.metadata['modified_params']}, changed nothing"
        with torch.no_grad():
            ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(0))
            logits = model(ids).logits  # the faulty model still runs
        assert logits.shape[:2] == (1, 24)
        if change.metadata["mode"] == "norm_noise":
            _assert_norm_scales_perturbed(model, before, change.metadata)
    assert _changed(model, before) == []


def _assert_norm_scales_perturbed(model: Any, before: dict[str, Any], meta: dict[str, Any]) -> None:
    """Each chosen norm's effective scale (``w``, or ``1 + w`` for a Gemma norm) moved by a factor within the clamp."""
    clamp = meta["params"]["mult_clamp"]
    for name in meta["modified_params"]:
        offset = norm_weight_offset(model, name)
        now = model.get_submodule(name).weight.detach().double() + offset
        was = before["tensors"][f"p:{name}.weight"].double() + offset
        ratio = now / was
        assert bool(((ratio - 1).abs() <= clamp + 1e-3).all()) and not bool((ratio == 1).all()), name


def test_every_registered_fault_is_covered() -> None:
    assert set(default_fault_registry.names()) <= {fault for _, fault, env in FAULT_CASES if not env}


CFG = EngineConfig(bootstrap_replicates=200, guard_windows=4, batch_size=4)
CTX: dict[str, object] = {"model": "tiny", "scenario": "t", "run": 1, "edit": None, "probes": ["rmt", "ve"]}


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_guards_run_and_a_noop_edit_passes(name: str) -> None:
    model = _model(name)
    preview, final = make_windows(4, 40, 17, VOCAB), make_windows(4, 40, 18, VOCAB, offset=100_000)
    base = prepare_baseline(model, preview, final, CFG)
    assert base.spectral and base.activations

    def judge(changer: Callable[[], Any]) -> dict[str, Any]:
        before = model_snapshot(model)
        with changer():
            report = evaluate(model, base, preview, final, {}, CFG, context=CTX).report
        assert _changed(model, before) == []
        return report

    noop = judge(contextlib.nullcontext)  # the subject is the baseline model, unchanged
    assert noop["primary_metric"]["ratio_vs_baseline"] == 1.0
    assert all(noop["validation"].values()), noop["validation"]
    assert noop["invariants"]["status"] == "pass" and noop["spectral"]["caps_applied"] == 0
    assert noop["rmt"]["stable"] and not noop["variance"]["signal"]
    # RMT hooks: attention output, dense FFN output and intermediate activation, fused experts' output
    arch = ARCHS[name]
    families = {str(a["family"]) for a in base.activations.values()}
    dense, fused = {"ffn", "ffn_act"} if arch.ffn else set(), {"expert_ffn"} if arch.experts else set()
    assert families == {"attn"} | dense | fused
    # the spectral guard checks every matrix of every family
    refs = weight_refs(model)
    assert noop["spectral"]["modules_checked"] == len(refs)
    assert set(noop["spectral"]["families"]) == {r.family for r in refs}
    kind = KINDS[ARCH_NAMES.index(name) % len(KINDS)]  # each kind on a few architectures, to keep this file fast
    edited = judge(lambda: apply_edit(model, parse_edit_spec(f"{kind}:all"), seed=3))
    assert edited["invariants"]["status"] == "pass"
    nan = judge(lambda: apply_fault(model, "nan_injection", {}))
    assert nan["invariants"]["status"] == "fail"
    dropped = judge(lambda: apply_fault(model, "missing_tensors", {}))
    assert not dropped["validation"]["invariants_pass"]


class _OddNorm(torch.nn.Module):
    """A "norm" (by its class name) whose output is neither x̂ · w nor x̂ · (1 + w)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(HIDDEN))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight**2 + 1.0


def test_what_the_engine_cannot_handle_is_a_clear_error() -> None:
    with pytest.raises(UnsupportedArchitectureError, match=r"Sequential: no transformer block list.*0: Linear"):
        apply_fault(torch.nn.Sequential(torch.nn.Linear(HIDDEN, HIDDEN)), "scale_explosion", {})
    model = _build("llama")
    mlp = model.model.layers[1].mlp
    mlp.register_parameter("mixing", torch.nn.Parameter(torch.zeros(2, 3, 4)))
    with pytest.raises(UnsupportedArchitectureError, match=r"LlamaForCausalLM.*layers\.1\.mlp\.mixing \(LlamaMLP"):
        weight_refs(model)
    del mlp.mixing
    model.model.layers[0].extra = torch.nn.Linear(HIDDEN, HIDDEN)  # a block weight in no known family
    with pytest.raises(UnsupportedArchitectureError, match=r"LlamaForCausalLM.*layers\.0\.extra\.weight.*block 0"):
        apply_edit(model, parse_edit_spec("quant_rtn:4:16:all"))
    del model.model.layers[0].extra
    model.model.layers[0].input_layernorm = _OddNorm()
    before = model_snapshot(model)
    with pytest.raises(UnsupportedArchitectureError, match=r"LlamaForCausalLM.*model\.layers\.0\.input_layernorm"):
        apply_fault(model, "rmt_norm_noise", {"INVARLOCK_RMT_NORM_NOISE_SCALE": "0.1",
                                              "INVARLOCK_RMT_NORM_MAX_MODULES": "4"})  # every norm of both blocks
    assert _changed(model, before) == []  # the norms perturbed before the odd one are restored


def _tiny_gemma3_multimodal() -> Any:
    """Gemma3ForConditionalGeneration: a SigLIP vision tower (its own ``encoder.layers``) beside the language model."""
    if getattr(transformers, "Gemma3ForConditionalGeneration", None) is None:
        pytest.skip(f"transformers {transformers.__version__} has no Gemma3ForConditionalGeneration")
    text = {**ARCHS["gemma3"].kwargs, "vocab_size": VOCAB + 8}
    vision = {"hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_hidden_layers": 2,
              "num_attention_heads": 4, "image_size": 28, "patch_size": 14, "vision_use_head": False}
    cfg = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                    boi_token_index=VOCAB + 5, eoi_token_index=VOCAB + 6, image_token_index=VOCAB + 7)
    torch.manual_seed(0)
    return transformers.Gemma3ForConditionalGeneration(cfg).eval()


def test_a_vision_tower_lies_outside_every_scope_and_fault() -> None:
    model = _tiny_gemma3_multimodal()
    blocks = "model.language_model.layers."
    assert find_blocks(model)[0] == blocks[:-1]
    refs = weight_refs(model)
    in_blocks = {r.key for r in refs if r.layer is not None}
    assert in_blocks and all(k.startswith(blocks) for k in in_blocks)
    vision = [r for r in refs if "vision_tower" in r.name]
    assert vision and {(r.family, r.layer) for r in vision} <= {("other", None), ("embed", None)}
    (patch,) = [r for r in vision if r.layout == "conv"]  # the patch embedding's [out, 3, 14, 14] kernel
    assert matrix(model, patch).shape == (HIDDEN, 3 * 14 * 14)
    assert matrix(model, patch).data_ptr() == model.get_parameter(patch.name).data_ptr()
    before = model_snapshot(model)
    with apply_edit(model, parse_edit_spec("quant_rtn:4:16:all")) as change:
        assert set(change.metadata["modules_touched"]) == {r.key for r in refs if r.family != "embed"} & in_blocks
    for fault, env in (("nan_injection", {}), ("rmt_norm_noise", {"INVARLOCK_RMT_NORM_NOISE_SCALE": "0.1"})):
        with apply_fault(model, fault, env) as change:
            assert all(m.startswith(blocks) for m in change.metadata["modified_params"]), fault
    with apply_fault(model, "extreme_quant", {}):  # every matrix, vision tower (its conv kernel too) included
        assert not _bits_equal(matrix(model, patch), before["tensors"][f"p:{patch.name}"].view(HIDDEN, -1))
    assert _changed(model, before) == []
