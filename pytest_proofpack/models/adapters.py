"""Architecture adapters: which weights of a causal LM are attention, FFN, experts, router, norms, embeddings, head.

Everything that edits, faults or inspects weights goes through :func:`weight_refs`, so a GPT-2 ``Conv1D`` (stored
``[in, out]``), a LLaMA ``nn.Linear`` (``[out, in]``) and a fused MoE expert tensor (``[experts, out, in]``, as in
transformers 5 Mixtral/Qwen2-MoE) are all seen as plain ``[out, in]`` matrices through :func:`matrix`.

Classification is by standard Hugging Face module naming, never by model name:

* ``embed``: ``nn.Embedding`` modules (``embed_tokens``, ``wte``, ``wpe``, ``word_embeddings``);
* ``router``: an MoE router, i.e. a module whose last name component is ``gate``/``router`` *inside an MLP/MoE
  block* (``mlp.gate``, ``block_sparse_moe.gate``). LLaMA's ``mlp.gate_proj`` is FFN, not a router;
* ``expert_ffn``: weights under an ``experts`` container (fused 3-D tensors or per-expert ``w1/w2/w3``);
* ``attn``: weights under an attention block (``self_attn``, ``attn``, ``attention``);
* ``ffn``: weights under ``mlp``/``feed_forward``/``ffn``/``block_sparse_moe`` that are not experts or router;
* ``other``: anything else outside the blocks, e.g. an untied ``lm_head`` (its ``role`` is ``head``) or the
  weights of a multimodal model's vision tower (blocks of their own, but not the language model's).

Only weights under the language model's block list (:func:`find_blocks`) carry a ``layer``, so an edit scope or a
fault never reaches a vision encoder's blocks. A weight the engine cannot interpret is an
:class:`UnsupportedArchitectureError` naming it, its module class and the model class, never skipped: a block weight
that is neither attention nor FFN (nor expert, router or embedding), or a parameter of three or more dimensions that
is neither a fused expert tensor nor a convolution kernel.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from pytest_proofpack.errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    import torch
    from torch import nn

Family = Literal["attn", "ffn", "expert_ffn", "router", "embed", "other"]
FAMILIES: Final[tuple[str, ...]] = ("attn", "ffn", "expert_ffn", "router", "embed", "other")

_ATTN_TOKENS: Final = ("self_attn", "attn", "attention", "self_attention")
_FFN_TOKENS: Final = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe")
_ROLE_BY_LEAF: Final[dict[str, str]] = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "query": "q", "key": "k", "value": "v",
    "c_attn": "qkv", "qkv_proj": "qkv", "query_key_value": "qkv", "wqkv": "qkv", "W_pack": "qkv",
    "o_proj": "attn_out", "out_proj": "attn_out", "dense": "attn_out",
    "gate_proj": "ffn_gate", "w1": "ffn_gate",
    "up_proj": "ffn_up", "w3": "ffn_up", "c_fc": "ffn_up", "fc1": "ffn_up", "dense_h_to_4h": "ffn_up",
    "down_proj": "ffn_down", "w2": "ffn_down", "fc2": "ffn_down", "dense_4h_to_h": "ffn_down",
    "gate_up_proj": "ffn_gate_up",
}
_BLOCK_PATHS: Final = (
    "model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers",
    "transformer.blocks", "layers", "h",
)
#: weight leaves of MoE gates other than the router itself (Qwen2-MoE's scalar ``shared_expert_gate``)
_GATE_SUFFIX: Final = "expert_gate"
_BLOCK_FAMILIES: Final = frozenset({"attn", "ffn", "expert_ffn", "router"})
Layout = Literal["linear", "conv1d", "expert", "expert_t", "conv", "embedding"]


@dataclass(frozen=True)
class WeightRef:
    """One weight matrix of the model.

    ``name`` is the parameter's qualified name, ``module`` its owning module's name, ``expert`` the index into a
    fused ``[experts, out, in]`` tensor (else ``None``), ``layout`` how the stored tensor maps to ``[out, in]``:
    ``linear`` (as stored), ``conv1d`` (transposed, GPT-2), ``expert`` (slice ``expert`` of a 3-D ``[experts, out,
    in]`` tensor), ``expert_t`` (slice of an ``[experts, in, out]`` tensor, transposed: experts modules with
    ``is_transposed``, e.g. GPT-OSS), ``conv`` (a convolution kernel ``[out, in, *k]`` flattened to ``[out, in*k]``)
    or ``embedding``.
    ``role`` is one of q/k/v/qkv/attn_out/ffn_gate/ffn_up/ffn_gate_up/ffn_down/router/embed/head/other.
    """

    name: str
    module: str
    family: str
    role: str
    layer: int | None
    layout: Layout
    expert: int | None = None

    @property
    def key(self) -> str:
        """A unique, stable name for this matrix (``name`` plus ``[e<expert>]`` for fused experts)."""
        return self.name if self.expert is None else f"{self.name}[e{self.expert}]"


def block_layer(name: str, block_path: str) -> int | None:
    """The index of the block of the list at ``block_path`` (see :func:`find_blocks`) that the qualified ``name``
    lies in, or ``None`` when it lies outside that list."""
    prefix = block_path + "."
    if not name.startswith(prefix):
        return None
    index = name[len(prefix) :].split(".", 1)[0]
    return int(index) if index.isdigit() else None


def classify(name: str, module_type: str, *, is_embedding: bool = False) -> tuple[str, str]:
    """Return ``(family, role)`` for a weight named ``name`` owned by a module of class ``module_type``."""
    parts = name.split(".")
    if parts and parts[-1] in ("weight", "bias"):
        parts = parts[:-1]
    leaf = parts[-1] if parts else ""
    lowered = [p.lower() for p in parts]
    if is_embedding or "embedding" in module_type.lower():
        return "embed", "embed"
    if "experts" in lowered:
        role = _ROLE_BY_LEAF.get(leaf, "ffn")
        return "expert_ffn", role if role.startswith("ffn") else "ffn"
    in_ffn = any(p in _FFN_TOKENS for p in lowered[:-1])
    if in_ffn and (leaf.lower() in ("gate", "router", "gating", "switch") or leaf.lower().endswith(_GATE_SUFFIX)):
        return "router", "router"
    if any(p in _ATTN_TOKENS for p in lowered[:-1]):
        role = _ROLE_BY_LEAF.get(leaf, "attn_other")
        if leaf == "c_proj":
            role = "attn_out"
        return "attn", role
    if in_ffn:
        role = _ROLE_BY_LEAF.get(leaf, "ffn_other")
        if leaf == "c_proj":
            role = "ffn_down"
        return "ffn", role
    if leaf in ("lm_head", "embed_out", "output") or leaf.endswith("head"):
        return "other", "head"
    return "other", "other"


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return ``(path, ModuleList)`` of the model's transformer blocks.

    Raises :class:`UnsupportedArchitectureError` naming the module tree's first levels when none is found.
    """
    from torch import nn

    for path in _BLOCK_PATHS:
        obj: object = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return path, obj
    tree = ", ".join(
        f"{n}: {type(m).__name__}" for n, m in model.named_modules() if n and n.count(".") <= 1
    )
    raise UnsupportedArchitectureError(
        f"unsupported architecture {type(model).__name__}: no transformer block list found at any of "
        f"{', '.join(_BLOCK_PATHS)}; module tree starts with [{tree[:400]}]; the engine supports models whose "
        "transformer blocks are an nn.ModuleList at one of those paths"
    )


