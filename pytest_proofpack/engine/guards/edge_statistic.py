"""The RMT guard's activation edge statistic: the top singular value of a standardised activation over the
Marchenko-Pastur edge.

For one batch's activation ``X`` (``m`` tokens x ``n`` features) each feature is standardised over the tokens
(constant features are dropped, leaving ``n'``); the statistic is ``r = sigma_max(Z) / (sqrt(m) + sqrt(n'))``, the
top singular value relative to the edge of an i.i.d. unit-variance matrix of the same shape.

``sigma_max(Z)^2`` is the top eigenvalue of the smaller Gram matrix ``G``, found by :data:`LANCZOS_STEPS` steps of
Lanczos with full reorthogonalisation (twice per step) from a fixed seeded start. The top eigenvalue of the
tridiagonal ``T`` they build (float64, on the host) is a Ritz value of ``G``: never above its top eigenvalue, and
converging much faster than power iteration where the two top eigenvalues nearly coincide, as they do in trained
models' activations. A ``G`` with at most :data:`LANCZOS_STEPS` rows spans its whole Krylov space, so its value is
exact. From size :data:`IMPLICIT_MIN` on, ``G`` is applied as ``Zᵀ (Z v)`` without being formed, because forming it
would then cost more than the steps themselves.

The Lanczos steps run on the activation's device with no host sync (the guard computes them inside a forward hook);
:func:`edge_value` turns their coefficients into ``r`` once they are on the host. The standardisation takes two
passes over the activation (centre; two-pass deviation; scale in place), and the mean square the variance guard
reads is ``var + mean^2`` per feature.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import torch

LANCZOS_STEPS: Final = 24
#: smallest Gram matrix size that Lanczos applies implicitly instead of forming it (see lanczos_coefficients)
IMPLICIT_MIN: Final = 768
#: a Lanczos step whose new vector's norm is at most this times the largest coefficient so far is a breakdown
BREAKDOWN: Final = 1e-6
#: seed of the start vector and the restart vectors: the statistic is a deterministic function of the activation
START_SEED: Final = 1234


def lanczos_coefficients(z: torch.Tensor, implicit: bool | None = None) -> torch.Tensor:
    """``[alpha_0 .. alpha_{k-1}, beta_0 .. beta_{k-2}]`` of ``k = min(LANCZOS_STEPS, s)`` Lanczos steps on the
    smaller Gram matrix of ``z`` (``m x n``, float32, on its device; no host sync): ``G = zᵀ z`` if ``n <= m``, else
    ``z zᵀ``, of size ``s``; see :func:`top_ritz_value`.

    ``implicit`` (default: ``s >= IMPLICIT_MIN``): ``G`` is not formed; each step applies it as two matrix-vector
    products (``zᵀ (z v)``) that read ``z`` twice. Forming ``G`` costs ``m n s`` multiply-adds at the matrix unit's
    rate, the implicit steps ``2 k m n`` at memory speed, so the implicit form wins for large ``s``. Both compute the
    same ``T`` up to float32 round-off.

    Each step's new vector is orthogonalised against all earlier ones twice (classical Gram-Schmidt), so the basis
    stays orthonormal to round-off. A breakdown (the Krylov space is invariant, as for a rank-deficient ``G``: the
    new vector's norm ``beta`` is at most :data:`BREAKDOWN` times the largest coefficient so far) records
    ``beta = 0`` and restarts from a fixed seeded random vector orthogonalised (twice) against the basis, so ``T``
    stays the compression of ``G`` onto an orthonormal basis, to within the dropped ``beta``. Normalising the
    round-off left after the reorthogonalisation instead would amplify its error in the basis's span by
    ``1 / beta`` and overstate the Ritz value many times over.
    """
    apply_gram, size = _gram_operator(z, implicit)
    steps = min(LANCZOS_STEPS, size)
    start, restarts = _seeded_vectors(steps, size, z.device)
    return _lanczos(apply_gram, start, restarts, steps)


def _gram_operator(z: torch.Tensor, implicit: bool | None) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """``v -> G v`` for the smaller Gram matrix of ``z`` (formed or implicit, see :func:`lanczos_coefficients`)
    and its size."""
    import torch

    right = z.shape[1] <= z.shape[0]
    size = int(z.shape[1] if right else z.shape[0])
    if implicit if implicit is not None else size >= IMPLICIT_MIN:
        outer, inner = (z.t(), z) if right else (z, z.t())

        def apply_implicit(v: torch.Tensor) -> torch.Tensor:
            return torch.mv(outer, torch.mv(inner, v))

        return apply_implicit, size
    gram = z.t() @ z if right else z @ z.t()

    def apply_formed(v: torch.Tensor) -> torch.Tensor:
        return torch.mv(gram, v)

    return apply_formed, size


def _seeded_vectors(steps: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The unit start vector and one restart vector per step, drawn on the CPU from :data:`START_SEED` (the same
    numbers on every device)."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(START_SEED)
    start = torch.randn(size, generator=gen, dtype=torch.float32).to(device)
    start = start / start.norm()
    restarts = torch.randn(steps, size, generator=gen, dtype=torch.float32).to(device)
    return start, restarts


def _project_out(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``x`` minus its projection on the rows of ``basis`` (one classical Gram-Schmidt pass)."""
    import torch

    return torch.addmv(x, basis.t(), torch.mv(basis, x), alpha=-1.0)


def _lanczos(
    apply_gram: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, restarts: torch.Tensor, steps: int
) -> torch.Tensor:
    """The Lanczos recurrence of :func:`lanczos_coefficients` from the unit vector ``v``, packed as it says."""
    import torch

    basis = torch.zeros(steps, v.shape[0], dtype=torch.float32, device=v.device)
    scale = torch.zeros((), dtype=torch.float32, device=v.device)
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    for step in range(steps):
        basis[step] = v
        w = apply_gram(v)
        done = basis[: step + 1]
        h = torch.mv(done, w)  # h[step] = v . G v = alpha_step
        alphas.append(h[step])
        if step == steps - 1:
            break
        w = _project_out(torch.addmv(w, done.t(), h, alpha=-1.0), done)  # the first pass reuses h = done @ w
        beta = torch.linalg.vector_norm(w)
        scale = torch.maximum(scale, torch.maximum(h[step].abs(), beta))
        broken = beta <= BREAKDOWN * scale  # NaN compares False: a NaN beta propagates
        fresh = _project_out(_project_out(restarts[step], done), done)
        fresh = fresh / torch.linalg.vector_norm(fresh).clamp_min(1e-30)
        betas.append(torch.where(broken, torch.zeros_like(beta), beta))
        v = torch.where(broken, fresh, w / beta.clamp_min(1e-30))
    return torch.stack(alphas + betas)


def top_ritz_value(coefficients: Any) -> float:
    """The top eigenvalue of the symmetric tridiagonal matrix with diagonal ``alpha`` and off-diagonal ``beta``
    (``coefficients`` as :func:`lanczos_coefficients` packs them, ``2k - 1`` values), in float64."""
    import numpy as np

    c = np.asarray(coefficients, dtype=np.float64)
    k = (c.shape[0] + 1) // 2
    if not np.isfinite(c).all():
        return math.nan
    t = np.diag(c[:k])
    if k > 1:
        t += np.diag(c[k:], 1) + np.diag(c[k:], -1)
    return float(np.linalg.eigvalsh(t)[-1])


def edge_terms(x: torch.Tensor, implicit: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Device-side terms of one activation ``x [..., n]`` (no host sync): ``(Lanczos coefficients of its Gram
    matrix, n' as a 0-d tensor, mean square as a 0-d tensor, m)``; :func:`edge_value` turns them into ``r``."""
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
    return lanczos_coefficients(z, implicit), n_eff, ms, m


def edge_value(coefficients: Any, n_eff: float, m: int) -> float:
    """``r = sqrt(lambda_max) / (sqrt(m) + sqrt(n'))`` from host values of :func:`edge_terms`' terms."""
    lam = top_ritz_value(coefficients)
    if not math.isfinite(lam) or not math.isfinite(n_eff):
        return math.nan
    return math.sqrt(max(lam, 0.0)) / (math.sqrt(m) + math.sqrt(n_eff))


def edge_and_mean_square(x: torch.Tensor, implicit: bool | None = None) -> tuple[float, float]:
    """``(r, mean square)`` of one activation ``x [..., n]``, with a host sync (for tests and benchmarks)."""
    coefficients, n_eff, ms, m = edge_terms(x, implicit)
    return edge_value(coefficients.double().cpu().numpy(), float(n_eff), m), float(ms)
