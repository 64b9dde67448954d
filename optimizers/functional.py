"""Pure tensor operators behind SWAN and SinkGD: the math only, no optimizer bookkeeping.

Every operator takes a gradient-shaped tensor `g` of shape `[..., m, n]` (torch layout `[out, in]`;
leading dimensions are a batch of same-shape matrices processed together) in any floating dtype, computes
in fp32 (fp64 stays fp64) and returns a NEW tensor of dtype `torch.promote_types(g.dtype, torch.float32)`;
the input is never modified. Variants that mattered for speed stay callable by name (`method=`), so the
kernel benchmark (`swanbench/kernels.py`) can compare them.

- `grad_norm(g)`: GradNorm, row standardisation (SWAN, arXiv 2412.13148).
- `grad_whiten(g, steps, beta, method, precision)`: GradWhitening `(G G^T)^(-1/2) G` on the smaller Gram side
  by the coupled Newton-Schulz iteration (`method="newton-schulz"`) or its diagonal-substitution variant
  (`method="diag"`, SWAN's fast NSDS), with the products in fp32 (default), TF32 (CUDA) or bf16.
- `whiten_exact(g)`: the float64 eigendecomposition reference (pseudo-inverse square root).
- `sr_sinkhorn(g, iters, method)`: SinkGD's square-root Sinkhorn normalisation (arXiv 2502.06742, Alg. 3);
  on CPU the default runs the C kernels of `optimizers.native` when a C compiler is there.
- `muon_quintic(g, steps)`: Muon's quintic Newton-Schulz, for comparison only.

Cost model (ALGORITHMS.md section 3), per m x n matrix with s = min(m, n):
coupled NS `4 s^2 max(m,n) + 6 k s^3` flops (this implementation skips the products that are known
in closed form: step 1 needs one s x s product, the last step two, so it does (3k - 3) instead of 3k);
NSDS `4 s^2 max(m,n) + O(k s^2)`; SR-Sinkhorn `~6 L m n` flops, memory-bound.

Range: every norm is computed without overflow or underflow for any finite input, from the fp32 maximum
(3.4e38) down to denormals: GradNorm and the first SR-Sinkhorn row step scale each row by a power of two
(exact) before summing squares, whitening scales the matrix (it is scale-free), and the C kernels fall back
to double for the rare rows whose fp32 sums leave a safe range. Only the `eps` floors see absolute units.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from torch import Tensor

from optimizers import native

__all__ = [
    "GRAD_NORM_EPS",
    "GRAD_NORM_METHODS",
    "WHITEN_METHODS",
    "WHITEN_PRECISIONS",
    "SINKHORN_METHODS",
    "grad_norm",
    "grad_whiten",
    "effective_whiten_precision",
    "whiten_newton_schulz",
    "whiten_diag",
    "whiten_exact",
    "sr_sinkhorn",
    "sinkhorn_scales",
    "muon_quintic",
    "frobenius_rescale_",
    "whiten_buffers",
    "sinkhorn_block_rows",
]

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


# --------------------------------------------------------------------------------------------------
# GradWhitening: coupled Newton-Schulz and its diagonal-substitution variant
# --------------------------------------------------------------------------------------------------

def whiten_buffers(steps: int, method: str = "newton-schulz") -> int:
    """How many s x s fp32 buffers the whitening loop holds at its peak (s = min(m, n)), Gram included.

    newton-schulz: Y0 (the Gram matrix, normalised in place) and T = Z1 after step 1, Y1 from step 1 on,
    and a fourth buffer from step 3 on (Y, Z, T and the product being written); NSDS updates Y in place and
    builds Z once at the end in the same buffer, so one.
    """
    if method == "diag":
        return 1
    return min(steps + 1, 4)


# After GradNorm every row sums to zero, so (1, ..., 1) is a null vector of G^T G. A matrix counts as
# "centred" for the automatic deflation when ||G 1|| <= this * ||G||_F: GradNorm's fp32 output measures
# ~1e-7, an ordinary matrix (rows not summing to zero) ~1.
CENTERED_ROWS_RTOL = 1e-5


# In bf16 / TF32 the normalised Gram's entries carry relative rounding of 2^-9 / 2^-11, so its eigenvalues
# below a few times that are noise, and a negative one makes the coupled iteration grow cubically (not to
# inf, so no check catches it: 1e34 on a 128 x 128 square layer). Y0 + delta I keeps them positive:
# directions with x0^2 below ~delta are damped instead of amplified. (In fp32 the same noise is ~1e-7, below
# anything k <= ~20 steps can blow up, and the paper's iteration is kept unshifted.)
LOW_PRECISION_SHIFT = {"bf16": 2.0 ** -10, "tf32": 2.0 ** -12}


def _right_side(m: int, n: int, method: str) -> bool:
    """Whiten with the n x n Gram G^T G (result G Z) rather than G G^T (result Z G)?

    Always for tall G (the smaller side). For square G under the coupled iteration too: its result does not
    depend on the side (both are U p_k(S) V^T), and G^T G is the side where GradNorm's null vector
    (1, ..., 1) is known. NSDS is not spectral, so square matrices keep its G G^T.
    """
    return m > n or (m == n and method == "newton-schulz")


def _gram(x: Tensor, right: bool) -> Tensor:
    """Gram matrix x^T x (right) or x x^T of a batch x [B, m, n]; the transposed operand is a view (BLAS
    reads it with a trans flag)."""
    return torch.bmm(x.mT, x) if right else torch.bmm(x, x.mT)


def _normalise_gram_(a: Tensor) -> Tensor:
    """a /= ||a||_F in place (eigenvalues into (0, 1], so Newton-Schulz converges); returns ||a||_F [B,1,1]."""
    fro = torch.linalg.vector_norm(a, dim=(-2, -1), keepdim=True).clamp_min_(torch.finfo(a.dtype).tiny)
    a.div_(fro)
    return fro


def _deflate_(y: Tensor, x: Tensor, trace: Tensor | None, centered: bool | None) -> None:
    """Y0 += (1/n) 1 1^T where the rows of x sum to zero: the known null direction e = 1/sqrt(n) of
    A = x^T x gets eigenvalue 1 instead of the fp32 rounding noise (~1e-7 of the top eigenvalue) that the
    iteration's slope 3b at zero would amplify by (3b)^k.

    Exact: e is orthogonal to A's range, and the coupled iteration is a polynomial in Y0, so on the range
    nothing changes; in the result G Z the added direction contributes (G e) e^T z(1), and G e is rounding
    noise. centered=True: every matrix of the batch (SWAN, after GradNorm); None: the matrices with
    ||x 1|| <= CENTERED_ROWS_RTOL ||x||_F (trace = ||x||_F^2 per matrix, from the Gram before normalising).
    """
    n = y.shape[-1]
    if centered:
        y.add_(1.0 / n)
        return
    sums = torch.linalg.vector_norm(x.sum(-1), dim=-1)  # ||x 1|| per matrix
    flag = (sums.square_() <= (CENTERED_ROWS_RTOL ** 2) * trace).to(y.dtype)
    y.add_((flag / n).reshape(-1, 1, 1))


def _prescale(x: Tensor, owned: bool) -> Tensor:
    """x scaled by a power of two per matrix so its largest entry is in [0.5, 1): exact, and whitening is
    scale-free, so only the range changes: the Gram and its norm neither overflow (entries beyond ~1e9
    overflow ||A||_F in fp32) nor underflow (GradNorm's floored rows of a 1e-30 gradient are ~1e-22).

    owned: x is the caller's scratch (SWAN's GradNorm buffer) and is scaled in place, always (sync-free).
    Otherwise x may be the caller's tensor: it is copied and scaled only when some matrix's max entry is
    outside [2^-16, 2^16] (one host sync), so ordinary inputs cost nothing.
    """
    amax = _matrix_amax(x)
    if owned:
        return x.mul_(_pow2_scale(amax))
    if bool(((amax > 2.0 ** 16) | ((amax < 2.0 ** -16) & (amax > 0))).any()):
        return x * _pow2_scale(amax)
    return x


def effective_whiten_precision(precision: str, device: torch.device | str) -> str:
    """The precision `grad_whiten(..., precision=precision)` really runs at on `device`.

    "fp32" and "bf16" run as asked everywhere. "tf32" (fp32 tensors, TF32 tensor-core matmuls) exists only
    on CUDA devices; elsewhere (CPU) it runs in plain fp32, and this returns "fp32".
    """
    _check_precision(precision)
    if precision == "tf32" and torch.device(device).type != "cuda":
        return "fp32"
    return precision


@contextlib.contextmanager
def _tf32_matmuls():
    """Allow TF32 in CUDA fp32 matmuls inside the block (the whitening only); the previous setting is
    restored afterwards, even on error. Not thread-safe (the flag is process-global)."""
    m = torch.backends.cuda.matmul
    if hasattr(m, "fp32_precision"):  # torch >= 2.9; mixing it with the legacy allow_tf32 is an error
        old = m.fp32_precision
        if old == "tf32":
            yield
            return
        m.fp32_precision = "tf32"
        try:
            yield
        finally:
            m.fp32_precision = old
    else:  # pragma: no cover - older torch
        old = m.allow_tf32
        m.allow_tf32 = True
        try:
            yield
        finally:
            m.allow_tf32 = old


def _coupled_newton_schulz(y: Tensor, steps: int, beta: float) -> Tensor:
    """Z_k ~ Y0^(-1/2) by the coupled iteration, with Y0 = y ([B, s, s], normalised, overwritten).

    Y <- b Y (3I - Z Y),  Z <- b (3I - Z Y) Z,  Y0 = A / ||A||_F,  Z0 = I  (SWAN App. B.8).
    Written as T = b(3I - Z Y) (one baddbmm with alpha = -b, then 3b on the diagonal), Y <- Y T,
    Z <- T Z, into preallocated ping-pong buffers. Step 1 has Z0 = I, so T1 = b(3I - Y0) and Z1 = T1 need
    no product; the last step does not update Y. Hence 1 + 3(k-2) + 2 = 3k - 3 products for k >= 2.
    """
    t = torch.mul(y, -beta)  # T1 = b(3I - Y0)
    _eye_add_(t, 3.0 * beta)
    if steps == 1:
        return t
    z = t
    free = torch.bmm(y, t)  # Y1 = Y0 T1, into a new buffer...
    y, free = free, y       # ...and Y0's buffer becomes the scratch for the next T
    spare: Tensor | None = None
    for k in range(2, steps + 1):
        t = free.baddbmm_(z, y, beta=0.0, alpha=-beta)  # T = -b Z Y (beta=0: the old contents are ignored)
        _eye_add_(t, 3.0 * beta)
        if k < steps:
            if spare is None:
                spare = torch.empty_like(t)
            y_next = torch.bmm(y, t, out=spare)
            z_next = torch.bmm(t, z, out=y)  # the old Y is dead once Y T is formed
            spare, free = z, t
            y, z = y_next, z_next
        else:
            z = torch.bmm(t, z, out=y)
    return z


def _nsds(y: Tensor, steps: int, beta: float) -> Tensor:
    """NSDS (diagonal substitution): Z_k from Y0 = y ([B, s, s], normalised, overwritten in place).

    Defined here as the coupled iteration with Z replaced by its diagonal D = diag(Z) inside every product
    and Z Y by its diagonal d = diag(Z) * diag(Y) in the Y update:
        Y_{k+1} = b Y_k diag(3 - d_k),        d_k = diag(Z_k) * diag(Y_k)
        Z_{k+1} = b (3I - D_k Y_k) D_k,       D_k = Diag(Z_k)
    Z_{k+1} depends on Z_k only through its diagonal, so the loop carries the vector diag(Z) and costs
    O(s^2) per step; the full Z is built once, in Y's buffer. Step 1 (D_0 = I) equals the coupled step 1.
    """
    dz = torch.ones(y.shape[:-1], dtype=y.dtype, device=y.device)  # diag(Z_0) = 1, [B, s]
    for _ in range(steps - 1):
        dy = y.diagonal(dim1=-2, dim2=-1)
        # diag(Z_{k+1}) = b (3 - dz * dy) * dz, needed before Y is overwritten
        dz_next = (3.0 - dz * dy).mul_(dz).mul_(beta)
        y.mul_((3.0 - dz * dy).mul_(beta).unsqueeze(-2))  # Y_{k+1} = b Y_k diag(3 - d_k)
        dz = dz_next
    # Z_k = b (3I - D Y) D = 3b D - b D Y D, formed in place in Y's buffer
    z = y.mul_(dz.unsqueeze(-1)).mul_(dz.unsqueeze(-2)).mul_(-beta)
    _eye_add_(z, (3.0 * beta) * dz)
    return z


def _loop(y: Tensor, steps: int, beta: float, method: str) -> Tensor:
    return _nsds(y, steps, beta) if method == "diag" else _coupled_newton_schulz(y, steps, beta)


def _whiten_batch(x: Tensor, steps: int, beta: float, method: str, precision: str = "fp32", *,
                  centered: bool | None = None, owned: bool = False) -> Tensor:
    """Whitened x for an fp32/fp64 batch x [B, m, n] (~ U V^T): a new tensor of x's dtype.

    centered: rows of x sum to zero (True: SWAN after GradNorm; None: detect per matrix; False: never
    deflate), see `_deflate_`. owned: x is the caller's scratch and may be scaled in place (`_prescale`).
    """
    x = _prescale(x, owned)
    m, n = x.shape[-2:]
    right = _right_side(m, n, method)
    deflate = method == "newton-schulz" and right and centered is not False
    eff = effective_whiten_precision(precision, x.device)
    if eff == "bf16":
        return _whiten_batch_bf16(x, steps, beta, method, right, deflate, centered, owned)
    with _tf32_matmuls() if eff == "tf32" else contextlib.nullcontext():
        a = _gram(x, right)
        trace = a.diagonal(dim1=-2, dim2=-1).sum(-1) if deflate and centered is None else None
        fro = _normalise_gram_(a)
        if deflate:
            _deflate_(a, x, trace, centered)
        if eff == "tf32":
            _eye_add_(a, LOW_PRECISION_SHIFT["tf32"])
        z = _loop(a, steps, beta, method)
        del a  # drop the loop's other buffers before the final product allocates the output
        # (G G^T)^(-1/2) = Z / sqrt(||A||_F): fold the scalar into the s x s factor, not the m x n result.
        z.div_(fro.sqrt_())
        return torch.bmm(x, z) if right else torch.bmm(z, x)


def _whiten_batch_bf16(x: Tensor, steps: int, beta: float, method: str, right: bool, deflate: bool,
                       centered: bool | None, owned: bool) -> Tensor:
    """bf16 whitening: the Gram, the Newton-Schulz products and the final Z G in bfloat16 (fp32 accumulation
    inside the matmuls), the Gram's norm, the normalisation and the deflation in fp32, the output in fp32
    (written into x itself when x is the caller's scratch: no m x n fp32 allocation)."""
    xb = x.to(torch.bfloat16)
    ab = _gram(xb, right)
    a = ab.float()
    del ab
    trace = a.diagonal(dim1=-2, dim2=-1).sum(-1) if deflate and centered is None else None
    fro = _normalise_gram_(a)
    if deflate:
        _deflate_(a, x, trace, centered)
    _eye_add_(a, LOW_PRECISION_SHIFT["bf16"])
    y = a.to(torch.bfloat16)
    del a
    z = _loop(y, steps, beta, method)
    del y
    out_b = torch.bmm(xb, z) if right else torch.bmm(z, xb)
    del xb, z
    out = x.copy_(out_b) if owned else out_b.to(x.dtype)
    del out_b
    return out.div_(fro.to(x.dtype).sqrt_())


def _check_precision(precision: str) -> None:
    if precision not in WHITEN_PRECISIONS:
        raise ValueError(f"unknown whitening precision {precision!r} (known: {', '.join(WHITEN_PRECISIONS)})")


def _validate_whiten_args(steps: int, beta: float, method: str, precision: str = "fp32") -> None:
    if method not in WHITEN_METHODS:
        raise ValueError(f"unknown whitening method {method!r} (known: {', '.join(WHITEN_METHODS)})")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(beta, (int, float)) and 0.0 < beta < 1.0):
        raise ValueError(f"beta must be in (0, 1), got {beta!r}")
    _check_precision(precision)