def _unsupported(
    model: nn.Module, pname: str, param: torch.Tensor, mtype: str, why: str
) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(
        f"unsupported architecture {type(model).__name__}: parameter {pname} ({mtype or 'no module'}, shape "
        f"{list(param.shape)}) {why}; the engine cannot edit, fault or guard it, and does not skip it silently"
    )


def _layout(model: nn.Module, pname: str, param: torch.Tensor, module: nn.Module | None, family: str) -> Layout:
    """How the stored ``param`` maps to ``[out, in]``; raises for a tensor the engine cannot read as matrices."""
    from torch import nn

    mtype = type(module).__name__ if module is not None else ""
    if isinstance(module, nn.Embedding):
        return "embedding"
    if param.dim() == 2:
        return "conv1d" if mtype == "Conv1D" else "linear"
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):  # [out, in, *k]; a transposed conv is [in, out, *k]
        if not param.is_contiguous():  # the flattened [out, in*k] view must share the kernel's storage
            raise _unsupported(model, pname, param, mtype, "is a non-contiguous convolution kernel")
        return "conv"
    if param.dim() == 3 and family == "expert_ffn":
        return "expert_t" if getattr(module, "is_transposed", False) is True else "expert"
    raise _unsupported(
        model, pname, param, mtype,
        f"has {param.dim()} dimensions but is neither a fused expert tensor [experts, out, in] under an "
        "'experts' module nor a convolution kernel",
    )


