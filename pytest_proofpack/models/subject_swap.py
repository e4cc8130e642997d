"""Swap a checkpoint's weights into the loaded baseline model in place, as a reversible change.

The subject is never loaded as a second model: its safetensors are read one tensor at a time and copied into the
baseline's tensor of the same name, whose original is kept by the change (in RAM or spilled to a scratch file, see
:mod:`pytest_proofpack.edits.backup`) and copied back bit for bit by ``restore``. What does not fit becomes
evidence for the invariants guard instead of a crash:

* a tensor of another shape replaces the baseline's parameter object (``tensor_shape``; a forward that then
  raises marks the metric degraded);
* a tensor the baseline has and the subject lacks (tied aliases count as one) is hidden from the module's
  parameter list while the baseline's value keeps the forward running (``missing_tensors``);
* tensors the baseline does not have are counted in the change's metadata and left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_proofpack.edits.change import AppliedChange
from pytest_proofpack.errors import ModelLoadError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["swap_in_subject"]


def swap_in_subject(model: nn.Module, weights: Sequence[Path], metadata: dict[str, Any]) -> AppliedChange:
    """Copy the tensors of the safetensors files ``weights`` into ``model`` in place; returns the change, whose
    metadata is ``metadata`` plus ``tensors_swapped``, ``dtypes``, ``missing_tensors``, ``shape_changed`` and
    ``extra_tensors``. Raises :class:`ModelLoadError` for an unreadable file (the model is restored first)."""
    import torch
    from safetensors import safe_open

    targets: dict[str, torch.Tensor] = dict(model.state_dict(keep_vars=True))
    aliases: dict[int, list[str]] = {}
    for name, tensor in targets.items():
        aliases.setdefault(id(tensor), []).append(name)
    change = AppliedChange({"kind": "checkpoint", **metadata})
    done: set[int] = set()
    dtypes: dict[str, int] = {}
    shape_changed: list[str] = []
    extra: list[str] = []
    try:
        with torch.no_grad():
            for path in weights:
                with safe_open(str(path), framework="pt", device="cpu") as fh:
                    for name in fh.keys():
                        target = targets.get(name)
                        if target is None:
                            extra.append(name)
                            continue
                        if id(target) in done:
                            continue  # a tied alias of a tensor already swapped in
                        value = fh.get_tensor(name)
                        dtypes[str(value.dtype).replace("torch.", "")] = dtypes.get(
                            str(value.dtype).replace("torch.", ""), 0) + 1
                        done.add(id(target))
                        if tuple(value.shape) == tuple(target.shape):
                            _copy_in(change, target, value)
                        else:
                            _replace(change, model, name, target, value)
                            shape_changed.append(name)
    except (OSError, RuntimeError, ValueError) as exc:
        change.restore()
        raise ModelLoadError(f"checkpoint subject: cannot read {path}: {type(exc).__name__}: "
                             f"{str(exc).strip()[:160]}") from None
    missing = sorted(names[0] for key, names in aliases.items() if key not in done)
    for name in missing:
        _hide(change, model, name)
    change.metadata.update(tensors_swapped=len(done), dtypes=dtypes, missing_tensors=missing[:20],
                           n_missing=len(missing), shape_changed=shape_changed[:20], extra_tensors=len(extra))
    return change


def _copy_in(change: AppliedChange, target: torch.Tensor, value: torch.Tensor) -> None:
    """Overwrite ``target``'s data with ``value`` (cast to its dtype and device), keeping a backup."""
    view = target.detach()
    change.record_backup(view, change.backups.take(view))
    view.copy_(value.to(device=view.device, dtype=view.dtype))


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    owner, _, leaf = name.rpartition(".")
    return (model.get_submodule(owner) if owner else model), leaf


def _replace(change: AppliedChange, model: nn.Module, name: str, target: torch.Tensor, value: torch.Tensor) -> None:
    """Put ``value`` (another shape) in the place of ``name``; restore puts the original object back."""
    from torch import nn

    module, leaf = _owner(model, name)
    value = value.to(device=target.device, dtype=target.dtype)
    replacement = nn.Parameter(value, requires_grad=False) if isinstance(target, nn.Parameter) else value
    change.set_attr(module, leaf, replacement)


def _hide(change: AppliedChange, model: nn.Module, name: str) -> None:
    """Take ``name`` out of its module's parameter (or buffer) table while keeping it reachable as a plain
    attribute, so the forward still runs and the invariants guard sees the tensor missing; restore puts the
    table back exactly as it was (same order)."""
    module, leaf = _owner(model, name)
    table: dict[str, Any] = module._parameters if leaf in module._parameters else module._buffers
    saved = dict(table)
    tensor = table.pop(leaf)
    module.__dict__[leaf] = tensor

    def undo() -> None:
        module.__dict__.pop(leaf, None)
        table.clear()
        table.update(saved)

    change.on_restore(undo)
