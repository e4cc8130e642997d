"""RMT guard: an activation edge statistic per module, compared with the module's own baseline value.

Hooks sit on the output of every attention output projection (role ``attn_out``) and MLP down projection (role
``ffn_down``; for fused MoE experts, the ``experts`` container), and on the *input* of every two-dimensional MLP
down projection (role and family ``ffn_act``: the FFN's intermediate activation, where a fault in the up/gate rows
shows first), one per layer, found through the architecture adapter. The guard windows are full, unpadded rows, so
no pad-token rows enter the statistic. Each guard window (a row of a hooked batch; an activation already flattened
to tokens counts as one segment per batch) yields its own edge statistic ``r_w`` of
:mod:`~pytest_proofpack.engine.guards.edge_statistic`; ``r`` is their token-weighted mean. The same hooks record
each module's output mean square for the variance guard.

Decision, per family, on the **one-sided** change of each module's statistic, ``d = median over the guard windows
of log(r_now_w / r_base_w)``: the family's shift is ``max over its modules of max(0, d)``; a family violates iff its
shift exceeds ``epsilon_family`` (preset ``rmt.epsilon_by_family``, else the defaults of
:mod:`pytest_proofpack.engine.config`, which say why the families differ), or any of its modules has a non-finite
``r_now``. ``rmt_stable`` = no
violations.

Why one-sided: ``r`` above 1 measures correlated structure standing out of the Marchenko-Pastur bulk (outlier
directions, anisotropy); an edit that *adds* structure (blending rows of a projection) raises it, while an edit that
adds noise (a clean quantisation) lowers it, and can lower it by more than a structural fault raises it, so a
two-sided rule would flag clean edits. Quality loss from noise is the primary metric's job. Why the maximum over
modules: a fault confined to a few layers moves those modules a lot and the family mean little. Decreases are
reported (``max_decrease_by_family``, ``top_modules``) but do not gate. Why the median over windows: the residual
writers' outputs carry a few massive-activation tokens, and a clean edit that moves one of them moves that window's
statistic by tens of percent and the others not at all; a structural change shows in every window, so the median
keeps it and drops a single window's artifact.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from pytest_proofpack.engine.config import DEFAULT_RMT_EPSILON, DEFAULT_RMT_EPSILON_BY_FAMILY
from pytest_proofpack.engine.guards.edge_statistic import (
    BREAKDOWN,
    IMPLICIT_MIN,
    LANCZOS_STEPS,
    edge_terms,
    edge_value,
)
from pytest_proofpack.engine.preset import preset_or_default, thresholds_source
from pytest_proofpack.models.adapters import weight_refs

TARGET_ROLES: Final = ("attn_out", "ffn_down")
#: role of the input side of an ``ffn_down`` module (the intermediate activation)
INPUT_ROLE: Final = "ffn_act"
#: the RMT family of input-side targets: its own epsilon, as its spread under benign edits differs (config.py)
INPUT_FAMILY: Final = "ffn_act"
INPUT_SUFFIX: Final = ":input"
ESTIMATOR: Final[dict[str, object]] = {
    "type": "lanczos_gram",
    "steps": LANCZOS_STEPS,
    "implicit_from": IMPLICIT_MIN,
    "breakdown": BREAKDOWN,
    "reorthogonalisation": "full, twice per step",
    "dtype": "float32",
    "standardisation": "per_feature",
    "edge": "sqrt(m) + sqrt(n)",
    "padding_rows": 0,
    "segments": "one per guard window",
    "module_change": "median over windows of log(r_now_w / r_base_w)",
}
RULE: Final = ("family violates iff max over its modules of max(0, median over windows of log(r_now_w / r_base_w)) "
               "> epsilon_family")


@dataclass(frozen=True)
class Target:
    """One hooked activation: the output (or, ``side="input"``, the first positional input) of ``module``."""

    module: str
    family: str
    role: str
    layer: int | None
    side: str = "output"

    @property
    def key(self) -> str:
        """The statistics key: the module name, with :data:`INPUT_SUFFIX` for an input-side target."""
        return self.module + INPUT_SUFFIX if self.side == "input" else self.module


def activation_targets(model: Any) -> list[Target]:
    """One output target per module owning an ``attn_out`` or ``ffn_down`` weight (fused expert tensors: their
    module), plus one input target per ``ffn_down`` module with a plain 2-D weight (a fused expert container's
    input is the token stream, not an intermediate activation)."""
    seen: dict[str, Target] = {}
    for ref in weight_refs(model):
        if ref.role in TARGET_ROLES and ref.module not in seen:
            seen[ref.module] = Target(ref.module, ref.family, ref.role, ref.layer)
            if ref.role == "ffn_down" and ref.layout in ("linear", "conv1d"):
                t = Target(ref.module, INPUT_FAMILY, INPUT_ROLE, ref.layer, "input")
                seen[t.key] = t
    return list(seen.values())


def activation_records(
    targets: list[Target], stats: Mapping[str, Mapping[str, float | None]]
) -> dict[str, dict[str, Any]]:
    """The baseline's record of every target ``stats`` has: ``{key: {module, side, family, role, layer, r,
    mean_square}}`` (JSON; :func:`recorded_targets` reads the targets back)."""
    return {
        t.key: {
            "module": t.module, "side": t.side, "family": t.family, "role": t.role, "layer": t.layer, **stats[t.key]
        }
        for t in targets
        if t.key in stats
    }


def recorded_targets(activations: Mapping[str, Mapping[str, Any]]) -> list[Target]:
    """The targets of a baseline's activation records, in their order (see :func:`activation_records`)."""
    return [
        Target(str(a["module"]), str(a["family"]), str(a["role"]), a.get("layer"), str(a["side"]))
        for a in activations.values()
    ]


