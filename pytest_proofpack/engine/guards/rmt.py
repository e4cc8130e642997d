"""RMT guard: an activation edge statistic per module, compared with the module's own baseline value.

Hooks sit on the output of every attention output projection (role ``attn_out``) and MLP down projection (role
``ffn_down``; for fused MoE experts, the ``experts`` container), and on the *input* of every two-dimensional MLP
down projection (role and family ``ffn_act``: the FFN's intermediate activation, where a fault in the up/gate
rows shows first), one per layer, found through the architecture adapter. The guard windows are full, unpadded
rows, so no pad-token rows enter the statistic.

For one batch's activation ``X`` (``m`` tokens x ``n`` features) each feature is standardised over the tokens
(constant features are dropped, leaving ``n'``); the edge statistic is ``r = sigma_max(Z) / (sqrt(m) + sqrt(n'))``,
the top singular value relative to the Marchenko-Pastur edge of an i.i.d. unit-variance matrix of the same shape.
``sigma_max(Z)^2`` is the top eigenvalue of the smaller Gram matrix ``G``, found by ``LANCZOS_STEPS`` steps of Lanczos
with full reorthogonalisation (twice per step) from a fixed seeded start (from size ``IMPLICIT_MIN`` on, ``G`` is
applied as ``Zᵀ (Z v)`` without being formed: since engine 6; forming it was the statistic's largest cost). The top
eigenvalue of the tridiagonal ``T`` they build (float64, on the host) is a Ritz value of ``G``, never above its top
eigenvalue, and converges much faster than power iteration where the two top eigenvalues nearly coincide. On SmolLM2's
90 guard activations (top-two ratio up to 0.983) 16 steps already reach float32 round-off (6e-8 relative to the
statistic computed in float64 with a dense eigensolver), where the 100 power iterations used before engine 5 were up to
3e-4 off; 24 steps leave a margin and cost a third to a half of those 100 iterations. A ``G`` with at most
``LANCZOS_STEPS`` rows spans its whole Krylov space, so its value is exact. The Lanczos steps run on the device inside
the hook with no host sync; the coefficients of every hooked batch are gathered with one host transfer at the end.
Batches are combined by token-weighted mean. The standardisation takes two passes over the activation (centre; two-pass
deviation; scale in place), and the mean square the variance guard reads is ``var + mean^2`` per feature.

Decision, per family, on the **one-sided** log change of each module's statistic, ``d = log(r_now / r_base)``:
the family's shift is ``max over its modules of max(0, d)``; a family violates iff its shift exceeds
``epsilon_family`` (preset ``rmt.epsilon_by_family``, else the defaults of :mod:`pytest_proofpack.engine.config`,
which say why the families differ), or any of its modules has a non-finite ``r_now``.
``rmt_stable`` = no violations. Why one-sided: ``r`` above 1 measures correlated structure standing out of the
Marchenko-Pastur bulk (outlier directions, anisotropy); an edit that *adds* structure raises it, while an edit that
adds noise lowers it. Measured on SmolLM2-135M, a clean 4-bit FFN edit lowers one down projection's ``r`` by 47 %
(log -0.64) and raises none by more than 3 %, whereas blending 30 % of the rows of one up projection raises that
layer's intermediate-activation ``r`` by 32 %. Quality loss from noise is the primary metric's job. Why the maximum over
modules: a fault confined to a few layers moves those modules a lot and the family mean little. Decreases are
reported (``max_decrease_by_family``, ``top_modules``) but do not gate. The same hooks record each module's output
mean square for the variance guard.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from pytest_proofpack.engine.config import DEFAULT_RMT_EPSILON, DEFAULT_RMT_EPSILON_BY_FAMILY
from pytest_proofpack.models.adapters import weight_refs

LANCZOS_STEPS: Final = 24
#: smallest Gram matrix size that Lanczos applies implicitly instead of forming it (see _lanczos_coefficients)
IMPLICIT_MIN: Final = 768
#: a Lanczos step whose new vector's norm is at most this times the largest coefficient so far is a breakdown
BREAKDOWN: Final = 1e-6
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
    "batch_combine": "token_weighted_mean",
}


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


@dataclass
class _Acc:
    """Per-module terms of each hooked batch: device rows ``[n', mean square, Lanczos coefficients...]`` (turned
    into floats once at the end) and the batch's token count ``m``."""

    terms: list[Any] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


