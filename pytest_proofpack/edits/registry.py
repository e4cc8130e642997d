"""The edit registry: edit kind name -> (parameter parser, matrix edit function).

An edit function takes one fp32 ``[out, in]`` matrix (a private copy it may not alias back) and returns
``(new_matrix, stats)``; :func:`pytest_proofpack.edits.apply.apply_edit` does scope selection, casting, saving
for restore and bookkeeping. ``stats`` may hold ``skipped: True`` (matrix left alone) and numeric counters
that are summed (``zeros``, ``saturated``) or averaged (``energy_retained``) into the change's metadata.

Plugins extend a session's registry through the ``pytest_proofpack_register_edits(registry)`` hook by calling
``registry.register(...)``. Importing this module does not import torch: edit functions import it when called.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_proofpack.edits.fp8 import fp8_edit
from pytest_proofpack.edits.lowrank import lowrank_edit
from pytest_proofpack.edits.prune import prune_edit
from pytest_proofpack.edits.quant_rtn import rtn_edit
from pytest_proofpack.errors import SpecError
from pytest_proofpack.registry import Registry

if TYPE_CHECKING:
    import torch

ParamValue = int | float | str
Params = tuple[tuple[str, ParamValue], ...]
"""A kind's parsed parameters: ``(name, value)`` pairs in its positional order."""
EditFn = Callable[..., "tuple[torch.Tensor, dict[str, Any]]"]
"""``fn(matrix: Tensor[out, in] fp32, params: Mapping[str, Any], *, seed: int) -> (new_matrix, stats)``."""
ParamParser = Callable[[Sequence[str]], Params]
"""``parse(args) -> ((name, value), ...)``; raises ``ValueError("<name> '<arg>' is not ...")`` if bad."""


@dataclass(frozen=True)
class EditKind:
    """One registered edit: its name, positional parameter names, usage line, parser and matrix function.

    ``tuned_fields`` are the ``tuned_edit_params`` entry keys that map, in order, onto the positional
    parameters. ``thread_safe`` kinds (a pure function of the matrix, the parameters and ``seed``: no global
    RNG, no shared state) may edit several CPU matrices at once on worker threads.
    """

    name: str
    param_names: tuple[str, ...]
    parse: ParamParser
    fn: EditFn
    tuned_fields: tuple[str, ...] = ()
    thread_safe: bool = False

    @property
    def usage(self) -> str:
        return ":".join([self.name, *(f"<{p}>" for p in self.param_names), "<scope>"])


class EditRegistry(Registry[EditKind]):
    """Name -> :class:`EditKind`. ``register`` rejects duplicates unless ``replace=True``."""

    what = "edit kind"

    def register(
        self,
        name: str,
        parser: ParamParser,
        fn: EditFn,
        *,
        param_names: Sequence[str] = ("param",),
        tuned_fields: Sequence[str] | None = None,
        replace: bool = False,
        thread_safe: bool = False,
    ) -> EditKind:
        """Add an edit kind. ``param_names`` are its positional spec parameters (they also name the
        ``tuned_edit_params`` fields unless ``tuned_fields`` is given); see :class:`EditKind` for
        ``thread_safe``."""
        if not name or ":" in name or "@" in name:
            raise SpecError(f"edit kind name {name!r} must be non-empty and contain no ':' or '@'")
        kind = EditKind(name, tuple(param_names), parser, fn, tuple(tuned_fields or param_names), thread_safe)
        return self.add(name, kind, replace=replace)

    def get(self, name: str, *, context: str = "") -> EditKind:
        """The kind called ``name``; :class:`SpecError` with "did you mean" and the known names otherwise."""
        kind = self.find(name)
        if kind is None:
            raise self.unknown(name, context=context)
        return kind


def _int_in(label: str, raw: str, lo: int, hi: int | None) -> int:
    text = raw.strip()
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{label} '{raw}' is not an integer {'in ' if hi is not None else ''}{bound}")
    return value


def _parse_quant(args: Sequence[str]) -> Params:
    bits = _int_in("bits", args[0], 2, 8)
    try:
        group = int(args[1].strip())
    except ValueError:
        raise ValueError(f"group '{args[1]}' is not an integer (<= 0 means a whole row)") from None
    return (("bits", bits), ("group_size", group))


_FP8_FORMATS = {"e4m3": "e4m3fn", "e4m3fn": "e4m3fn", "e5m2": "e5m2"}


def _parse_fp8(args: Sequence[str]) -> Params:
    fmt = _FP8_FORMATS.get(args[0].strip().lower())
    if fmt is None:
        raise ValueError(f"format '{args[0]}' is not one of e4m3, e4m3fn, e5m2")
    return (("format", fmt),)


def _parse_prune(args: Sequence[str]) -> Params:
    try:
        s = float(args[0].strip())
    except ValueError:
        s = float("nan")
    if not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity '{args[0]}' is not a number in [0, 1)")
    return (("sparsity", s),)


def _parse_rank(args: Sequence[str]) -> Params:
    return (("rank", _int_in("rank", args[0], 1, None)),)


def builtin_edit_registry() -> EditRegistry:
    """A new registry holding the four built-in edit kinds."""
    reg = EditRegistry()
    reg.register(
        "quant_rtn",
        _parse_quant,
        rtn_edit,
        param_names=("bits", "group"),
        tuned_fields=("bits", "group_size"),
        thread_safe=True,
    )
    reg.register("fp8_quant", _parse_fp8, fp8_edit, param_names=("fmt",), tuned_fields=("format",), thread_safe=True)
    reg.register("magnitude_prune", _parse_prune, prune_edit, param_names=("sparsity",), thread_safe=True)
    reg.register("lowrank_svd", _parse_rank, lowrank_edit, param_names=("rank",), thread_safe=True)
    return reg


default_edit_registry: EditRegistry = builtin_edit_registry()
"""The registry :func:`parse_edit_spec` and :func:`apply_edit` use unless given another: the built-ins, for code
outside a pytest session (a session resolves edits in its own :class:`~pytest_proofpack.registries.Registries`)."""


def register_edit(
    name: str,
    parser: ParamParser,
    fn: EditFn,
    *,
    param_names: Sequence[str] = ("param",),
    tuned_fields: Sequence[str] | None = None,
    replace: bool = False,
    thread_safe: bool = False,
) -> EditKind:
    """Register an edit kind in :data:`default_edit_registry`, for code outside a pytest session (a plugin or a
    conftest registers through the ``pytest_proofpack_register_edits`` hook instead)."""
    return default_edit_registry.register(
        name, parser, fn, param_names=param_names, tuned_fields=tuned_fields, replace=replace, thread_safe=thread_safe
    )