def grad_whiten(g: Tensor, steps: int = 10, beta: float = 0.8, method: str = "newton-schulz",
                precision: str = "fp32", centered: bool | None = None) -> Tensor:
    """GradWhitening (SWAN, arXiv 2412.13148): `(G G^T)^(-1/2) G`, approximately the polar factor U V^T.

    Whitens on the smaller side: `A = G G^T` (m < n) or `A = G^T G` and right-multiplication (m > n, and
    m = n for the coupled iteration), so the s x s Gram matrix has s = min(m, n). In exact arithmetic
    `Z_k G / sqrt(||A||_F)` applies the cubic `x -> b(3x - x^3)` k times to each normalised singular value
    x0 = sigma / sqrt(||A||_F) in (0, 1]: b = 0.5 converges to 1 (U V^T; small singular values grow by 1.5x
    per step), b = 0.8 lifts them by up to 2.4x per step, never above 1.6, and once lifted keeps them in
    [0.56, 1.6] (like Muon's quintic); zero singular values stay zero, so rank-deficient input gives the
    pseudo-inverse polar factor. The input is first scaled by a power of two (exact: the result is
    scale-free), so any finite input, 3e38 down to denormals, is in range.

    Null spaces. A zero singular value becomes, in fp32, ~1e-7 of the largest one (rounding), and the
    cubic's slope 3b at zero multiplies that k times (b = 0.8, k = 10: 2.4^10 ~ 6e3). After GradNorm every
    row sums to zero, so G^T G is singular for tall and square G, with the known null vector (1, ..., 1):
    that direction is deflated (given eigenvalue 1, see `_deflate_`) when `centered` is True (SWAN), or, by
    default (None), for each matrix whose row sums are below 1e-5 of its norm. Other exact or near rank
    deficiencies (a zero row, a low-rank gradient) keep the amplified rounding in their (near) null space;
    with b = 0.5, keep k <= ~20, and far beyond (b = 0.5, k = 30) the coupled fp32 iteration diverges to
    inf/NaN; SWAN checks its update norms and raises rather than apply such an update.

    Error bounds (relative Frobenius error against the float64 pipeline, i.e. GradNorm and this iteration
    in float64; random Gaussian gradients after GradNorm, worst of 6 seeds, CPU; the tests check bounds
    2-4x above these):
      fp32, b = 0.8, k = 10 (SWAN's default): tall 9e-6, wide 6e-6, batched 7e-6 (tall was 1.1e-4..3.4e-3
        before the deflation); square 7e-5 at 64 x 64, 6e-4 at 128 x 128, 9e-4 at 256 x 256: a random
        square matrix has singular values down to ~1e-4 of its largest, which b = 0.8 lifts 2.4x per step
        together with their fp32 rounding. Low-rank gradients (singular values decaying to 1e-6 of the
        largest) reach 1e-2..8e-2 for the same reason: the cubic lifts everything above ~1.6e-4, and fp32
        cannot resolve eigenvalues of the Gram below ~1e-7, i.e. singular values below ~3e-4.
      fp32, b = 0.5, k = 6: <= 1e-6; NSDS (b = 0.4, k = 2): <= 4e-7.
    Precision (`precision`): "fp32" is the paper's. "bf16" runs the Gram, the Newton-Schulz products and
    the final product in bfloat16 (fp32 accumulation inside each matmul), with the Gram's norm, the
    normalisation and the output in fp32; "tf32" keeps fp32 tensors and lets CUDA's matmuls use TF32 for
    the whitening only (the global setting is restored afterwards); on other devices TF32 does not exist
    and it runs in fp32 (`effective_whiten_precision`). Both reduced precisions add 2^-10 (bf16) / 2^-12
    (TF32) to the normalised Gram's diagonal: their rounding makes eigenvalues below that noise, and a
    negative one makes the coupled iteration grow cubically (to 1e34, finite, on a 128 x 128 square layer
    without the shift). Measured as above: bf16 1.1e-2..1.7e-2 (b = 0.5, k = 6), 2.9e-3..4.9e-3 (NSDS),
    0.28..0.37 at b = 0.8, k = 10 (the expanding cubic amplifies the 2^-9 rounding as it amplifies fp32's
    1e-7 to 6e-6), and ~0.8..1 on low-rank gradients (the directions below the shift are damped, not
    lifted). TF32, emulated on CPU by rounding every matmul operand to TF32's 10-bit mantissa: 2e-3..4e-3
    (b = 0.5, k = 6), 4e-4..6e-4 (NSDS), 5e-2..8e-2 tall/wide/batched and 0.2 square at b = 0.8, k = 10.

    Args:
        g: `[..., m, n]`, any float dtype; fp32 inside.
        steps: Newton-Schulz steps k (>= 1).
        beta: step factor b in (0, 1).
        method: "newton-schulz" (coupled iteration, full s x s products) or "diag" (NSDS, see `whiten_diag`).
        precision: "fp32", "tf32" or "bf16" (see above).
        centered: whether the rows of g sum to zero (True after GradNorm), None to detect, False to never
            deflate (see above); the coupled iteration on tall and square input only.
    Returns: a new fp32 (fp64 for fp64) tensor of g's shape.
    """
    _check_matrix(g, "grad_whiten")
    _validate_whiten_args(steps, beta, method, precision)
    x = _as_batch(g).to(_compute_dtype(g.dtype))
    owned = x.untyped_storage().data_ptr() != g.untyped_storage().data_ptr()
    return _whiten_batch(x, steps, beta, method, precision, centered=centered, owned=owned).reshape(g.shape)


