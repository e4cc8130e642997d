"""Graded faults: changes whose strength is one number, for sensitivity sweeps (``proofpack sensitivity``).

Each reads its magnitude from one env key, like any fault a plugin registers through
``pytest_proofpack_register_faults``, so a sweep drives built-in and plugin faults the same way:

* ``weight_noise``: ``w += N(0, 1) * PROOFPACK_NOISE_STD * std(w)`` on every selected matrix (the noise relative to
  each matrix's own spread, so one number means the same on every matrix and model);
* ``exponent_flip``: in a fraction ``PROOFPACK_BITFLIP_FRACTION`` of each selected matrix's elements (a seeded
  Bernoulli mask), bit ``PROOFPACK_BITFLIP_BIT`` of the floating-point exponent (0 = its lowest bit, the default:
  each flipped element is doubled or halved) is flipped in the stored dtype;
* ``lowrank_energy``: each selected matrix is truncated to the smallest rank that keeps at least
  ``1 - PROOFPACK_LOWRANK_DISCARD`` of its Frobenius energy (exact SVD in fp32).

Targets: ``<PREFIX>FAMILY`` (``attn | ffn | both | all``; default ``all``, ``ffn`` for ``lowrank_energy``) and
``<PREFIX>LAYERS`` (``a-b,c`` or ``P%-Q%`` of the depth; default every block). The registry these live in is
:func:`graded_fault_registry`; they are not scenario faults, so the built-in registry does not hold them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pytest_proofpack.faults.registry import FaultRegistry
from pytest_proofpack.faults.targets import (
    FAMILY_SETS,
    by_layers,
    family_refs,
    generator,
    name_seed,
    require,
    target_layers,
)
from pytest_proofpack.faults.types import FaultContext, FaultOutcome
from pytest_proofpack.models.adapters import WeightRef, matrix

if TYPE_CHECKING:
    import torch
    from torch import nn

NOISE: Final = "PROOFPACK_NOISE_"
BITFLIP: Final = "PROOFPACK_BITFLIP_"
LOWRANK: Final = "PROOFPACK_LOWRANK_"
#: dtype name -> (integer view dtype name, mantissa bits, exponent bits)
_FLOAT_BITS: Final = {"float32": ("int32", 23, 8), "bfloat16": ("int16", 7, 8), "float16": ("int16", 10, 5)}


def _targets(model: nn.Module, ctx: FaultContext, prefix: str, default_family: str) -> tuple[list[WeightRef],
                                                                                           list[int], str]:
    env = ctx.env
    fam = env.choice(prefix + "FAMILY", default_family, tuple(k for k in FAMILY_SETS if k != "embed"))
    refs = family_refs(model, fam)
    require(refs, ctx.error_type, f"{fam} weight matrix")
    layers = target_layers(env, prefix + "LAYERS", [r.layer for r in refs if r.layer is not None], 0)
    return by_layers(refs, layers), layers, fam


def weight_noise(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    """Gaussian noise of ``PROOFPACK_NOISE_STD`` times each matrix's standard deviation (see the module)."""
    import torch

    std = ctx.env.number(NOISE + "STD", 0.01, lo=0.0, lo_open=True)
    refs, layers, fam = _targets(model, ctx, NOISE, "all")
    for ref in refs:
        view = matrix(model, ref)
        ctx.change.save_tensor(view)
        noise = torch.randn(view.shape, generator=generator(name_seed(ctx.seed, ref.key), torch.device("cpu")))
        scale = float(view.detach().float().std()) * std
        view.add_((noise * scale).to(device=view.device, dtype=view.dtype))
    return FaultOutcome("gaussian_relative", {"std_relative": std, "family": fam}, [r.key for r in refs], layers)


def flip_exponent_bits(view: torch.Tensor, fraction: float, bit: int, seed: int) -> int:
    """Flip exponent bit ``bit`` (0 = lowest) of a seeded ``fraction`` of ``view``'s elements in place; return how
    many were flipped. :class:`ValueError` for a dtype without a known layout or a bit outside its exponent."""
    import torch

    name = str(view.dtype).removeprefix("torch.")
    if name not in _FLOAT_BITS:
        raise ValueError(f"exponent_flip: dtype {name} is not one of {', '.join(_FLOAT_BITS)}")
    int_name, mantissa, exponent = _FLOAT_BITS[name]
    if not 0 <= bit < exponent:
        raise ValueError(f"exponent_flip: bit {bit} is outside the {exponent}-bit exponent of {name}")
    mask = torch.rand(view.shape, generator=generator(seed, torch.device("cpu"))) < fraction
    ints = view.detach().view(getattr(torch, int_name))
    selected = mask.to(view.device)
    flipped = ints[selected] ^ (1 << (mantissa + bit))
    ints[selected] = flipped
    return int(mask.sum())


