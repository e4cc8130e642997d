"""Strict readers for a fault scenario's ``generation.env`` (``INVARLOCK_*`` string values).

Unlike the reference harness (``float(os.environ.get(...))`` that crashes or silently clamps), a bad value is
a one-line :class:`SpecError` naming the fault, the key, the value and what is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

from pytest_proofpack.errors import SpecError

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_LAYER_ITEM: Final = re.compile(r"^(\d+)(?:-(\d+))?$")


class EnvReader:
    """Typed access to a fault's env. An absent key or an empty string means "use the default"."""

    def __init__(self, env: Mapping[str, object], fault: str) -> None:
        self._env = dict(env)
        self.fault = fault

    def _bad(self, key: str, value: str, expected: str) -> SpecError:
        return SpecError(f"fault {self.fault}: env {key}={value!r} is invalid; expected {expected}")

    def raw(self, key: str) -> str | None:
        value = self._env.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self._bad(key, repr(value), "a string value")
        text = str(value).strip()
        return text or None

    def has(self, key: str) -> bool:
        return self.raw(key) is not None

    def number(
        self,
        key: str,
        default: float,
        *,
        lo: float | None = None,
        hi: float | None = None,
        lo_open: bool = False,
    ) -> float:
        """A finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
        text = self.raw(key)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        ok = value == value and value not in (float("inf"), float("-inf"))
        if ok and lo is not None:
            ok = value > lo if lo_open else value >= lo
        if ok and hi is not None:
            ok = value <= hi
        if not ok:
            lo_b = "(" if lo_open else "["
            rng = f" in {lo_b}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            raise self._bad(key, text, f"a number{rng}")
        return value

    def integer(self, key: str, default: int, *, lo: int | None = None, hi: int | None = None) -> int:
        text = self.raw(key)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise self._bad(key, text, f"an integer{'' if lo is None else f' >= {lo}'}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self._bad(key, text, f"an integer in [{lo}, {hi if hi is not None else 'inf'}]")
        return value

    def flag(self, key: str, default: bool) -> bool:
        text = self.raw(key)
        if text is None:
            return default
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise self._bad(key, text, "one of 1/0/true/false/yes/no/on/off")

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        text = self.raw(key)
        if text is None:
            return default
        if text.lower() not in choices:
            raise self._bad(key, text, f"one of {', '.join(choices)}")
        return text.lower()

    def substrings(self, key: str) -> list[str]:
        """Comma-separated, lower-cased, empty items dropped (empty list: no filter)."""
        text = self.raw(key)
        return [p.strip().lower() for p in (text or "").split(",") if p.strip()]

    def layers(self, key: str) -> list[int] | None:
        """``a-b,c`` (inclusive ranges) as a sorted list; ``None`` when unset."""
        text = self.raw(key)
        if text is None:
            return None
        out: set[int] = set()
        for item in text.split(","):
            m = _LAYER_ITEM.match(item.strip())
            if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
                raise self._bad(key, text, "layer indices like '0-3,7' (ranges inclusive, low-high)")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            out.update(range(lo, hi + 1))
        return sorted(out)
