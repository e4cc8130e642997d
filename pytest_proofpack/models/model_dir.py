"""A loadable model directory: config.json plus complete safetensors weights, and its fingerprint.

Every model source ends in such a directory. It is checked before transformers sees it, so a missing or truncated
file is a one-line :class:`~pytest_proofpack.errors.ModelLoadError` naming the file rather than a deep traceback.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from pytest_proofpack.errors import ModelLoadError

__all__ = ["check_model_dir", "model_fingerprint"]


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
    weights = _weight_files(directory)
    for w in weights:
        _check_safetensors(w)
    return weights


def _weight_files(directory: Path) -> list[Path]:
    """The shards an index names (each must exist), else every ``*.safetensors`` file (at least one)."""
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
        return weights
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        raise ModelLoadError(
            f"{directory}: no *.safetensors weights (only safetensors are loaded; "
            "convert .bin checkpoints)"
        )
    return weights


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


def model_fingerprint(directory: Path, weights: list[Path], revision: str = "") -> str:
    """sha256 over the config.json bytes' sha256, the weight files' names and sizes, and ``revision``."""
    h = hashlib.sha256()
    h.update(b"config:" + hashlib.sha256((directory / "config.json").read_bytes()).hexdigest().encode())
    for w in sorted(weights, key=lambda p: p.name):
        h.update(f";{w.name}:{w.stat().st_size}".encode())
    h.update(f";revision:{revision}".encode())
    return h.hexdigest()
