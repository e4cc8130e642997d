"""GGUF weights: finding the file a suite entry names, reading its quantization type, and converting it once into a
safetensors directory.

transformers reads a GGUF file by dequantising its tensors. :func:`convert_gguf` saves that result as an ordinary
fp32 Hugging Face directory (``<cache>/models/<key>-<sha256[:12]>``), under a FileLock and renamed into place, so
every later load, in any worker, reads the directory instead of dequantising again. torch and transformers are
imported inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Final

from filelock import FileLock

from pytest_proofpack import progress
from pytest_proofpack.assets import require_asset, sha256_file
from pytest_proofpack.errors import ModelLoadError, ProofpackError
from pytest_proofpack.models import AssetRef, ModelEntry

__all__ = ["DEQUANTIZED_DTYPE", "convert_gguf", "find_gguf", "gguf_block_count", "gguf_file_type", "gguf_header",
           "gguf_sha256", "is_converted"]

#: The dtype :func:`convert_gguf` dequantises every tensor to.
DEQUANTIZED_DTYPE: Final = "float32"
_CONVERTED_MARKER = ".proofpack-converted.json"
_sha256_by_file: dict[tuple[str, int, int], str] = {}
_header_by_file: dict[tuple[str, int, int], dict[str, int | str]] = {}
#: GGUF metadata value types of fixed size: type id -> bytes (8 is a string, 9 an array).
_SCALAR_SIZES: Final = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
#: struct formats of the GGUF integer value types (0-5 and 10-11).
_INT_FORMATS: Final = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}


def gguf_sha256(path: Path) -> str:
    """sha256 of the file ``path``, remembered per (path, size, mtime) so a multi-GiB file is hashed once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha256_by_file:
        _sha256_by_file[key] = sha256_file(path)
    return _sha256_by_file[key]


def gguf_file_type(path: Path) -> str | None:
    """The quantization type the GGUF file's header declares (``general.file_type``), e.g. ``Q4_1`` or ``Q4_K_M``;
    ``None`` when the header does not say or is not GGUF v2/v3. Reads only the metadata, once per file version."""
    code = gguf_header(path).get("general.file_type")
    return _file_type_name(code) if isinstance(code, int) else None


def gguf_block_count(path: Path) -> int | None:
    """The number of transformer blocks the GGUF header declares (``<architecture>.block_count``), or None."""
    header = gguf_header(path)
    count = header.get(f"{header.get('general.architecture')}.block_count")
    return count if isinstance(count, int) and count > 0 else None


