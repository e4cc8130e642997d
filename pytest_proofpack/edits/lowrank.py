"""Rank-``r`` truncation: ``w' = U[:, :r] diag(S[:r]) Vh[:r]``.

Exact SVD (``torch.linalg.svd``) when ``min(shape) <= 1024`` and the rank is not small against it. Otherwise the
randomized subspace iteration of Halko, Martinsson & Tropp (the algorithm of ``torch.svd_lowrank``) with
``q = min(r + 10, min(shape))`` columns and ``niter = 4`` power iterations, seeded by a local generator (reproducible;
no global RNG is read or written, so the edit is thread-safe). With ``a = w`` if ``w`` is tall, else ``wᵀ`` (so that
every QR is of the short side, ``min(shape) × q``):

1. power iterations from a Gaussian ``V = Ω`` (``n × q``): ``niter`` times ``V = orth(aᵀ (a V))``, Householder QR in
   fp32, once per iteration (``torch.svd_lowrank`` orthonormalises twice). The products run in **bfloat16** (fp32
   accumulation) where the device multiplies bfloat16 in hardware (:func:`native_bf16`: AMX or AVX512-BF16 CPUs,
   CUDA >= 8.0) and ``--proofpack-determinism strict`` is not set (:func:`allow_low_precision`), else in fp32;
2. a last iteration whose second product is in fp32: ``V = orth(aᵀ (a V))``, a basis that lies in ``a``'s row space
   to fp32 round-off whatever the precision of the first product, so ``V`` spans ``(aᵀ a)^(niter + 1) Ω``; then
   ``C = a V`` in fp32, and ``a V Vᵀ = C Vᵀ`` is ``a`` projected on ``span(V)``;
3. the small problem in float64: the eigenvectors ``E`` of the ``q × q`` Gram matrix ``Cᵀ C`` are ``C``'s right
   singular vectors and its eigenvalues ``S²``; ``a' = (C E[:, :r]) (V E[:, :r])ᵀ`` (``w'`` is ``a'`` or its
   transpose, built the right way round). No division by a singular value: a rank-deficient ``w`` is safe.

So the edit is always the exact rank-``r`` truncation of ``w`` projected on a subspace, with its exact retained
energy; the precision of the power iterations only chooses the subspace, which is why they may run in the faster
bfloat16 (``bench/lowrank_accuracy.py`` compares both with the exact truncation). Four power iterations, because
trained weights have flat spectra: with fewer, the subspace misses a visible part of the top-``r`` energy.

A small-rank truncation needs only the top of the spectrum, which the randomized method finds at a fraction of the
cost of a full SVD. Matrices with ``min(shape) <= r`` are already of rank <= r: they are skipped (``skipped: True``).
``energy_retained = sum(S[:r]^2) / ||w||_F^2``, with ``||w||_F^2`` summed from fp32 row norms in float64.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import torch

EXACT_SVD_MAX_DIM: Final = 1024
OVERSAMPLING: Final = 10
POWER_ITERATIONS: Final = 4

_allow_low_precision = True


def allow_low_precision(allowed: bool) -> bool:
    """Allow (default) or forbid bfloat16 power iterations in this process (``--proofpack-determinism strict``
    forbids them, as it forbids TF32); returns the previous setting."""
    global _allow_low_precision
    previous, _allow_low_precision = _allow_low_precision, allowed
    return previous


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA GPU of compute capability >= 8.0, or a
    CPU with AMX tiles or AVX512-BF16. Elsewhere bfloat16 products are emulated, many times slower than float32,
    and the range finder stays in float32. Asked once per device (every matrix asks)."""
    import torch

    if device.type == "cuda":  # bfloat16 tensor cores from Ampere (compute capability 8.0) on
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private; absent means unknown: no
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    return False


def _row_basis(a: torch.Tensor, q: int, niter: int, seed: int, low: torch.dtype) -> torch.Tensor:
    """An orthonormal ``n × q`` basis (fp32) of a subspace of tall ``a``'s (``m × n``, ``m >= n``) row space that
    approximates its top-``q`` right singular subspace: ``orth((aᵀ a)^(niter + 1) Ω)``. The power iterations multiply
    in ``low`` and orthonormalise the ``n × q`` side; the last half-iteration multiplies ``aᵀ`` in fp32."""
    import torch

    gen = torch.Generator(device=a.device).manual_seed(seed)
    basis = torch.randn(a.shape[1], q, generator=gen, device=a.device, dtype=a.dtype)  # Gaussian: well conditioned
    al = a.to(low)
    for _ in range(niter):
        basis = torch.linalg.qr((al.T @ (al @ basis.to(low))).float()).Q
    y = (al @ basis.to(low)).float()
    del al
    final: torch.Tensor = torch.linalg.qr(a.T @ y).Q
    return final


def lowrank_truncate(
    w: torch.Tensor, rank: int, *, seed: int = 0, low_precision: bool | None = None
) -> tuple[torch.Tensor, float, str]:
    """Return ``(w_r, energy_retained, method)`` for an fp32 ``w``; ``method`` is ``exact``, ``randomized-bf16`` or
    ``randomized-fp32`` (the power iterations' precision). ``low_precision``: bfloat16 power iterations; ``None``
    (default) where :func:`native_bf16` says the device multiplies them in hardware, unless
    :func:`allow_low_precision` forbade them."""
    import torch

    small = min(w.shape)
    # Row norms in fp32, summed in float64: 6e-10 relative on a 1100 x 1030 matrix, where one fp32 norm of the
    # whole matrix was 3e-5 off; a float64 copy of w costs 25x more.
    total = float((torch.linalg.vector_norm(w, dim=1).double() ** 2).sum())
    if small <= EXACT_SVD_MAX_DIM and 4 * (rank + OVERSAMPLING) > small:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        out = (u[:, :rank] * s[:rank]) @ vh[:rank]
        kept = float((s[:rank].double() ** 2).sum())
        method = "exact"
    else:
        low = _allow_low_precision and native_bf16(w.device) if low_precision is None else low_precision
        tall = w.shape[0] >= w.shape[1]
        a = w if tall else w.T  # the QRs run on the short side: a [1536, 42] one cost 2.5x a [576, 42] one
        v = _row_basis(a, min(rank + OVERSAMPLING, small), POWER_ITERATIONS, seed, torch.bfloat16 if low else w.dtype)
        c = (a @ v).double()  # a v vᵀ: a projected on span(v)
        evals, evecs = torch.linalg.eigh(c.T @ c)  # ascending; the right singular vectors of c
        top = evecs[:, -rank:]
        kept = float(evals[-rank:].clamp_min(0.0).sum())
        left, right = (c @ top).float(), v @ top.float()  # a's truncation: left @ rightᵀ
        out = left @ right.T if tall else right @ left.T
        method = "randomized-bf16" if low else "randomized-fp32"
    return out, (min(kept / total, 1.0) if total > 0 else 1.0), method


def lowrank_edit(
    w: torch.Tensor, params: Mapping[str, Any], *, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Registry entry point for ``lowrank_svd``."""
    rank = int(params["rank"])
    if min(w.shape) <= rank:
        return w, {"skipped": True, "reason": f"min(shape)={min(w.shape)} <= rank {rank}"}
    out, energy, method = lowrank_truncate(w, rank, seed=seed)
    return out, {"energy_retained": energy, "method": method}
