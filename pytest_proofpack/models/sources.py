"""Where weights come from: ``hub`` (a pinned revision, offline by default), ``local`` (a directory) or ``gguf``.

:func:`resolve_weights` turns a :class:`~pytest_proofpack.models.ModelEntry` into a checked local Hugging Face
directory (config.json + safetensors + tokenizer files) with the identity of its weights. A model that is not
available offline is a :class:`~pytest_proofpack.errors.MissingAssetError` naming the way to get it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pytest_proofpack.errors import MissingAssetError, ProofpackError
from pytest_proofpack.models import AssetRef, ModelEntry
from pytest_proofpack.models.gguf import convert_gguf, find_gguf, gguf_file_type, gguf_sha256
from pytest_proofpack.models.model_dir import check_model_dir, model_fingerprint

__all__ = ["HUB_ALLOW_PATTERNS", "ResolvedWeights", "hub_snapshot", "resolve_weights"]

#: What a hub snapshot needs: configs, weights and tokenizer files (never .bin/.pt pickles).
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]


@dataclass(frozen=True)
class ResolvedWeights:
    """A checked model directory and the identity of its weights (see
    :class:`~pytest_proofpack.models.loading.LoadedModel` for ``revision``, ``fingerprint`` and ``source_desc``);
    ``gguf_file_type`` is the quantization type a GGUF source's header declares."""

    directory: Path
    revision: str
    fingerprint: str
    source_desc: str
    gguf_file_type: str | None = None


def resolve_weights(
    entry: ModelEntry, *, cache: Path, assets: Mapping[str, AssetRef], suite: str, allow_net: bool = False
) -> ResolvedWeights:
    """The local directory of ``entry``'s weights, checked with :func:`check_model_dir`.

    ``hub``: ``entry.hub_id`` at ``entry.revision`` from the Hugging Face cache (downloads only with
    ``allow_net``). ``local``: the directory ``entry.path``. ``gguf``: the fetched asset ``entry.asset`` (or the
    file ``entry.path``), converted once into ``<cache>/models/``.

    Raises :class:`MissingAssetError` (not cached / not fetched), :class:`~pytest_proofpack.errors.ModelLoadError`
    (missing or corrupt files) or :class:`ProofpackError` (bad suite entry).
    """
    if entry.source == "hub":
        return _hub(entry, allow_net)
    if entry.source == "local":
        return _local(entry)
    if entry.source == "gguf":
        return _gguf(entry, cache, assets, suite)
    raise ProofpackError(
        f"models.{entry.key}.source: unknown source {entry.source!r}; accepted: hub, local, gguf"
    )


def _hub(entry: ModelEntry, allow_net: bool) -> ResolvedWeights:
    directory, revision = hub_snapshot(entry, allow_net)
    weights = check_model_dir(directory)
    return ResolvedWeights(directory, revision, model_fingerprint(directory, weights, revision),
                           f"hub:{entry.hub_id}@{revision}")


def _local(entry: ModelEntry) -> ResolvedWeights:
    if not entry.path:
        raise ProofpackError(f"models.{entry.key}: source 'local' needs `path`")
    directory = Path(entry.path).expanduser()
    fingerprint = model_fingerprint(directory, check_model_dir(directory))
    return ResolvedWeights(directory, f"local:{fingerprint[:16]}", fingerprint, f"local:{directory}")


def _gguf(entry: ModelEntry, cache: Path, assets: Mapping[str, AssetRef], suite: str) -> ResolvedWeights:
    gguf, source_desc = find_gguf(entry, assets, cache, suite)
    sha = gguf_sha256(gguf)
    directory = convert_gguf(
        gguf, cache / "models" / f"{entry.dir_name}-{sha[:12]}", trust_remote_code=entry.trust_remote_code
    )
    weights = check_model_dir(directory)
    revision = f"gguf-sha256:{sha}"
    return ResolvedWeights(directory, revision, model_fingerprint(directory, weights, revision), source_desc,
                           gguf_file_type(gguf))


def hub_snapshot(entry: ModelEntry, allow_net: bool) -> tuple[Path, str]:
    """``(snapshot directory, commit sha)`` of ``entry`` in the Hugging Face cache (fetched only with ``allow_net``)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if not entry.hub_id:
        raise ProofpackError(f"models.{entry.key}: source 'hub' needs `hub_id`")
    # Read at call time: huggingface_hub freezes HF_HUB_CACHE at import, tests and users may set it later.
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    rev = entry.revision or None
    try:
        path = snapshot_download(
            entry.hub_id,
            revision=rev,
            cache_dir=cache_dir,
            local_files_only=not allow_net,
            # Remote code is only fetched when the suite opted in to running it.
            allow_patterns=HUB_ALLOW_PATTERNS + (["*.py"] if entry.trust_remote_code else []),
        )
    except LocalEntryNotFoundError as exc:
        at = f"@{entry.revision}" if entry.revision else ""
        if allow_net:
            raise MissingAssetError(
                f"model {entry.key!r}: {entry.hub_id}{at} could not be downloaded ({exc}); check the network"
            ) from exc
        raise MissingAssetError(
            f"model {entry.key!r}: {entry.hub_id}{at} is not in the Hugging Face cache; "
            "rerun with --proofpack-net to download it (or pre-fetch it with `hf download`)"
        ) from exc
    except Exception as exc:
        # RepositoryNotFoundError, RevisionNotFoundError, HTTP errors: all user-fixable, one line each.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MissingAssetError(f"model {entry.key!r}: cannot fetch {entry.hub_id}: {first}") from exc
    local = Path(str(path))
    return local, local.name
