"""Pure tensor operators behind SWAN and SinkGD: the math only, no optimizer bookkeeping.

Every operator takes a gradient-shaped tensor `g` of shape `[..., m, n]` (torch layout `[out, in]`;
leading dimensions are a batch of same-shape matrices processed together) in any floating dtype, computes
in fp32 (fp64 stays fp64) and returns a NEW tensor of dtype `torch.promote_types(g.dtype, torch.float32)`;
the input is never modified. Variants that mattered for speed stay callable by name (`method=`), so the
kernel benchmark (`swanbench.kernels`) can compare them.

- `grad_norm(g)`: GradNorm, row standardisation (SWAN, arXiv 2412.13148).
- `grad_whiten(g, steps, beta, method)`: GradWhitening `(G G^T)^(-1/2) G` on the smaller Gram side by the
  coupled Newton-Schulz iteration (`method="newton-schulz"`) or its diagonal-substitution variant
  (`method="diag"`, SWAN's fast NSDS).
- `whiten_exact(g)`: the float64 eigendecomposition reference (pseudo-inverse square root).
- `sr_sinkhorn(g, iters, method)`: SinkGD's square-root Sinkhorn normalisation (arXiv 2502.06742, Alg. 3);
  on CPU the default runs the C kernels of `optimizers.native` when a C compiler is there.
- `muon_quintic(g, steps)`: Muon's quintic Newton-Schulz, for comparison only.

Cost model (nominal flops, as `swanbench.costmodel` counts them), per m x n matrix with s = min(m, n):
coupled NS `4 s^2 max(m,n) + 6 k s^3` flops (this implementation skips the products that are known
in closed form: step 1 needs one s x s product, the last step two, so it does (3k - 3) instead of 3k);
NSDS `4 s^2 max(m,n) + O(k s^2)`; SR-Sinkhorn `~6 L m n` flops, memory-bound.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from optimizers import native

__all__ = [
    "GRAD_NORM_EPS",
    "GRAD_NORM_METHODS",
    "WHITEN_METHODS",
    "SINKHORN_METHODS",
    "grad_norm",
    "grad_whiten",
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


def frobenius_rescale_(x: Tensor, target: float, eps: float = GRAD_NORM_EPS, check_finite: bool = False) -> Tensor:
    """Scale each matrix of `x` ([..., m, n]) in place to Frobenius norm `target`; a zero matrix stays zero.

    SWAN's update scale: target sqrt(m*n) gives entry RMS 1, the size of an Adam update.
    check_finite: raise FloatingPointError if a norm is inf/NaN (a diverged whitening), before scaling;
    costs one host sync, no extra pass (the norms are needed anyway).
    """
    norm = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
    if check_finite and not bool(torch.isfinite(norm).all()):
        raise FloatingPointError(
            "whitening produced inf/NaN from a finite gradient: the Newton-Schulz iteration diverged "
            "(rank-deficient Gram matrix with (3*beta)**steps too large; see grad_whiten's docstring)")
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
    row stays in cache for its mean, centred variance and the write). Otherwise torch: one Welford
    reduction, then out = (g - mean) * inv_std.
    A bf16/fp16 gradient is first copied into `out` (fp32): torch's var_mean returns statistics in the
    input dtype, and a bf16 mean/std would put ~1e-3 relative error on every entry.
    """
    if method == "native" and not _native_grad_norm_ok(g, out):
        raise ValueError(f"grad_norm method 'native' needs CPU float32/bfloat16 input and the native kernels "
                         f"({native.unavailable_reason() or 'available'}), got {g.dtype} on {g.device}")
    if method != "torch" and _native_grad_norm_ok(g, out):
        return native.grad_norm_into(g, out, eps)
    if g.dtype != out.dtype:
        g = out.copy_(g)  # the multiply-add below then runs in place (full overlap is allowed)
    var, mean = torch.var_mean(g, dim=-1, correction=0, keepdim=True)
    inv_std = var.to(out.dtype).clamp_min_(eps * eps).rsqrt_()
    # Subtract, then scale: a constant row (std below eps, so inv_std = 1/eps) becomes exactly 0. The fused
    # g * inv_std + (-mean * inv_std) left the rounding error of mean * inv_std, O(1) there (3.8 on a
    # one-column matrix, 0.15 on a row of 0.1s).
    return torch.sub(g, mean.to(out.dtype), out=out).mul_(inv_std)


