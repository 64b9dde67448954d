"""SR-Sinkhorn: SinkGD's alternating row and column normalisation (arXiv 2502.06742, Algorithm 3)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from optimizers import native
from optimizers.functional._common import (GRAD_NORM_EPS, SINKHORN_BLOCK_BYTES, SINKHORN_METHODS, _as_batch,
                                           _check_matrix, _compute_dtype, _pow2_scale, _row_absmax)

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


def _scale_block_(g: Tensor, r: Tensor, c: Tensor, out: Tensor) -> Tensor:
    """out = diag(r) g diag(c) for a block of rows of g (r: that block's row scales, c: all column scales)."""
    rb = r.unsqueeze(-1)
    if g.dtype == out.dtype:
        torch.mul(g, rb, out=out)
    else:  # copy_ converts without the temporary a mixed-dtype mul would allocate on CPU
        out.copy_(g).mul_(rb)
    return out.mul_(c)


def _scaled_blocked(g: Tensor, r: Tensor, c: Tensor, out: Tensor) -> Tensor:
    """out = (g r) c for one matrix, row block by row block so the second multiply hits cache."""
    rows = sinkhorn_block_rows(g.shape[-1])
    for start in range(0, g.shape[0], rows):
        _scale_block_(g[start:start + rows], r[start:start + rows], c, out[start:start + rows])
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
