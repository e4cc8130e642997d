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
* ``other``: anything else, e.g. an untied ``lm_head`` (its ``role`` is ``head``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from pytest_proofpack.errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    import torch
    from torch import nn

Family = Literal["attn", "ffn", "expert_ffn", "router", "embed", "other"]
FAMILIES: Final[tuple[str, ...]] = ("attn", "ffn", "expert_ffn", "router", "embed", "other")

_LAYER_RE: Final = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer|decoder_layers)\.(\d+)(?:\.|$)")
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


@dataclass(frozen=True)
class WeightRef:
    """One weight matrix of the model.

    ``name`` is the parameter's qualified name, ``module`` its owning module's name, ``expert`` the index into a
    fused ``[experts, out, in]`` tensor (else ``None``), ``layout`` how the stored tensor maps to ``[out, in]``:
    ``linear`` (as stored), ``conv1d`` (transposed, GPT-2) or ``expert`` (slice ``expert`` of a 3-D tensor).
    ``role`` is one of q/k/v/qkv/attn_out/ffn_gate/ffn_up/ffn_gate_up/ffn_down/router/embed/head/other.
    """

    name: str
    module: str
    family: str
    role: str
    layer: int | None
    layout: Literal["linear", "conv1d", "expert", "embedding"]
    expert: int | None = None

    @property
    def key(self) -> str:
        """A unique, stable name for this matrix (``name`` plus ``[e<expert>]`` for fused experts)."""
        return self.name if self.expert is None else f"{self.name}[e{self.expert}]"


def layer_index(name: str) -> int | None:
    """The transformer block index inside a qualified name, or ``None`` outside the blocks."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


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
    if in_ffn and leaf.lower() in ("gate", "router", "gating", "switch"):
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
        f"{', '.join(_BLOCK_PATHS)}; module tree starts with [{tree[:400]}]; register an adapter with the "
        "pytest_proofpack_adapter hook or rename the block list"
    )


def weight_refs(model: nn.Module) -> list[WeightRef]:
    """Every weight matrix of the model (2-D weights, and each expert slice of 3-D fused expert tensors).

    Tied parameters are listed once, under their first name. Order follows ``named_parameters``.
    """
    from torch import nn

    find_blocks(model)  # fail early and clearly on unknown architectures
    module_of = dict(model.named_modules())
    seen: set[int] = set()
    refs: list[WeightRef] = []
    for pname, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen or param.dim() < 2:
            continue
        seen.add(id(param))
        mname = pname.rsplit(".", 1)[0] if "." in pname else ""
        module = module_of.get(mname)
        mtype = type(module).__name__ if module is not None else ""
        is_emb = isinstance(module, nn.Embedding)
        family, role = classify(pname, mtype, is_embedding=is_emb)
        layer = layer_index(pname)
        if param.dim() == 3:
            for e in range(param.shape[0]):
                refs.append(WeightRef(pname, mname, family, role, layer, "expert", e))
            continue
        if param.dim() != 2:
            continue
        layout: Literal["linear", "conv1d", "expert", "embedding"]
        if is_emb:
            layout = "embedding"
        elif mtype == "Conv1D":
            layout = "conv1d"
        else:
            layout = "linear"
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
    if ref.layout == "expert":
        assert ref.expert is not None
        return p[ref.expert]
    return p


def norm_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Normalisation modules of any class (LayerNorm, RMSNorm, …): class name contains ``Norm``."""
    for name, module in model.named_modules():
        if "norm" in type(module).__name__.lower() and any(True for _ in module.parameters(recurse=False)):
            yield name, module


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