def grad_norm(g: Tensor, eps: float = GRAD_NORM_EPS, method: str = "auto") -> Tensor:
    """GradNorm (SWAN, arXiv 2412.13148): standardise every row of `g` across its n entries.

    `Gn = (G - mean_row(G)) / max(std_row(G), eps)` with the population std (divide by n). Every row of
    the result has mean 0 and, unless its std is below `eps`, std 1 (row l2 norm sqrt(n)); an all-zero or
    constant row maps to zeros. `eps` (default 1e-8, in the gradient's units) is a floor, not an offset, so
    it biases no ordinary row (the paper does not state one).

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


def _gram(x: Tensor) -> tuple[Tensor, bool]:
    """(Gram matrix on the smaller side, whether the input is tall). x: fp32 [B, m, n]."""
    tall = x.shape[-2] > x.shape[-1]
    # x^T x for tall, x x^T otherwise: the transposed operand is a view, BLAS reads it with a trans flag.
    a = torch.bmm(x.mT, x) if tall else torch.bmm(x, x.mT)
    return a, tall


def _normalise_gram_(a: Tensor) -> Tensor:
    """a /= ||a||_F in place (eigenvalues into (0, 1], so Newton-Schulz converges); returns ||a||_F [B,1,1]."""
    fro = torch.linalg.vector_norm(a, dim=(-2, -1), keepdim=True).clamp_min_(torch.finfo(a.dtype).tiny)
    a.div_(fro)
    return fro


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


def _whiten_batch(x: Tensor, steps: int, beta: float, method: str) -> Tensor:
    """Whitened x for an fp32/fp64 batch x [B, m, n] (not modified); ~ U V^T, scaled by 1/sqrt(||A||_F)."""
    a, tall = _gram(x)
    fro = _normalise_gram_(a)
    z = _nsds(a, steps, beta) if method == "diag" else _coupled_newton_schulz(a, steps, beta)
    del a  # drop the loop's other buffers before the final product allocates the output
    # (G G^T)^(-1/2) = Z / sqrt(||A||_F): fold the scalar into the s x s factor, not the m x n result.
    z.div_(fro.sqrt_())
    return torch.bmm(x, z) if tall else torch.bmm(z, x)


def _validate_whiten_args(steps: int, beta: float, method: str) -> None:
    if method not in WHITEN_METHODS:
        raise ValueError(f"unknown whitening method {method!r} (known: {', '.join(WHITEN_METHODS)})")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(beta, (int, float)) and 0.0 < beta < 1.0):
        raise ValueError(f"beta must be in (0, 1), got {beta!r}")


def grad_whiten(g: Tensor, steps: int = 10, beta: float = 0.8, method: str = "newton-schulz") -> Tensor:
    """GradWhitening (SWAN, arXiv 2412.13148): `(G G^T)^(-1/2) G`, approximately the polar factor U V^T.

    Whitens on the smaller side: `A = G G^T` (m <= n) or `A = G^T G` and right-multiplication (m > n), so
    the s x s Gram matrix has s = min(m, n). In exact arithmetic `Z_k G / sqrt(||A||_F)` applies the cubic
    `x -> b(3x - x^3)` k times to each normalised singular value x0 = sigma / sqrt(||A||_F) in (0, 1]:
    b = 0.5 converges to 1 (U V^T; small singular values grow by 1.5x per step), b = 0.8 lifts them by up to
    2.4x per step, never above 1.6, and once lifted keeps them in [0.56, 1.6] (like Muon's quintic), zero singular values stay zero, so rank-deficient input gives the
    pseudo-inverse polar factor.

    Rank-deficient input in fp32 (every square layer after GradNorm, whose rows sum to zero): rounding
    leaves ~1e-7 of the largest singular value in the null space, and the cubic's slope 3b at zero
    multiplies it by (3b)^k, while Z itself grows like (3b)^k there. With the defaults (b=0.8, k=10:
    2.4^10 ~ 6e3) that is ~6e-4 relative noise; with b=0.5 keep k <= ~20. Far beyond that (b=0.5, k=30)
    the coupled fp32 iteration diverges to inf/NaN; SWAN checks its update norms and raises rather than
    apply such an update.

    Args:
        g: `[..., m, n]`, any float dtype; fp32 inside.
        steps: Newton-Schulz steps k (>= 1).
        beta: step factor b in (0, 1).
        method: "newton-schulz" (coupled iteration, full s x s products) or "diag" (NSDS, see `whiten_diag`).
    Returns: a new fp32 (fp64 for fp64) tensor of g's shape.
    """
    _check_matrix(g, "grad_whiten")
    _validate_whiten_args(steps, beta, method)
    x = _as_batch(g).to(_compute_dtype(g.dtype))
    return _whiten_batch(x, steps, beta, method).reshape(g.shape)


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


def _sinkhorn_scales_blocked(g: Tensor, iters: int, eps: float) -> tuple[Tensor, Tensor]:
    """Squared scales (q [m], p [n]) for one matrix g [m, n], one pass over g per iteration.

    With X = diag(sqrt q) G diag(sqrt p) and S = G*G, the row step is q = n / (S p) (independent of the
    old q) and the column step p = m / (S^T q). Row i's q_i needs only row i of S, so each block of rows is
    squared once into an L2-sized scratch and used for both products: u = S_blk p gives q_blk, and
    v += S_blk^T q_blk accumulates the column sums. S is never materialised; g is read once per iteration.
    """
    m, n = g.shape
    cdt = _compute_dtype(g.dtype)
    rows = min(m, sinkhorn_block_rows(n))
    scratch = torch.empty((rows, n), dtype=cdt, device=g.device)
    q = torch.empty(m, dtype=cdt, device=g.device)
    p = torch.ones(n, dtype=cdt, device=g.device)
    v = torch.empty(n, dtype=cdt, device=g.device)
    eps2 = eps * eps
    for _ in range(iters):
        v.zero_()
        for start in range(0, m, rows):
            blk = g[start:start + rows]
            sq = scratch[: blk.shape[0]]
            if blk.dtype == cdt:
                torch.square(blk, out=sq)
            else:  # square in fp32, not in bf16
                sq.copy_(blk).square_()
            qb = q[start:start + rows]
            torch.mv(sq, p, out=qb)
            qb.clamp_min_(eps2).reciprocal_()  # q / n: row norms -> sqrt(n) once multiplied by n...
            v.addmv_(sq.T, qb, alpha=n)        # ...which the column sums take here (one op less per block)
        torch.reciprocal(v.clamp_min_(eps2), out=p).mul_(m)  # column norms -> sqrt(m)
    return q.mul_(n), p


def _sinkhorn_scales_vectors(g: Tensor, iters: int, eps: float) -> tuple[Tensor, Tensor]:
    """Squared scales for a batch g [B, m, n]: S = G*G materialised once, then two mat-vecs per iteration.

    Reads S twice per iteration; suits GPUs (a few large kernels) better than the blocked CPU kernel.
    """
    b, m, n = g.shape
    s = g.to(_compute_dtype(g.dtype), copy=True).square_()
    p = torch.ones((b, n, 1), dtype=s.dtype, device=s.device)
    eps2 = eps * eps
    for _ in range(iters):
        q = torch.bmm(s, p).clamp_min_(eps2).reciprocal_().mul_(n)          # [B, m, 1]
        p = torch.bmm(s.mT, q).clamp_min_(eps2).reciprocal_().mul_(m)       # [B, n, 1]
    return q.squeeze(-1), p.squeeze(-1)


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

    The scales are the whole result of the iteration (the scaled matrix is r_i G_ij c_j), which lets an
    optimizer fuse the last multiplication into its parameter update. fp32 (fp64 for fp64 input).
    """
    _check_matrix(g, "sinkhorn_scales")
    _validate_sinkhorn_args(iters, method)
    method = resolve_sinkhorn_method(g, method)
    if method == "native" and g.dim() == 2 and native.supports(g):
        return native.scales(g, iters, eps)  # the optimizer's per-matrix call: nothing around the C call
    batch = _as_batch(g)
    if method == "native":
        r, c = _sinkhorn_scales_native(batch.contiguous() if batch.stride(-1) != 1 else batch, iters, eps)
        return r.reshape(g.shape[:-1]), c.reshape(*g.shape[:-2], g.shape[-1])
    if method == "vectors":
        q, p = _sinkhorn_scales_vectors(batch, iters, eps)
    elif method == "blocked" and batch.shape[0] == 1:
        q, p = _sinkhorn_scales_blocked(batch[0], iters, eps)  # no stack copy for a single matrix
    elif method == "blocked":
        pairs = [_sinkhorn_scales_blocked(batch[i], iters, eps) for i in range(batch.shape[0])]
        q = torch.stack([qp[0] for qp in pairs])
        p = torch.stack([qp[1] for qp in pairs])
    else:
        raise ValueError(f"sinkhorn_scales has no scale form for method {method!r}")
    return q.sqrt_().reshape(g.shape[:-1]), p.sqrt_().reshape(*g.shape[:-2], g.shape[-1])


def _sinkhorn_naive(g: Tensor, iters: int, eps: float) -> Tensor:
    """The straightforward version: materialise the scaled matrix after every row and column step."""
    x = g.to(_compute_dtype(g.dtype), copy=True)
    m, n = x.shape[-2:]
    for _ in range(iters):
        x.mul_(math.sqrt(n) / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(eps))
        x.mul_(math.sqrt(m) / torch.linalg.vector_norm(x, dim=-2, keepdim=True).clamp_min_(eps))
    return x


def _scaled_blocked(g: Tensor, r: Tensor, c: Tensor, out: Tensor) -> Tensor:
    """out = diag(r) g diag(c) for one matrix, row block by row block so the second multiply hits cache."""
    rows = sinkhorn_block_rows(g.shape[-1])
    for start in range(0, g.shape[0], rows):
        o = torch.mul(g[start:start + rows], c, out=out[start:start + rows])
        o.mul_(r[start:start + rows].unsqueeze(-1))
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
    sqrt(m n) (entry RMS 1); rows approach sqrt(n) as L grows. A norm below `eps` is floored at eps (an
    all-zero row or column stays zero).

    Methods (all equal up to rounding; "auto", the default, picks one with `resolve_sinkhorn_method`):
      "native": the C kernels of `optimizers.native` (CPU): per thread, one pass over its rows of g per
          iteration and one fused pass writing the result; fp32 arithmetic;
      "blocked": pure torch, scale vectors, one pass over g per iteration on L2-sized row blocks, the
          scaled matrix materialised once at the end (see `_sinkhorn_scales_blocked`);
      "vectors": S = G*G materialised once, two mat-vecs over S per iteration (good on GPU);
      "naive": materialises the scaled matrix after every half-step (the literal algorithm).
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
