"""Evaluation windows: contiguous ``seq_len`` token chunks, identified by id and token hash.

A :class:`WindowSet` is what the engine evaluates. Windows are never padded: every row holds ``seq_len`` real
tokens cut from one token stream with stride ``seq_len``. A window's id is ``w<start-offset>`` and its hash is
blake2b-128 over its int64 token bytes, so a subject evaluation can be paired with the baseline's by id *and*
content.

Selection is a seeded draw of chunk indices (numpy ``default_rng(seed).choice`` without replacement, then
sorted), so the same tokens, ``seq_len``, ``n`` and seed always give the same windows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pytest_proofpack.errors import ProofpackError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch

__all__ = [
    "WindowSet",
    "chunk_count",
    "chunk_indices",
    "make_eval_windows",
    "pool_exclusion",
    "select_windows",
    "token_hash",
    "verify_pairing",
]


def token_hash(row: bytes) -> str:
    """blake2b-128 hex digest of a window's int64 token bytes."""
    return hashlib.blake2b(row, digest_size=16).hexdigest()


@dataclass(frozen=True)
class WindowSet:
    """``input_ids`` is a CPU int64 tensor ``[N, seq_len]``; ``ids[i]``/``hashes[i]`` describe row ``i``.

    ``bos`` is the BOS token id every row starts with (then ``seq_len - 1`` corpus tokens follow), or ``None``
    when rows are plain corpus chunks. The engine never scores a row's first position, so BOS is never a target.
    """

    ids: tuple[str, ...]
    hashes: tuple[str, ...]
    input_ids: torch.Tensor
    bos: int | None = None

    @property
    def stride(self) -> int:
        """Corpus tokens per row: the chunk size the window ids count in."""
        return self.seq_len - (self.bos is not None)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def digest(self) -> str:
        """sha256 over ids and hashes in order: the identity of this window set."""
        h = hashlib.sha256()
        for i, t in zip(self.ids, self.hashes, strict=True):
            h.update(f"{i}:{t};".encode())
        return h.hexdigest()


def chunk_count(n_tokens: int, seq_len: int) -> int:
    """How many whole ``seq_len`` chunks a stream of ``n_tokens`` holds (the tail remainder is dropped)."""
    if seq_len <= 0:
        raise ProofpackError(f"seq_len must be a positive integer, got {seq_len}")
    return max(0, n_tokens) // seq_len


