"""Structural faults: ``shape_mismatch``, ``missing_tensors``, ``weight_tying_break``.

They swap parameters, modules and config values in place; every swap goes through
:meth:`AppliedChange.set_attr`, so ``restore`` puts the original objects (not copies) back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from pytest_proofpack.errors import SpecError
from pytest_proofpack.faults.types import FaultContext, FaultOutcome
from pytest_proofpack.models.adapters import find_blocks

if TYPE_CHECKING:
    from torch import nn

    from pytest_proofpack.edits.change import AppliedChange
    from pytest_proofpack.faults.registry import FaultRegistry

EXTRA_VOCAB: Final = 8
_LAYER_COUNT_KEYS: Final = ("num_hidden_layers", "n_layer", "num_layers")


def _configs(model: nn.Module) -> list[Any]:
    """The model's config and, when it is a separate object, its text config (multimodal wrappers)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return []
    out = [cfg]
    get_text = getattr(cfg, "get_text_config", None)
    text = get_text() if callable(get_text) else None
    if text is not None and text is not cfg:
        out.append(text)
    return out


def _set_config(
    change: AppliedChange, model: nn.Module, key: str, value: Any, *, only_if: Any = None
) -> bool:
    done = False
    for cfg in _configs(model):
        if hasattr(cfg, key) and (only_if is None or getattr(cfg, key) == only_if):
            change.set_attr(cfg, key, value)
            done = True
    return done


def _embeddings(model: nn.Module, fault: str) -> tuple[Any, Any]:
    # Any: modules are duck-typed here (Embedding-like with .weight, Linear-like head)
    get_in = getattr(model, "get_input_embeddings", None)
    emb = get_in() if callable(get_in) else None
    if emb is None or getattr(emb, "weight", None) is None:
        raise SpecError(f"fault {fault}: the model has no input embedding (get_input_embeddings) to corrupt")
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    return emb, head


def shape_mismatch(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    """Grow the vocabulary by 8 rows: embedding, untied head (and bias) zero-padded, tying kept,
    ``config.vocab_size`` updated."""
    import torch
    from torch import nn

    emb, head = _embeddings(model, ctx.error_type)
    old_w = emb.weight
    vocab = old_w.shape[0]
    pad = torch.zeros(EXTRA_VOCAB, *old_w.shape[1:], dtype=old_w.dtype, device=old_w.device)
    new_w = nn.Parameter(torch.cat([old_w.detach(), pad]), requires_grad=old_w.requires_grad)
    tied = head is not None and head.weight is old_w
    ch = ctx.change
    ch.set_attr(emb, "weight", new_w)
    if hasattr(emb, "num_embeddings"):
        ch.set_attr(emb, "num_embeddings", vocab + EXTRA_VOCAB)
    modified = ["input_embeddings"]
    if head is not None:
        if tied:
            ch.set_attr(head, "weight", new_w)
        else:
            hw = head.weight
            hpad = torch.zeros(EXTRA_VOCAB, *hw.shape[1:], dtype=hw.dtype, device=hw.device)
            ch.set_attr(
                head, "weight", nn.Parameter(torch.cat([hw.detach(), hpad]), requires_grad=hw.requires_grad)
            )
            bias = getattr(head, "bias", None)
            if bias is not None:
                bpad = torch.zeros(EXTRA_VOCAB, dtype=bias.dtype, device=bias.device)
                ch.set_attr(
                    head,
                    "bias",
                    nn.Parameter(torch.cat([bias.detach(), bpad]), requires_grad=bias.requires_grad),
                )
        if hasattr(head, "out_features"):
            ch.set_attr(head, "out_features", head.out_features + EXTRA_VOCAB)
        modified.append("output_embeddings")
    _set_config(ch, model, "vocab_size", vocab + EXTRA_VOCAB)
    return FaultOutcome(
        "resize_vocab", {"old_vocab": vocab, "new_vocab": vocab + EXTRA_VOCAB, "tied": tied}, modified, []
    )


def _parent(model: nn.Module, path: str) -> tuple[Any, str]:
    obj: Any = model
    *parents, leaf = path.split(".")
    for attr in parents:
        obj = getattr(obj, attr)
    return obj, leaf


def missing_tensors(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    """Drop the last transformer block; ``num_hidden_layers``/``n_layer``/``num_layers`` and config lists
    named
    ``*layer*`` of that length follow."""
    from torch import nn

    path, blocks = find_blocks(model)
    n = len(blocks)
    if n < 2:
        raise SpecError(
            f"fault {ctx.error_type}: the model has {n} block(s) at {path}; dropping one needs >= 2"
        )
    parent, leaf = _parent(model, path)
    ctx.change.set_attr(parent, leaf, nn.ModuleList(list(blocks)[:-1]))
    config_keys: list[str] = []
    for key in _LAYER_COUNT_KEYS:
        if _set_config(ctx.change, model, key, n - 1, only_if=n):
            config_keys.append(key)
    for cfg in _configs(model):
        for key, value in list(vars(cfg).items()):
            if "layer" in key.lower() and isinstance(value, list | tuple) and len(value) == n:
                ctx.change.set_attr(cfg, key, type(value)(value[:-1]))
                config_keys.append(key)
    return FaultOutcome(
        "drop_last_block", {"block_path": path, "config_keys": config_keys}, [f"{path}.{n - 1}"], [n - 1]
    )


def weight_tying_break(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    """Untie a tied LM head (own cloned Parameter, ``tie_word_embeddings=False``), or tie an untied one."""
    from torch import nn

    emb, head = _embeddings(model, ctx.error_type)
    if head is None or getattr(head, "weight", None) is None:
        raise SpecError(
            f"fault {ctx.error_type}: the model has no output embedding (LM head) to untie or tie"
        )
    if head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr():
        clone = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
        ctx.change.set_attr(head, "weight", clone)
        _set_config(ctx.change, model, "tie_word_embeddings", False)
        return FaultOutcome("untie", {"was_tied": True}, ["output_embeddings"], [])
    if tuple(head.weight.shape) != tuple(emb.weight.shape):
        raise SpecError(
            f"fault {ctx.error_type}: cannot tie head {tuple(head.weight.shape)} to embedding "
            f"{tuple(emb.weight.shape)} (shapes differ)"
        )
    ctx.change.set_attr(head, "weight", emb.weight)
    _set_config(ctx.change, model, "tie_word_embeddings", True)
    return FaultOutcome("tie", {"was_tied": False}, ["output_embeddings"], [])


def register(reg: FaultRegistry) -> None:
    reg.register("shape_mismatch", shape_mismatch, description="vocabulary +8 rows (embedding and head)")
    reg.register("missing_tensors", missing_tensors, description="last transformer block dropped")
    reg.register("weight_tying_break", weight_tying_break, description="LM head tying flipped")
