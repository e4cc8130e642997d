"""A checkpoint scenario's subject: the user's own weights, checked against the baseline before they are read.

A subject is described like a suite's model (``scenarios.json`` → ``generation.subject``): ``{source: local,
path: DIR}``, ``{source: gguf, path: FILE.gguf}`` or ``{source: hub, hub_id: ID, revision: SHA}``.
:func:`parse_subject` checks that description (a :class:`~pytest_proofpack.errors.ProofpackError` naming the
field); :func:`resolve_subject` turns it into a checked safetensors directory (a GGUF file converted once into the
cache, as for a baseline) with its digest, after :func:`check_compatible` has compared what the file headers say
(architecture, layer count, hidden size, vocabulary, tokenizer, quantization format) with the baseline.
No weights are read here; torch is not imported.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pytest_proofpack import progress
from pytest_proofpack.errors import ModelLoadError, ProofpackError
from pytest_proofpack.models import ModelEntry
from pytest_proofpack.models.gguf import gguf_file_type, gguf_header, gguf_sha256, is_converted
from pytest_proofpack.models.model_dir import check_model_dir
from pytest_proofpack.models.sources import hub_snapshot

__all__ = ["SUBJECT_FIELDS", "ResolvedSubject", "SubjectSpec", "check_compatible", "parse_subject",
           "resolve_subject"]

SUBJECT_FIELDS: Final = ("source", "path", "hub_id", "revision", "trust_remote_code")
_SOURCES: Final = ("local", "gguf", "hub")
#: config.json keys compared with the baseline's: (what it is, the keys that may hold it).
_CONFIG_CHECKS: Final = (
    ("architecture", ("model_type",)),
    ("layer count", ("num_hidden_layers", "n_layer", "num_layers")),
    ("hidden size", ("hidden_size", "n_embd", "d_model")),
    ("vocabulary size", ("vocab_size",)),
)
#: Quantization formats whose packed weights need their own kernels (never loaded in place here).
_KERNEL_FORMATS: Final = {"gptq": "GPTQ", "awq": "AWQ", "bitsandbytes": "bitsandbytes", "aqlm": "AQLM",
                          "exl2": "EXL2", "marlin": "Marlin", "hqq": "HQQ", "quanto": "quanto"}
_TOKENIZER_FILES: Final = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class SubjectSpec:
    """A checked subject description: ``source`` and the ``path`` (absolute) or ``hub_id`` + ``revision``."""

    source: str
    path: str = ""
    hub_id: str = ""
    revision: str = ""
    trust_remote_code: bool = False

    def describe(self) -> str:
        """``local:/dir``, ``gguf:/file.gguf`` or ``hub:id@revision``."""
        return f"hub:{self.hub_id}@{self.revision}" if self.source == "hub" else f"{self.source}:{self.path}"


@dataclass(frozen=True)
class ResolvedSubject:
    """A subject ready to be swapped in: its checked directory and weight files, and its provenance (source,
    digest, per-file sha256, GGUF type) for the report, the manifest and the signed statement."""

    directory: Path
    weights: tuple[Path, ...]
    provenance: dict[str, Any] = field(default_factory=dict)


def parse_subject(raw: object, base_dir: Path, where: str) -> SubjectSpec:
    """The subject description ``raw`` (a relative ``path`` is relative to ``base_dir``); raises
    :class:`ProofpackError` naming ``where`` and the field. Nothing is read from disk."""
    if not isinstance(raw, Mapping):
        raise ProofpackError(f"{where}: must be an object {{source: local|gguf|hub, path | hub_id + revision}}")
    unknown = sorted(str(k) for k in raw if k not in SUBJECT_FIELDS)
    if unknown:
        raise ProofpackError(f"{where}.{unknown[0]}: unknown field; accepted: {', '.join(SUBJECT_FIELDS)}")
    source = raw.get("source")
    if source not in _SOURCES:
        raise ProofpackError(f"{where}.source: {source!r:.40} is not accepted; accepted: {', '.join(_SOURCES)}")
    trust = raw.get("trust_remote_code", False)
    if not isinstance(trust, bool):
        raise ProofpackError(f"{where}.trust_remote_code: must be true or false")
    if source == "hub":
        for name in ("hub_id", "revision"):
            if not isinstance(raw.get(name), str) or not raw[name].strip():
                raise ProofpackError(f"{where}.{name}: a hub subject needs hub_id and a pinned revision "
                                     "(a commit sha), e.g. {source: hub, hub_id: org/model, revision: 0123abc...}")
        return SubjectSpec("hub", hub_id=raw["hub_id"].strip(), revision=raw["revision"].strip(),
                           trust_remote_code=trust)
    path = raw.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ProofpackError(f"{where}.path: a {source} subject needs path: <"
                             f"{'directory with config.json + safetensors' if source == 'local' else 'file.gguf'}>")
    resolved = Path(path).expanduser()
    resolved = resolved if resolved.is_absolute() else base_dir / resolved
    if source == "gguf" and resolved.suffix != ".gguf":
        raise ProofpackError(f"{where}.path: {path!r:.80} does not end in .gguf; a gguf subject is one .gguf file")
    return SubjectSpec(str(source), path=str(resolved), trust_remote_code=trust)


def resolve_subject(spec: SubjectSpec, baseline_dir: Path, baseline_vocab: Mapping[str, int] | None, *,
                    cache: Path, allow_net: bool = False, device: str = "cpu") -> ResolvedSubject:
    """The subject's checked directory and provenance, once it is known to fit the baseline in ``baseline_dir``.

    A GGUF subject's header is compared before it is converted (into ``<cache>/models/subject-<sha[:12]>``); a
    directory's config.json and tokenizer before any weight is read. Raises :class:`ModelLoadError` (missing or
    corrupt files, an incompatible subject, a packed format such as GPTQ that cannot be evaluated here) or
    :class:`~pytest_proofpack.errors.MissingAssetError` (a hub subject not in the cache).
    """
    baseline = _read_config(baseline_dir / "config.json", "baseline")
    provenance: dict[str, Any] = {"source": spec.source, "source_desc": spec.describe()}
    if spec.source == "gguf":
        gguf = Path(spec.path)
        if not gguf.is_file():
            raise ModelLoadError(f"checkpoint subject {gguf}: no such .gguf file; fix generation.subject.path")
        _check_gguf_header(gguf, baseline, spec)
        sha = gguf_sha256(gguf)
        directory = _convert_apart(gguf, cache / "models" / f"subject-{sha[:12]}", spec.trust_remote_code)
        provenance.update(digest=f"sha256:{sha}", files={gguf.name: sha},
                          gguf_file_type=gguf_file_type(gguf) or "unknown")
    elif spec.source == "hub":
        entry = ModelEntry(key="subject", hub_id=spec.hub_id, params_b=1.0, family="", revision=spec.revision,
                           trust_remote_code=spec.trust_remote_code)
        directory, commit = hub_snapshot(entry, allow_net)
        provenance.update(digest=f"hub:{spec.hub_id}@{commit}", revision=commit)
    else:
        directory = Path(spec.path)
    check_compatible(directory, baseline, spec, device=device)
    weights = tuple(check_model_dir(directory))
    if spec.source != "gguf":
        files = {p.name: gguf_sha256(p) for p in [directory / "config.json", *weights]}
        provenance["files"] = files
        if spec.source == "local":
            provenance["digest"] = "sha256:" + hashlib.sha256(
                "".join(f"{n}:{d}\n" for n, d in sorted(files.items())).encode()).hexdigest()
    provenance["tokenizer"] = _check_tokenizer(directory, baseline_vocab, spec)
    return ResolvedSubject(directory, weights, provenance)


def check_compatible(directory: Path, baseline: Mapping[str, Any], spec: SubjectSpec, *, device: str = "cpu") -> None:
    """The subject's config.json against the baseline's: architecture, layer count, hidden size and vocabulary
    size equal, and no packed quantization format. Raises :class:`ModelLoadError`, one line."""
    config = _read_config(directory / "config.json", f"checkpoint subject {spec.describe()}")
    quant = config.get("quantization_config")
    if isinstance(quant, Mapping):
        method = str(quant.get("quant_method", "unknown")).lower()
        name = _KERNEL_FORMATS.get(method, method)
        need = "GPU kernels, which this CPU run lacks" if device.startswith("cpu") else "their own kernels"
        raise ModelLoadError(
            f"checkpoint subject {spec.describe()}: a {name} checkpoint (quantization_config.quant_method "
            f"{method!r}); its packed weights need {need} and cannot be swapped into the baseline in place; "
            "dequantize it to a safetensors checkpoint in the baseline's layout first")
    for what, keys in _CONFIG_CHECKS:
        theirs, ours = _first(config, keys), _first(baseline, keys)
        if theirs != ours:
            raise ModelLoadError(f"checkpoint subject {spec.describe()}: {what} {theirs!r} differs from the "
                                 f"baseline's {ours!r}; certify a checkpoint of the baseline's model")


def _check_gguf_header(gguf: Path, baseline: Mapping[str, Any], spec: SubjectSpec) -> None:
    """The GGUF header's architecture, block count, embedding length and token count against the baseline's
    config, read without the tensors."""
    fields = gguf_header(gguf)
    arch = fields.get("general.architecture")
    header = {"layer count": fields.get(f"{arch}.block_count"), "hidden size": fields.get(f"{arch}.embedding_length"),
              "vocabulary size": fields.get("tokenizer.ggml.tokens[]")}
    if not isinstance(arch, str) or None in header.values():
        raise ModelLoadError(f"checkpoint subject {gguf}: its GGUF header does not state the architecture, block "
                             "count, embedding length and tokens; is it a GGUF v2/v3 file of a language model?")
    for what, keys in _CONFIG_CHECKS[1:]:  # the architecture's GGUF name is checked after conversion
        ours, theirs = _first(baseline, keys), header[what]
        if theirs != ours:
            raise ModelLoadError(f"checkpoint subject {spec.describe()}: GGUF {what} {theirs!r} differs from the "
                                 f"baseline's {ours!r}; certify a checkpoint of the baseline's model")


_CONVERT: Final = """
import sys
from pathlib import Path
from pytest_proofpack.errors import ProofpackError
from pytest_proofpack.models.gguf import convert_gguf
try:
    convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]), trust_remote_code=sys.argv[3] == "1")
