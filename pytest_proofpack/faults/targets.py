"""Target selection shared by the fault families, on top of the architecture adapter's weight refs."""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from pytest_proofpack.errors import SpecError
from pytest_proofpack.faults.env import EnvReader
from pytest_proofpack.models.adapters import WeightRef, weight_refs

if TYPE_CHECKING:
    import torch
    from torch import nn


QKV_ROLES: Final = frozenset({"q", "k", "v", "qkv"})
FAMILY_SETS: Final[dict[str, frozenset[str]]] = {
    "attn": frozenset({"attn"}),
    "ffn": frozenset({"ffn", "expert_ffn"}),
    "mlp": frozenset({"ffn", "expert_ffn"}),
    "both": frozenset({"attn", "ffn", "expert_ffn"}),
    "all": frozenset({"attn", "ffn", "expert_ffn", "router"}),
    "embed": frozenset({"embed"}),
}


# Substring filters use LLaMA-style leaf names (as the reference scenarios do); a filter that is one of these
# names also matches weights of the same role under other naming (GPT-2 c_fc/c_proj, Mixtral w1/w2/w3, ...).
ROLE_ALIASES: Final[dict[str, frozenset[str]]] = {
    "q_proj": frozenset({"q"}),
    "k_proj": frozenset({"k"}),
    "v_proj": frozenset({"v"}),
    "o_proj": frozenset({"attn_out"}),
    "out_proj": frozenset({"attn_out"}),
    "gate_proj": frozenset({"ffn_gate", "ffn_gate_up"}),
    "up_proj": frozenset({"ffn_up", "ffn_gate_up"}),
    "down_proj": frozenset({"ffn_down"}),
    "fc1": frozenset({"ffn_up"}),
    "fc2": frozenset({"ffn_down"}),
    "c_fc": frozenset({"ffn_up"}),
    "w1": frozenset({"ffn_gate"}),
    "w3": frozenset({"ffn_up"}),
    "w2": frozenset({"ffn_down"}),
}


def matches_filter(ref: WeightRef, substrings: Sequence[str]) -> bool:
    """True without filters; else when a substring occurs in the name or is an alias of the ref's role."""
    if not substrings:
        return True
    key = ref.key.lower()
    return any(s in key or ref.role in ROLE_ALIASES.get(s, frozenset()) for s in substrings)


def block_refs(model: nn.Module) -> list[WeightRef]:
    """Weight refs inside the transformer blocks, in parameter order."""
    return [r for r in weight_refs(model) if r.layer is not None]


def family_refs(
    model: nn.Module, family: str, *, substrings: Sequence[str] = (), include_qkv: bool = True
) -> list[WeightRef]:
    """Refs of a probe family (``attn|ffn|mlp|both|all|embed``), filtered by name substrings (any) and QKV."""
    fams = FAMILY_SETS[family]
    out = []
    for ref in weight_refs(model):
        if ref.family not in fams:
            continue
        if family != "embed" and ref.layer is None:
            continue
        if not matches_filter(ref, substrings):
            continue
        if not include_qkv and ref.family == "attn" and ref.role in QKV_ROLES:
            continue
        out.append(ref)
    return out


_RELATIVE_LAYERS: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s*-\s*(\d+(?:\.\d+)?)%\s*$")


def target_layers(env: EnvReader, key: str, available: Sequence[int], default_last: int) -> list[int]:
    """Layers from ``env[key]`` intersected with ``available``, else the last ``default_last``.

    ``env[key]`` is absolute (``a-b,c``: inclusive ranges of block indices) or relative to the model's depth
    (``P%-Q%``: the available layers whose position ``i / n`` lies in ``[P, Q]`` percent, at least the one
    nearest ``P``), so one scenario targets the same part of a 12-layer and of an 80-layer model.
    Raises :class:`SpecError` when ``env[key]`` names no available layer.
    """
    avail = sorted(set(available))
    relative = _RELATIVE_LAYERS.match(env.raw(key) or "")
    if relative and avail:
        lo, hi = float(relative.group(1)) / 100, float(relative.group(2)) / 100
        inside = [layer for i, layer in enumerate(avail) if lo <= i / len(avail) <= hi]
        return inside or [avail[min(len(avail) - 1, int(lo * len(avail)))]]
    wanted = env.layers(key)
    if wanted is None:
        return avail[-default_last:] if default_last > 0 else avail
    chosen = [i for i in wanted if i in set(avail)]
    if not chosen:
        rng = f"{avail[0]}-{avail[-1]}" if avail else "none"
        raise SpecError(
            f"fault {env.fault}: env {key}={env.raw(key)!r} selects no target layer; "
            f"layers with targets: {rng}"
        )
    return chosen


def by_layers(refs: Sequence[WeightRef], layers: Sequence[int]) -> list[WeightRef]:
    """Refs whose layer is in ``layers``, grouped in the order of ``layers`` (parameter order within)."""
    out: list[WeightRef] = []
    for layer in layers:
        out.extend(r for r in refs if r.layer == layer)
    return out


def shuffled(items: Sequence[WeightRef], seed: int, limit: int) -> list[WeightRef]:
    """A seeded shuffle, truncated to ``limit`` (``limit <= 0``: keep all)."""
    out = list(items)
    random.Random(seed).shuffle(out)
    return out[:limit] if limit > 0 else out


def require(refs: Sequence[WeightRef], fault: str, what: str) -> None:
    if not refs:
        raise SpecError(f"fault {fault}: the model has no {what} to corrupt")


def name_seed(seed: int, name: str) -> int:
    return (seed + zlib.crc32(name.encode())) & 0x7FFFFFFF


def generator(seed: int, device: torch.device) -> torch.Generator:
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
