"""One answer to a mistyped name: the closest accepted name, phrased the same way everywhere."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The accepted name nearest to ``name`` (difflib ratio >= 0.6), or None when nothing is near."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string: appended to an error message."""
    match = closest(name, candidates)
    return f" (did you mean '{match}'?)" if match else ""