def gguf_header(path: Path) -> dict[str, int | str]:
    """The integer and short string values of the GGUF file's metadata, and each array's length under its name
    plus ``[]`` (``tokenizer.ggml.tokens[]``), read without the tensors and once per file version; empty when the
    file is not GGUF v2/v3 or its header is cut short."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _header_by_file:
        try:
            with path.open("rb") as fh:
                header = _read_header(fh)
        except (OSError, struct.error, ModelLoadError):  # a truncated or foreign header says nothing
            header = {}
        _header_by_file[key] = header
    return _header_by_file[key]


def _file_type_name(code: int) -> str:
    from gguf import LlamaFileType

    try:
        name = LlamaFileType(code).name
    except ValueError:
        return f"file_type {code}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def _read_header(fh: IO[bytes]) -> dict[str, int | str]:
    """The integer and string (≤ 4 KiB) metadata values of the GGUF stream ``fh``, skipping every other value."""
    head = fh.read(24)
    if len(head) < 24 or head[:4] != b"GGUF" or struct.unpack_from("<I", head, 4)[0] not in (2, 3):
        return {}
    (n_kv,) = struct.unpack_from("<Q", head, 16)
    out: dict[str, int | str] = {}
    for _ in range(n_kv):
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > 1 << 16:
            raise ModelLoadError(f"GGUF metadata key of {length} bytes")
        name = fh.read(length).decode("utf-8", "replace")
        (value_type,) = struct.unpack("<I", fh.read(4))
        if value_type in _INT_FORMATS:
            out[name] = int(struct.unpack(_INT_FORMATS[value_type], fh.read(_SCALAR_SIZES[value_type]))[0])
        elif value_type == 8 and (size := struct.unpack("<Q", fh.read(8))[0]) <= 4096:
            out[name] = fh.read(size).decode("utf-8", "replace")
        elif value_type == 8:
            fh.seek(size, os.SEEK_CUR)
        elif value_type == 9:
            item_type, count = struct.unpack("<IQ", fh.read(12))
            out[name + "[]"] = count
            _skip_items(fh, item_type, count)
        else:
            _skip_value(fh, value_type)
    return out


def _skip_items(fh: IO[bytes], item_type: int, count: int) -> None:
    if item_type in _SCALAR_SIZES:
        fh.seek(_SCALAR_SIZES[item_type] * count, os.SEEK_CUR)
    else:
        for _ in range(count):
            _skip_value(fh, item_type)


def _skip_value(fh: IO[bytes], value_type: int) -> None:
    if value_type in _SCALAR_SIZES:
        fh.seek(_SCALAR_SIZES[value_type], os.SEEK_CUR)
    elif value_type == 8:
        fh.seek(struct.unpack("<Q", fh.read(8))[0], os.SEEK_CUR)
    elif value_type == 9:
        item_type, count = struct.unpack("<IQ", fh.read(12))
        _skip_items(fh, item_type, count)
    else:
        raise ModelLoadError(f"GGUF metadata value of unknown type {value_type}")


def find_gguf(entry: ModelEntry, assets: Mapping[str, AssetRef], cache: Path, suite: str) -> tuple[Path, str]:
    """``(the .gguf file, source description)`` of a ``gguf`` entry: one file of its fetched asset, or its path.

    Raises :class:`ProofpackError` (unknown asset, not exactly one matching file, neither asset nor path),
    :class:`~pytest_proofpack.errors.MissingAssetError` (asset not fetched) or :class:`ModelLoadError` (the path
    is not a .gguf file).
    """
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


def is_converted(out: Path) -> bool:
    """Whether :func:`convert_gguf` has finished a conversion into ``out``."""
    return (out / _CONVERTED_MARKER).is_file()


def convert_gguf(gguf: Path, out: Path, *, trust_remote_code: bool = False) -> Path:
    """Convert ``gguf`` into an fp32 safetensors Hugging Face directory at ``out`` (once; atomic; locked).

    transformers dequantises the GGUF tensors; the quantization config is dropped so the result saves and
    loads as an ordinary model, built on the meta device around those very tensors so that the weights are held
    in memory once. Returns ``out``; raises :class:`ModelLoadError` when the file cannot be read or converted.
    """
    if (out / _CONVERTED_MARKER).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / _CONVERTED_MARKER).is_file():
            return out
        with progress.phase("convert", detail=gguf.name):
            tokenizer, quantized = _read_gguf(gguf, trust_remote_code)
            model = _unquantised_model(quantized, trust_remote_code)
            del quantized
            left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
            if left:
                raise ModelLoadError(f"{gguf}: conversion left tensors without values: {', '.join(left[:5])}")
            _save_converted(model, tokenizer, gguf, out)
    return out


def _read_gguf(gguf: Path, trust_remote_code: bool) -> tuple[Any, Any]:
    """``(tokenizer, dequantised model)`` read from ``gguf`` by transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
        )
        quantized = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            dtype=torch.float32,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{gguf}: cannot read GGUF file: {first}") from exc
    return tokenizer, quantized


def _unquantised_model(quantized: Any, trust_remote_code: bool) -> Any:
    """An ordinary model (no quantization config) holding ``quantized``'s dequantised tensors.

    Built on the meta device and handed those tensors themselves (``assign=True``): one copy of the weights
    instead of two. Buffers that are not in the state dict (rotary frequencies) are taken over too. An
    architecture that cannot be built without storage is built normally and the tensors are copied in.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config

    def build() -> Any:
        return AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
            config, dtype=torch.float32, trust_remote_code=trust_remote_code
        )

    state = quantized.state_dict()
    try:
        with torch.device("meta"):
            model = build()
    except (NotImplementedError, RuntimeError):
        model = build()
        model.load_state_dict(state, strict=True)
        return model
    model.load_state_dict(state, strict=True, assign=True)
    for name, buf in quantized.named_buffers():
        if name not in state:
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner).register_buffer(leaf, buf, persistent=False)
    model.tie_weights()
    return model


def _save_converted(model: Any, tokenizer: Any, gguf: Path, out: Path) -> None:
    """Save ``model`` and ``tokenizer`` with the conversion marker into a staging directory renamed to ``out``."""
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        staging = Path(tmp) / "model"
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        marker = {"gguf": gguf.name, "gguf_sha256": gguf_sha256(gguf)}
        (staging / _CONVERTED_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)  # a partial directory from an interrupted run
        os.replace(staging, out)
