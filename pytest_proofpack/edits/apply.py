"""Reversible, in-place application of edits (and, through :class:`AppliedChange`, of faults).

The model is never copied: before a weight matrix is changed, a copy of *that matrix only* is kept, and
:meth:`AppliedChange.restore` copies it back bit for bit. A change keeps up to the process's backup budget of such
copies in RAM as clones (:func:`set_backup_policy`; the plugin sets ``--proofpack-backup-ram``); beyond it, a
matrix's bytes go straight from the weight to an unlinked scratch file before the edit and are read back by
``restore``, so an edit of every matrix does not hold a second copy of the model in memory while the subject is
evaluated. Structural changes
(swapped parameters or modules, config values) are recorded as attribute swaps and undone in reverse order. Math
runs in fp32 on the weight's device and the result is cast back to the parameter's dtype.

Speed (CPU): matrices up to :data:`SERIAL_MAX_NUMEL` elements are edited and restored with one torch intra-op thread
each, and a ``thread_safe`` edit kind spreads them over ``torch.get_num_threads()`` worker threads (see
:func:`_one_cpu_thread`). The metadata (changed count, relative error) costs one pass per matrix over the new
values and the original, in cache-sized blocks on the CPU, and one host sync per edit.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from pytest_proofpack.errors import SpecError
from pytest_proofpack.malloc import reusing_heap

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pytest_proofpack.edits.registry import EditRegistry
    from pytest_proofpack.edits.spec import EditSpec

_MISSING: Final = object()
#: CPU edits of matrices up to this size run on one intra-op thread (see :func:`_one_cpu_thread`).
SERIAL_MAX_NUMEL: Final = 1 << 22


@dataclass(frozen=True)
class BackupPolicy:
    """Where a change keeps the originals of the tensors it changes (process-wide, see :func:`set_backup_policy`).

    ``ram_bytes``: bytes of CPU backups one change keeps in RAM; ``None`` keeps them all. Beyond it, CPU backups go
    to an unlinked file in ``directory`` (the system's temporary directory when ``None``). Backups on an
    accelerator always stay where they are.
    """

    ram_bytes: int | None = None
    directory: Path | None = None


_policy = BackupPolicy()


def set_backup_policy(policy: BackupPolicy) -> BackupPolicy:
    """Set the backup policy of the changes made from now on in this process; returns the previous one."""
    global _policy
    previous, _policy = _policy, policy
    return previous


def backup_policy() -> BackupPolicy:
    return _policy


def _as_bytes(t: torch.Tensor) -> memoryview:
    """The bytes of contiguous CPU tensor ``t`` (no copy)."""
    import torch

    return t.detach().reshape(-1).view(torch.uint8).numpy().data


class _SpillFile:
    """An append-only, unlinked scratch file of tensor bytes; thread-safe; gone when closed or the process ends."""

    def __init__(self, directory: Path | None) -> None:
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(prefix="proofpack-backup-", dir=directory)
        self._end = 0
        self._lock = threading.Lock()

    def write(self, t: torch.Tensor) -> int:
        """Append ``t``'s bytes (``t`` contiguous, on the CPU); returns their offset."""
        data = _as_bytes(t)
        with self._lock:
            offset, self._end = self._end, self._end + data.nbytes
        done = 0
        while done < data.nbytes:
            done += os.pwrite(self._file.fileno(), data[done:], offset + done)
        return offset

    def read_into(self, t: torch.Tensor, offset: int) -> None:
        """Fill contiguous CPU tensor ``t`` with the bytes written at ``offset``."""
        data = _as_bytes(t)
        done = 0
        while done < data.nbytes:
            n = os.preadv(self._file.fileno(), [data[done:]], offset + done)
            if n <= 0:
                raise OSError(f"backup scratch file {self._file.name}: short read at byte {offset + done}")
            done += n

    def close(self) -> None:
        self._file.close()


class _Spilled:
    """A backup written to a :class:`_SpillFile`: its place, shape and dtype."""

    def __init__(self, spill: _SpillFile, saved: torch.Tensor) -> None:
        self.spill, self.shape, self.dtype = spill, saved.shape, saved.dtype
        self.nbytes = saved.numel() * saved.element_size()
        self.offset = spill.write(saved)

    def load(self) -> torch.Tensor:
        import torch

        out = torch.empty(self.shape, dtype=self.dtype)
        self.spill.read_into(out, self.offset)
        return out

    def copy_into(self, view: torch.Tensor) -> None:
        if view.device.type == "cpu" and view.is_contiguous() and view.dtype == self.dtype:
            self.spill.read_into(view, self.offset)  # straight into the weight: no temporary
        else:
            view.copy_(self.load())


def _put_back(view: torch.Tensor, backup: torch.Tensor | _Spilled) -> None:
    """Copy a backup (in RAM or spilled) back into the tensor it was taken from."""
    if isinstance(backup, _Spilled):
        backup.copy_into(view)
    else:
        view.copy_(backup)


class AppliedChange:
    """A change applied in place to a model, with what is needed to undo it exactly.

    ``metadata`` describes the change (JSON-able). ``restore()`` undoes every recorded step in reverse order
    and is idempotent. Used as a context manager, the change is restored on exit (also on exceptions).
    """

    def __init__(self, metadata: dict[str, Any] | None = None) -> None:
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._undo: list[Callable[[], None]] = []
        self._restored = False
        self._serial_restore = True  # until a saved tensor is big or off the CPU (see _one_cpu_thread)
        self._policy = backup_policy()
        self._ram_bytes = 0
        self._spilled_bytes = 0
        self._spill: _SpillFile | None = None
        self._spill_lock = threading.Lock()

    @property
    def restored(self) -> bool:
        return self._restored

    @property
    def backup_bytes(self) -> dict[str, int]:
        """Bytes of live backups held in RAM (CPU and accelerator) and in the scratch file."""
        return {"ram": self._ram_bytes, "spilled": self._spilled_bytes}

    def save_tensor(self, view: torch.Tensor, *, offload: bool = False) -> torch.Tensor:
        """Record ``view``'s current data (a clone) so that ``restore`` copies it back; returns the clone.

        ``offload=True`` keeps the clone in CPU memory (for changes that touch most of a GPU-resident model).
        The clone may go to the scratch file (see :class:`BackupPolicy`); the returned tensor is then the
        caller's alone.
        """
        saved = view.detach().to("cpu", copy=True) if offload else view.detach().clone()
        self._record_backup(view, self._keep(saved))
        return saved

    def _spill_target(self, nbytes: int, device: torch.device) -> _SpillFile | None:
        """Count ``nbytes`` of backup against the RAM budget (``None``: keep it in RAM), or the scratch file to
        write it to."""
        limit = self._policy.ram_bytes
        with self._spill_lock:  # apply_edit keeps backups from several threads
            if device.type != "cpu" or limit is None or self._ram_bytes + nbytes <= limit:
                self._ram_bytes += nbytes
                return None
            if self._spill is None:
                self._spill = _SpillFile(self._policy.directory)
            self._spilled_bytes += nbytes
            return self._spill

    def _keep(self, saved: torch.Tensor) -> torch.Tensor | _Spilled:
        """``saved`` itself while the RAM budget allows (or it is on an accelerator), else its spilled copy."""
        target = self._spill_target(saved.numel() * saved.element_size(), saved.device)
        return saved if target is None else _Spilled(target, saved.contiguous())

    def _backup(self, view: torch.Tensor) -> torch.Tensor | _Spilled:
        """A private copy of ``view``'s current data: a clone while the RAM budget allows, else ``view``'s bytes
        appended to the scratch file straight from the weight (no clone)."""
        target = self._spill_target(view.numel() * view.element_size(), view.device)
        return view.detach().clone() if target is None else _Spilled(target, view.detach().contiguous())

    def _forget(self, backup: torch.Tensor | _Spilled) -> None:
        """Stop counting a backup that will not be recorded (a spilled one's bytes stay in the append-only file)."""
        with self._spill_lock:
            if isinstance(backup, _Spilled):
                self._spilled_bytes -= backup.nbytes
            else:
                self._ram_bytes -= backup.numel() * backup.element_size()

    def _record_backup(self, view: torch.Tensor, backup: torch.Tensor | _Spilled) -> None:
        """Have ``restore`` copy ``backup`` (a private copy of ``view``'s data, maybe spilled) back into ``view``."""
        if not _small_cpu_matrix(view):
            self._serial_restore = False

        self._undo.append(lambda: _put_back(view, backup))

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

    @reusing_heap()  # a spilled backup's read-back buffers and the like reuse heap pages (pytest_proofpack.malloc)
    def restore(self) -> None:
        """Undo everything, newest first. A second call does nothing."""
        if self._restored:
            return
        import torch

        with torch.no_grad(), _one_cpu_thread(self._serial_restore):
            while self._undo:
                self._undo.pop()()
        self._restored = True
        if self._spill is not None:
            self._spill.close()

    def __enter__(self) -> AppliedChange:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()


def _small_cpu_matrix(view: torch.Tensor) -> bool:
    """Whether ``view`` is edited and restored on one intra-op thread (see :func:`_one_cpu_thread`)."""
    return view.device.type == "cpu" and view.numel() <= SERIAL_MAX_NUMEL


@contextlib.contextmanager
def _one_cpu_thread(enabled: bool) -> Iterator[None]:
    """Run the body with one torch intra-op thread (restoring the caller's count after), if ``enabled``.

    An edit of a small matrix is a string of short, mostly memory-bound ops; each parallel region ends in a
    barrier that waits for every OpenMP thread. On a busy CPU one of them is often descheduled, and the barrier
    then costs a scheduler time slice: on the shared 2-core box (load ~5) every SmolLM2 edit ran 3-9x slower
    with 2 threads than with 1 (``magnitude_prune:0.5:all`` 21.8 s vs 2.8 s). The cores are used instead by
    editing several matrices at once (thread-safe kinds). Big matrices keep the caller's threads: their regions
    are long enough to pay for the barrier. A side effect: the result of a small matrix's edit (e.g. the matmuls
    of a low-rank truncation) does not depend on the caller's thread count.
    """
    import torch

    before = torch.get_num_threads()
    if not enabled or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def derive_seed(seed: int, key: str) -> int:
    """A per-matrix seed that depends on the run seed and the matrix name, not on iteration order."""
    return zlib.crc32(f"{seed}:{key}".encode()) & 0x7FFFFFFF


def count_changed(new: torch.Tensor, old: torch.Tensor) -> int:
    """Elements whose value differs (NaN in both places counts as unchanged)."""
    same = (new == old) | (new.isnan() & old.isnan())
    return int((~same).sum())


#: elements per block of :func:`_difference` on the CPU (1 MiB of fp32): its temporaries stay in the cache
DIFF_BLOCK: Final = 1 << 18


def _difference(new: torch.Tensor, old: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([||new - old||, ||old||] fp32, #(new - old != 0) int64)``, left on the weight's device.

    :func:`_summarize` reads them for all matrices at once: one host sync per edit, not three per matrix. On the
    CPU the matrices are walked in blocks of :data:`DIFF_BLOCK` elements, whose difference and mask stay in the
    cache; a whole-matrix difference was a fresh allocation that the kernel zero-fills and that is written and read
    back from memory (0.30 s of ``lowrank_svd:32:all`` on SmolLM2).
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
        # delta != 0 (NaN counts, -0.0 does not) is |delta| with non-zero bits. count_nonzero over the int32 view of
        # |delta| (in place) is vectorised: 65 us per block on CPU, against 240 us for the boolean `delta != 0` (a
        # fresh mask) and 950 us for count_nonzero on the floats of a half-zero block (a branch per element).
        counts.append(torch.count_nonzero(delta.abs_().view(torch.int32)))
    norms = torch.stack([torch.linalg.vector_norm(torch.stack(diffs)), torch.linalg.vector_norm(torch.stack(bases))])
    return norms, torch.stack(counts).sum()


Measured = tuple["torch.Tensor", "torch.Tensor | _Spilled | None", tuple["torch.Tensor", "torch.Tensor"]]
"""``(new view, saved original (maybe spilled), _difference(new, original))`` of one edited matrix."""


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
    for (new, old, _), (diff, base), count in zip(measured, norms, counts, strict=True):
        if math.isfinite(diff):
            changed += int(count)
        else:
            assert old is not None
            old = old.load() if isinstance(old, _Spilled) else old
            changed += count_changed(new, old)
            delta = torch.nan_to_num(new.float() - old.float(), nan=0.0, posinf=0.0, neginf=0.0)
            diff = float(torch.linalg.vector_norm(delta))
        rel.append(diff / base if base > 0 else 0.0)
    return changed, rel


@reusing_heap()  # the per-matrix temporaries reuse heap pages instead of faulting fresh ones (pytest_proofpack.malloc)
def apply_edit(
    model: nn.Module, spec: EditSpec, *, seed: int = 0, registry: EditRegistry | None = None
) -> AppliedChange:
    """Apply ``spec`` in place to every weight matrix in its scope and return the reversible change.

    Raises :class:`SpecError` for an unresolved ``clean`` spec or a scope that matches no matrix of ``model``.
    ``metadata``: kind, params, scope, modules_touched (ref keys), n_modules, skipped ([{module, reason}]),
    params_in_scope, params_changed, changed_fraction, avg_relative_error, seconds, and per kind
    actual_sparsity (prune), avg_energy_retained (lowrank), saturated (fp8), and ``methods`` ({method: matrices}) for
    kinds whose function reports one (lowrank: exact, randomized-bf16 or randomized-fp32).
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
    energies: list[float] = []
    counters: dict[str, int] = {}
    methods: dict[str, int] = {}
    in_scope = 0
    views = [matrix(model, ref) for ref in refs]
    serial = all(_small_cpu_matrix(v) for v in views)
    workers = min(torch.get_num_threads(), len(views)) if serial and kind.thread_safe else 1
    seeds = [derive_seed(seed, ref.key) for ref in refs]
    # backups[i]: matrix i's original, copied (to RAM or straight to the scratch file) before the edit function runs,
    # so that a registered function that writes into its input cannot corrupt what restore() copies back.
    backups: list[torch.Tensor | _Spilled | None] = [None] * len(views)

    def edit_one(i: int) -> tuple[dict[str, Any], tuple[torch.Tensor, torch.Tensor] | None]:
        with torch.no_grad():  # grad mode is per thread
            view = views[i]
            backup = backups[i] = change._backup(view)
            version = view._version  # moves if the edit function writes into its input (view.float() is view)
            new, stats = kind.fn(view.float(), params, seed=seeds[i])
            if stats.get("skipped"):
                _put_back(view, backup)
                backups[i] = None
                change._forget(backup)
                return stats, None
            new = new.to(device=view.device, dtype=view.dtype)
            # against the original: the RAM clone, or the weight itself before it is overwritten (a spilled backup
            # is read back only if the edit function wrote into its input)
            untouched = isinstance(backup, _Spilled) and view._version == version
            original = view if untouched else backup.load() if isinstance(backup, _Spilled) else backup
            difference = _difference(new, original)
            view.copy_(new)
            del new
            return stats, difference

    try:
        with _one_cpu_thread(serial):
            if workers > 1:
                # Small CPU matrices: one matrix per core, each on one intra-op thread (no barriers to wait on).
                with ThreadPoolExecutor(workers, thread_name_prefix="proofpack-edit") as pool:
                    results = list(pool.map(edit_one, range(len(views))))
            else:
                results = [edit_one(i) for i in range(len(views))]
            with torch.no_grad():
                changed, rel_errors = _summarize(
                    [(views[i], backups[i], d) for i, (_, d) in enumerate(results) if d is not None]
                )
    except BaseException:
        with torch.no_grad():
            for view, backup in zip(views, backups, strict=True):
                if backup is not None:
                    _put_back(view, backup)
        raise
    for ref, view, backup, (stats, difference) in zip(refs, views, backups, results, strict=True):
        in_scope += view.numel()
        if difference is None or backup is None:
            skipped.append({"module": ref.key, "reason": str(stats.get("reason", ""))})
            continue
        change._record_backup(view, backup)
        touched.append(ref.key)
        if "energy_retained" in stats:
            energies.append(float(stats["energy_retained"]))
        for key in ("zeros", "numel", "saturated", "pruned"):
            if key in stats:
                counters[key] = counters.get(key, 0) + int(stats[key])
        if "method" in stats:
            methods[str(stats["method"])] = methods.get(str(stats["method"]), 0) + 1
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
    if methods:
        meta["methods"] = dict(sorted(methods.items()))
    meta["seconds"] = time.perf_counter() - start
    change.metadata.update(meta)
    return change