@dataclass
class _BatchTerms:
    """One target's terms of each segment (a guard window: one row of a hooked ``[batch, tokens, features]``
    activation; a flattened activation is one segment): device rows ``[n', mean square, Lanczos coefficients...]``
    (turned into floats once at the end) and the segment's token count ``m``."""

    terms: list[Any] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def add(self, activation: Any) -> None:
        import torch

        activation = activation.detach()
        segments = activation.unbind(0) if activation.dim() >= 3 else (activation,)
        for segment in segments:
            coefficients, n_eff, ms, m = edge_terms(segment)
            self.terms.append(torch.cat([torch.stack([n_eff, ms]), coefficients.double()]))
            self.tokens.append(m)


class Capture(NamedTuple):
    """What one hooked forward of the guard windows yields."""

    #: ``{target key: {r, mean_square, r_windows}}``
    stats: dict[str, dict[str, Any]]
    #: ``chunk_losses[w][c]``: mean NLL of chunk ``c`` of window ``w`` (see :func:`capture`)
    chunk_losses: list[list[float | None]]
    #: per-window mean NLL, computed exactly as :func:`~pytest_proofpack.engine.metric.window_losses` computes it
    #: for the same rows in the same batches (the metric reuses them instead of a second forward)
    window_losses: list[float | None]


def capture(
    model: Any, input_ids: Any, targets: list[Target], *, batch_size: int, device: str, chunk: int
) -> Capture:
    """Run the guard windows once, ``batch_size`` rows at a time from the first, with hooks on ``targets``.

    ``chunk_losses[w][c]`` is the mean NLL of chunk ``c`` (consecutive predicted positions,
    ``numpy.array_split`` into ``ceil((L-1)/chunk)`` parts) of window ``w``. Hooks are always removed. The
    model is not modified.
    """
    import numpy as np
    import torch

    from pytest_proofpack.engine.metric import finite_or_none

    modules = dict(model.named_modules())
    live = [t for t in targets if t.module in modules]
    terms = {t.key: _BatchTerms() for t in live}
    handles = [_hook(modules[t.module], t, terms[t.key]) for t in live]
    try:
        token_losses, window_means = _forward(model, input_ids, batch_size=batch_size, device=device)
    finally:
        for handle in handles:
            handle.remove()
    stats = _token_weighted_stats(terms)
    nll = torch.cat(token_losses).double().cpu().numpy() if token_losses else np.zeros((0, 0))
    n_chunks = max(1, math.ceil(nll.shape[1] / chunk)) if nll.size else 1
    window = finite_or_none(torch.cat(window_means).double().cpu().numpy()) if window_means else []
    return Capture(stats, chunk_means(nll, n_chunks), window)


