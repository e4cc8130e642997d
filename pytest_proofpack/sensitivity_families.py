"""Sensitivity families: a change whose strength is one number, and the ladder of numbers a sweep tries.

A :class:`Family` applies its change at a magnitude, reversibly (the :class:`~pytest_proofpack.edits.change.
AppliedChange` of an edit or a fault, restored bit for bit), and knows its ladder and which way is stronger. Two
kinds cover every change:

* :func:`fault_family`: a registered fault (built-in, graded, or a plugin's through
  ``pytest_proofpack_register_faults``) whose env key ``magnitude_env`` takes the magnitude; fixed ``env`` keys
  choose its targets. This is how a user's own fault gets a sensitivity curve: register it with a magnitude env key
  and name it in ``--fault-family NAME=FAULT:ENV_KEY:r1,r2,...[:lower]``.
* :func:`edit_family`: an edit spec template with ``{m}`` in place of the magnitude (``magnitude_prune:{m}:all``).

:func:`builtin_families` is the sweep of issue 22: relative Gaussian noise on one block and on all blocks, a scale
factor on one matrix, exponent-bit flips, magnitude pruning, RTN bits and low-rank truncation energy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from pytest_proofpack.errors import SpecError
from pytest_proofpack.faults.graded import graded_fault_registry

if TYPE_CHECKING:
    from pytest_proofpack.edits.change import AppliedChange
    from pytest_proofpack.edits.registry import EditRegistry
    from pytest_proofpack.faults.registry import FaultRegistry

#: Which way a family's magnitude grows stronger.
DIRECTIONS: Final = ("higher", "lower")


def strength_order(rungs: Sequence[float], stronger: str) -> list[float]:
    """``rungs`` from the weakest to the strongest change: ascending when a ``higher`` magnitude is stronger
    (noise, sparsity), descending when ``lower`` is (RTN bits). :class:`ValueError` for an unknown direction or a
    repeated rung."""
    if stronger not in DIRECTIONS:
        raise ValueError(f"stronger must be one of {', '.join(DIRECTIONS)}, got {stronger!r}")
    if len(set(rungs)) != len(rungs):
        raise ValueError(f"the ladder {list(rungs)} repeats a rung")
    return sorted(rungs, reverse=stronger == "lower")


ApplyFn = Callable[[Any, float, int], "AppliedChange"]
"""``apply(model, magnitude, seed) -> AppliedChange``: the change made in place; restoring it undoes it exactly."""


@dataclass(frozen=True)
class Family:
    """One swept change: ``name``, what its magnitude means (``unit``), the ladder ``rungs`` (weakest first) and
    ``stronger`` (``higher`` or ``lower``: which way a magnitude is a stronger change)."""

    name: str
    description: str
    unit: str
    rungs: tuple[float, ...]
    stronger: str
    apply: ApplyFn = field(repr=False, compare=False)
    source: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rungs:
            raise SpecError(f"sensitivity family {self.name}: the ladder is empty")
        try:
            ordered = strength_order(self.rungs, self.stronger)
        except ValueError as exc:
            raise SpecError(f"sensitivity family {self.name}: {exc}") from None
        object.__setattr__(self, "rungs", tuple(ordered))

    def describe(self) -> dict[str, Any]:
        """The JSON header of this family in a sensitivity document."""
        return {"description": self.description, "unit": self.unit, "rungs": list(self.rungs),
                "stronger": self.stronger, "source": dict(self.source)}


def fault_family(
    name: str, fault: str, magnitude_env: str, rungs: Sequence[float], *, stronger: str = "higher",
    env: Mapping[str, str] | None = None, registry: FaultRegistry | None = None, description: str = "",
    unit: str = "",
) -> Family:
    """A family sweeping fault ``fault``'s env key ``magnitude_env`` over ``rungs`` (other keys fixed by ``env``),
    the fault resolved in ``registry`` (default: the built-in one). :class:`SpecError` when the fault is unknown or
    does not declare ``magnitude_env`` among its ``env_keys`` (a key it would silently ignore gives a flat curve),
    checked here, before any model is touched."""
    from pytest_proofpack.faults.apply import apply_fault
    from pytest_proofpack.faults.builtin import default_fault_registry

    reg = registry if registry is not None else default_fault_registry
    kind = reg.get(fault)
    fixed = dict(env or {})
    kind.check_env_keys(fault, {**fixed, magnitude_env: ""})
    if magnitude_env not in kind.env_keys:
        raise SpecError(f"sensitivity family {name}: fault {kind.name} does not declare env key {magnitude_env}; "
                        "register it with env_keys={" + repr(magnitude_env) + ", ...} to sweep it")

    def apply(model: Any, magnitude: float, seed: int) -> AppliedChange:
        return apply_fault(model, fault, {**fixed, magnitude_env: repr(float(magnitude))}, seed=seed, registry=reg)

    source = {"fault": fault, "magnitude_env": magnitude_env, "env": fixed}
    return Family(name, description or kind.description or fault, unit or magnitude_env, tuple(rungs), stronger,
                  apply, source)


def edit_family(
    name: str, template: str, rungs: Sequence[float], *, stronger: str = "higher", registry: EditRegistry | None = None,
    description: str = "", unit: str = "", integer: bool = False,
) -> Family:
    """A family applying edit spec ``template`` with ``{m}`` replaced by each rung (``int`` when ``integer``);
    :class:`SpecError` when a rung makes an invalid spec (checked here)."""
    from pytest_proofpack.edits.apply import apply_edit
    from pytest_proofpack.edits.spec import parse_edit_spec

    if "{m}" not in template:
        raise SpecError(f"sensitivity family {name}: the edit template {template!r} has no {{m}}")

    def spec(magnitude: float) -> Any:
        value = int(magnitude) if integer else float(magnitude)
        return parse_edit_spec(template.format(m=value), registry=registry)

    for m in rungs:
        spec(m)

    def apply(model: Any, magnitude: float, seed: int) -> AppliedChange:
        return apply_edit(model, spec(magnitude), seed=seed, registry=registry)

    return Family(name, description or template, unit or "magnitude", tuple(rungs), stronger, apply,
                  {"edit": template})


_MIDDLE_BLOCK: Final = "50%-50%"


def builtin_families() -> dict[str, Family]:
    """The built-in sweep, by name. Each ladder is fixed a priori, fitted to no model: geometric grids (1-2-5 steps
    for noise, decades for exponent flips and energy discarded) and the usual grids for sparsity, bits and scale.
    A threshold outside a ladder is reported as such (below or above it); ``--fault-family`` or the bench's ladders
    sweep other values."""
    graded = graded_fault_registry()
    families = [
        fault_family("noise_one_block", "weight_noise", "PROOFPACK_NOISE_STD", (0.02, 0.05, 0.1, 0.2, 0.5),
                     env={"PROOFPACK_NOISE_LAYERS": _MIDDLE_BLOCK}, registry=graded, unit="std x matrix std",
                     description="Gaussian noise on every matrix of the middle block, relative to each matrix's std"),
        fault_family("noise_all_blocks", "weight_noise", "PROOFPACK_NOISE_STD", (0.005, 0.01, 0.02, 0.05, 0.1),
                     registry=graded, unit="std x matrix std",
                     description="Gaussian noise on every block matrix, relative to each matrix's std"),
        fault_family("scale_one_matrix", "spectral_moderate_scale", "INVARLOCK_SPECTRAL_SCALE_FACTOR",
                     (1.05, 1.1, 1.25, 1.5, 2.0, 3.0), unit="factor",
                     env={"INVARLOCK_SPECTRAL_TARGET_FAMILY": "ffn", "INVARLOCK_SPECTRAL_TARGET_PARAMS": "down_proj",
                          "INVARLOCK_SPECTRAL_TARGET_LAYERS": _MIDDLE_BLOCK, "INVARLOCK_SPECTRAL_MAX_PARAMS": "1"},
                     description="the middle block's FFN down-projection times a factor"),
        fault_family("exponent_flip", "exponent_flip", "PROOFPACK_BITFLIP_FRACTION", (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
                     registry=graded, unit="fraction of elements",
                     description="lowest exponent bit flipped (x2 or /2) in a fraction of every block matrix"),
        edit_family("magnitude_prune", "magnitude_prune:{m}:all", (0.05, 0.1, 0.2, 0.3, 0.5), unit="sparsity",
                    description="magnitude pruning of every block matrix"),
        edit_family("rtn_bits", "quant_rtn:{m}:128:all", (8, 6, 5, 4, 3), stronger="lower", integer=True,
                    unit="bits", description="round-to-nearest quantization of every block matrix, group 128"),
        fault_family("lowrank_energy", "lowrank_energy", "PROOFPACK_LOWRANK_DISCARD",
                     (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
                     registry=graded, unit="energy discarded",
                     description="every FFN matrix truncated to the rank keeping 1 - m of its energy"),
    ]
    return {f.name: f for f in families}


def parse_fault_family(text: str, registry: FaultRegistry | None = None) -> Family:
    """``NAME=FAULT:ENV_KEY:r1,r2,...[:higher|lower]`` -> a :func:`fault_family`; :class:`SpecError` naming the
    text and the accepted form for anything else."""
    form = "NAME=FAULT:ENV_KEY:r1,r2,...[:higher|lower]"
    name, sep, rest = text.partition("=")
    parts = rest.split(":")
    if not sep or not name.strip() or len(parts) not in (3, 4):
        raise SpecError(f"--fault-family {text!r}: write {form}")
    try:
        rungs = tuple(float(r) for r in parts[2].split(",") if r.strip())
    except ValueError:
        raise SpecError(f"--fault-family {text!r}: the rungs must be numbers ({form})") from None
    stronger = parts[3].strip() if len(parts) == 4 else "higher"
    return fault_family(name.strip(), parts[0].strip(), parts[1].strip(), rungs, stronger=stronger, registry=registry)


def select_families(names: Sequence[str] | None, extra: Sequence[Family] = ()) -> list[Family]:
    """The built-in families named (all when ``names`` is empty or ``None``), then ``extra``; :class:`SpecError` with
    "did you mean" for an unknown name."""
    from pytest_proofpack.suggest import did_you_mean

    known = builtin_families()
    chosen = []
    for name in names or ([] if extra else list(known)):
        if name not in known:
            raise SpecError(f"unknown sensitivity family {name!r}{did_you_mean(name, sorted(known))}; "
                            f"known: {', '.join(known)}")
        chosen.append(known[name])
    return [*chosen, *extra]
