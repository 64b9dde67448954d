"""GradWhitening: (G G^T)^(-1/2) G by the coupled Newton-Schulz iteration, NSDS, and the float64 reference."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from optimizers.functional._common import (WHITEN_METHODS, WHITEN_PRECISIONS, _as_batch, _check_matrix, _compute_dtype,
                                           _eye_add_, _matrix_amax, _pow2_scale)

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