def exponent_flip(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    """A seeded fraction of the selected matrices' elements get one exponent bit flipped (see the module)."""
    fraction = ctx.env.number(BITFLIP + "FRACTION", 1e-4, lo=0.0, hi=1.0, lo_open=True)
    bit = ctx.env.integer(BITFLIP + "BIT", 0, lo=0, hi=7)
    refs, layers, fam = _targets(model, ctx, BITFLIP, "all")
    flipped = 0
    modified = []
    for ref in refs:
        view = matrix(model, ref)
        ctx.change.save_tensor(view)
        try:
            n = flip_exponent_bits(view, fraction, bit, name_seed(ctx.seed, ref.key))
        except ValueError as exc:
            from pytest_proofpack.errors import SpecError

            raise SpecError(f"fault {ctx.error_type}: {exc}") from None
        flipped += n
        modified.append(ref.key)
    params = {"fraction": fraction, "exponent_bit": bit, "family": fam, "flipped_elements": flipped}
    return FaultOutcome("exponent_bit_flip", params, modified, layers)


def truncate_energy(w: torch.Tensor, discard: float) -> tuple[torch.Tensor, int]:
    """The smallest-rank truncation of ``w`` (fp32, exact SVD) keeping ``>= 1 - discard`` of its Frobenius energy,
    and that rank."""
    import torch

    u, s, vh = torch.linalg.svd(w.float(), full_matrices=False)
    energy = (s.double() ** 2).cumsum(0)
    total = float(energy[-1])
    if total <= 0.0:
        return w.float().clone(), 0
    rank = int(torch.searchsorted(energy, torch.tensor((1.0 - discard) * total, dtype=energy.dtype))) + 1
    rank = min(rank, int(s.numel()))
    return (u[:, :rank] * s[:rank]) @ vh[:rank], rank


def lowrank_energy(model: nn.Module, ctx: FaultContext) -> FaultOutcome:
    """Each selected matrix truncated to keep ``1 - PROOFPACK_LOWRANK_DISCARD`` of its energy (see the module)."""
    discard = ctx.env.number(LOWRANK + "DISCARD", 0.01, lo=0.0, hi=1.0, lo_open=True)
    refs, layers, fam = _targets(model, ctx, LOWRANK, "ffn")
    kept = []
    for ref in refs:
        view = matrix(model, ref)
        ctx.change.save_tensor(view)
        out, rank = truncate_energy(view.detach(), discard)
        view.copy_(out.to(view.dtype))
        kept.append(rank / max(1, min(view.shape)))
    params = {"energy_discarded": discard, "family": fam, "mean_rank_fraction": sum(kept) / max(1, len(kept))}
    return FaultOutcome("lowrank_energy", params, [r.key for r in refs], layers)


def _keys(prefix: str, *names: str) -> set[str]:
    return {prefix + n for n in (*names, "FAMILY", "LAYERS")}


def register(reg: FaultRegistry) -> None:
    reg.register("weight_noise", weight_noise, env_prefixes=(NOISE,), env_keys=_keys(NOISE, "STD"),
                 description="Gaussian weight noise relative to each matrix's std")
    reg.register("exponent_flip", exponent_flip, env_prefixes=(BITFLIP,), env_keys=_keys(BITFLIP, "FRACTION", "BIT"),
                 description="one exponent bit flipped in a fraction of the elements")
    reg.register("lowrank_energy", lowrank_energy, env_prefixes=(LOWRANK,), env_keys=_keys(LOWRANK, "DISCARD"),
                 description="rank truncation discarding a fraction of each matrix's energy")


def graded_fault_registry() -> FaultRegistry:
    """A new registry holding the graded faults."""
    registry = FaultRegistry()
    register(registry)
    return registry