def _hook(module: Any, target: Target, terms: _BatchTerms) -> Any:
    """Register the hook that records ``target``'s activation into ``terms``; returns its handle."""
    if target.side == "input":

        def pre_hook(_mod: Any, args: Any) -> None:
            if args:
                terms.add(args[0])

        return module.register_forward_pre_hook(pre_hook)

    def hook(_mod: Any, _inp: Any, out: Any) -> None:
        terms.add(out[0] if isinstance(out, tuple) else out)

    return module.register_forward_hook(hook)


def _forward(model: Any, input_ids: Any, *, batch_size: int, device: str) -> tuple[list[Any], list[Any]]:
    """Each batch's per-position NLL and its windows' mean NLL (``window_losses``' reduction, in the same dtype)."""
    import torch

    from pytest_proofpack.engine.metric import token_nll

    losses: list[Any] = []
    means: list[Any] = []
    with torch.inference_mode():
        for start in range(0, int(input_ids.shape[0]), batch_size):
            nll = token_nll(model, input_ids[start : start + batch_size].to(device))
            losses.append(nll)
            means.append(nll.mean(dim=1))
    return losses, means


def _token_weighted_stats(terms: Mapping[str, _BatchTerms]) -> dict[str, dict[str, Any]]:
    """``{key: {r, mean_square, r_windows}}``: each target's segments combined by token-weighted mean, and each
    segment's ``r`` in order, after one host transfer of every segment's terms; ``None`` where not finite."""
    import numpy as np
    import torch

    names = [name for name in terms if terms[name].tokens]
    rows = [row for name in names for row in terms[name].terms]
    flat = torch.cat(rows).cpu().numpy() if rows else np.zeros(0)  # the one host transfer
    stats: dict[str, dict[str, Any]] = {}
    at = 0
    for name in names:
        r_windows: list[float] = []
        ms_sum = 0.0
        for row, m in zip(terms[name].terms, terms[name].tokens, strict=True):
            values = flat[at : at + int(row.shape[0])]
            at += int(row.shape[0])
            r_windows.append(edge_value(values[2:], float(values[0]), m))
            ms_sum += float(values[1]) * m
        tokens = float(sum(terms[name].tokens))
        r = sum(v * m for v, m in zip(r_windows, terms[name].tokens, strict=True)) / tokens
        ms = ms_sum / tokens
        stats[name] = {
            "r": _finite(r),
            "mean_square": _finite(ms),
            "r_windows": [_finite(v) for v in r_windows],
        }
    return stats


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def chunk_means(nll: Any, n_chunks: int) -> list[list[float | None]]:
    """Each row of ``nll`` (per-position losses, float64) as the means of ``n_chunks`` consecutive parts
    (``numpy.array_split``); ``None`` where not finite. The variance guard chunks its scaled pass the same way."""
    import numpy as np

    out: list[list[float | None]] = []
    for row in nll:
        parts = [float(p.mean()) for p in np.array_split(row, n_chunks)]
        out.append([p if math.isfinite(p) else None for p in parts])
    return out


def epsilon_for(preset: Mapping[str, Any], family: str) -> tuple[float, str]:
    """The family's epsilon and its source (``preset`` or ``default``)."""
    default = DEFAULT_RMT_EPSILON_BY_FAMILY.get(family, DEFAULT_RMT_EPSILON)
    return preset_or_default(preset, ("rmt", "epsilon_by_family", family), default)