def weight_refs(model: nn.Module) -> list[WeightRef]:
    """Every weight matrix of the model: 2-D weights, each expert slice of 3-D fused expert tensors and
    convolution kernels (biases, 1-D or the 2-D ``[experts, out]`` biases of fused experts, are not matrices).

    Tied parameters are listed once, under their first name. Order follows ``named_parameters``. Raises
    :class:`UnsupportedArchitectureError` for a weight the engine cannot interpret (see the module docstring).
    """
    from torch import nn

    block_path, _ = find_blocks(model)  # fail early and clearly on unknown architectures
    module_of = dict(model.named_modules())
    seen: set[int] = set()
    refs: list[WeightRef] = []
    for pname, param in model.named_parameters(remove_duplicate=False):
        leaf = pname.rsplit(".", 1)[-1]
        if id(param) in seen or param.dim() < 2 or leaf == "bias" or leaf.endswith("_bias"):
            continue
        seen.add(id(param))
        mname = pname.rsplit(".", 1)[0] if "." in pname else ""
        module = module_of.get(mname)
        mtype = type(module).__name__ if module is not None else ""
        family, role = classify(pname, mtype, is_embedding=isinstance(module, nn.Embedding))
        layer = block_layer(pname, block_path)
        if layer is None and family in _BLOCK_FAMILIES:
            family, role = "other", "other"  # e.g. a vision encoder's blocks: not the language model's
        if layer is not None and family == "other":
            raise _unsupported(
                model, pname, param, mtype,
                f"lies in block {layer} of {block_path} but is neither attention ({'/'.join(_ATTN_TOKENS)}), FFN "
                f"({'/'.join(_FFN_TOKENS)}), MoE expert/router nor embedding",
            )
        layout = _layout(model, pname, param, module, family)
        if layout in ("expert", "expert_t"):
            refs.extend(WeightRef(pname, mname, family, role, layer, layout, e) for e in range(param.shape[0]))
        else:
            refs.append(WeightRef(pname, mname, family, role, layer, layout))
    return refs


def parameter(model: nn.Module, ref: WeightRef) -> torch.nn.Parameter:
    """The stored parameter behind ``ref``."""
    return model.get_parameter(ref.name)


def matrix(model: nn.Module, ref: WeightRef) -> torch.Tensor:
    """A view of ``ref`` as ``[out, in]`` sharing storage with the parameter (writes go through)."""
    p = parameter(model, ref).data
    if ref.layout == "conv1d":
        return p.t()
    if ref.layout in ("expert", "expert_t"):
        assert ref.expert is not None
        return p[ref.expert].t() if ref.layout == "expert_t" else p[ref.expert]
    if ref.layout == "conv":
        return p.view(p.shape[0], -1)
    return p


