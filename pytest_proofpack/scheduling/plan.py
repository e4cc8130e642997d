"""How much accelerator memory a model's scenarios need, and how many devices that takes.

The estimate is deliberately simple and explicit; every term is a number a reviewer can check by hand. Sizes
are in GiB (2**30 bytes). For a model with ``P`` parameters and :class:`PlanSettings` ``s``:

``weights_gb``
    ``P × s.dtype_bytes`` — the loaded baseline (bf16/fp16 by default).
``activation_gb``
    Peak memory of one forward pass of ``s.batch_size × s.seq_len`` tokens under ``no_grad``:

    * logits ``B·S·V·4`` bytes — the loss is computed in fp32, so the full logits tensor exists in fp32;
    * hidden states ``(L+1)·B·S·h·dtype_bytes`` — every layer's output, because the RMT and variance guards
      read per-layer activations (``output_hidden_states``);
    * KV cache ``2·L·B·S·kv_heads·(h/heads)·dtype_bytes`` — counted although evaluation may disable the cache,
      so the estimate stays an upper bound.

    With a Hugging Face config (``num_hidden_layers``, ``hidden_size``, ``num_key_value_heads``,
    ``num_attention_heads``, ``vocab_size``) those are used. Without one, a dense-transformer shape is derived
    from the parameter count: ``P ≈ 12·L·h²`` with the common aspect ratio ``h = 128·L`` (LLaMA-7B: L=32,
    h=4096), no grouped-query attention (``kv_heads = heads``, an over-estimate) and a 128 256-token
    vocabulary (Llama-3 size, the largest common one, again an over-estimate).
``edit_overhead_gb``
    ``largest weight matrix in fp32 + s.edit_overhead_frac × weights`` — edits (quantisation, SVD, pruning)
    upcast one matrix at a time to fp32, and the guards keep baseline statistics and the restore copies of the
    touched tensors (the fraction).
``overhead_gb``
    ``s.overhead_gb`` — CUDA context, cuBLAS workspaces and allocator fragmentation.

``need_gb`` is the sum; ``required_gpus = ceil(need / (device_gb × s.usable_frac))`` (at least 1), where
``usable_frac`` leaves head-room for what the driver and fragmentation take. In CPU mode (``device_gb <= 0``)
the plan still reports the memory terms, but ``required_gpus`` is 1 and the scheduler does not gate on memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_proofpack.models import ModelEntry

_GIB = float(2**30)
DEFAULT_VOCAB = 128_256
HEAD_DIM = 128


@dataclass
class PlanSettings:
    """Knobs of the memory estimate (see the module docstring for each term).

    ``dtype_bytes``: bytes per weight as loaded (2 = bf16/fp16). ``batch_size``/``seq_len``: the evaluation
    batch. ``overhead_gb``: fixed per-process overhead. ``edit_overhead_frac``: share of the weights added for
    edits and guards. ``usable_frac``: share of a device's memory the plan may fill (also applied to live free
    memory when gating).
    """

    dtype_bytes: int = 2
    batch_size: int = 8
    seq_len: int = 512
    overhead_gb: float = 2.0
    edit_overhead_frac: float = 0.10
    usable_frac: float = 0.92


@dataclass
class ModelPlan:
    """The memory plan of one model: the terms (GiB), their sum and the devices it needs.

    ``need_gb = weights_gb + activation_gb + overhead_gb``; ``overhead_gb`` is the fixed overhead plus the
    edit/guard overhead, which is also given alone as ``edit_overhead_gb``.
    """

    key: str
    params_b: float
    weights_gb: float
    activation_gb: float
    overhead_gb: float
    need_gb: float
    required_gpus: int
    edit_overhead_gb: float = 0.0


@dataclass(frozen=True)
class _Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    vocab: int
    intermediate: int


def _shape_from_config(config: Mapping[str, Any]) -> _Shape:
    layers = int(config["num_hidden_layers"])
    hidden = int(config["hidden_size"])
    heads = int(config.get("num_attention_heads") or max(1, hidden // HEAD_DIM))
    kv_heads = int(config.get("num_key_value_heads") or heads)
    vocab = int(config.get("vocab_size") or DEFAULT_VOCAB)
    inter = int(config.get("intermediate_size") or config.get("n_inner") or 4 * hidden)
    return _Shape(layers, hidden, heads, kv_heads, vocab, inter)


def _shape_from_params(params_b: float) -> _Shape:
    # P = 12·L·h² and h = 128·L  ⇒  h³ = 128·P/12.
    hidden = max(HEAD_DIM, round((params_b * 1e9 * HEAD_DIM / 12) ** (1 / 3) / HEAD_DIM) * HEAD_DIM)
    layers = max(1, hidden // HEAD_DIM)
    heads = max(1, hidden // HEAD_DIM)
    return _Shape(layers, hidden, heads, heads, DEFAULT_VOCAB, 4 * hidden)


def plan_model(
    entry: ModelEntry,
    settings: PlanSettings,
    device_gb: float,
    config: Mapping[str, Any] | None = None,
) -> ModelPlan:
    """Estimate ``entry``'s memory need and how many devices of ``device_gb`` GiB it takes.

    ``config`` is the model's Hugging Face ``config.json`` as a mapping, when known; it must carry
    ``num_hidden_layers`` and ``hidden_size`` to be used (otherwise the parameter heuristic applies).
    ``device_gb <= 0`` means CPU mode: ``required_gpus`` is 1.
    """
    shape = (
        _shape_from_config(config)
        if config is not None and "num_hidden_layers" in config and "hidden_size" in config
        else _shape_from_params(entry.params_b)
    )
    db = settings.dtype_bytes
    tokens = settings.batch_size * settings.seq_len
    weights = entry.params_b * 1e9 * db / _GIB
    logits = tokens * shape.vocab * 4
    hidden_states = (shape.layers + 1) * tokens * shape.hidden * db
    kv = 2 * shape.layers * tokens * shape.kv_heads * (shape.hidden // shape.heads) * db
    activation = (logits + hidden_states + kv) / _GIB
    largest = max(shape.vocab * shape.hidden, shape.hidden * shape.intermediate, shape.hidden * shape.hidden)
    edit = largest * 4 / _GIB + settings.edit_overhead_frac * weights
    need = weights + activation + edit + settings.overhead_gb
    if device_gb <= 0:
        required = 1
    else:
        required = max(1, math.ceil(need / (device_gb * settings.usable_frac)))
    return ModelPlan(
        key=entry.key,
        params_b=entry.params_b,
        weights_gb=weights,
        activation_gb=activation,
        overhead_gb=edit + settings.overhead_gb,
        need_gb=need,
        required_gpus=required,
        edit_overhead_gb=edit,
    )
