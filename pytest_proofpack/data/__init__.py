"""Evaluation text: corpus providers (:mod:`.providers`), tokenization cache and windows (:mod:`.windows`).

The public names are re-exported lazily so that importing this package costs nothing (``datasets``, numpy and
torch load only when a function runs).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_proofpack.data.providers import (
        PROVIDERS,
        CorpusText,
        DatasetSpec,
        load_text,
        tokenize_corpus,
        tokenizer_fingerprint,
    )
    from pytest_proofpack.data.windows import (
        WindowSet,
        chunk_count,
        make_eval_windows,
        select_windows,
        token_hash,
        verify_pairing,
    )

__all__ = [
    "PROVIDERS",
    "CorpusText",
    "DatasetSpec",
    "WindowSet",
    "chunk_count",
    "load_text",
    "make_eval_windows",
    "select_windows",
    "token_hash",
    "tokenize_corpus",
    "tokenizer_fingerprint",
    "verify_pairing",
]

_WHERE = {
    "PROVIDERS": "providers",
    "CorpusText": "providers",
    "DatasetSpec": "providers",
    "load_text": "providers",
    "tokenize_corpus": "providers",
    "tokenizer_fingerprint": "providers",
    "WindowSet": "windows",
    "chunk_count": "windows",
    "make_eval_windows": "windows",
    "select_windows": "windows",
    "token_hash": "windows",
    "verify_pairing": "windows",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
