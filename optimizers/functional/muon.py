"""Muon's quintic Newton-Schulz (comparison only; the `muon` registry entry runs torch.optim.Muon)."""

from __future__ import annotations

import torch
from torch import Tensor

from optimizers.functional._common import _as_batch, _check_matrix, _compute_dtype

# --------------------------------------------------------------------------------------------------
# Muon's quintic Newton-Schulz (comparison only; the `muon` registry entry runs torch.optim.Muon)
# --------------------------------------------------------------------------------------------------

MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def muon_quintic(g: Tensor, steps: int = 5, eps: float = 1e-7,
                 coefficients: tuple[float, float, float] = MUON_COEFFICIENTS) -> Tensor:
    """Muon's quintic Newton-Schulz orthogonalisation of g, in fp32 (torch.optim.Muon runs it in bf16).

    X0 = G / ||G||_F (wide orientation); X <- a X + (b A + c A^2) X with A = X X^T, k times. Maps each
    singular value through a quintic with a steep slope at 0, giving roughly U S' V^T with S' in
    [0.7, 1.2] (not U V^T). Cost ~ k (4 s^2 max(m,n) + 2 s^3) flops.
    """
    _check_matrix(g, "muon_quintic")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    a, b, c = coefficients
    x = _as_batch(g).to(_compute_dtype(g.dtype), copy=True)
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    x.div_(torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp_min_(eps))
    s = x.shape[-2]
    gram = torch.empty((x.shape[0], s, s), dtype=x.dtype, device=x.device)
    poly = torch.empty_like(gram)
    nxt = torch.empty_like(x)
    for _ in range(steps):
        torch.bmm(x, x.mT, out=gram)
        torch.baddbmm(gram, gram, gram, beta=b, alpha=c, out=poly)  # b A + c A^2
        torch.baddbmm(x, poly, x, beta=a, out=nxt)                  # a X + (b A + c A^2) X
        x, nxt = nxt, x
    if tall:
        x = x.mT
    return x.reshape(g.shape) if x.is_contiguous() else x.contiguous().reshape(g.shape)
