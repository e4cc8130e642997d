"""Reversible, in-place application of edits (and, through :class:`AppliedChange`, of faults).

The model is never copied: before a weight matrix is changed, a clone of *that matrix only* is kept, and
:meth:`AppliedChange.restore` copies it back bit for bit. Structural changes (swapped parameters or modules,
config values) are recorded as attribute swaps and undone in reverse order. Math runs in fp32 on the weight's
device and the result is cast back to the parameter's dtype.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from pytest_proofpack.errors import SpecError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pytest_proofpack.edits.registry import EditRegistry
    from pytest_proofpack.edits.spec import EditSpec

_MISSING: Final = object()


class AppliedChange:
    """A change applied in place to a model, with what is needed to undo it exactly.

    ``metadata`` describes the change (JSON-able). ``restore()`` undoes every recorded step in reverse order
    and is idempotent. Used as a context manager, the change is restored on exit (also on exceptions).
    """

    def __init__(self, metadata: dict[str, Any] | None = None) -> None:
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._undo: list[Callable[[], None]] = []
        self._restored = False

    @property
    def restored(self) -> bool:
        return self._restored

    def save_tensor(self, view: torch.Tensor, *, offload: bool = False) -> torch.Tensor:
        """Record ``view``'s current data (a clone) so that ``restore`` copies it back; returns the clone.

        ``offload=True`` keeps the clone in CPU memory (for changes that touch most of a GPU-resident model).
        """
        saved = view.detach().to("cpu", copy=True) if offload else view.detach().clone()

        def undo() -> None:
            view.copy_(saved)

        self._undo.append(undo)
        return saved

    def set_attr(self, obj: object, name: str, value: object) -> None:
        """``setattr(obj, name, value)``, remembering the old value (or its absence) for ``restore``."""
        old = getattr(obj, name, _MISSING)
        setattr(obj, name, value)

        def undo() -> None:
            if old is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, old)

        self._undo.append(undo)

    def on_restore(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` during ``restore`` (after the steps recorded later, before those recorded earlier)."""
        self._undo.append(fn)

    def restore(self) -> None:
        """Undo everything, newest first. A second call does nothing."""
        if self._restored:
            return
        import torch

        with torch.no_grad():
            while self._undo:
                self._undo.pop()()
        self._restored = True

    def __enter__(self) -> AppliedChange:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()


def derive_seed(seed: int, key: str) -> int:
    """A per-matrix seed that depends on the run seed and the matrix name, not on iteration order."""
    return zlib.crc32(f"{seed}:{key}".encode()) & 0x7FFFFFFF


def count_changed(new: torch.Tensor, old: torch.Tensor) -> int:
    """Elements whose value differs (NaN in both places counts as unchanged)."""
    same = (new == old) | (new.isnan() & old.isnan())
    return int((~same).sum())


def apply_edit(
    model: nn.Module, spec: EditSpec, *, seed: int = 0, registry: EditRegistry | None = None
) -> AppliedChange:
    """Apply ``spec`` in place to every weight matrix in its scope and return the reversible change.

    Raises :class:`SpecError` for an unresolved ``clean`` spec or a scope that matches no matrix of ``model``.
    ``metadata``: kind, params, scope, modules_touched (ref keys), n_modules, skipped ([{module, reason}]),
    params_in_scope, params_changed, changed_fraction, avg_relative_error, seconds, and per kind
    actual_sparsity (prune), avg_energy_retained (lowrank), saturated (fp8).
    """
    import torch

    from pytest_proofpack.edits.registry import default_edit_registry
    from pytest_proofpack.edits.spec import scope_matches
    from pytest_proofpack.models.adapters import find_blocks, matrix, weight_refs

    if spec.clean:
        raise SpecError(
            f"edit spec '{spec}' still holds the clean sentinel; resolve it with resolve_clean first"
        )
    kind = (registry or default_edit_registry).get(spec.kind)
    start = time.perf_counter()
    refs = [r for r in weight_refs(model) if scope_matches(spec.scope, r)]
    if not refs:
        n_layers = len(find_blocks(model)[1])
        raise SpecError(
            f"edit spec '{spec}': scope '{spec.scope}' matches no weight matrix of {type(model).__name__} "
            f"({n_layers} blocks, layers 0-{n_layers - 1}); fix the scope's layer or base"
        )
    params = spec.param_dict
    change = AppliedChange()
    touched: list[str] = []
    skipped: list[dict[str, str]] = []
    rel_errors: list[float] = []
    energies: list[float] = []
    counters: dict[str, int] = {}
    in_scope = changed = 0
    try:
        with torch.no_grad():
            for ref in refs:
                view = matrix(model, ref)
                in_scope += view.numel()
                # Saved before the edit function runs: a (registered) function that writes into its input
                # must not corrupt what restore() copies back.
                original = change.save_tensor(view)
                new, stats = kind.fn(view.float(), params, seed=derive_seed(seed, ref.key))
                if stats.get("skipped"):
                    view.copy_(original)
                    change._undo.pop()
                    skipped.append({"module": ref.key, "reason": str(stats.get("reason", ""))})
                    continue
                view.copy_(new.to(device=view.device, dtype=view.dtype))
                touched.append(ref.key)
                # One difference pass serves both counters. A NaN anywhere makes the norm NaN; only then
                # (NaN - NaN would count as a change) take the slower exact path.
                delta = view.float() - original.float()
                diff = float(torch.linalg.vector_norm(delta))
                if math.isfinite(diff):
                    changed += int(torch.count_nonzero(delta))
                else:
                    changed += count_changed(view, original)
                    diff = float(torch.linalg.vector_norm(torch.nan_to_num(delta, posinf=0.0, neginf=0.0)))
                base = float(torch.linalg.vector_norm(original.float()))
                rel_errors.append(diff / base if base > 0 else 0.0)
                if "energy_retained" in stats:
                    energies.append(float(stats["energy_retained"]))
                for key in ("zeros", "numel", "saturated", "pruned"):
                    if key in stats:
                        counters[key] = counters.get(key, 0) + int(stats[key])
    except BaseException:
        change.restore()
        raise
    meta: dict[str, Any] = {
        "kind": spec.kind,
        "spec": str(spec),
        "params": params,
        "scope": str(spec.scope),
        "seed": seed,
        "modules_touched": touched,
        "n_modules": len(touched),
        "skipped": skipped,
        "params_in_scope": in_scope,
        "params_changed": changed,
        "changed_fraction": changed / in_scope if in_scope else 0.0,
        "avg_relative_error": sum(rel_errors) / len(rel_errors) if rel_errors else 0.0,
    }
    if "numel" in counters:
        meta["actual_sparsity"] = counters["zeros"] / counters["numel"] if counters["numel"] else 0.0
        meta["pruned"] = counters.get("pruned", 0)
    if energies:
        meta["avg_energy_retained"] = sum(energies) / len(energies)
    if "saturated" in counters:
        meta["saturated"] = counters["saturated"]
    meta["seconds"] = time.perf_counter() - start
    change.metadata.update(meta)
    return change
