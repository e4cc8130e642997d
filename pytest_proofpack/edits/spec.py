"""The edit spec grammar: ``<kind>:<param>...:<scope>`` and the scope ``ffn | attn | all | <base>@layer=N |
<base>@layers=A-B``.

Pure Python (no torch): the catalog parses every scenario's ``edit_spec`` at collection time.

* ``quant_rtn:<bits>:<group>:<scope>``, ``fp8_quant:<fmt>:<scope>``, ``magnitude_prune:<sparsity>:<scope>``,
  ``lowrank_svd:<rank>:<scope>``, plus any kind registered in the registry a spec is parsed with (a session's,
  filled by the ``pytest_proofpack_register_edits`` hook; outside a session the module-level one that
  :func:`~pytest_proofpack.edits.registry.register_edit` extends).
* ``clean`` as the first parameter is the tuned sentinel (``quant_rtn:clean:ffn``): the parameters come from
  the model's ``tuned_edit_params`` entry through :func:`resolve_clean`.
* Scopes select block weights only (never embeddings or the LM head): ``ffn`` = dense FFN + MoE experts
  (router excluded), ``attn`` = attention, ``all`` = attention + FFN + experts + router. ``@layer=N`` keeps
  block N, ``@layers=A-B`` blocks A..B inclusive; ``@layers=N`` alone keeps the reference harness's meaning,
  blocks ``< N``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

from pytest_proofpack.edits.registry import EditRegistry, Params, ParamValue, default_edit_registry
from pytest_proofpack.errors import SpecError

if TYPE_CHECKING:
    from pytest_proofpack.models.adapters import WeightRef

ScopeBase = Literal["ffn", "attn", "all"]

SCOPE_FORMS: Final = "ffn | attn | all | <base>@layer=N | <base>@layers=A-B"
_BASE_FAMILIES: Final[dict[str, frozenset[str]]] = {
    "ffn": frozenset({"ffn", "expert_ffn"}),
    "attn": frozenset({"attn"}),
    "all": frozenset({"attn", "ffn", "expert_ffn", "router"}),
}
_RANGE_RE: Final = re.compile(r"^(\d+)-(\d+)$")
_INT_RE: Final = re.compile(r"^\d+$")


@dataclass(frozen=True)
class Scope:
    """Which block weights an edit touches: a family set (``base``) and an inclusive block range (or all)."""

    base: ScopeBase
    layers: tuple[int, int] | None = None

    def __str__(self) -> str:
        if self.layers is None:
            return self.base
        lo, hi = self.layers
        return f"{self.base}@layer={lo}" if lo == hi else f"{self.base}@layers={lo}-{hi}"


@dataclass(frozen=True)
class EditSpec:
    """A parsed edit spec. ``params`` are ``(name, value)`` pairs in the kind's positional order.

    ``clean=True`` means the spec still carries the tuned sentinel: ``params`` is empty and the caller must
    :func:`resolve_clean` it before applying.
    """

    kind: str
    params: Params = ()
    scope: Scope = field(default_factory=lambda: Scope("all"))
    clean: bool = False

    def param(self, name: str) -> ParamValue:
        """The value of parameter ``name``; ``KeyError`` when the kind has no such parameter."""
        for key, value in self.params:
            if key == name:
                return value
        raise KeyError(name)

    @property
    def param_dict(self) -> dict[str, ParamValue]:
        return dict(self.params)

    def __str__(self) -> str:
        middle = ["clean"] if self.clean else [_format_param(v) for _, v in self.params]
        return ":".join([self.kind, *middle, str(self.scope)])


def _format_param(value: ParamValue) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def parse_scope(text: str, *, context: str = "") -> Scope:
    """Parse a scope string; raises :class:`SpecError` naming ``text`` and the accepted forms."""
    where = f"{context}: " if context else ""
    raw = text.strip()
    base, sep, restriction = raw.partition("@")
    base = base.strip().lower()
    if base not in _BASE_FAMILIES:
        raise SpecError(f"{where}scope '{text}' has unknown base '{base}'; accepted: {SCOPE_FORMS}")
    if not sep:
        return Scope(base)  # type: ignore[arg-type]
    key, eq, value = restriction.partition("=")
    key, value = key.strip().lower(), value.strip()
    if eq and key == "layer" and _INT_RE.match(value):
        n = int(value)
        return Scope(base, (n, n))  # type: ignore[arg-type]
    if eq and key == "layers":
        m = _RANGE_RE.match(value)
        if m and int(m.group(1)) <= int(m.group(2)):
            return Scope(base, (int(m.group(1)), int(m.group(2))))  # type: ignore[arg-type]
        if _INT_RE.match(value) and int(value) >= 1:
            # The reference harness's `@layers=N` means "the first N blocks".
            return Scope(base, (0, int(value) - 1))  # type: ignore[arg-type]
    raise SpecError(
        f"{where}scope '{text}': layer restriction '@{restriction}' is not layer=N or layers=A-B with A<=B; "
        f"accepted: {SCOPE_FORMS}"
    )


def parse_edit_spec(text: str, *, registry: EditRegistry | None = None) -> EditSpec:
    """Parse ``<kind>:<params...>:<scope>`` (or ``<kind>:clean:<scope>``) into an :class:`EditSpec`.

    The kind is looked up in ``registry`` (default: the module-level edit registry, with "did you mean" on a
    typo); its parser validates the positional parameters. Every problem is a one-line :class:`SpecError` that
    quotes the spec, names the bad part and shows the accepted form.
    """
    reg = registry if registry is not None else default_edit_registry
    if not isinstance(text, str) or not text.strip():
        raise SpecError(
            f"edit spec {text!r} is empty; accepted: <kind>:<params...>:<scope>, kinds {reg.names()}"
        )
    parts = [p.strip() for p in text.strip().split(":")]
    kind = reg.get(parts[0], context=f"edit spec '{text}'")
    if len(parts) >= 2 and parts[1].lower() == "clean":
        if len(parts) != 3:
            raise SpecError(
                f"edit spec '{text}': the clean sentinel takes only a scope; "
                f"accepted: {kind.name}:clean:<scope>"
            )
        return EditSpec(kind.name, (), parse_scope(parts[2], context=f"edit spec '{text}'"), clean=True)
    n = len(kind.param_names)
    if len(parts) != n + 2:
        raise SpecError(
            f"edit spec '{text}': expected {n} parameter(s) and a scope, "
            f"got {len(parts) - 1} field(s) after the "
            f"kind; accepted: {kind.usage} or {kind.name}:clean:<scope>"
        )
    try:
        params = kind.parse(parts[1:-1])
    except ValueError as exc:
        raise SpecError(f"edit spec '{text}': {exc}; accepted: {kind.usage}") from None
    return EditSpec(kind.name, params, parse_scope(parts[-1], context=f"edit spec '{text}'"), clean=False)


def resolve_clean(
    spec: EditSpec, entry: Mapping[str, Any], *, registry: EditRegistry | None = None
) -> EditSpec:
    """Fill a clean sentinel spec from a ``tuned_edit_params`` entry.

    ``entry`` is ``{status, bits, group_size, scope}`` / ``{format, scope}`` / ``{sparsity, scope}`` /
    ``{rank, scope}`` (the kind decides which fields). The entry's ``scope`` wins over the spec's (the tuned
    value is what was measured); without one the spec's scope is kept. ``status: skipped`` is the caller's
    business; here any status other than ``selected`` (or none) is an error. A non-clean spec is returned
    as is.
    """
    if not spec.clean:
        return spec
    reg = registry if registry is not None else default_edit_registry
    kind = reg.get(spec.kind)
    where = f"tuned_edit_params entry for {spec.kind}"
    status = entry.get("status", "selected")
    if status != "selected":
        raise SpecError(
            f"{where}: status {status!r} cannot be applied; set status to 'selected' or skip the scenario"
        )
    missing = [f for f in kind.tuned_fields if f not in entry]
    if missing:
        raise SpecError(
            f"{where}: missing field(s) {', '.join(missing)}; "
            f"expected {{{', '.join(kind.tuned_fields)}, scope}}"
        )
    args = [str(entry[f]) for f in kind.tuned_fields]
    try:
        params = kind.parse(args)
    except ValueError as exc:
        raise SpecError(
            f"{where}: {exc}; expected fields {', '.join(kind.tuned_fields)} as in {kind.usage}"
        ) from None
    scope = spec.scope
    if entry.get("scope") is not None:
        scope = parse_scope(str(entry["scope"]), context=f"{where}: field scope")
    return EditSpec(spec.kind, params, scope, clean=False)


def scope_matches(scope: Scope, ref: WeightRef) -> bool:
    """Whether the weight ``ref`` lies in ``scope`` (block weights only; layer range by ``ref.layer``)."""
    if ref.family not in _BASE_FAMILIES[scope.base] or ref.layer is None:
        return False
    if scope.layers is None:
        return True
    lo, hi = scope.layers
    return lo <= ref.layer <= hi
