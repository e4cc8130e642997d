"""Loading a corpus: the provider's documents, cached on disk when the provider can name them, optionally read
in a child interpreter.

:func:`load_text` resolves the spec's provider in the registry it is given (a session's own; outside a session
:data:`~pytest_proofpack.data.registry.PROVIDERS`) and returns a :class:`CorpusText`: the documents, their digest
and a human-readable origin.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from pytest_proofpack import progress
from pytest_proofpack.data.child_process import run_child
from pytest_proofpack.data.registry import DatasetSpec, Provider, ProviderRegistry, get_provider
from pytest_proofpack.data.spec import LoadContext
from pytest_proofpack.errors import ProofpackError
from pytest_proofpack.models import AssetRef
from pytest_proofpack.results import atomic_write_text, read_json_object

__all__ = ["CorpusText", "load_text"]

_DOC_CACHE_FORMAT = 1


@dataclass(frozen=True)
class CorpusText:
    """Loaded evaluation text.

    ``documents`` are the corpus's documents in order (tokenized separately and joined with EOS); ``text`` is
    their concatenation with blank lines, for display and simple use. ``digest`` is sha256 over the documents
    (length-prefixed, so boundaries count); ``source_desc`` says where the text came from.
    """

    text: str
    digest: str
    source_desc: str
    documents: tuple[str, ...] = ()

    @classmethod
    def from_documents(cls, documents: Sequence[str], source_desc: str) -> CorpusText:
        docs = tuple(documents)
        h = hashlib.sha256()
        for doc in docs:
            raw = doc.encode("utf-8")
            h.update(f"{len(raw)}:".encode())
            h.update(raw)
        return cls(text="\n\n".join(docs), digest=h.hexdigest(), source_desc=source_desc, documents=docs)

    @property
    def docs(self) -> tuple[str, ...]:
        """The documents (``(text,)`` when built without them)."""
        return self.documents if self.documents else (self.text,)


def load_text(
    spec: DatasetSpec,
    *,
    cache: Path,
    assets: Mapping[str, AssetRef],
    suite: str,
    allow_net: bool = False,
    base_dir: Path | None = None,
    isolate: bool = False,
    providers: ProviderRegistry | None = None,
) -> CorpusText:
    """Load the corpus ``spec`` names, with its provider from ``providers`` (default:
    :data:`~pytest_proofpack.data.registry.PROVIDERS`). ``base_dir`` resolves relative ``path`` values (default:
    the cwd).

    When the provider can name its content (``source_key``), the documents are kept under
    ``<cache>/corpora/docs-<key hash>.json`` (atomic write, one loader at a time under a FileLock) and a later load
    reads that file: a worker whose corpus is cached never imports ``datasets``.

    ``isolate=True`` runs a built-in provider's load in a short-lived child interpreter (as
    :func:`~pytest_proofpack.data.tokenization.tokenize_corpus` tokenizes): reading a corpus through ``datasets``
    leaves ``datasets``, pyarrow and the Arrow table resident in the process for good, which a model worker would
    carry through every scenario. A provider registered by a plugin or a conftest (the child does not import
    those), and a child that fails, load in this process: an error is then raised here, as clear as ever.

    Raises :class:`CatalogError` (unknown provider), :class:`MissingAssetError` (not cached and no network, or
    asset not fetched) or :class:`ProofpackError` (no files, bad column, empty corpus).
    """
    provider = providers.resolve(spec.provider) if providers is not None else get_provider(spec.provider)
    ctx = LoadContext(cache=cache, assets=assets, suite=suite, allow_net=allow_net, base_dir=base_dir)
    key = provider.source_key(spec, ctx) if provider.source_key is not None else None
    if key is None:
        docs, desc = _load_documents(provider, spec, ctx, isolate)
    else:
        path = _doc_cache_path(cache, key)
        cached = _read_doc_cache(path, key)
        if cached is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(path) + ".lock"):  # workers starting together load the corpus once
                cached = _read_doc_cache(path, key)
                if cached is None:
                    docs, desc = _load_documents(provider, spec, ctx, isolate)
                    _check_not_empty(spec, docs, desc)
                    payload = {"format": _DOC_CACHE_FORMAT, "key": key, "source_desc": desc, "documents": list(docs)}
                    atomic_write_text(path, json.dumps(payload, ensure_ascii=False))
        if cached is not None:
            docs, desc = cached
    _check_not_empty(spec, docs, desc)
    return CorpusText.from_documents(docs, desc)


def _doc_cache_path(cache: Path, key: str) -> Path:
    return cache / "corpora" / f"docs-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _read_doc_cache(path: Path, key: str) -> tuple[list[str], str] | None:
    """The cached ``(documents, source_desc)`` for ``key``, or ``None`` (absent, unreadable or another key)."""
    data = read_json_object(path)
    if data is None or data.get("format") != _DOC_CACHE_FORMAT or data.get("key") != key:
        return None
    return _documents_of(data)


def _documents_of(data: Mapping[str, object] | None) -> tuple[list[str], str] | None:
    """``(documents, source_desc)`` from a JSON object holding them, or ``None`` when they are missing or mistyped."""
    docs, desc = (data or {}).get("documents"), (data or {}).get("source_desc")
    if not isinstance(docs, list) or not all(isinstance(d, str) for d in docs) or not isinstance(desc, str):
        return None
    return docs, desc


def _check_not_empty(spec: DatasetSpec, docs: Sequence[str], desc: str) -> None:
    if not any(d.strip() for d in docs):
        raise ProofpackError(f"dataset {spec.provider}: the corpus ({desc}) is empty")


def _load_documents(provider: Provider, spec: DatasetSpec, ctx: LoadContext, isolate: bool) -> tuple[list[str], str]:
    """``provider.load(spec, ctx)``, in a child interpreter when ``isolate`` and the provider is built in."""
    with progress.phase("corpus", detail=spec.provider):
        return _load_documents_now(provider, spec, ctx, isolate)


def _load_documents_now(provider: Provider, spec: DatasetSpec, ctx: LoadContext,
                        isolate: bool) -> tuple[list[str], str]:
    if not isolate or not provider.is_builtin:
        return provider.load(spec, ctx)
    loaded, why = _load_in_child(spec, ctx)
    if loaded is not None:
        return loaded
    result = provider.load(spec, ctx)  # a real error (a missing asset, no file) is raised here, clearly
    warnings.warn(f"loading the corpus in a child process failed ({why}); loaded it in this process",
                  RuntimeWarning, stacklevel=4)
    return result


def _load_job() -> None:
    """Entry point of the child of :func:`_load_in_child`: ``argv[1]`` is a pickle of ``(out path, spec, ctx)``;
    writes ``{"documents", "source_desc"}`` as JSON to the out path. Only a built-in provider loads in a child,
    so the child's module-level registry has it."""
    with open(sys.argv[1], "rb") as fh:
        out, spec, ctx = pickle.load(fh)  # our own file, written just before
    docs, desc = get_provider(spec.provider).load(spec, ctx)
    atomic_write_text(Path(out), json.dumps({"documents": list(docs), "source_desc": desc}, ensure_ascii=False))


def _load_in_child(spec: DatasetSpec, ctx: LoadContext) -> tuple[tuple[list[str], str] | None, str]:
    """Run :func:`_load_job` in a fresh interpreter: ``((documents, source_desc), "")``, or ``(None, why)``."""
    ctx.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".load-corpus.", dir=ctx.cache) as tmp:
        job, out = Path(tmp) / "job.pickle", Path(tmp) / "documents.json"
        try:
            with open(job, "wb") as fh:
                pickle.dump((str(out), spec, dataclasses.replace(ctx, assets=dict(ctx.assets))), fh)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            return None, f"the dataset spec cannot be pickled ({exc})"
        why = run_child("from pytest_proofpack.data.corpus import _load_job; _load_job()", job)
        data = read_json_object(out) if why is None else None
    if why is not None:
        return None, why
    loaded = _documents_of(data)
    if loaded is None:
        return None, "the child wrote no documents"
    return loaded, ""
