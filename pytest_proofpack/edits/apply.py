"""Apply an edit spec in place to every weight matrix in its scope, reversibly, and describe what changed.

Each matrix is backed up (:mod:`pytest_proofpack.edits.backup`) before the kind's function sees it, edited in fp32
on the weight's device, cast back to the parameter's dtype and written through the view; the returned
:class:`~pytest_proofpack.edits.change.AppliedChange` restores every matrix bit for bit. Small CPU matrices are
edited on one intra-op thread each, several at once for ``thread_safe`` kinds
(:mod:`pytest_proofpack.edits.cpu_threads`). The metadata's changed count and relative error cost one pass per
matrix over the new values and the original, in cache-sized blocks on the CPU, and one host sync per edit.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from pytest_proofpack.edits.backup import Backup, Spilled, load_backup, put_back
from pytest_proofpack.edits.change import AppliedChange
from pytest_proofpack.edits.cpu_threads import one_cpu_thread, small_cpu_matrix
from pytest_proofpack.edits.registry import EditKind, EditRegistry, ParamValue, default_edit_registry
from pytest_proofpack.edits.spec import EditSpec, scope_matches
from pytest_proofpack.errors import SpecError
from pytest_proofpack.malloc import reusing_heap
from pytest_proofpack.models.adapters import WeightRef, find_blocks, matrix, weight_refs

if TYPE_CHECKING:
    import torch
    from torch import nn

#: elements per block of :func:`_difference` on the CPU (1 MiB of fp32): its temporaries stay in the cache
DIFF_BLOCK: Final = 1 << 18
#: stats of an edit function that are summed over the matrices into the change's metadata
_SUMMED_STATS: Final = ("zeros", "numel", "saturated", "pruned")

Difference = tuple["torch.Tensor", "torch.Tensor"]
"""``([||new - old||, ||old||] fp32, #(new - old != 0) int64)`` of one matrix, on the weight's device."""
MatrixOutcome = tuple[dict[str, Any], "Difference | None"]
"""What editing one matrix gave: the edit function's stats, and the difference (``None``: matrix skipped)."""
Measured = tuple["torch.Tensor", "Backup | None", Difference]
"""``(new view, saved original (maybe spilled), _difference(new, original))`` of one edited matrix."""


def derive_seed(seed: int, key: str) -> int:
    """A per-matrix seed that depends on the run seed and the matrix name, not on iteration order."""
    return zlib.crc32(f"{seed}:{key}".encode()) & 0x7FFFFFFF


def count_changed(new: torch.Tensor, old: torch.Tensor) -> int:
    """Elements whose value differs (NaN in both places counts as unchanged)."""
    same = (new == old) | (new.isnan() & old.isnan())
    return int((~same).sum())


def _difference(new: torch.Tensor, old: torch.Tensor) -> Difference:
    """``([||new - old||, ||old||] fp32, #(new - old != 0) int64)``, left on the weight's device.

    :func:`_summarize` reads them for all matrices at once: one host sync per edit, not three per matrix. On the
    CPU the matrices are walked in blocks of :data:`DIFF_BLOCK` elements, whose difference and mask stay in the
    cache instead of a whole-matrix temporary that is allocated, written and read back from memory.
    """
    import torch

    a, b = new.reshape(-1), old.reshape(-1)
    step = DIFF_BLOCK if a.device.type == "cpu" else max(a.numel(), 1)
    diffs: list[torch.Tensor] = []
    bases: list[torch.Tensor] = []
    counts: list[torch.Tensor] = []
    for start in range(0, max(a.numel(), 1), step):  # an empty matrix gives one empty block: norms 0, count 0
        ob = b[start : start + step].float()
        delta = a[start : start + step].float() - ob
        diffs.append(torch.linalg.vector_norm(delta))
        bases.append(torch.linalg.vector_norm(ob))
        # delta != 0 (NaN counts, -0.0 does not) is |delta| with non-zero bits. count_nonzero over the int32 view
        # of |delta| (made in place) is vectorised and allocates nothing, unlike a boolean `delta != 0` mask or
        # count_nonzero on the floats (a branch per element).
        counts.append(torch.count_nonzero(delta.abs_().view(torch.int32)))
    norms = torch.stack([torch.linalg.vector_norm(torch.stack(diffs)), torch.linalg.vector_norm(torch.stack(bases))])
    return norms, torch.stack(counts).sum()


def _summarize(measured: list[Measured]) -> tuple[int, list[float]]:
    """Total changed elements and per-matrix relative errors ``||new - old|| / ||old||`` of edited matrices.

    A matrix whose difference is non-finite (NaN or inf where there was one before, which ``new - old`` cannot
    tell from a change) is recounted exactly with :func:`count_changed`, its norm taken over finite entries.
    """
    import torch

    norms: list[list[float]] = [[]] * len(measured)
    counts: list[int] = [0] * len(measured)
    for device in {m[2][0].device for m in measured}:  # a model may be split over several GPUs
        rows = [i for i, m in enumerate(measured) if m[2][0].device == device]
        for i, n, c in zip(
            rows,
            torch.stack([measured[i][2][0] for i in rows]).tolist(),
            torch.stack([measured[i][2][1] for i in rows]).tolist(),
            strict=True,
        ):
            norms[i], counts[i] = n, c
    changed = 0
    rel: list[float] = []
    for (new, backup, _), (diff, base), count in zip(measured, norms, counts, strict=True):
        if math.isfinite(diff):
            changed += int(count)
        else:
            assert backup is not None
            old = load_backup(backup)
            changed += count_changed(new, old)
            delta = torch.nan_to_num(new.float() - old.float(), nan=0.0, posinf=0.0, neginf=0.0)
            diff = float(torch.linalg.vector_norm(delta))
        rel.append(diff / base if base > 0 else 0.0)
    return changed, rel


@dataclass
class _Tally:
    """The per-matrix results of an edit, added up for its metadata."""

    touched: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    in_scope: int = 0
    energies: list[float] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    methods: dict[str, int] = field(default_factory=dict)

    def add_stats(self, stats: Mapping[str, Any]) -> None:
        """Count an edited matrix's stats: energy retained, summed counters, the method that computed it."""
        if "energy_retained" in stats:
            self.energies.append(float(stats["energy_retained"]))
        for key in _SUMMED_STATS:
            if key in stats:
                self.counters[key] = self.counters.get(key, 0) + int(stats[key])
        if "method" in stats:
            self.methods[str(stats["method"])] = self.methods.get(str(stats["method"]), 0) + 1


class _MatrixEdits:
    """One edit kind applied to a list of weight views, each backed up into ``change`` before it is written.

    ``backups[i]`` is matrix ``i``'s original, copied (to RAM or straight to the scratch file) before the edit
    function runs, so that a registered function that writes into its input cannot corrupt what ``restore``
    copies back; ``None`` until then, and for a matrix the function skipped.
    """

    def __init__(
        self,
        change: AppliedChange,
        kind: EditKind,
        params: Mapping[str, ParamValue],
        views: list[torch.Tensor],
        seeds: list[int],
    ) -> None:
        self.change, self.kind, self.params, self.views, self.seeds = change, kind, params, views, seeds
        self.backups: list[Backup | None] = [None] * len(views)

    def run(self) -> tuple[list[MatrixOutcome], int, list[float]]:
        """Edit every matrix; returns each one's outcome, the changed element count and the relative errors.

        On any exception, every matrix edited so far is put back before the exception propagates.
        """
        import torch

        serial = all(small_cpu_matrix(v) for v in self.views)
        workers = min(torch.get_num_threads(), len(self.views)) if serial and self.kind.thread_safe else 1
        try:
            with one_cpu_thread(serial):
                outcomes = self._edit_all(workers)
                with torch.no_grad():
                    changed, rel_errors = _summarize(
                        [(self.views[i], self.backups[i], d) for i, (_, d) in enumerate(outcomes) if d is not None]
                    )
        except BaseException:
            self._put_back_all()
            raise
        return outcomes, changed, rel_errors

    def tally(self, refs: list[WeightRef], outcomes: list[MatrixOutcome]) -> _Tally:
        """Record the backup of every edited matrix in the change (so ``restore`` puts it back); add up the rest."""
        tally = _Tally()
        for ref, view, backup, (stats, difference) in zip(refs, self.views, self.backups, outcomes, strict=True):
            tally.in_scope += view.numel()
            if difference is None or backup is None:
                tally.skipped.append({"module": ref.key, "reason": str(stats.get("reason", ""))})
                continue
            self.change.record_backup(view, backup)
            tally.touched.append(ref.key)
            tally.add_stats(stats)
        return tally

    def _edit_all(self, workers: int) -> list[MatrixOutcome]:
        if workers > 1:
            # Small CPU matrices: one matrix per core, each on one intra-op thread (no barriers to wait on).
            with ThreadPoolExecutor(workers, thread_name_prefix="proofpack-edit") as pool:
                return list(pool.map(self._edit, range(len(self.views))))
        return [self._edit(i) for i in range(len(self.views))]

    def _edit(self, i: int) -> MatrixOutcome:
        import torch

        with torch.no_grad():  # grad mode is per thread
            view = self.views[i]
            backup = self.backups[i] = self.change.backups.take(view)
            version = view._version  # moves if the edit function writes into its input (view.float() is view)
            new, stats = self.kind.fn(view.float(), self.params, seed=self.seeds[i])
            if stats.get("skipped"):
                put_back(view, backup)
                self.backups[i] = None
                self.change.backups.forget(backup)
                return stats, None
            new = new.to(device=view.device, dtype=view.dtype)
            # against the original: the RAM clone, or the weight itself before it is overwritten (a spilled backup
            # is read back only if the edit function wrote into its input)
            untouched = isinstance(backup, Spilled) and view._version == version
            difference = _difference(new, view if untouched else load_backup(backup))
            view.copy_(new)
            del new
            return stats, difference

    def _put_back_all(self) -> None:
        import torch

        with torch.no_grad():
            for view, backup in zip(self.views, self.backups, strict=True):
                if backup is not None:
                    put_back(view, backup)


def _require_resolved(spec: EditSpec) -> None:
    if spec.clean:
        raise SpecError(
            f"edit spec '{spec}' still holds the clean sentinel; resolve it with resolve_clean first"
        )


def _refs_in_scope(model: nn.Module, spec: EditSpec) -> list[WeightRef]:
    """The weight matrices of ``model`` in ``spec``'s scope.

    :class:`SpecError` when there is none, and when the scope's layer range reaches past the model's last block:
    a range that does not fit the model is a mistake to report, never a range to clip silently.
    """
    n_layers = len(find_blocks(model)[1])
    where = f"edit spec '{spec}': scope '{spec.scope}'"
    if spec.scope.layers is not None and spec.scope.layers[1] >= n_layers:
        raise SpecError(
            f"{where} names layer {spec.scope.layers[1]}, but {type(model).__name__} has {n_layers} blocks "
            f"(layers 0-{n_layers - 1}); fix the scope's layers for this model"
        )
    refs = [r for r in weight_refs(model) if scope_matches(spec.scope, r)]
    if not refs:
        raise SpecError(
            f"{where} matches no weight matrix of {type(model).__name__} "
            f"({n_layers} blocks, layers 0-{n_layers - 1}); fix the scope's layer or base"
        )
    return refs


def _metadata(
    spec: EditSpec, params: dict[str, ParamValue], seed: int, tally: _Tally, changed: int, rel_errors: list[float]
) -> dict[str, Any]:
    """The change's metadata (without ``seconds``): what was edited, how much changed, and the kind's own stats."""
    meta: dict[str, Any] = {
        "kind": spec.kind,
        "spec": str(spec),
        "params": params,
        "scope": str(spec.scope),
        "seed": seed,
        "modules_touched": tally.touched,
        "n_modules": len(tally.touched),
        "skipped": tally.skipped,
        "params_in_scope": tally.in_scope,
        "params_changed": changed,
        "changed_fraction": changed / tally.in_scope if tally.in_scope else 0.0,
        "avg_relative_error": sum(rel_errors) / len(rel_errors) if rel_errors else 0.0,
    }
    counters = tally.counters
    if "numel" in counters:
        meta["actual_sparsity"] = counters["zeros"] / counters["numel"] if counters["numel"] else 0.0
        meta["pruned"] = counters.get("pruned", 0)
    if tally.energies:
        meta["avg_energy_retained"] = sum(tally.energies) / len(tally.energies)
    if "saturated" in counters:
        meta["saturated"] = counters["saturated"]
    if tally.methods:
        meta["methods"] = dict(sorted(tally.methods.items()))
    return meta


@reusing_heap()  # the per-matrix temporaries reuse heap pages instead of faulting fresh ones (pytest_proofpack.malloc)
def apply_edit(
    model: nn.Module, spec: EditSpec, *, seed: int = 0, registry: EditRegistry | None = None
) -> AppliedChange:
    """Apply ``spec`` in place to every weight matrix in its scope and return the reversible change.

    Raises :class:`SpecError` for an unresolved ``clean`` spec or a scope that matches no matrix of ``model``.
    ``metadata``: kind, params, scope, modules_touched (ref keys), n_modules, skipped ([{module, reason}]),
    params_in_scope, params_changed, changed_fraction, avg_relative_error, seconds, and per kind
    actual_sparsity (prune), avg_energy_retained (lowrank), saturated (fp8), and ``methods`` ({method: matrices}) for
    kinds whose function reports one (lowrank: exact, randomized-bf16 or randomized-fp32). If the edit function
    raises, every matrix is put back before the exception propagates.
    """
    _require_resolved(spec)
    kind = (registry or default_edit_registry).get(spec.kind)
    start = time.perf_counter()
    refs = _refs_in_scope(model, spec)
    params = spec.param_dict
    change = AppliedChange()
    edits = _MatrixEdits(
        change, kind, params, [matrix(model, ref) for ref in refs], [derive_seed(seed, ref.key) for ref in refs]
    )
    outcomes, changed, rel_errors = edits.run()
    tally = edits.tally(refs, outcomes)
    change.metadata.update(_metadata(spec, params, seed, tally, changed, rel_errors))
    change.metadata["seconds"] = time.perf_counter() - start
    return change
