"""Evaluation text: corpus providers, the corpus and token caches, and evaluation windows.

* :mod:`.spec`: what a provider is given (:class:`DatasetFields`, :class:`LoadContext`);
* :mod:`.registry`: the provider registry (:class:`ProviderRegistry`; the module-level :data:`PROVIDERS` and
  :func:`register_provider` for code outside a session) and :class:`DatasetSpec`;
* :mod:`.builtin_providers`: wikitext2, hf_text, local_text, local_jsonl, shakespeare, pydoc;
* :mod:`.corpus`: :func:`load_text` -> :class:`CorpusText`, with the documents cache and the child-process load;
* :mod:`.tokenization`: :func:`tokenize_corpus` and :func:`tokenizer_fingerprint`, with the token cache;
* :mod:`.child_process`: running one such job in a short-lived child interpreter;
* :mod:`.windows`: evaluation windows cut from a token stream.

The public names are re-exported lazily so that importing this package costs nothing (``datasets``, numpy and
torch load only when a function runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_proofpack.lazy import lazy_exports

if TYPE_CHECKING:
    from pytest_proofpack.data.corpus import CorpusText, load_text
    from pytest_proofpack.data.registry import PROVIDERS, DatasetSpec, register_provider
    from pytest_proofpack.data.spec import LoadContext
    from pytest_proofpack.data.tokenization import tokenize_corpus, tokenizer_fingerprint
    from pytest_proofpack.data.windows import (
        WindowSet,
        chunk_count,
        make_eval_windows,
        select_windows,
        token_hash,
        verify_pairing,
    )

_WHERE = {
    "PROVIDERS": "registry",
    "DatasetSpec": "registry",
    "register_provider": "registry",
    "LoadContext": "spec",
    "CorpusText": "corpus",
    "load_text": "corpus",
    "tokenize_corpus": "tokenization",
    "tokenizer_fingerprint": "tokenization",
    "WindowSet": "windows",
    "chunk_count": "windows",
    "make_eval_windows": "windows",
    "select_windows": "windows",
    "token_hash": "windows",
    "verify_pairing": "windows",
}

__all__ = [
    "PROVIDERS",
    "CorpusText",
    "DatasetSpec",
    "LoadContext",
    "WindowSet",
    "chunk_count",
    "load_text",
    "make_eval_windows",
    "register_provider",
    "select_windows",
    "token_hash",
    "tokenize_corpus",
    "tokenizer_fingerprint",
    "verify_pairing",
]

__getattr__ = lazy_exports(__name__, _WHERE)