def whiten_newton_schulz(g: Tensor, steps: int = 10, beta: float = 0.8) -> Tensor:
    """`grad_whiten(g, steps, beta, method="newton-schulz")`."""
    return grad_whiten(g, steps, beta, method="newton-schulz")


def whiten_diag(g: Tensor, steps: int = 2, beta: float = 0.4) -> Tensor:
    """NSDS, the diagonal-substitution whitening (SWAN's fast variant; defaults b = 0.4, k = 2).

    Same Gram matrix and final product as the coupled iteration, but inside the loop Z enters only through
    its diagonal (see `_nsds`), so the loop is O(k s^2) and the cost is two large products (Gram and Z G).
    For k = 1 it equals the coupled iteration. It is not a spectral function of G: after GradNorm
    diag(A) is constant, and then Z_k is a polynomial of degree 1 in A.
    """
    return grad_whiten(g, steps, beta, method="diag")


def whiten_exact(g: Tensor, rtol: float | None = None) -> Tensor:
    """Float64 reference of GradWhitening: `A^(+1/2) G` with the pseudo-inverse square root of the Gram.

    Eigendecomposes A = G G^T (or G^T G for tall G) in float64; eigenvalues below `rtol * max eigenvalue`
    (default s * float64 eps) count as zero, so rank-deficient input (e.g. a square matrix after GradNorm,
    whose rows sum to zero) maps to U_r V_r^T over its range. Slow (an eigendecomposition); tests only.
    Returns float64, shape of g.
    """
    _check_matrix(g, "whiten_exact")
    x = g.detach().to(torch.float64)
    tall = x.shape[-2] > x.shape[-1]
    a = x.mT @ x if tall else x @ x.mT
    evals, evecs = torch.linalg.eigh(a)
    s = a.shape[-1]
    cutoff = (rtol if rtol is not None else s * torch.finfo(torch.float64).eps) * evals.amax(-1, keepdim=True)
    keep = evals > cutoff
    inv_sqrt = torch.where(keep, evals.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), torch.zeros_like(evals))
    a_pinv_sqrt = (evecs * inv_sqrt.unsqueeze(-2)) @ evecs.mT
    return x @ a_pinv_sqrt if tall else a_pinv_sqrt @ x