def _lanczos_coefficients(z: Any, implicit: bool | None = None) -> Any:
    """``[alpha_0 .. alpha_{k-1}, beta_0 .. beta_{k-2}]`` of ``k = min(LANCZOS_STEPS, s)`` Lanczos steps on the
    smaller Gram matrix of ``z`` (``m x n``, float32, on its device; no host sync): ``G = zᵀ z`` if ``n <= m``, else
    ``z zᵀ``, of size ``s``; see :func:`top_ritz_value`.

    ``implicit`` (default: ``s >= IMPLICIT_MIN``): ``G`` is not formed; each step applies it as two matrix-vector
    products (``zᵀ (z v)``) that read ``z`` twice. Forming ``G`` costs ``m n s`` multiply-adds at the matrix unit's
    rate, the implicit steps ``2 k m n`` at memory speed, so the implicit form wins for large ``s``: on this box
    (one thread) a 1024 x 1536 activation's statistic took 23.7 ms against 34.8 ms, and a 1024 x 576 one 10.1 ms
    against 8.1 ms (``bench/rmt_edge_cost.py``). Both compute the same ``T`` up to float32 round-off.

    Each step's new vector is orthogonalised against all earlier ones twice (classical Gram-Schmidt), so the basis stays
    orthonormal to round-off. A breakdown (the Krylov space is invariant, as for a rank-deficient ``G``: the new
    vector's norm ``beta`` is at most :data:`BREAKDOWN` times the largest coefficient so far) records ``beta = 0`` and
    restarts from a fixed seeded random vector orthogonalised (twice) against the basis, so ``T`` stays the compression
    of ``G`` onto an orthonormal basis, to within the dropped ``beta``. (Normalising the round-off left after the
    reorthogonalisation instead amplifies its error in the basis's span by ``1 / beta``: on a rank-2 matrix the Ritz
    value came out 180x too large.)
    """
    import torch

    right = z.shape[1] <= z.shape[0]
    n = int(z.shape[1] if right else z.shape[0])
    if implicit if implicit is not None else n >= IMPLICIT_MIN:
        outer, inner = (z.t(), z) if right else (z, z.t())

        def apply(v: Any) -> Any:
            return torch.mv(outer, torch.mv(inner, v))
    else:
        gram = z.t() @ z if right else z @ z.t()

        def apply(v: Any) -> Any:
            return torch.mv(gram, v)
    k = min(LANCZOS_STEPS, n)
    gen = torch.Generator(device="cpu").manual_seed(1234)
    v = torch.randn(n, generator=gen, dtype=torch.float32).to(z.device)
    v = v / v.norm()
    restarts = torch.randn(k, n, generator=gen, dtype=torch.float32).to(z.device)
    basis = torch.zeros(k, n, dtype=torch.float32, device=z.device)
    scale = torch.zeros((), dtype=torch.float32, device=z.device)
    alphas: list[Any] = []
    betas: list[Any] = []
    for j in range(k):
        basis[j] = v
        w = apply(v)
        done = basis[: j + 1]
        h = torch.mv(done, w)  # h[j] = v . G v = alpha_j
        alphas.append(h[j])
        if j == k - 1:
            break
        w = torch.addmv(w, done.t(), h, alpha=-1.0)
        w = torch.addmv(w, done.t(), torch.mv(done, w), alpha=-1.0)
        beta = torch.linalg.vector_norm(w)
        scale = torch.maximum(scale, torch.maximum(h[j].abs(), beta))
        broken = beta <= BREAKDOWN * scale  # NaN compares False: a NaN beta propagates
        fresh = torch.addmv(restarts[j], done.t(), torch.mv(done, restarts[j]), alpha=-1.0)
        fresh = torch.addmv(fresh, done.t(), torch.mv(done, fresh), alpha=-1.0)
        fresh = fresh / torch.linalg.vector_norm(fresh).clamp_min(1e-30)
        betas.append(torch.where(broken, torch.zeros_like(beta), beta))
        v = torch.where(broken, fresh, w / beta.clamp_min(1e-30))
    return torch.stack(alphas + betas)


def top_ritz_value(coefficients: Any) -> float:
    """The top eigenvalue of the symmetric tridiagonal matrix with diagonal ``alpha`` and off-diagonal ``beta``
    (``coefficients`` as :func:`_lanczos_coefficients` packs them, ``2k - 1`` values), in float64."""
    import numpy as np

    c = np.asarray(coefficients, dtype=np.float64)
    k = (c.shape[0] + 1) // 2
    if not np.isfinite(c).all():
        return math.nan
    t = np.diag(c[:k])
    if k > 1:
        t += np.diag(c[k:], 1) + np.diag(c[k:], -1)
    return float(np.linalg.eigvalsh(t)[-1])


