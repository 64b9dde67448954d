"""Shared helpers of the operators: dtypes, batching, overflow-safe scaling, the Frobenius rescale."""

from __future__ import annotations

import torch
from torch import Tensor

# A row (or column) whose standard deviation / norm is below this is treated as zero-ish: dividing by
# max(std, eps) leaves every ordinary row exactly standardised (no additive bias, unlike std + eps) while an
# all-zero row maps to zeros instead of 0/0. Gradient rows of a trained LLM have std >> 1e-8 in fp32/bf16.
GRAD_NORM_EPS = 1e-8

GRAD_NORM_METHODS = ("auto", "native", "torch")
WHITEN_METHODS = ("newton-schulz", "diag")
WHITEN_PRECISIONS = ("fp32", "tf32", "bf16")
SINKHORN_METHODS = ("native", "blocked", "vectors", "naive")

# SR-Sinkhorn's blocked kernel squares this many bytes of rows at a time: small enough to stay in L2
# (1-2 MiB per core on current x86 servers), large enough that Python's per-op overhead is amortised.
SINKHORN_BLOCK_BYTES = 1 << 20


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half types and fp32, fp64 for fp64: the dtype every operator computes and returns in."""
    if not dtype.is_floating_point:
        raise TypeError(f"expected a floating-point gradient, got {dtype}")
    return torch.promote_types(dtype, torch.float32)


def _check_matrix(g: Tensor, what: str) -> None:
    if g.dim() < 2:
        raise ValueError(f"{what} expects a matrix or a batch of matrices [..., m, n], got shape {tuple(g.shape)}")


def _as_batch(x: Tensor) -> Tensor:
    """View `[..., m, n]` as `[B, m, n]` (a copy only if the leading dims cannot be flattened as a view)."""
    return x.reshape(-1, x.shape[-2], x.shape[-1])


def _eye_add_(x: Tensor, value: float | Tensor) -> Tensor:
    """x += value * I on the last two dims, in place (touches only the diagonal: no identity buffer)."""
    x.diagonal(dim1=-2, dim2=-1).add_(value)
    return x


def _pow2_scale(amax: Tensor) -> Tensor:
    """2^-e with amax = f 2^e, f in [0.5, 1): multiplying by it is exact and brings amax into [0.5, 1).

    Elementwise on a tensor of non-negative maxima (fp32 or fp64, any shape); a zero (or non-finite) maximum
    gets 1. The exponent is clamped to the dtype's normal range, so the scale itself is always a normal
    number (a denormal maximum then lands in [2^-23, 1), still far from under- or overflow when squared).
    """
    _, exp = torch.frexp(amax)
    if amax.dtype == torch.float64:
        bits = (-exp.to(torch.int64)).clamp_(-1022, 1023).add_(1023).bitwise_left_shift_(52)
        return bits.view(torch.float64)
    bits = (-exp.to(torch.int32)).clamp_(-126, 127).add_(127).bitwise_left_shift_(23)
    return bits.view(torch.float32).to(amax.dtype)


def _row_absmax(x: Tensor) -> Tensor:
    """max |x| along the last dim, keepdim (NaN propagates). amax and amin, not the inf-norm: on CPU torch's
    inf-norm reduction is ~6x slower than the two plain ones."""
    return torch.maximum(x.amax(-1, keepdim=True), x.amin(-1, keepdim=True).neg_())


def _matrix_amax(x: Tensor) -> Tensor:
    """max |x| of every matrix of a batch [..., m, n], shape [..., 1, 1] (NaN propagates)."""
    return torch.linalg.vector_norm(x, float("inf"), dim=(-2, -1), keepdim=True)


def frobenius_rescale_(x: Tensor, target: float, eps: float = GRAD_NORM_EPS, check_finite: bool = False) -> Tensor:
    """Scale each matrix of `x` ([..., m, n]) in place to Frobenius norm `target`; a zero matrix stays zero.

    SWAN's update scale: target sqrt(m*n) gives entry RMS 1, the size of an Adam update.
    The norm is exact for any finite x: the fp32 sum of squares is used when it is safely inside the
    range (every practical update), otherwise each matrix is first scaled by a power of two (one extra pass,
    taken only then; deciding costs the one host sync the norm check already needs). `eps` floors the norm
    in x's units (a matrix of norm below eps is multiplied by target / eps).
    check_finite: raise FloatingPointError if x has inf/NaN (a diverged whitening), before scaling.
    """
    norm = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
    lo, hi = 2.0 ** -60, 2.0 ** 60
    safe = bool(((norm >= lo) & (norm <= hi)).all())  # NaN and inf are not safe
    if not safe:
        amax = _matrix_amax(x)
        if check_finite and not bool(torch.isfinite(amax).all()):
            raise FloatingPointError(
                "whitening produced inf/NaN from a finite gradient: the Newton-Schulz iteration diverged "
                "(rank-deficient Gram matrix with (3*beta)**steps too large; see grad_whiten's docstring)")
        scale = _pow2_scale(amax)
        x.mul_(scale)  # exact; the norm below is now that of a matrix with max entry in [0.5, 1)
        norm = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
        floor = (scale * eps).clamp_min_(torch.finfo(x.dtype).tiny)
        return x.mul_(target / torch.maximum(norm, floor))
    return x.mul_(target / norm.clamp_min_(eps))