def norm_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Normalisation modules of any class (LayerNorm, RMSNorm, …): class name contains ``Norm``."""
    for name, module in model.named_modules():
        if "norm" in type(module).__name__.lower() and any(True for _ in module.parameters(recurse=False)):
            yield name, module


def norm_weight_offset(model: nn.Module, name: str) -> float:
    """What norm module ``name`` adds to its weight before scaling: ``0.0`` for ``x̂ · w`` (LayerNorm, LLaMA's
    RMSNorm), ``1.0`` for ``x̂ · (1 + w)`` (Gemma's RMSNorm, whose weight starts at zero).

    Measured, not looked up by class: the module runs twice on a fixed input through ``torch.func.functional_call``
    (its parameters and buffers untouched), with its weight set to 0 and to 1 and its bias to 0; for an output
    ``x̂ · (c + w)`` those give ``c · x̂`` and ``(c + 1) · x̂``. Raises :class:`UnsupportedArchitectureError`
    naming the module and the model class when the module has no 1-D weight, cannot run on a ``[2, d]`` input, or
    its output is not of that form with ``c`` 0 or 1.
    """
    import torch
    from torch.func import functional_call

    module = model.get_submodule(name)
    weight = getattr(module, "weight", None)
    where = f"unsupported architecture {type(model).__name__}: norm module {name} ({type(module).__name__})"
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        raise UnsupportedArchitectureError(f"{where} has no 1-D weight; the engine cannot perturb its scale")
    # buffers are passed as clones so that a module that updates running statistics leaves the model's alone
    state = {n: b.clone() for n, b in module.named_buffers()}
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        state["bias"] = torch.zeros_like(bias)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, weight.shape[0], generator=gen).to(device=weight.device, dtype=weight.dtype)
    try:
        with torch.no_grad():
            at_zero = functional_call(module, {**state, "weight": torch.zeros_like(weight)}, (x,)).float()
            at_one = functional_call(module, {**state, "weight": torch.ones_like(weight)}, (x,)).float()
    except Exception as exc:  # any failure here means the module is not a norm over the last dimension
        raise UnsupportedArchitectureError(f"{where} cannot run on a [2, {weight.shape[0]}] input: {exc}") from None
    unit = at_one - at_zero  # x̂
    scale = float(unit.abs().max())
    for offset in (0.0, 1.0):
        if scale > 0.0 and float((at_zero - offset * unit).abs().max()) <= 0.05 * scale:
            return offset
    raise UnsupportedArchitectureError(
        f"{where} does not scale its normalised input by its weight w or by 1 + w; the engine cannot perturb it"
    )


def tied_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(input_embedding_name, output_embedding_name)`` pairs that share storage right now."""
    pairs: list[tuple[str, str]] = []
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return pairs
    emb, head = get_in(), get_out()
    if emb is None or head is None:
        return pairs
    if emb.weight.data_ptr() == head.weight.data_ptr():
        names = {id(m): n for n, m in model.named_modules()}
        pairs.append((names.get(id(emb), "input_embeddings"), names.get(id(head), "output_embeddings")))
    return pairs


def describe(model: nn.Module) -> dict[str, object]:
    """A JSON-able summary: block path, layer count, families and their matrix counts, tying, model type."""
    path, blocks = find_blocks(model)
    refs = weight_refs(model)
    counts: dict[str, int] = dict.fromkeys(FAMILIES, 0)
    for r in refs:
        counts[r.family] = counts.get(r.family, 0) + 1
    cfg = getattr(model, "config", None)
    return {
        "model_class": type(model).__name__,
        "model_type": getattr(cfg, "model_type", ""),
        "block_path": path,
        "n_layers": len(blocks),
        "matrices_by_family": counts,
        "tied": bool(tied_pairs(model)),
        "norms": sum(1 for _ in norm_modules(model)),
        "moe": counts.get("expert_ffn", 0) > 0,
    }
