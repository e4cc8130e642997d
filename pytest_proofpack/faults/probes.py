"""Subtle probe faults (scenario ids may add suffixes such as ``_strong``, ``_mlp``, ``_up``):

* ``rmt_norm_noise``: mode ``INVARLOCK_RMT_PROBE_MODE`` = ``anisotropy`` (default; ``norm_noise`` when only
  ``INVARLOCK_RMT_NORM_NOISE_SCALE`` is set) blends a fraction of a matrix's rows toward its first selected
  row; ``norm_noise`` multiplies norms' scales by ``clamp(1 + N(0, scale), 1 ± clamp)`` (the weight ``w``, or
  ``1 + w`` for a Gemma-style norm: see :func:`~pytest_proofpack.models.adapters.norm_weight_offset`);
  ``row_scale`` scales rows.
* ``spectral_moderate_scale``: whole matrices × ``INVARLOCK_SPECTRAL_SCALE_FACTOR`` (or paired up×f /
  down×1/f).
* ``ve_mlp_scale_skew``: MLP out-projections × ``INVARLOCK_VE_SCALE_FACTOR``.

Targets come from the architecture adapter's families (``attn``, ``ffn``/``mlp`` incl. experts, ``both``,
``all``), an optional comma list of name substrings, a layer spec ``a-b,c`` (default: the last N layers), then
a seeded shuffle capped at ``MAX_PARAMS``. ``SEED`` in the env wins over the ``seed`` argument.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pytest_proofpack.faults.targets import (
    FAMILY_SETS,
    by_layers,
    family_refs,
    generator,
    name_seed,
    require,
    shuffled,
    target_layers,
)
from pytest_proofpack.faults.types import FaultContext, FaultOutcome
from pytest_proofpack.models.adapters import (
    WeightRef,
    block_layer,
    find_blocks,
    matrix,
    norm_modules,
    norm_weight_offset,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pytest_proofpack.faults.env import EnvReader
    from pytest_proofpack.faults.registry import FaultRegistry

RMT: Final = "INVARLOCK_RMT_"
ANISO: Final = "INVARLOCK_RMT_ANISO_"
NORM: Final = "INVARLOCK_RMT_NORM_"
ROWS: Final = "INVARLOCK_RMT_ROW_SCALE_"
SPEC: Final = "INVARLOCK_SPECTRAL_"
VE: Final = "INVARLOCK_VE_"
_SELECTIONS: Final = ("first", "last", "random", "random_block", "top_norm")
_TARGET_KEYS: Final = ("TARGET_FAMILY", "TARGET_PARAMS", "TARGET_LAYERS", "MAX_PARAMS", "INCLUDE_QKV", "SEED")
_ANISO_KEYS: Final = frozenset(
    ANISO + k
    for k in ("BLEND", "ROW_FRAC", "MAX_ROWS", "PRESERVE_ROW_NORMS", "JITTER", "ROW_SELECTION", *_TARGET_KEYS)
)
_ROWS_KEYS: Final = frozenset(
    ROWS + k for k in ("FACTOR", "ROW_FRAC", "MAX_ROWS", "ROW_SELECTION", *_TARGET_KEYS)
)
_NORM_KEYS: Final = frozenset(
    NORM + k for k in ("NOISE_SCALE", "TARGET_LAYERS", "MAX_MODULES", "SEED", "INCLUDE_GLOBAL", "MULT_CLAMP")
)


def _seed(env: EnvReader, key: str, fallback: int) -> int:
    return env.integer(key, fallback, lo=0)


def _select_targets(
    model: nn.Module, ctx: FaultContext, prefix: str, *, family: str, qkv: bool, max_params: int, last: int
) -> tuple[list[WeightRef], list[int], dict[str, object]]:
    env = ctx.env
    fam = env.choice(prefix + "TARGET_FAMILY", family, tuple(FAMILY_SETS))
    subs = env.substrings(prefix + "TARGET_PARAMS")
    include_qkv = env.flag(prefix + "INCLUDE_QKV", qkv)
    limit = env.integer(prefix + "MAX_PARAMS", max_params, lo=1)
    seed = _seed(env, prefix + "SEED", ctx.seed)
    refs = family_refs(model, fam, substrings=subs, include_qkv=include_qkv)
    what = f"{fam} weight matrix" + (f" matching {','.join(subs)}" if subs else "")
    require(refs, ctx.error_type, what)
    layers = target_layers(
        env, prefix + "TARGET_LAYERS", [r.layer for r in refs if r.layer is not None], last
    )
    chosen = shuffled(by_layers(refs, layers), seed, limit) if fam != "embed" else shuffled(refs, seed, limit)
    params: dict[str, object] = {
        "target_family": fam,
        "target_param_substrings": subs,
        "include_qkv": include_qkv,
        "max_params": limit,
        "seed": seed,
    }
    return chosen, layers, params


def select_rows(w: torch.Tensor, rows: int, selection: str, seed: int) -> torch.Tensor:
    """Row indices: ``first``/``last`` rows, ``random`` rows, a ``random_block`` of consecutive rows, or the
    ``top_norm`` rows by L2 norm (ties by index)."""
    import torch

    out = w.shape[0]
    if selection == "first":
        return torch.arange(rows, device=w.device)
    if selection == "last":
        return torch.arange(out - rows, out, device=w.device)
    gen = generator(seed, torch.device("cpu"))
    if selection == "random":
        return torch.randperm(out, generator=gen)[:rows].sort().values.to(w.device)
    if selection == "random_block":
        start = int(torch.randint(0, out - rows + 1, (1,), generator=gen))
        return torch.arange(start, start + rows, device=w.device)
    norms = torch.linalg.vector_norm(w.float(), dim=1)
    return torch.sort(torch.argsort(norms, descending=True, stable=True)[:rows]).values


def _anisotropy(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    import torch

    env = ctx.env
    blend = env.number(ANISO + "BLEND", 0.75, lo=0.0, hi=1.0, lo_open=True)
    row_frac = env.number(ANISO + "ROW_FRAC", 0.35, lo=0.0, hi=1.0, lo_open=True)
    max_rows = env.integer(ANISO + "MAX_ROWS", 256, lo=2)
    preserve = env.flag(ANISO + "PRESERVE_ROW_NORMS", True)
    jitter = env.number(ANISO + "JITTER", 0.01, lo=0.0)
    selection = env.choice(ANISO + "ROW_SELECTION", "first", _SELECTIONS)
    refs, layers, params = _select_targets(model, ctx, ANISO, family="attn", qkv=True, max_params=24, last=8)
    params.update(
        blend=blend,
        row_frac=row_frac,
        max_rows=max_rows,
        preserve_row_norms=preserve,
        jitter=jitter,
        row_selection=selection,
    )
    modified: list[str] = []
    for ref in refs:
        view = matrix(model, ref)
        out = view.shape[0]
        rows = max(2, min(round(out * row_frac), out, max_rows))
        if out < 2:
            continue
        rseed = name_seed(int(str(params["seed"])), ref.key)
        idx = select_rows(view, rows, selection, rseed)
        base = view[idx].float()
        mixed = (1.0 - blend) * base + blend * base[:1]
        if preserve:
            scale = torch.linalg.vector_norm(base, dim=1, keepdim=True).clamp_min(1e-12)
            mixed = mixed * (scale / torch.linalg.vector_norm(mixed, dim=1, keepdim=True).clamp_min(1e-12))
        if jitter > 0:
            noise = torch.randn(mixed.shape, generator=generator(rseed, torch.device("cpu"))).to(mixed.device)
            mixed = mixed + noise * (jitter * max(float(base.std()), 1e-6))
        if not bool(torch.isfinite(mixed).all()):
            continue
        ctx.change.save_tensor(view)
        view[idx] = mixed.to(view.dtype)
        modified.append(ref.key)
    return FaultOutcome("anisotropy", params, modified, layers)


def _row_scale(model: nn.Module, ctx: FaultContext) -> FaultOutcome:

    env = ctx.env
    factor = env.number(ROWS + "FACTOR", 1.6, lo=0.0, lo_open=True)
    row_frac = env.number(ROWS + "ROW_FRAC", 0.10, lo=0.0, hi=1.0, lo_open=True)
    max_rows = env.integer(ROWS + "MAX_ROWS", 2048, lo=1)
    selection = env.choice(ROWS + "ROW_SELECTION", "first", _SELECTIONS)
    refs, layers, params = _select_targets(model, ctx, ROWS, family="ffn", qkv=False, max_params=8, last=8)
    params.update(factor=factor, row_frac=row_frac, max_rows=max_rows, row_selection=selection)
    modified: list[str] = []
    for ref in refs:
        view = matrix(model, ref)
        rows = max(1, min(round(view.shape[0] * row_frac), view.shape[0], max_rows))
        idx = select_rows(view, rows, selection, name_seed(int(str(params["seed"])), ref.key))
        ctx.change.save_tensor(view)
        view[idx] = (view[idx].float() * factor).to(view.dtype)
        modified.append(ref.key)
    return FaultOutcome("row_scale", params, modified, layers)


def _norm_noise(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    import random

    import torch

    env: EnvReader = ctx.env
    scale = env.number(NORM + "NOISE_SCALE", 0.05, lo=0.0, lo_open=True)
    max_modules = env.integer(NORM + "MAX_MODULES", 32, lo=1)
    seed = _seed(env, NORM + "SEED", ctx.seed)
    include_global = env.flag(NORM + "INCLUDE_GLOBAL", False)
    clamp = env.number(NORM + "MULT_CLAMP", 0.5, lo=0.0, hi=1.0, lo_open=True)
    block_path, _ = find_blocks(model)
    norms = [(n, m) for n, m in norm_modules(model) if isinstance(getattr(m, "weight", None), torch.Tensor)]
    in_blocks = [(n, m) for n, m in norms if block_layer(n, block_path) is not None]
    require(in_blocks, ctx.error_type, "normalisation module inside the blocks")  # type: ignore[arg-type]
    layers = target_layers(env, NORM + "TARGET_LAYERS", [block_layer(n, block_path) or 0 for n, _ in in_blocks], 4)
    chosen = [(n, m) for n, m in in_blocks if block_layer(n, block_path) in set(layers)]
    if include_global:
        chosen += [(n, m) for n, m in norms if block_layer(n, block_path) is None]
    random.Random(seed).shuffle(chosen)
    gen = generator(seed, torch.device("cpu"))
    modified: list[str] = []
    for name, module in chosen[:max_modules]:
        weight: torch.Tensor = module.weight  # type: ignore[assignment]
        mult = (1.0 + torch.randn(weight.shape, generator=gen) * scale).clamp(1.0 - clamp, 1.0 + clamp)
        offset = norm_weight_offset(model, name)
        ctx.change.save_tensor(weight.data)
        if offset:  # x̂ · (1 + w): scale 1 + w, as a zero-initialised w times anything stays zero
            scaled = (weight.data.float() + offset) * mult.to(weight.device) - offset
            weight.data.copy_(scaled.to(weight.dtype))
        else:
            weight.data.mul_(mult.to(device=weight.device, dtype=weight.dtype))
        modified.append(name)
    params = {
        "noise_scale": scale,
        "max_modules": max_modules,
        "seed": seed,
        "include_global": include_global,
        "mult_clamp": clamp,
    }
    return FaultOutcome("norm_noise", params, modified, layers)


def rmt_norm_noise(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    """Dispatch on ``INVARLOCK_RMT_PROBE_MODE`` (anisotropy | norm_noise | row_scale)."""
    default = "norm_noise" if ctx.env.has(NORM + "NOISE_SCALE") else "anisotropy"
    mode = ctx.env.choice(RMT + "PROBE_MODE", default, ("anisotropy", "norm_noise", "row_scale"))
    if mode == "norm_noise":
        return _norm_noise(model, ctx)
    if mode == "row_scale":
        return _row_scale(model, ctx)
    return _anisotropy(model, ctx)


def spectral_moderate_scale(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    """Whole matrices × FACTOR (default 3.0, attn without QKV, last 4 layers, <= 8 matrices); with
    ``PAIR_INVERSE=1`` and an FFN family, per layer the first up-projection × f and down-projection × 1/f."""
    env = ctx.env
    factor = env.number(SPEC + "SCALE_FACTOR", 3.0, lo=0.0, lo_open=True)
    pair = env.flag(SPEC + "PAIR_INVERSE", False)
    refs, layers, params = _select_targets(model, ctx, SPEC, family="attn", qkv=False, max_params=8, last=4)
    params.update(scale_factor=factor, pair_inverse=pair)
    modified: list[str] = []
    if pair and params["target_family"] in ("ffn", "mlp", "both", "all"):
        pool = family_refs(model, "ffn")
        pairs = 0
        for layer in layers:
            ups = [r for r in pool if r.layer == layer and r.role in ("ffn_up", "ffn_gate_up")]
            downs = [r for r in pool if r.layer == layer and r.role == "ffn_down"]
            if not ups or not downs:
                continue
            for ref, f in ((ups[0], factor), (downs[0], 1.0 / factor)):
                view = matrix(model, ref)
                ctx.change.save_tensor(view)
                view.mul_(f)
                modified.append(ref.key)
            pairs += 1
            if pairs >= int(str(params["max_params"])):
                break
        return FaultOutcome("pair_inverse", params, modified, layers)
    for ref in refs:
        view = matrix(model, ref)
        ctx.change.save_tensor(view)
        view.mul_(factor)
        modified.append(ref.key)
    return FaultOutcome("scale", params, modified, layers)


def ve_mlp_scale_skew(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    """MLP out-projections (role ``ffn_down``, experts included unless INCLUDE_EXPERTS=0) × FACTOR (default
    0.90), layers spec or the last 4, seeded shuffle, <= MAX_PARAMS (default 1; 0 = all)."""
    env = ctx.env
    factor = env.number(VE + "SCALE_FACTOR", 0.90, lo=0.0, lo_open=True)
    limit = env.integer(VE + "MAX_PARAMS", 1, lo=0)
    seed = _seed(env, VE + "SEED", ctx.seed)
    include_experts = env.flag(VE + "INCLUDE_EXPERTS", True)
    families = {"ffn", "expert_ffn"} if include_experts else {"ffn"}
    refs = [r for r in family_refs(model, "ffn") if r.role == "ffn_down" and r.family in families]
    require(refs, ctx.error_type, "MLP out-projection (down_proj/c_proj/fc2/w2)")
    layers = target_layers(env, VE + "TARGET_LAYERS", [r.layer for r in refs if r.layer is not None], 4)
    modified: list[str] = []
    for ref in shuffled(by_layers(refs, layers), seed, limit):
        view = matrix(model, ref)
        ctx.change.save_tensor(view)
        view.mul_(factor)
        modified.append(ref.key)
    params = {"scale_factor": factor, "max_params": limit, "seed": seed, "include_experts": include_experts}
    return FaultOutcome("scale", params, modified, layers)


def register(reg: FaultRegistry) -> None:
    reg.register(
        "rmt_norm_noise",
        rmt_norm_noise,
        env_prefixes=(RMT,),
        env_keys=_ANISO_KEYS | _ROWS_KEYS | _NORM_KEYS | {RMT + "PROBE_MODE"},
        description="RMT probe: row anisotropy / norm noise / row scale",
    )
    reg.register(
        "spectral_moderate_scale",
        spectral_moderate_scale,
        env_prefixes=(SPEC,),
        env_keys={SPEC + k for k in ("SCALE_FACTOR", "PAIR_INVERSE", *_TARGET_KEYS)},
        description="spectral probe: whole matrices scaled",
    )
    reg.register(
        "ve_mlp_scale_skew",
        ve_mlp_scale_skew,
        env_prefixes=(VE,),
        env_keys={VE + k for k in ("SCALE_FACTOR", "MAX_PARAMS", "SEED", "TARGET_LAYERS", "INCLUDE_EXPERTS")},
        description="variance probe: MLP out-projections scaled",
    )