def _edge_terms(x: Any, implicit: bool | None = None) -> tuple[Any, Any, Any, int]:
    """Device-side terms of one output ``x [..., n]`` (no host sync): ``(Lanczos coefficients of its Gram matrix,
    n' as a 0-d tensor, mean square as a 0-d tensor, m)``; :func:`edge_value` turns them into ``r``."""
    import torch

    a = x.reshape(-1, x.shape[-1]).to(torch.float32)
    m = a.shape[0]
    # Two passes over the activation and one temporary (each large temporary is a fresh, zero-filled mapping in a
    # worker): centre, take each feature's population standard deviation from the centred values (two-pass, as
    # accurate as torch.std), scale in place. The mean square follows from them: E[x^2] = var + mean^2.
    mean = a.sum(dim=0, keepdim=True) / m
    z = a - mean
    std = torch.linalg.vector_norm(z, dim=0, keepdim=True) / math.sqrt(m)
    ms = (std.double().square() + mean.double().square()).mean()
    keep = std > 1e-12 * std.max().clamp_min(1e-30)
    z.mul_(torch.where(keep, 1.0 / std.clamp_min(1e-30), torch.zeros_like(std)))
    # a non-finite activation makes r non-finite (n' = NaN): its NaN standard deviation would otherwise drop every
    # feature and report r = 0
    n_eff = torch.where(ms.isfinite(), keep.sum().double(), torch.full_like(ms, math.nan))
    return _lanczos_coefficients(z, implicit), n_eff, ms, m


def edge_value(coefficients: Any, n_eff: float, m: int) -> float:
    """``r = sqrt(lambda_max) / (sqrt(m) + sqrt(n'))`` from host values of :func:`_edge_terms`' terms."""
    lam = top_ritz_value(coefficients)
    if not math.isfinite(lam) or not math.isfinite(n_eff):
        return math.nan
    return math.sqrt(max(lam, 0.0)) / (math.sqrt(m) + math.sqrt(n_eff))


def _edge_and_mean_square(x: Any, implicit: bool | None = None) -> tuple[float, float]:
    """``(r, mean square)`` of one output ``x [..., n]`` (with a host sync: for tests and benchmarks)."""
    coefficients, n_eff, ms, m = _edge_terms(x, implicit)
    return edge_value(coefficients.double().cpu().numpy(), float(n_eff), m), float(ms)


class Capture(NamedTuple):
    """What one hooked forward of the guard windows yields."""

    #: ``{target key: {r, mean_square}}``
    stats: dict[str, dict[str, float | None]]
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

    from pytest_proofpack.engine.metric import finite_or_none, token_nll

    modules = dict(model.named_modules())
    live = [t for t in targets if t.module in modules]
    accs = {t.key: _Acc() for t in live}

    def record(key: str, y: Any) -> None:
        coefficients, n_eff, ms, m = _edge_terms(y.detach())
        accs[key].terms.append(torch.cat([torch.stack([n_eff, ms]), coefficients.double()]))
        accs[key].tokens.append(m)

    def make_hook(key: str) -> Any:
        def hook(_mod: Any, _inp: Any, out: Any) -> None:
            record(key, out[0] if isinstance(out, tuple) else out)

        return hook

    def make_pre_hook(key: str) -> Any:
        def pre_hook(_mod: Any, args: Any) -> None:
            if args:
                record(key, args[0])

        return pre_hook

    handles = [
        modules[t.module].register_forward_pre_hook(make_pre_hook(t.key))
        if t.side == "input"
        else modules[t.module].register_forward_hook(make_hook(t.key))
        for t in live
    ]
    losses: list[Any] = []
    means: list[Any] = []
    try:
        with torch.inference_mode():
            for start in range(0, int(input_ids.shape[0]), batch_size):
                ids = input_ids[start : start + batch_size].to(device)
                nll = token_nll(model, ids)
                losses.append(nll)
                means.append(nll.mean(dim=1))  # window_losses' reduction, in the same dtype
    finally:
        for h in handles:
            h.remove()
    names = [n for n in accs if accs[n].tokens]
    rows = [t for n in names for t in accs[n].terms]
    flat = torch.cat(rows).cpu().numpy() if rows else np.zeros(0)  # the one host transfer
    stats: dict[str, dict[str, float | None]] = {}
    at = 0
    for n in names:
        r_sum = ms_sum = 0.0
        for row, m in zip(accs[n].terms, accs[n].tokens, strict=True):
            b = flat[at : at + int(row.shape[0])]
            at += int(row.shape[0])
            r_sum += edge_value(b[2:], float(b[0]), m) * m
            ms_sum += float(b[1]) * m
        tok = float(sum(accs[n].tokens))
        r, ms = r_sum / tok, ms_sum / tok
        stats[n] = {
            "r": float(r) if math.isfinite(r) else None,
            "mean_square": float(ms) if math.isfinite(ms) else None,
        }
    nll_all = torch.cat(losses).double().cpu().numpy() if losses else np.zeros((0, 0))
    n_chunks = max(1, math.ceil(nll_all.shape[1] / chunk)) if nll_all.size else 1
    chunk_losses: list[list[float | None]] = []
    for row in nll_all:
        parts = [float(p.mean()) for p in np.array_split(row, n_chunks)]
        chunk_losses.append([p if math.isfinite(p) else None for p in parts])
    window = finite_or_none(torch.cat(means).double().cpu().numpy()) if means else []
    return Capture(stats, chunk_losses, window)


