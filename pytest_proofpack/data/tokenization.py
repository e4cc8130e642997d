"""Tokenizing a corpus: one int64 token stream per (corpus, tokenizer), cached on disk.

:func:`tokenize_corpus` keys the cache by the corpus digest and :func:`tokenizer_fingerprint`, so every worker of a
session (and every later session) reuses one file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from pytest_proofpack import progress
from pytest_proofpack.data.child_process import run_child
from pytest_proofpack.data.corpus import CorpusText

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["adds_bos", "tokenize_corpus", "tokenizer_fingerprint"]


def tokenizer_fingerprint(tok: Any) -> str:
    """sha256 of the fast tokenizer's serialized form (``backend_tokenizer.to_str()``), else of the sorted
    vocabulary."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        payload = str(backend.to_str())
    else:
        payload = json.dumps(sorted(tok.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def adds_bos(tok: Any) -> int | None:
    """The BOS id when the tokenizer puts BOS first in an encoded text (its ``add_bos_token`` convention, from
    the HF config or GGUF metadata), else ``None``. Asked by encoding a probe text, so every tokenizer class
    answers the same way it would for the model's users."""
    bos = getattr(tok, "bos_token_id", None)
    if bos is None:
        return None
    ids = tok("a", add_special_tokens=True)["input_ids"]
    return int(bos) if len(ids) and int(ids[0]) == int(bos) else None


def tokenize_corpus(
    corpus: CorpusText, tokenizer: Any, *, cache: Path, isolate: bool = False
) -> npt.NDArray[np.int64]:
    """One int64 token stream for ``corpus``: each document tokenized without special tokens, documents
    joined by the tokenizer's EOS id when it has one (no BOS is added).

    Cached as ``<cache>/tokens/<sha256(digest, tokenizer fingerprint, eos)>.npy`` under a FileLock with an
    atomic write; a second call loads the file. ``isolate=True`` tokenizes in a short-lived child interpreter
    (the same code; in this process, with a :class:`RuntimeWarning`, if the child fails): a fast tokenizer
    encoding a whole corpus at once builds per-token structures several hundred MiB large, and a model worker
    would keep much of that resident afterwards.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    key = hashlib.sha256(f"{corpus.digest}:{tokenizer_fingerprint(tokenizer)}:eos={eos}".encode()).hexdigest()
    path = cache / "tokens" / f"{key}.npy"
    if path.is_file():
        return _load_tokens(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            return _load_tokens(path)
        n_docs = len(corpus.docs)
        with progress.phase("tokenize", detail=f"{n_docs} document{'s' if n_docs != 1 else ''}"):
            if isolate:
                why = _tokenize_in_child(path, corpus.docs, tokenizer, eos)
                if why is None:
                    return _load_tokens(path)
                # The child could not do it (an unpicklable tokenizer, a failed import): the same result, made here.
                warnings.warn(f"tokenizing the corpus in a child process failed ({why}); tokenizing in this "
                              "process", RuntimeWarning, stacklevel=2)
            arr = _token_stream(corpus.docs, tokenizer, eos)
            _write_tokens(path, arr)
            return arr


def _encode(tok: Any, text: str) -> list[int]:
    # verbose=False: a corpus document is longer than model_max_length by design; the warning is noise.
    return [int(t) for t in tok(text, add_special_tokens=False, verbose=False)["input_ids"]]


def _token_stream(documents: Sequence[str], tokenizer: Any, eos: int | None) -> npt.NDArray[np.int64]:
    import numpy as np

    stream: list[int] = []
    for i, doc in enumerate(documents):
        if i and eos is not None:
            stream.append(int(eos))
        stream.extend(_encode(tokenizer, doc))
    return np.asarray(stream, dtype=np.int64)


def _load_tokens(path: Path) -> npt.NDArray[np.int64]:
    import numpy as np

    arr: npt.NDArray[np.int64] = np.load(path, allow_pickle=False).astype(np.int64, copy=False)
    return arr


def _write_tokens(path: Path, arr: npt.NDArray[np.int64]) -> None:
    """``np.save`` to a temporary name beside ``path``, renamed into place."""
    import numpy as np

    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tokenize_job() -> None:
    """Entry point of the child process of :func:`tokenize_corpus` with ``isolate=True``: ``argv[1]`` is a pickle
    of ``(out path, documents, tokenizer, eos)``."""
    with open(sys.argv[1], "rb") as fh:
        path, documents, tokenizer, eos = pickle.load(fh)  # our own file, written just before
    _write_tokens(Path(path), _token_stream(documents, tokenizer, eos))


def _tokenize_in_child(path: Path, documents: Sequence[str], tokenizer: Any, eos: int | None) -> str | None:
    """Run :func:`_tokenize_job` in a fresh interpreter; ``None`` on success, else why it failed."""
    with tempfile.TemporaryDirectory(prefix=".tokenize.", dir=path.parent) as tmp:
        job = Path(tmp) / "job.pickle"
        try:
            with open(job, "wb") as fh:
                pickle.dump((str(path), tuple(documents), tokenizer, eos), fh)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            return f"the tokenizer cannot be pickled ({exc})"
        why = run_child("from pytest_proofpack.data.tokenization import _tokenize_job; _tokenize_job()", job)
    if why is None and not path.is_file():
        return "the child wrote no token file"
    return why