except ProofpackError as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
"""


def _convert_apart(gguf: Path, out: Path, trust_remote_code: bool) -> Path:
    """:func:`~pytest_proofpack.models.gguf.convert_gguf` in a child process (once; cached in ``out``): the
    dequantising read holds a whole model, and this process already holds the baseline."""
    if is_converted(out):
        return out
    with progress.phase("convert", detail=gguf.name):
        done = subprocess.run([sys.executable, "-c", _CONVERT, str(gguf), str(out), "1" if trust_remote_code else "0"],
                              capture_output=True, text=True, check=False)
    if done.returncode != 0 or not is_converted(out):
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise ModelLoadError(f"checkpoint subject {gguf}: conversion failed: {lines[-1] if lines else done.returncode}")
    return out


def _check_tokenizer(directory: Path, baseline_vocab: Mapping[str, int] | None, spec: SubjectSpec) -> str:
    """``same`` when the subject ships a tokenizer whose vocabulary is the baseline's, ``baseline's`` when it ships
    none (the baseline's tokenizer reads the windows either way); a different vocabulary is a
    :class:`ModelLoadError`."""
    if baseline_vocab is None or not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        return "baseline's"
    from transformers import AutoTokenizer

    try:
        vocab = AutoTokenizer.from_pretrained(str(directory), local_files_only=True,
                                              trust_remote_code=spec.trust_remote_code).get_vocab()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"checkpoint subject {spec.describe()}: cannot read its tokenizer "
                             f"({type(exc).__name__}: {str(exc)[:120]})") from None
    if dict(vocab) != dict(baseline_vocab):
        differ = sorted(set(vocab.items()) ^ set(baseline_vocab.items()))
        raise ModelLoadError(f"checkpoint subject {spec.describe()}: its tokenizer's vocabulary differs from the "
                             f"baseline's ({len(vocab)} vs {len(baseline_vocab)} tokens, {len(differ)} entries "
                             "differ); certify a checkpoint that keeps the baseline's tokenizer")
    return "same"


def _first(config: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    text = config.get("text_config")
    for source in (config, text if isinstance(text, Mapping) else {}):
        for key in keys:
            if key in source:
                return source[key]
    return None


def _read_config(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ModelLoadError(f"{what}: {path} is missing; a checkpoint directory needs config.json + safetensors")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{what}: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{what}: {path} is not a JSON object")
    return data
