"""The primary metric's per-window losses: batched, unpadded next-token log-loss of full windows.

* a window is one full ``seq_len`` row of real tokens; its loss is the mean next-token NLL over its ``seq_len - 1``
  predicted positions, computed from fp32 logits;
* windows are evaluated ``batch_size`` rows at a time, no padding; the output head runs on chunks of positions
  (:func:`token_nll`), so a batch's full-vocabulary logits never exist at once;
* a non-finite window loss keeps its slot (``None``).

:mod:`pytest_proofpack.engine.pairing` pairs these losses with the baseline's and applies the gates.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from pytest_proofpack.malloc import reusing_heap

if TYPE_CHECKING:
    import torch

    from pytest_proofpack.data.windows import WindowSet

#: Largest fp32 logits block :func:`token_nll` materialises at once (one row's chunk of positions): a batch's whole
#: full-vocabulary logits (plus their shifted copy and log-softmax) would be the largest allocation of an evaluation,
#: and chunks this size are no slower.
LOGITS_CHUNK_BYTES: Final = 16 * 1024 * 1024
#: Tokens of one row that :func:`plain_head` runs through both paths.
PROBE_TOKENS: Final = 8
#: Largest difference, relative to the largest probe logit, still counted as the same logits. The two paths
#: run the same kernels on the same shapes, so on one device they agree to the bit; any real post-processing
#: of the head's output (soft-capping at 30 moves a logit of 10 by 3.5 %) is orders of magnitude above.
PROBE_RTOL: Final = 1e-6
#: The ``torch.nn.Module`` attributes holding forward hooks and pre-hooks.
_HOOK_DICTS: Final = ("_forward_hooks", "_forward_pre_hooks")


@reusing_heap()  # one batch's forward: its layers' activations reuse heap pages, given back after
def token_nll(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-position next-token NLL ``[b, seq_len - 1]`` in fp32 for full (unpadded) rows ``input_ids [b, L]``.

    The value is ``cross_entropy(logits.float(), next_token)`` with ``logits`` the model's own output (in the
    model's dtype). When :func:`plain_head` confirms that the model's logits are its output head applied to its
    decoder's last hidden state, the decoder runs once on the batch and the head runs on at most
    :data:`LOGITS_CHUNK_BYTES` of fp32 logits at a time (one row, consecutive positions), so full-vocabulary
    logits for the whole batch never exist; the result equals the plain forward's up to float round-off of
    the same dtype. Any other model takes the plain forward.
    """
    import torch

    parts = _head_parts(model)
    if parts is not None and plain_head(model, input_ids):
        decoder, head = parts
        return _chunked_nll(head, _last_hidden(decoder(input_ids=input_ids, use_cache=False)), input_ids)
    out = model(input_ids=input_ids, use_cache=False)
    logits = out.logits[:, :-1, :].float()
    target = input_ids[:, 1:]
    nll = _cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    return nll.view(target.shape).to(torch.float32)


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    return F.cross_entropy(logits, target, reduction="none")


def _head_parts(model: Any) -> tuple[Any, Any] | None:
    """``(decoder, output head)`` of a Hugging Face causal LM, or ``None`` when the model does not expose both."""
    from torch import nn

    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if not callable(get_decoder) or not callable(get_head):
        return None
    try:
        decoder, head = get_decoder(), get_head()
    except Exception:  # a wrapper without a decoder rule raises: the plain forward serves it
        return None
    if not isinstance(decoder, nn.Module) or not isinstance(head, nn.Module) or decoder is model:
        return None
    return decoder, head


def _last_hidden(out: Any) -> Any:
    """The decoder output's last hidden state (``last_hidden_state`` or the first element of a tuple)."""
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None and isinstance(out, tuple | list) and out:
        hidden = out[0]
    return hidden


