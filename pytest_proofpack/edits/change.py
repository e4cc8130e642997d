"""A change applied in place to a model, recorded so that it can be undone exactly (edits and faults alike).

The model is never copied: before a tensor is overwritten, a backup of *that tensor only* is kept
(:mod:`pytest_proofpack.edits.backup`, in RAM or spilled to a scratch file), and :meth:`AppliedChange.restore` copies
it back bit for bit. Structural changes (swapped parameters or modules, config values) are recorded as attribute
swaps. Every step is undone in reverse order.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from pytest_proofpack.edits.backup import Backup, BackupStore, put_back
from pytest_proofpack.edits.cpu_threads import one_cpu_thread, small_cpu_matrix
from pytest_proofpack.malloc import reusing_heap

if TYPE_CHECKING:
    import torch

_MISSING: Final = object()


class AppliedChange:
    """A change applied in place to a model, with what is needed to undo it exactly.

    ``metadata`` describes the change (JSON-able). ``restore()`` undoes every recorded step in reverse order
    and is idempotent. Used as a context manager, the change is restored on exit (also on exceptions).
    ``backups`` holds the originals of the overwritten tensors, under the backup policy in force when the change
    was made.
    """

    def __init__(self, metadata: dict[str, Any] | None = None) -> None:
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.backups = BackupStore()
        self._undo: list[Callable[[], None]] = []
        self._restored = False
        self._serial_restore = True  # until a saved tensor is big or off the CPU (see cpu_threads)

    @property
    def restored(self) -> bool:
        return self._restored

    @property
    def backup_bytes(self) -> dict[str, int]:
        """Bytes of live backups held in RAM (CPU and accelerator) and in the scratch file."""
        return self.backups.held_bytes

    def save_tensor(self, view: torch.Tensor, *, offload: bool = False) -> torch.Tensor:
        """Record ``view``'s current data (a clone) so that ``restore`` copies it back; returns the clone.

        ``offload=True`` keeps the clone in CPU memory (for changes that touch most of a GPU-resident model).
        The clone may go to the scratch file (see :class:`~pytest_proofpack.edits.backup.BackupPolicy`); the
        returned tensor is then the caller's alone.
        """
        saved = view.detach().to("cpu", copy=True) if offload else view.detach().clone()
        self.record_backup(view, self.backups.keep(saved))
        return saved

    def record_backup(self, view: torch.Tensor, backup: Backup) -> None:
        """Have ``restore`` copy ``backup`` (a private copy of ``view``'s data from :attr:`backups`) back into
        ``view``."""
        if not small_cpu_matrix(view):
            self._serial_restore = False
        self._undo.append(lambda: put_back(view, backup))

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

        with torch.no_grad(), one_cpu_thread(self._serial_restore):
            while self._undo:
                self._undo.pop()()
        self._restored = True
        self.backups.close()

    def __enter__(self) -> AppliedChange:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()
