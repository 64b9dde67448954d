"""GradNorm: row standardisation (SWAN, arXiv 2412.13148)."""

from __future__ import annotations

import torch
from torch import Tensor

from optimizers import native
from optimizers.functional._common import (GRAD_NORM_EPS, GRAD_NORM_METHODS, _check_matrix, _compute_dtype, _pow2_scale,
                                           _row_absmax)

# --------------------------------------------------------------------------------------------------
# GradNorm
# --------------------------------------------------------------------------------------------------

def _native_grad_norm_ok(g: Tensor, out: Tensor) -> bool:
    """The C row kernel applies: CPU fp32/bf16 input, contiguous fp32 output, kernels built."""
    return (g.device.type == "cpu" and g.dtype in (torch.float32, torch.bfloat16) and out.dtype == torch.float32
            and out.is_contiguous() and g.stride(-1) == 1 and native.available())


def _grad_norm_into(g: Tensor, out: Tensor, eps: float, method: str = "auto") -> Tensor:
    """out = (g - mean_row) / max(std_row, eps), reading `g` in its own dtype and writing `out` once.

    On CPU (fp32/bf16) the C kernel of `optimizers.native` does it in one read from memory per row (the
    row stays in cache for its mean, centred variance and the write; rows whose fp32 statistics leave a
    safe range are redone in double). Otherwise torch: every row is scaled by a power of two that brings its
    largest entry into [0.5, 1) (exact, so the result is unchanged, but no sum can overflow or underflow),
    then one Welford reduction and out = (x - mean) * inv_std, with eps scaled alike.
    A bf16/fp16 gradient is first copied into `out` (fp32): torch's var_mean returns statistics in the
    input dtype, and a bf16 mean/std would put ~1e-3 relative error on every entry.
    """
    if method == "native" and not _native_grad_norm_ok(g, out):
        raise ValueError(f"grad_norm method 'native' needs CPU float32/bfloat16 input and the native kernels "
                         f"({native.unavailable_reason() or 'available'}), got {g.dtype} on {g.device}")
    if method != "torch" and _native_grad_norm_ok(g, out):
        return native.grad_norm_into(g, out, eps)
    if g.dtype != out.dtype:
        g = out.copy_(g)  # copy_ converts without a temporary (a mixed-dtype mul would cast g first)
    scale = _pow2_scale(_row_absmax(g))
    x = torch.mul(g, scale, out=out)  # in place when g is out; full overlap is allowed
    var, mean = torch.var_mean(x, dim=-1, correction=0, keepdim=True)
    # eps in the scaled units; never below the smallest normal number, so a constant row (std 0) gets a
    # finite 1/floor and its exact zeros stay zeros
    floor = scale.mul_(eps).clamp_min_(torch.finfo(out.dtype).tiny)
    inv_std = var.sqrt_().maximum(floor).reciprocal_()
    # Subtract, then scale: a constant row (std below eps, so inv_std = 1/eps) becomes exactly 0. The fused
    # g * inv_std + (-mean * inv_std) left the rounding error of mean * inv_std, O(1) there (3.8 on a
    # one-column matrix, 0.15 on a row of 0.1s).
    return x.sub_(mean).mul_(inv_std)


def grad_norm(g: Tensor, eps: float = GRAD_NORM_EPS, method: str = "auto") -> Tensor:
    """GradNorm (SWAN, arXiv 2412.13148): standardise every row of `g` across its n entries.

    `Gn = (G - mean_row(G)) / max(std_row(G), eps)` with the population std (divide by n). Every row of
    the result has mean 0 and, unless its std is below `eps`, std 1 (row l2 norm sqrt(n)); an all-zero or
    constant row maps to zeros. `eps` (default 1e-8, in the gradient's units) is a floor, not an offset, so
    it biases no ordinary row (the paper does not state one). Any finite input is in range, from rows of
    3e38 down to denormals (each row's statistics are computed on a power-of-two rescaled copy, or in
    double by the C kernel), so the result matches the float64 reference to fp32 rounding.

    Args:
        g: gradient `[..., m, n]`, any float dtype.
        eps: floor on the row standard deviation.
        method: "auto" (default: "native" where it applies, i.e. CPU fp32/bf16 with the C kernels built,
            else "torch"), "native" (the C row kernel; ValueError where it cannot run) or "torch".
    Returns: a new tensor, fp32 (fp64 for fp64 input).
    """
    _check_matrix(g, "grad_norm")
    if method not in GRAD_NORM_METHODS:
        raise ValueError(f"unknown grad_norm method {method!r} (known: {', '.join(GRAD_NORM_METHODS)})")
    out = torch.empty(g.shape, dtype=_compute_dtype(g.dtype), device=g.device)
    return _grad_norm_into(g, out, eps, method)