def _chunked_nll(head: Any, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-position NLL from the decoder's last hidden state ``[b, L, h]``, one head chunk at a time.

    Chunks are consecutive positions of one row, sized from the head's vocabulary so one chunk's fp32 logits
    stay under :data:`LOGITS_CHUNK_BYTES`; a row's chunking does not depend on the batch it is evaluated in.
    """
    import torch

    b, length = input_ids.shape
    n = length - 1
    weight = getattr(head, "weight", None)
    vocab = int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else 1 << 17
    per_chunk = max(1, LOGITS_CHUNK_BYTES // (4 * max(vocab, 1)))
    n_chunks = max(1, math.ceil(n / per_chunk))
    size = max(1, math.ceil(n / n_chunks))  # equal chunks: no tiny remainder matmul
    nll = torch.empty((b, n), dtype=torch.float32, device=hidden.device)
    target = input_ids[:, 1:].to(hidden.device)
    for row in range(b):
        for start in range(0, n, size):
            stop = min(n, start + size)
            # [1, k, h] with canonical strides: a slice `hidden[row : row + 1, start:stop]` keeps the batch's stride
            # on its size-1 dim, and torch.matmul then skips folding it into one mm when the weight needs no grad:
            # it broadcasts the weight to a bmm and copies all of it (the whole vocabulary x hidden matrix) on every
            # chunk, which can cost more than the chunk's product itself.
            logits = head(hidden[row, start:stop].unsqueeze(0)).float()
            # The head may sit on another device than the decoder's output (a model split across GPUs).
            nll[row, start:stop] = _cross_entropy(logits[0], target[row, start:stop].to(logits.device))
            del logits  # before the next chunk's logits are allocated
    return nll


#: Per-model verdicts of :func:`plain_head`, keyed by the model's structure (see :func:`_structure_key`).
_PLAIN_HEAD: weakref.WeakKeyDictionary[Any, tuple[tuple[object, ...], bool]] = weakref.WeakKeyDictionary()


def _structure_key(model: Any, decoder: Any, head: Any) -> tuple[object, ...]:
    """What decides how logits come out of the decoder: the module objects and every scalar config value."""
    cfg = getattr(model, "config", None)
    scalars = (
        tuple(sorted((k, v) for k, v in vars(cfg).items() if v is None or isinstance(v, bool | int | float | str)))
        if cfg is not None and hasattr(cfg, "__dict__")
        else ()
    )
    return (id(decoder), id(head), type(head), id(cfg), scalars)


def plain_head(model: Any, input_ids: torch.Tensor) -> bool:
    """Whether ``model(x).logits == get_output_embeddings()(get_decoder()(x).last_hidden_state)``.

    Decided numerically, once per model structure: one row's first :data:`PROBE_TOKENS` tokens of
    ``input_ids`` go through the plain forward and through decoder + head, with every forward (pre-)hook of the
    model suspended so the probe leaves no trace in hook-based statistics. Logit soft-capping, a scaled head, a
    scaled hidden state or a decoder whose output is not what the head consumes all show up as a difference
    (above :data:`PROBE_RTOL` of the largest logit) and make the answer ``False``. A probe whose logits are all
    non-finite (a NaN-poisoned subject) proves nothing: it is answered from the structure's earlier verdict,
    else ``True`` when both paths are non-finite in the same places, and not remembered. A probe that raises
    answers ``False`` (the plain forward then raises or works as before).
    """
    import torch

    parts = _head_parts(model)
    if parts is None:
        return False
    decoder, head = parts
    key = _structure_key(model, decoder, head)
    known = _PLAIN_HEAD.get(model)
    if known is not None and known[0] == key:
        return known[1]
    probe = input_ids[:1, : min(int(input_ids.shape[1]), PROBE_TOKENS)]
    try:
        with torch.inference_mode(), _hooks_suspended(model):
            ref = model(input_ids=probe, use_cache=False).logits
            hidden = _last_hidden(decoder(input_ids=probe, use_cache=False))
            mine = head(hidden) if isinstance(hidden, torch.Tensor) else None
    except Exception:  # the plain forward reports (or survives) whatever broke the probe
        return False
    if mine is None or not isinstance(ref, torch.Tensor) or mine.shape != ref.shape:
        verdict: bool | None = False
    else:  # compared in fp32, as the loss sees them (a head output upcast by the model compares equal)
        verdict = _same_logits(mine.float(), ref.float())
    if verdict is None:
        return known[1] if known is not None else True
    _PLAIN_HEAD[model] = (key, verdict)
    return verdict


def _same_logits(mine: torch.Tensor, ref: torch.Tensor) -> bool | None:
    """Equal up to :data:`PROBE_RTOL` of the largest finite logit; ``None`` when no logit is finite in either."""
    import torch

    finite = torch.isfinite(ref)
    if not torch.equal(finite, torch.isfinite(mine)):
        return False
    odd = ~finite  # NaN and +-inf must sit in the same places with the same kind
    if bool(odd.any()) and not torch.equal(torch.nan_to_num(mine[odd], nan=0.0), torch.nan_to_num(ref[odd], nan=0.0)):
        return False
    if not bool(finite.any()):
        return None
    diff = float((mine[finite] - ref[finite]).abs().max())
    scale = max(1.0, float(ref[finite].abs().max()))
    return diff <= PROBE_RTOL * scale


@contextlib.contextmanager
def _hooks_suspended(model: Any) -> Iterator[None]:
    """Detach every module's forward hooks and pre-hooks for the duration (torch keeps them in these dicts)."""
    saved: list[tuple[Any, str, Any]] = []
    try:
        for module in model.modules():
            for attr in _HOOK_DICTS:
                hooks = module.__dict__.get(attr)
                if hooks:
                    saved.append((module, attr, hooks))
                    module.__dict__[attr] = OrderedDict()
        yield
    finally:
        for module, attr, hooks in saved:
            module.__dict__[attr] = hooks


def window_losses(
    model: Any, windows: WindowSet, *, batch_size: int, device: str, start: int = 0
) -> list[float | None]:
    """Mean NLL of every window from ``start`` on, in order; ``None`` where the loss is not finite.

    Windows run ``batch_size`` rows at a time, the first batch at row 0: ``start`` must be a multiple of
    ``batch_size`` (or ``len(windows)``), so that the rows evaluated run in exactly the batches of a call with
    ``start=0`` (and give the same bits). Losses stay on the device until the end (one host transfer per call).
    """
    import torch

    if start < 0 or (start % batch_size and start != len(windows)) or start > len(windows):
        raise ValueError(
            f"window_losses: start={start} is not a batch boundary of {len(windows)} windows in batches of "
            f"{batch_size}"
        )
    chunks: list[torch.Tensor] = []
    with torch.inference_mode():
        for first in range(start, len(windows), batch_size):
            ids = windows.input_ids[first : first + batch_size].to(device)
            chunks.append(token_nll(model, ids).mean(dim=1))
    if not chunks:
        return []
    return finite_or_none(torch.cat(chunks).double().cpu().numpy())


def finite_or_none(values: Any) -> list[float | None]:
    """``values`` (a 1-D float array) as floats, ``None`` where not finite."""
    return [float(v) if math.isfinite(float(v)) else None for v in values]