def chunk_indices(windows: WindowSet) -> frozenset[int]:
    """The chunk indices (``start_offset // stride``) of ``windows``, e.g. to exclude from another draw."""
    stride = windows.stride
    return frozenset(int(i[1:]) // stride for i in windows.ids)


def _build(tokens: npt.NDArray[np.int64], seq_len: int, chunks: Iterable[int], bos: int | None = None) -> WindowSet:
    import numpy as np
    import torch

    stride = seq_len - (bos is not None)
    idx = sorted(int(c) for c in chunks)
    if idx:
        rows = np.stack([tokens[c * stride : (c + 1) * stride] for c in idx]).astype("<i8", copy=False)
    else:
        rows = np.zeros((0, stride), dtype="<i8")
    if bos is not None:
        rows = np.concatenate([np.full((rows.shape[0], 1), bos, dtype="<i8"), rows], axis=1)
    rows = np.ascontiguousarray(rows)
    ids = tuple(f"w{c * stride}" for c in idx)
    hashes = tuple(token_hash(r.tobytes()) for r in rows)
    return WindowSet(ids=ids, hashes=hashes, input_ids=torch.from_numpy(rows.astype(np.int64, copy=True)), bos=bos)


def select_windows(
    tokens: npt.NDArray[np.int64],
    seq_len: int,
    n: int,
    seed: int,
    *,
    exclude: frozenset[int] = frozenset(),
    bos: int | None = None,
) -> WindowSet:
    """``n`` windows of ``seq_len`` tokens: chunk ``i`` is ``tokens[i*stride:(i+1)*stride]``, prefixed by ``bos``
    when given (``stride = seq_len - 1``; else ``stride = seq_len``).

    The chunk indices are a seeded draw without replacement from the chunks not in ``exclude``, sorted
    ascending. Raises :class:`ProofpackError` naming ``seq_len`` and ``n`` when too few chunks are available.
    """
    import numpy as np

    if n < 0:
        raise ProofpackError(f"window count n must be >= 0, got {n}")
    flat = np.asarray(tokens).reshape(-1)
    if flat.dtype.kind not in "iu":
        raise ProofpackError(f"tokens must be an integer array, got dtype {flat.dtype}")
    flat = flat.astype(np.int64, copy=False)
    total = chunk_count(int(flat.size), seq_len - (bos is not None))
    candidates = np.array([i for i in range(total) if i not in exclude], dtype=np.int64)
    if candidates.size < n:
        raise ProofpackError(
            f"the corpus has {flat.size} tokens = {total} chunks of seq_len={seq_len} "
            f"({candidates.size} available after excluding {len(exclude)}), fewer than the n={n} windows "
            "asked for; lower n or seq_len, or use a larger corpus"
        )
    rng = np.random.default_rng(seed)
    chosen = rng.choice(candidates, size=n, replace=False) if n else candidates[:0]
    return _build(flat, seq_len, chosen.tolist(), bos)


def make_eval_windows(
    tokens: npt.NDArray[np.int64], seq_len: int, n_preview: int, n_final: int, seed: int,
    *, exclude: frozenset[int] = frozenset(), bos: int | None = None,
) -> tuple[WindowSet, WindowSet]:
    """Disjoint preview and final window sets, none of them in ``exclude``: the final draw also excludes the
    preview's chunks. ``bos`` prefixes every row (see :func:`select_windows`)."""
    preview = select_windows(tokens, seq_len, n_preview, seed, exclude=exclude, bos=bos)
    final = select_windows(tokens, seq_len, n_final, seed, exclude=exclude | chunk_indices(preview), bos=bos)
    return preview, final


#: What each share of a corpus's chunks is for. Every window draw takes chunks from one pool only, so thresholds
#: and tuned settings are never judged on the windows they were chosen on.
POOL_SHARES: Final[dict[str, float]] = {"tuning": 0.2, "calibration": 0.3, "evaluation": 0.5}


def pool_exclusion(n_tokens: int, stride: int, pool: str, seed: int) -> frozenset[int]:
    """The chunk indices (chunks of ``stride`` tokens) *outside* ``pool``: pass them as ``exclude`` to draw from
    ``pool`` only.

    Chunks are assigned to pools by one seeded permutation of all chunk indices, cut by :data:`POOL_SHARES`
    (in its order), so the pools are disjoint and the same for every draw of a session with the same ``seed``.
    """
    import numpy as np

    if pool not in POOL_SHARES:
        raise ProofpackError(f"window pool {pool!r} is not one of {', '.join(POOL_SHARES)}")
    total = chunk_count(n_tokens, stride)
    order = np.random.default_rng(seed).permutation(total)
    edges = np.cumsum([0.0, *POOL_SHARES.values()]) * total
    names = list(POOL_SHARES)
    k = names.index(pool)
    inside = order[round(float(edges[k])): round(float(edges[k + 1]))]
    return frozenset(range(total)) - frozenset(int(i) for i in inside)


def _row_hashes(windows: WindowSet) -> list[str]:
    import numpy as np

    rows = np.ascontiguousarray(windows.input_ids.detach().cpu().numpy().astype("<i8", copy=False))
    return [token_hash(r.tobytes()) for r in rows]


def verify_pairing(a: WindowSet, b: WindowSet) -> None:
    """Check ``b`` holds exactly ``a``'s windows in the same order, by id and by token content.

    Hashes are recomputed from both sets' ``input_ids``, so a token changed after the windows were built
    is caught too. Raises :class:`ProofpackError` naming the first mismatching window id (or the differing
    count or seq_len).
    """
    if len(a) != len(b):
        raise ProofpackError(f"window pairing: {len(a)} baseline windows vs {len(b)} subject windows")
    if len(a) and a.seq_len != b.seq_len:
        raise ProofpackError(f"window pairing: seq_len {a.seq_len} vs {b.seq_len}")
    actual_a, actual_b = _row_hashes(a), _row_hashes(b)
    for i, (ia, ib) in enumerate(zip(a.ids, b.ids, strict=True)):
        if ia != ib:
            raise ProofpackError(
                f"window pairing: row {i} is {ia!r} in the baseline but {ib!r} in the subject"
            )
        ha, hb = a.hashes[i], b.hashes[i]
        if len({ha, hb, actual_a[i], actual_b[i]}) != 1:
            raise ProofpackError(
                f"window pairing: window {ia!r} differs (baseline hash {ha}, tokens {actual_a[i]}; "
                f"subject hash {hb}, tokens {actual_b[i]})"
            )