def epsilon_for(preset: Mapping[str, Any], family: str) -> tuple[float, str]:
    spec = preset.get("rmt", {}) if isinstance(preset, Mapping) else {}
    table = spec.get("epsilon_by_family", {}) if isinstance(spec, Mapping) else {}
    entry = table.get(family) if isinstance(table, Mapping) else None
    if isinstance(entry, Mapping):
        entry = entry.get("value")
    if isinstance(entry, int | float) and not isinstance(entry, bool):
        return float(entry), "preset"
    return DEFAULT_RMT_EPSILON_BY_FAMILY.get(family, DEFAULT_RMT_EPSILON), "default"


def compare(
    base: Mapping[str, Mapping[str, Any]], now: Mapping[str, Mapping[str, Any]], preset: Mapping[str, Any]
) -> dict[str, Any]:
    """The report's ``rmt`` section: per-family edge risk (max over modules), one-sided shift, epsilon and
    violations (see the module docstring for the rule)."""
    fam_base: dict[str, float] = {}
    fam_now: dict[str, float] = {}
    logs: dict[str, list[float]] = {}
    broken: dict[str, list[str]] = {}
    rows: list[dict[str, Any]] = []
    for module, b in base.items():
        fam = str(b["family"])
        rb = b.get("r")
        n = now.get(module)
        if n is None:
            continue  # a missing module is a structural change: the invariants guard reports it
        rn = n.get("r")
        if rb is not None:
            fam_base[fam] = max(fam_base.get(fam, 0.0), float(rb))
        if rn is None or rb is None or rb <= 0.0 or rn <= 0.0:
            broken.setdefault(fam, []).append(module)
            continue
        fam_now[fam] = max(fam_now.get(fam, 0.0), float(rn))
        lr = math.log(float(rn) / float(rb))
        logs.setdefault(fam, []).append(lr)
        rows.append(
            {"module": module, "family": fam, "edge_base": rb, "edge_cur": rn, "log_ratio": lr, "delta": math.expm1(lr)}
        )
    eps: dict[str, float] = {}
    shift: dict[str, float | None] = {}
    mean_excess: dict[str, float | None] = {}
    decrease: dict[str, float | None] = {}
    violations: list[dict[str, Any]] = []
    sources: set[str] = set()
    for fam in sorted(set(logs) | set(broken)):
        e, src = epsilon_for(preset, fam)
        eps[fam] = e
        sources.add(src)
        vals = logs.get(fam, [])
        sh = max((max(0.0, v) for v in vals), default=None)
        shift[fam] = sh
        mean_excess[fam] = sum(max(0.0, v) for v in vals) / len(vals) if vals else None
        decrease[fam] = max((max(0.0, -v) for v in vals), default=None)
        if fam in broken:
            violations.append(
                {"family": fam, "reason": "non_finite", "modules": broken[fam][:10], "epsilon": e, "shift": sh}
            )
        elif sh is not None and sh > e:
            worst = max((r for r in rows if r["family"] == fam), key=lambda r: float(r["log_ratio"]))
            violations.append(
                {
                    "family": fam,
                    "reason": "shift",
                    "shift": sh,
                    "epsilon": e,
                    "module": worst["module"],
                    "edge_base": worst["edge_base"],
                    "edge_cur": worst["edge_cur"],
                    "delta": math.expm1(sh),
                    "modules_over": sum(1 for v in vals if v > e),
                }
            )
    rows.sort(key=lambda r: -float(r["log_ratio"]))
    return {
        "stable": not violations,
        "edge_risk_by_family_base": fam_base,
        "edge_risk_by_family": fam_now,
        "shift_by_family": shift,
        "mean_excess_by_family": mean_excess,
        "max_decrease_by_family": decrease,
        "epsilon_by_family": eps,
        "violations": violations,
        "modules_checked": len(base),
        "top_modules": rows[:10],
        "rule": "family violates iff max over its modules of max(0, log(r_now / r_base)) > epsilon_family",
        "estimator": ESTIMATOR,
        "thresholds_source": "preset"
        if sources == {"preset"}
        else ("default" if sources <= {"default"} else "mixed"),
    }
