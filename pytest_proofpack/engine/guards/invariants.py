"""Invariants guard: structural and numerical sanity of the subject against the baseline's snapshot.

:func:`snapshot` records (JSON) every parameter's and buffer's shape and dtype, the embedding vocab sizes, the
config's vocab/layer/hidden sizes, the actual block count, the weight-tying pairs and the norm modules (any class
whose name contains ``Norm``: LayerNorm, RMSNorm, ...). :func:`validate` re-snapshots the subject, checks every
floating tensor for non-finite values (parameters *and* buffers) and compares.

Every failure is ``{check, severity, detail}``; severity ``fatal`` makes the status ``fail``, ``warning`` makes it
``warn``, else it is ``pass``. A check that raises has no status: the guard chain makes the whole run an error
(:mod:`pytest_proofpack.engine.guard_chain`).
"""

from __future__ import annotations

from typing import Any

from pytest_proofpack.engine.finite import all_finite
from pytest_proofpack.models.adapters import find_blocks, norm_modules, tied_pairs

_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")


def _config_int(cfg: Any, keys: tuple[str, ...]) -> int | None:
    for k in keys:
        v = getattr(cfg, k, None)
        if isinstance(v, int):
            return v
    return None


def snapshot(model: Any) -> dict[str, Any]:
    """A JSON-serialisable structural snapshot of ``model`` (no tensor data)."""
    from torch import nn

    tensors: dict[str, list[object]] = {}
    for name, p in model.named_parameters():
        tensors[name] = [list(p.shape), str(p.dtype).replace("torch.", "")]
    for name, b in model.named_buffers():
        tensors[name] = [list(b.shape), str(b.dtype).replace("torch.", "")]
    vocab = {n: int(m.num_embeddings) for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_rows = (
        int(head.weight.shape[0]) if head is not None and getattr(head, "weight", None) is not None else None
    )
    cfg = getattr(model, "config", None)
    try:
        block_path, blocks = find_blocks(model)
        n_blocks: int | None = len(blocks)
    except Exception:  # a structurally broken subject must still snapshot; the comparison reports it
        block_path, n_blocks = "", None
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return {
        "tensors": tensors,
        "parameter_count": int(sum(p.numel() for p in model.parameters())),
        "embedding_vocab_sizes": vocab,
        "head_rows": head_rows,
        "embedding_dim": int(emb.weight.shape[1]) if emb is not None else None,
        "config_vocab_size": getattr(cfg, "vocab_size", None),
        "config_layers": _config_int(cfg, _LAYER_KEYS),
        "config_hidden": _config_int(cfg, _HIDDEN_KEYS),
        "block_path": block_path,
        "n_blocks": n_blocks,
        "tied_pairs": [list(p) for p in tied_pairs(model)],
        "norms": sorted(n for n, _ in norm_modules(model)),
    }


def non_finite_tensors(model: Any) -> list[str]:
    """Names of floating parameters and buffers holding NaN or Inf (one host transfer for all flags)."""
    import torch

    names: list[str] = []
    flags: list[torch.Tensor] = []
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if t.is_floating_point() and t.numel():
                names.append(name)
                flags.append(~all_finite(t))
    if not flags:
        return []
    bad = torch.stack([f.to("cpu") for f in flags]).tolist()
    return [n for n, b in zip(names, bad, strict=True) if b]


def _fail(check: str, detail: str, severity: str = "fatal") -> dict[str, str]:
    return {"check": check, "severity": severity, "detail": detail}


def compare(base: dict[str, Any], now: dict[str, Any]) -> list[dict[str, str]]:
    """Failures of snapshot ``now`` against baseline snapshot ``base`` (see the module docstring). A changed
    parameter count is a warning, reported only when nothing else explains it."""
    out = [
        *_tensor_failures(base["tensors"], now["tensors"]),
        *_vocab_failures(base, now),
        *_structure_failures(base, now),
        *_layer_failures(base, now),
    ]
    if base["parameter_count"] != now["parameter_count"] and not out:
        out.append(_fail("parameter_count", f"{base['parameter_count']} -> {now['parameter_count']}", "warning"))
    return out


def _tensor_failures(base: dict[str, list[Any]], now: dict[str, list[Any]]) -> list[dict[str, str]]:
    """Missing and extra tensors, then each common tensor's shape and dtype, in name order."""
    out: list[dict[str, str]] = []
    missing = sorted(set(base) - set(now))
    extra = sorted(set(now) - set(base))
    if missing:
        out.append(_fail("missing_tensors", f"{len(missing)} missing, e.g. {', '.join(missing[:5])}"))
    if extra:
        out.append(_fail("extra_tensors", f"{len(extra)} extra, e.g. {', '.join(extra[:5])}"))
    for name in sorted(set(base) & set(now)):
        (base_shape, base_dtype), (now_shape, now_dtype) = base[name], now[name]
        if list(base_shape) != list(now_shape):
            out.append(_fail("tensor_shape", f"{name}: {base_shape} -> {now_shape}"))
        if base_dtype != now_dtype:
            out.append(_fail("tensor_dtype", f"{name}: {base_dtype} -> {now_dtype}"))
    return out


def _vocab_failures(base: dict[str, Any], now: dict[str, Any]) -> list[dict[str, str]]:
    """Embedding and head vocabulary sizes against the baseline's, and the head against the config's vocabulary."""
    out: list[dict[str, str]] = []
    if base["embedding_vocab_sizes"] != now["embedding_vocab_sizes"] or base["head_rows"] != now["head_rows"]:
        out.append(
            _fail(
                "vocab_size",
                f"embeddings {base['embedding_vocab_sizes']} head {base['head_rows']} -> "
                f"{now['embedding_vocab_sizes']} head {now['head_rows']}",
            )
        )
    if base["config_vocab_size"] != now["config_vocab_size"]:
        out.append(_fail("config_vocab_size", f"{base['config_vocab_size']} -> {now['config_vocab_size']}"))
    config_vocab = now["config_vocab_size"]
    if isinstance(config_vocab, int) and now["head_rows"] is not None and now["head_rows"] < config_vocab:
        out.append(_fail("vocab_vs_config", f"output embedding has {now['head_rows']} rows < config {config_vocab}"))
    return out


def _structure_failures(base: dict[str, Any], now: dict[str, Any]) -> list[dict[str, str]]:
    """Weight tying and norm modules against the baseline's."""
    out: list[dict[str, str]] = []
    if base["tied_pairs"] != now["tied_pairs"]:
        out.append(_fail("weight_tying", f"tied pairs {base['tied_pairs']} -> {now['tied_pairs']}"))
    gone = sorted(set(base["norms"]) - set(now["norms"]))
    if gone:
        out.append(_fail("norm_missing", f"{len(gone)} norm modules gone, e.g. {', '.join(gone[:5])}"))
    return out


def _layer_failures(base: dict[str, Any], now: dict[str, Any]) -> list[dict[str, str]]:
    """The block list against the config's layer count, and block count, layer count and hidden size against the
    baseline's."""
    out: list[dict[str, str]] = []
    if now["n_blocks"] is None:
        out.append(_fail("blocks_missing", "no transformer block list found"))
    elif now["config_layers"] is not None and now["config_layers"] != now["n_blocks"]:
        out.append(_fail("layer_count", f"config says {now['config_layers']} layers, model has {now['n_blocks']}"))
    if base["n_blocks"] != now["n_blocks"] or base["config_layers"] != now["config_layers"]:
        out.append(
            _fail(
                "layer_count_changed",
                f"blocks {base['n_blocks']} -> {now['n_blocks']}, config "
                f"{base['config_layers']} -> {now['config_layers']}",
            )
        )
    if base["config_hidden"] != now["config_hidden"] or base["embedding_dim"] != now["embedding_dim"]:
        out.append(
            _fail(
                "hidden_size",
                f"config {base['config_hidden']} -> {now['config_hidden']}, embedding dim "
                f"{base['embedding_dim']} -> {now['embedding_dim']}",
            )
        )
    return out


def status_of(failures: list[dict[str, str]]) -> str:
    """``fail`` with a fatal failure, ``warn`` with warnings only, else ``pass``."""
    if any(f["severity"] == "fatal" for f in failures):
        return "fail"
    return "warn" if failures else "pass"


def validate(model: Any, base: dict[str, Any]) -> dict[str, Any]:
    """Check ``model`` against baseline snapshot ``base``: ``{status, failures, checks_performed,
    tensors_checked}``."""
    failures: list[dict[str, str]] = []
    bad = non_finite_tensors(model)
    if bad:
        failures.append(_fail("non_finite_tensor", f"{len(bad)} tensors, e.g. {', '.join(bad[:5])}"))
    now = snapshot(model)
    failures.extend(compare(base, now))
    return {
        "status": status_of(failures),
        "failures": failures,
        "checks_performed": [
            "non_finite_tensor",
            "missing_tensors",
            "extra_tensors",
            "tensor_shape",
            "tensor_dtype",
            "vocab_size",
            "config_vocab_size",
            "vocab_vs_config",
            "weight_tying",
            "norm_missing",
            "layer_count",
            "layer_count_changed",
            "hidden_size",
            "parameter_count",
        ],
        "tensors_checked": len(now["tensors"]),
    }