@dataclass
class _Changes:
    """Each module's change against its baseline value, grouped by family."""

    edge_base: dict[str, float] = field(default_factory=dict)  #: family -> largest baseline r
    edge_now: dict[str, float] = field(default_factory=dict)  #: family -> largest current r
    log_ratios: dict[str, list[float]] = field(default_factory=dict)  #: family -> log(r_now / r_base) per module
    non_finite: dict[str, list[str]] = field(default_factory=dict)  #: family -> modules without a usable ratio
    rows: list[dict[str, Any]] = field(default_factory=list)  #: one per module with a ratio

    def add(self, module: str, base: Mapping[str, Any], now: Mapping[str, Any]) -> None:
        family = str(base["family"])
        r_base, r_now = base.get("r"), now.get("r")
        if r_base is not None:
            self.edge_base[family] = max(self.edge_base.get(family, 0.0), float(r_base))
        if r_now is None or r_base is None or r_base <= 0.0 or r_now <= 0.0:
            self.non_finite.setdefault(family, []).append(module)
            return
        window_ratios = _window_log_ratios(base.get("r_windows"), now.get("r_windows"))
        if window_ratios is None:
            self.non_finite.setdefault(family, []).append(module)
            return
        self.edge_now[family] = max(self.edge_now.get(family, 0.0), float(r_now))
        log_ratio = window_ratios[0] if len(window_ratios) == 1 else float(statistics.median(window_ratios))
        self.log_ratios.setdefault(family, []).append(log_ratio)
        self.rows.append(
            {
                "module": module,
                "family": family,
                "edge_base": r_base,
                "edge_cur": r_now,
                "log_ratio": log_ratio,
                "delta": math.expm1(log_ratio),
                "window_log_ratios": window_ratios,
            }
        )

    def violation(self, family: str, epsilon: float, shift: float | None) -> dict[str, Any] | None:
        """The family's violation of the rule (see the module docstring), or ``None``."""
        if family in self.non_finite:
            modules = self.non_finite[family][:10]
            return {"family": family, "reason": "non_finite", "modules": modules, "epsilon": epsilon, "shift": shift}
        if shift is None or not shift > epsilon:
            return None
        worst = max((r for r in self.rows if r["family"] == family), key=lambda r: float(r["log_ratio"]))
        return {
            "family": family,
            "reason": "shift",
            "shift": shift,
            "epsilon": epsilon,
            "module": worst["module"],
            "edge_base": worst["edge_base"],
            "edge_cur": worst["edge_cur"],
            "delta": math.expm1(shift),
            "modules_over": sum(1 for v in self.log_ratios[family] if v > epsilon),
        }


def _window_log_ratios(base: Any, now: Any) -> list[float] | None:
    """``log(r_now_w / r_base_w)`` per guard window, or ``None`` when a window's statistic is missing, not finite or
    not positive, or the two sides have different windows (the engine pairs a report with its own baseline's
    windows, so that is a defect, reported as a non-finite module rather than guessed around)."""
    if not isinstance(base, list) or not isinstance(now, list) or len(base) != len(now) or not base:
        return None
    out: list[float] = []
    for b, n in zip(base, now, strict=True):
        if b is None or n is None or not b > 0.0 or not n > 0.0:
            return None
        out.append(math.log(float(n) / float(b)))
    return out


def compare(
    base: Mapping[str, Mapping[str, Any]], now: Mapping[str, Mapping[str, Any]], preset: Mapping[str, Any]
) -> dict[str, Any]:
    """The report's ``rmt`` section: per-family edge risk (max over modules), one-sided shift, epsilon and
    violations (see the module docstring for the rule). A module missing from ``now`` is skipped: a structural
    change is the invariants guard's to report."""
    changes = _Changes()
    for module, entry in base.items():
        current = now.get(module)
        if current is not None:
            changes.add(module, entry, current)
    epsilon: dict[str, float] = {}
    shift: dict[str, float | None] = {}
    mean_excess: dict[str, float | None] = {}
    decrease: dict[str, float | None] = {}
    violations: list[dict[str, Any]] = []
    sources: set[str] = set()
    for family in sorted(set(changes.log_ratios) | set(changes.non_finite)):
        epsilon[family], source = epsilon_for(preset, family)
        sources.add(source)
        values = changes.log_ratios.get(family, [])
        shift[family] = max((max(0.0, v) for v in values), default=None)
        mean_excess[family] = sum(max(0.0, v) for v in values) / len(values) if values else None
        decrease[family] = max((max(0.0, -v) for v in values), default=None)
        violation = changes.violation(family, epsilon[family], shift[family])
        if violation is not None:
            violations.append(violation)
    changes.rows.sort(key=lambda r: -float(r["log_ratio"]))
    return {
        "stable": not violations,
        "edge_risk_by_family_base": changes.edge_base,
        "edge_risk_by_family": changes.edge_now,
        "shift_by_family": shift,
        "mean_excess_by_family": mean_excess,
        "max_decrease_by_family": decrease,
        "epsilon_by_family": epsilon,
        "violations": violations,
        "modules_checked": len(base),
        "top_modules": changes.rows[:10],
        "rule": RULE,
        "estimator": ESTIMATOR,
        "thresholds_source": thresholds_source(sources),
    }
