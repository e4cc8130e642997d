"""Model edits: spec grammar, one implementation per edit kind, and reversible in-place application.

Public API (names resolve lazily so that importing this package does not import torch)::

    parse_edit_spec(text) -> EditSpec            resolve_clean(spec, entry) -> EditSpec
    parse_scope(text) -> Scope                   scope_matches(scope, ref) -> bool
    apply_edit(model, spec, *, seed=0) -> AppliedChange   (change.metadata, change.restore(), `with`)
    default_edit_registry, register_edit(name, parser, fn, *, param_names=...)
"""

from __future__ import annotations

from pytest_proofpack.lazy import lazy_exports

_EXPORTS = {
    "EditSpec": "spec",
    "Scope": "spec",
    "parse_edit_spec": "spec",
    "parse_scope": "spec",
    "resolve_clean": "spec",
    "scope_matches": "spec",
    "AppliedChange": "change",
    "apply_edit": "apply",
    "EditKind": "registry",
    "EditRegistry": "registry",
    "default_edit_registry": "registry",
    "register_edit": "registry",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
