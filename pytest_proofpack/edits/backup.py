"""Bit-exact backups of weight tensors, held in RAM or spilled to an unlinked scratch file.

A change keeps, for every tensor it overwrites, a private copy of that tensor's original data. While the process's
RAM budget (:class:`BackupPolicy`, set by the plugin from ``--proofpack-backup-ram``) allows, the copy is a clone;
beyond it the tensor's bytes are appended to an unlinked scratch file and read back on restore, so an edit of every
matrix does not hold a second copy of the model in memory while the subject is evaluated. Backups of tensors on an
accelerator always stay where they are. The scratch file has no name on disk: it disappears when it is closed or
the process ends, whatever the way it ends.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    import torch


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
    """The backup policy a change made now uses."""
    return _policy


def _as_bytes(t: torch.Tensor) -> memoryview:
    """The bytes of contiguous CPU tensor ``t`` (no copy)."""
    import torch

    return t.detach().reshape(-1).view(torch.uint8).numpy().data


class SpillFile:
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
        """Fill contiguous CPU tensor ``t`` with the bytes written at ``offset``; :class:`OSError` on a short read."""
        data = _as_bytes(t)
        done = 0
        while done < data.nbytes:
            n = os.preadv(self._file.fileno(), [data[done:]], offset + done)
            if n <= 0:
                raise OSError(f"backup scratch file {self._file.name}: short read at byte {offset + done}")
            done += n

    def close(self) -> None:
        self._file.close()


class Spilled:
    """A backup written to a :class:`SpillFile`: its place, shape and dtype."""

    def __init__(self, spill: SpillFile, saved: torch.Tensor) -> None:
        self.spill, self.shape, self.dtype = spill, saved.shape, saved.dtype
        self.nbytes = saved.numel() * saved.element_size()
        self.offset = spill.write(saved)

    def load(self) -> torch.Tensor:
        """A fresh CPU tensor holding the backed-up data."""
        import torch

        out = torch.empty(self.shape, dtype=self.dtype)
        self.spill.read_into(out, self.offset)
        return out

    def copy_into(self, view: torch.Tensor) -> None:
        """Write the backed-up data into ``view`` (the tensor it was taken from)."""
        if view.device.type == "cpu" and view.is_contiguous() and view.dtype == self.dtype:
            self.spill.read_into(view, self.offset)  # straight into the weight: no temporary
        else:
            view.copy_(self.load())


Backup: TypeAlias = "torch.Tensor | Spilled"
"""A private copy of a tensor's data: a clone in memory, or its bytes in the scratch file."""


def put_back(view: torch.Tensor, backup: Backup) -> None:
    """Copy a backup (in RAM or spilled) back into the tensor it was taken from."""
    if isinstance(backup, Spilled):
        backup.copy_into(view)
    else:
        view.copy_(backup)


def load_backup(backup: Backup) -> torch.Tensor:
    """The backed-up data as a tensor (read back from the scratch file when spilled)."""
    return backup.load() if isinstance(backup, Spilled) else backup


class BackupStore:
    """The backups of one change: counted against the RAM budget of the policy in force when it was made.

    Thread-safe: an edit takes the backups of several matrices from worker threads.
    """

    def __init__(self, policy: BackupPolicy | None = None) -> None:
        self._policy = policy if policy is not None else backup_policy()
        self._ram_bytes = 0
        self._spilled_bytes = 0
        self._spill: SpillFile | None = None
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> dict[str, int]:
        """Bytes of live backups held in RAM (CPU and accelerator) and in the scratch file."""
        return {"ram": self._ram_bytes, "spilled": self._spilled_bytes}

    def keep(self, saved: torch.Tensor) -> Backup:
        """``saved`` (a clone the caller made) while the RAM budget allows or it is on an accelerator, else its
        spilled copy."""
        target = self._spill_target(saved.numel() * saved.element_size(), saved.device)
        return saved if target is None else Spilled(target, saved.contiguous())

    def take(self, view: torch.Tensor) -> Backup:
        """A private copy of ``view``'s current data: a clone while the RAM budget allows, else ``view``'s bytes
        appended to the scratch file straight from the weight (no clone)."""
        target = self._spill_target(view.numel() * view.element_size(), view.device)
        return view.detach().clone() if target is None else Spilled(target, view.detach().contiguous())

    def forget(self, backup: Backup) -> None:
        """Stop counting a backup that will not be restored (a spilled one's bytes stay in the append-only file)."""
        with self._lock:
            if isinstance(backup, Spilled):
                self._spilled_bytes -= backup.nbytes
            else:
                self._ram_bytes -= backup.numel() * backup.element_size()

    def close(self) -> None:
        """Delete the scratch file, if any (its backups must have been restored)."""
        if self._spill is not None:
            self._spill.close()

    def _spill_target(self, nbytes: int, device: torch.device) -> SpillFile | None:
        """Count ``nbytes`` of backup against the RAM budget (``None``: keep it in RAM), or the scratch file to
        write it to."""
        limit = self._policy.ram_bytes
        with self._lock:
            if device.type != "cpu" or limit is None or self._ram_bytes + nbytes <= limit:
                self._ram_bytes += nbytes
                return None
            if self._spill is None:
                self._spill = SpillFile(self._policy.directory)
            self._spilled_bytes += nbytes
            return self._spill
