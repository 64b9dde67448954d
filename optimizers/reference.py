"""Paper-literal float64 references for the operators in `optimizers.functional` (tests and audits only).

Each function follows the formula as written, with dense matrices where the fast path uses vectors or
in-place tricks, so the tests can check the fast path against an independent reading of the papers:

- `grad_norm_reference`: (G - mean_row) / max(std_row, eps).
- `newton_schulz_reference`: Y <- b Y (3I - Z Y), Z <- b (3I - Z Y) Z, both products every step.
- `spectral_newton_schulz`: the same iteration as a map on singular values (x -> b(3x - x^3), k times), by
  SVD: an exact closed form that also covers rank-deficient input.
- `nsds_reference`: the diagonal-substitution loop with `torch.diag` matrices.
- `sr_sinkhorn_reference`: explicit row and column normalisation of a materialised matrix.
- `muon_quintic_reference`: X <- a X + b (X X^T) X + c (X X^T)^2 X.
- `polar_reference`: exact whitening (G G^T)^{+1/2} G by eigendecomposition, the point every whitening
  operator (and Muon) approaches; the kernel benchmark's rel_error of those operators is measured against it.
Everything is float64; inputs are single matrices [m, n] (batch them with a loop; `grad_norm_reference`
also takes a batch [..., m, n]).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "grad_norm_reference",
    "newton_schulz_reference",
    "spectral_newton_schulz",
    "nsds_reference",
    "sr_sinkhorn_reference",
    "muon_quintic_reference",
    "polar_reference",
]


def _f64(g: Tensor) -> Tensor:
    return g.detach().to(torch.float64)


def grad_norm_reference(g: Tensor, eps: float = 1e-8) -> Tensor:
    x = _f64(g)
    mean = x.mean(dim=-1, keepdim=True)
    std = ((x - mean) ** 2).mean(dim=-1, keepdim=True).sqrt()
    return (x - mean) / torch.clamp(std, min=eps)


def _smaller_side(x: Tensor) -> tuple[Tensor, bool]:
    tall = x.shape[0] > x.shape[1]
    return (x.T @ x if tall else x @ x.T), tall


def _coupled_start(g: Tensor):
    """Shared start of both coupled iterations: x (fp64), Y0 = A / ||A||_F, Z0 = I, I, ||A||_F, tall."""
    x = _f64(g)
    a, tall = _smaller_side(x)
    fro = torch.linalg.matrix_norm(a)
    eye = torch.eye(a.shape[0], dtype=torch.float64)
    return x, a / fro, eye.clone(), eye, fro, tall


def _coupled_finish(x: Tensor, z: Tensor, fro: Tensor, tall: bool) -> Tensor:
    """Z_k / sqrt(||A||_F) applied on the Gram side: Z G, or G Z for a tall G."""
    z = z / fro.sqrt()
    return x @ z if tall else z @ x


def newton_schulz_reference(g: Tensor, steps: int, beta: float) -> Tensor:
    """The coupled iteration of SWAN App. B.8, literally; returns Z_k G / sqrt(||A||_F) (G Z_k ... if tall)."""
    x, y, z, eye, fro, tall = _coupled_start(g)
    for _ in range(steps):
        t = 3 * eye - z @ y
        y, z = beta * y @ t, beta * t @ z
    return _coupled_finish(x, z, fro, tall)


def spectral_newton_schulz(g: Tensor, steps: int, beta: float) -> Tensor:
    """U p_k(S) V^T with x0 = sigma / sqrt(||A||_F) and p: x -> b(3x - x^3) applied k times."""
    x = _f64(g)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    fro = torch.linalg.vector_norm(s ** 2)  # ||A||_F = ||sigma^2||_2
    y = s / fro.sqrt()
    for _ in range(steps):
        y = beta * (3 * y - y ** 3)
    return (u * y) @ vh


def nsds_reference(g: Tensor, steps: int, beta: float) -> Tensor:
    """Diagonal substitution: Y <- b Y Diag(3 - diag(Z) diag(Y)), Z <- b (3I - Diag(Z) Y) Diag(Z)."""
    x, y, z, eye, fro, tall = _coupled_start(g)
    for _ in range(steps):
        dz = torch.diag(torch.diagonal(z))
        d = torch.diagonal(z) * torch.diagonal(y)
        y, z = beta * y @ torch.diag(3 - d), beta * (3 * eye - dz @ y) @ dz
    return _coupled_finish(x, z, fro, tall)


def sr_sinkhorn_reference(g: Tensor, iters: int, eps: float = 1e-8) -> Tensor:
    x = _f64(g)
    m, n = x.shape
    for _ in range(iters):
        x = x * (math.sqrt(n) / torch.clamp(x.norm(dim=1, keepdim=True), min=eps))
        x = x * (math.sqrt(m) / torch.clamp(x.norm(dim=0, keepdim=True), min=eps))
    return x


def muon_quintic_reference(g: Tensor, steps: int = 5, coefficients=(3.4445, -4.7750, 2.0315),
                           eps: float = 1e-7) -> Tensor:
    a, b, c = coefficients
    x = _f64(g)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / max(float(torch.linalg.matrix_norm(x)), eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + b * gram @ x + c * gram @ gram @ x
    return x.T if tall else x


def polar_reference(g: Tensor) -> Tensor:
    """Exact whitening (G G^T)^{+1/2} G on the smaller side (G (G^T G)^{+1/2} for a tall G).

    The pseudo-inverse square root drops eigenvalues below s * eps * lambda_max (s = the smaller side), so
    a rank-deficient Gram (a square matrix after GradNorm, whose rows sum to zero) stays finite; for a
    full-rank G this is the polar factor U V^T. Independent of `functional.whiten_exact` on purpose (same
    mathematics, its own code), so that one can check the other.
    """
    x = _f64(g)
    if x.shape[0] > x.shape[1]:
        return polar_reference(x.T).T
    gram = x @ x.T
    evals, evecs = torch.linalg.eigh(gram)
    cutoff = evals.max() * gram.shape[0] * torch.finfo(torch.float64).eps
    inv_sqrt = torch.where(evals > cutoff, evals.clamp_min(cutoff).rsqrt(), torch.zeros_like(evals))
    return (evecs * inv_sqrt) @ (evecs.T @ x)