# --------------------------------------------------------------------------------------------------
# SR-Sinkhorn
# --------------------------------------------------------------------------------------------------

def sinkhorn_block_rows(n: int, element_bytes: int = 4, block_bytes: int | None = None) -> int:
    """Rows per block of the blocked SR-Sinkhorn kernel for rows of n elements (default SINKHORN_BLOCK_BYTES)."""
    budget = SINKHORN_BLOCK_BYTES if block_bytes is None else block_bytes
    return max(1, budget // (element_bytes * max(1, n)))


# SR-Sinkhorn works on the literal iterate X = diag(r) G diag(c): the row step scales row i by
# sqrt(n) / max(||x_i||, eps), the column step column j by sqrt(m) / max(||x_j||, eps), the floor acting on
# the CURRENT iterate's norms as in the paper. (An earlier version iterated squared scales q = n / (S p),
# S = G*G, and floored S p: a row of norm below eps in G diag(c) was then never normalised, at any L.)
# Range: after the first row step every entry of X is at most max(sqrt(n), sqrt(m)), so fp32 sums of
# squares cannot overflow; the first row step sees the raw gradient and sums each row after scaling it by a
# power of two (`_first_row_step_`). Scales are clamped at the dtype's maximum: an all-zero row or column
# is multiplied by sqrt(n)/eps every iteration (changing nothing in X), and an inf scale would make 0 * inf.


def _first_row_step_(x: Tensor, eps: float, target: float) -> Tensor:
    """The first row step on x [..., b, n] holding raw gradient rows (fp32/fp64), in place: x_i *= f_i with
    f_i = target / max(||x_i||, eps). Returns f [..., b, 1]. The norms are exact for any finite rows: each
    row is scaled by a power of two s_i (its max entry into [0.5, 1)) first, and the floor scaled alike."""
    f, s = _first_row_factors_(x, eps, target)
    x.mul_(f)
    return f.mul_(s)  # = target / max(||x_i||, eps) in the gradient's units: <= target / eps, finite


def _first_row_factors_(x: Tensor, eps: float, target: float) -> tuple[Tensor, Tensor]:
    """(f, s) for raw rows x [..., b, n]: x is scaled in place by powers of two s (its rows' max entries into
    [0.5, 1)); the row step then multiplies the scaled x by f = target / max(||x s||, eps s)."""
    s = _pow2_scale(_row_absmax(x))
    x.mul_(s)
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return torch.maximum(norm, (s * eps).clamp_min_(torch.finfo(x.dtype).tiny)).reciprocal_().mul_(target), s


def _row_step_(x: Tensor, eps: float, target: float, out: Tensor | None = None) -> Tensor:
    """A later row step (x bounded): x_i *= f_i = target / max(||x_i||, eps), in place; returns f."""
    f = torch.linalg.vector_norm(x, dim=-1, keepdim=True, out=out).clamp_min_(eps).reciprocal_().mul_(target)
    x.mul_(f)
    return f


def _scale_update_(scale: Tensor, factor: Tensor) -> Tensor:
    """scale *= factor, clamped at the dtype's maximum (see the section comment)."""
    return scale.mul_(factor).clamp_max_(torch.finfo(scale.dtype).max)


def _sinkhorn_scales_blocked(g: Tensor, iters: int, eps: float) -> tuple[Tensor, Tensor]:
    """Scales (r [m], c [n]) for one matrix g [m, n], one pass over g per iteration.

    Each L2-sized block of rows is formed as the current iterate x = (g r) c in a scratch buffer; its row
    norms give the row factors f, and the row-stepped block's column sums of squares are one BLAS mat-vec,
    (x^2)^T f^2, after squaring the block in place; so g is read once per iteration and X is never
    materialised. Row i's step needs only row i, the column step only the accumulated sums.
    """
    m, n = g.shape
    cdt = _compute_dtype(g.dtype)
    rows = min(m, sinkhorn_block_rows(n))
    scratch = torch.empty((rows, n), dtype=cdt, device=g.device)
    r = torch.ones((m, 1), dtype=cdt, device=g.device)
    f = torch.empty((m, 1), dtype=cdt, device=g.device)
    c = torch.ones(n, dtype=cdt, device=g.device)
    acc = torch.empty(n, dtype=cdt, device=g.device)
    tn, tm = math.sqrt(n), math.sqrt(m)
    for it in range(iters):
        acc.zero_()
        for start in range(0, m, rows):
            blk = g[start:start + rows]
            x = scratch[: blk.shape[0]]
            if it == 0 or blk.dtype != cdt:  # copy_ converts bf16 without a temporary
                x.copy_(blk)
            fb = f[start:start + rows]
            if it == 0:  # r = c = 1: x is the raw gradient, scaled by s first (x s is what gets squared)
                factor, scale = _first_row_factors_(x, eps, tn)
                torch.mul(factor, scale, out=fb)
            else:
                if blk.dtype == cdt:
                    torch.mul(blk, r[start:start + rows], out=x)
                else:
                    x.mul_(r[start:start + rows])
                x.mul_(c)
                factor = torch.linalg.vector_norm(x, dim=-1, keepdim=True, out=fb).clamp_min_(eps)
                factor = factor.reciprocal_().mul_(tn)
            acc.addmv_(x.square_().T, factor.squeeze(-1).square())
        _scale_update_(r, f)
        _scale_update_(c, acc.sqrt_().clamp_min_(eps).reciprocal_().mul_(tm))
    return r.squeeze(-1), c


def _sinkhorn_inplace_(x: Tensor, iters: int, eps: float, scales: bool = True,
                       all_reduce: Callable[[Tensor], None] | None = None,
                       rows_total: int | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """SR-Sinkhorn on a materialised iterate x [B, m, n] (fp32/fp64, overwritten with the result).

    Per iteration two norm reductions and two in-place scalings over x (a few large kernels: the GPU
    path; on CPU the column sums go through an m x n scratch of squares); with `scales`, the factors are also multiplied into r [B, m, 1] and c [B, 1, n], so that
    result = diag(r) G diag(c). For row shards of one matrix (FSDP), `all_reduce` sums the column sums of
    squares across ranks and `rows_total` is the full matrix's m.
    Returns (x, r, c) (r, c None without `scales`).
    """
    m, n = x.shape[-2:]
    tn, tm = math.sqrt(n), math.sqrt(rows_total if rows_total is not None else m)
    r = c = None
    # Column sums of squares: CUDA reduces over rows directly; torch's CPU reduction over dim -2 is ~10x
    # slower than squaring into a scratch buffer and one BLAS product with a ones vector.
    cpu = x.device.type == "cpu"
    scratch = torch.empty_like(x) if cpu else None
    ones = torch.ones((x.shape[0], 1, m), dtype=x.dtype, device=x.device) if cpu else None
    for it in range(iters):
        f = _first_row_step_(x, eps, tn) if it == 0 else _row_step_(x, eps, tn)
        if scales:
            r = f if r is None else _scale_update_(r, f)
        if cpu:
            h = torch.bmm(ones, torch.mul(x, x, out=scratch))
        else:
            h = torch.linalg.vector_norm(x, dim=-2, keepdim=True).square_()
        if all_reduce is not None:
            all_reduce(h)
        h.sqrt_().clamp_min_(eps).reciprocal_().mul_(tm)
        x.mul_(h)
        if scales:
            c = h if c is None else _scale_update_(c, h)
    return x, r, c


def _sinkhorn_scales_vectors(g: Tensor, iters: int, eps: float) -> tuple[Tensor, Tensor]:
    """Scales (r [B, m], c [B, n]) for a batch g [B, m, n] by the in-place iteration on an fp32 copy."""
    x = g.to(_compute_dtype(g.dtype), copy=True)
    _, r, c = _sinkhorn_inplace_(x, iters, eps)
    del x
    return r.squeeze(-1), c.squeeze(-2)


def _sinkhorn_scales_native(g: Tensor, iters: int, eps: float) -> tuple[Tensor, Tensor]:
    """Scales (r [B, m], c [B, n]) for a batch, one C call per matrix (see `optimizers/_kernels.c`)."""
    if g.dtype not in (torch.float32, torch.bfloat16):
        g = g.float()  # fp16 and friends: one widening copy; fp64 never gets here
    pairs = [native.scales(g[i], iters, eps) for i in range(g.shape[0])]
    if len(pairs) == 1:
        return pairs[0][0].unsqueeze(0), pairs[0][1].unsqueeze(0)
    return torch.stack([rc[0] for rc in pairs]), torch.stack([rc[1] for rc in pairs])


def resolve_sinkhorn_method(g: Tensor, method: str = "auto") -> str:
    """The SR-Sinkhorn kernel `method` means for `g`: "auto" picks "native" for CPU fp32/bf16/fp16 input
    when the C kernels are built, "blocked" for other CPU input (fp64, no compiler), "vectors" elsewhere
    (GPUs: a few large kernels). An explicit method that cannot run on `g` raises ValueError/RuntimeError."""
    if method == "auto":
        if g.device.type != "cpu":
            return "vectors"
        native_ok = g.dtype in (torch.float32, torch.bfloat16, torch.float16) and native.available()
        return "native" if native_ok else "blocked"
    if method == "native":
        if g.device.type != "cpu" or g.dtype == torch.float64:
            raise ValueError(f"SR-Sinkhorn method 'native' runs fp32/bf16/fp16 CPU tensors, got {g.dtype} on "
                             f"{g.device}; use 'blocked' or 'vectors'")
        if not native.available():
            raise RuntimeError(f"SR-Sinkhorn method 'native' is unavailable: {native.unavailable_reason()}")
    return method


def sinkhorn_scales(g: Tensor, iters: int = 5, eps: float = GRAD_NORM_EPS,
                    method: str = "auto") -> tuple[Tensor, Tensor]:
    """SR-Sinkhorn's row and column scales: (r [..., m], c [..., n]) with SR-Sinkhorn(G) = diag(r) G diag(c).

    The scales are the whole result of the iteration (the scaled matrix is (G_ij r_i) c_j, in that order:
    G_ij r_i is a row-normalised entry, so the product stays in range for any finite G), which lets an
    optimizer fuse the last multiplication into its parameter update. fp32 (fp64 for fp64 input). A scale
    is at most the dtype's maximum (reached only by all-zero rows or columns, or ones ~1e38 below the rest).
    """
    _check_matrix(g, "sinkhorn_scales")
    _validate_sinkhorn_args(iters, method)
    method = resolve_sinkhorn_method(g, method)
    if method == "native" and g.dim() == 2 and native.supports(g):
        return native.scales(g, iters, eps)  # the optimizer's per-matrix call: nothing around the C call
    batch = _as_batch(g)
    if method == "native":
        r, c = _sinkhorn_scales_native(batch.contiguous() if batch.stride(-1) != 1 else batch, iters, eps)
    elif method == "vectors":
        r, c = _sinkhorn_scales_vectors(batch, iters, eps)
    elif method == "blocked" and batch.shape[0] == 1:
        r, c = (t.unsqueeze(0) for t in _sinkhorn_scales_blocked(batch[0], iters, eps))
    elif method == "blocked":
        pairs = [_sinkhorn_scales_blocked(batch[i], iters, eps) for i in range(batch.shape[0])]
        r = torch.stack([rc[0] for rc in pairs])
        c = torch.stack([rc[1] for rc in pairs])
    else:
        raise ValueError(f"sinkhorn_scales has no scale form for method {method!r}")
    return r.reshape(g.shape[:-1]), c.reshape(*g.shape[:-2], g.shape[-1])


def _sinkhorn_naive(g: Tensor, iters: int, eps: float) -> Tensor:
    """The algorithm as written: a new scaled matrix after every row and column step.

    Only the first row step (the raw gradient) measures each row on a power-of-two rescaled copy, so that
    the norms of gradients beyond ~1e19 or near the denormal range are exact."""
    x = g.to(_compute_dtype(g.dtype), copy=True)
    m, n = x.shape[-2:]
    tiny = torch.finfo(x.dtype).tiny
    for it in range(iters):
        if it == 0:
            s = _pow2_scale(torch.linalg.vector_norm(x, float("inf"), dim=-1, keepdim=True))
            xs = x * s
            x = xs * (math.sqrt(n) / torch.maximum(torch.linalg.vector_norm(xs, dim=-1, keepdim=True),
                                                   (s * eps).clamp_min(tiny)))
        else:
            x = x * (math.sqrt(n) / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps))
        x = x * (math.sqrt(m) / torch.linalg.vector_norm(x, dim=-2, keepdim=True).clamp_min(eps))
    return x


def _scaled_blocked(g: Tensor, r: Tensor, c: Tensor, out: Tensor) -> Tensor:
    """out = (g r) c for one matrix, row block by row block so the second multiply hits cache."""
    rows = sinkhorn_block_rows(g.shape[-1])
    for start in range(0, g.shape[0], rows):
        o = out[start:start + rows]
        rb = r[start:start + rows].unsqueeze(-1)
        if g.dtype == out.dtype:
            torch.mul(g[start:start + rows], rb, out=o)
        else:  # copy_ converts without the temporary a mixed-dtype mul would allocate on CPU
            o.copy_(g[start:start + rows]).mul_(rb)
        o.mul_(c)
    return out


def _validate_sinkhorn_args(iters: int, method: str) -> None:
    if method != "auto" and method not in SINKHORN_METHODS:
        raise ValueError(f"unknown SR-Sinkhorn method {method!r} (known: auto, {', '.join(SINKHORN_METHODS)})")
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise ValueError(f"iters must be an integer >= 1, got {iters!r}")


def _check_out(out: Tensor, g: Tensor, dtype: torch.dtype) -> None:
    if out.shape != g.shape or out.dtype != dtype or out.device != g.device or not out.is_contiguous():
        raise ValueError(f"sr_sinkhorn: out must be a contiguous {dtype} {tuple(g.shape)} tensor on {g.device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device} (contiguous: {out.is_contiguous()})")


def sr_sinkhorn(g: Tensor, iters: int = 5, eps: float = GRAD_NORM_EPS, method: str = "auto",
                out: Tensor | None = None) -> Tensor:
    """SR-Sinkhorn (SinkGD, arXiv 2502.06742, Algorithm 3): alternate row and column l2 normalisation.

    Repeat `iters` (L) times: scale every row to l2 norm sqrt(n), then every column to l2 norm sqrt(m).
    After the last (column) step every non-zero column has norm exactly sqrt(m), so the Frobenius norm is
    sqrt(m n) (entry RMS 1); rows approach sqrt(n) as L grows. A norm below `eps` is floored at eps, on the
    current iterate's norms as in the paper: a row or column whose norm is below eps is multiplied by
    sqrt(n)/eps (sqrt(m)/eps) and so normalised a step later; an all-zero row or column stays zero. Any
    finite input is in range, from the fp32 maximum down to denormals.

    Methods (all equal the float64 reference `optimizers.reference.sr_sinkhorn_reference` up to fp32
    rounding on every finite input; "auto", the default, picks one with `resolve_sinkhorn_method`):
      "native": the C kernels of `optimizers.native` (CPU): per thread, one pass over its rows of g per
          iteration and one fused pass writing the result; fp32 arithmetic;
      "blocked": pure torch, scale vectors, one pass over g per iteration on L2-sized row blocks, the
          scaled matrix materialised once at the end (see `_sinkhorn_scales_blocked`);
      "vectors": the iterate materialised once (an fp32 copy of g, or `out`), two norm reductions and two
          in-place scalings per iteration, the scale vectors recorded beside it (a few large kernels: GPUs);
      "naive": a new matrix after every half-step (the algorithm as written, allocating).
    out: optional preallocated result (fp32, or fp64 for fp64 input, of g's shape); reusing one saves the
        allocation, which on CPU costs page faults comparable to the whole iteration for large matrices.
    Returns: `out`, or a new fp32 (fp64 for fp64) tensor of g's shape.
    """
    _check_matrix(g, "sr_sinkhorn")
    _validate_sinkhorn_args(iters, method)
    method = resolve_sinkhorn_method(g, method)
    dtype = _compute_dtype(g.dtype)
    if out is not None:
        _check_out(out, g, dtype)
    if method == "naive":
        result = _sinkhorn_naive(g, iters, eps)
        return result if out is None else out.copy_(result)
    if method == "vectors":
        x = torch.empty(g.shape, dtype=dtype, device=g.device) if out is None else out
        x.copy_(g)
        _sinkhorn_inplace_(_as_batch(x), iters, eps, scales=False)
        return x
    r, c = sinkhorn_scales(g, iters, eps, method)
    if out is None:
        out = torch.empty(g.shape, dtype=dtype, device=g.device)
    batch, out_b = _as_batch(g), _as_batch(out)
    r_b, c_b = r.reshape(-1, g.shape[-2]), c.reshape(-1, g.shape[-1])
    for i in range(batch.shape[0]):
        if method == "native" and native.supports(batch[i]):  # out is contiguous: checked or fresh
            native.apply(batch[i], r_b[i], c_b[i], out_b[i])
        else:
            _scaled_blocked(batch[i], r_b[i], c_b[i], out_b[i])
    return out


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
