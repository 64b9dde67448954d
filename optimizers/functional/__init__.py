"""Pure tensor operators behind SWAN and SinkGD: the math only, no optimizer bookkeeping.

Every operator takes a gradient-shaped tensor `g` of shape `[..., m, n]` (torch layout `[out, in]`;
leading dimensions are a batch of same-shape matrices processed together) in any floating dtype, computes
in fp32 (fp64 stays fp64) and returns a NEW tensor of dtype `torch.promote_types(g.dtype, torch.float32)`;
the input is never modified. Variants that mattered for speed stay callable by name (`method=`), so the
kernel benchmark (`swanbench.kernels`) can compare them.

- `grad_norm(g)`: GradNorm, row standardisation (SWAN, arXiv 2412.13148).
- `grad_whiten(g, steps, beta, method, precision)`: GradWhitening `(G G^T)^(-1/2) G` on the smaller Gram side
  by the coupled Newton-Schulz iteration (`method="newton-schulz"`) or its diagonal-substitution variant
  (`method="diag"`, SWAN's fast NSDS), with the products in fp32 (default), TF32 (CUDA) or bf16.
- `whiten_exact(g)`: the float64 eigendecomposition reference (pseudo-inverse square root).
- `sr_sinkhorn(g, iters, method)`: SinkGD's square-root Sinkhorn normalisation (arXiv 2502.06742, Alg. 3);
  on CPU the default runs the C kernels of `optimizers.native` when a C compiler is there.
- `muon_quintic(g, steps)`: Muon's quintic Newton-Schulz, for comparison only.

Cost model (nominal flops, as `swanbench.costmodel` counts them), per m x n matrix with s = min(m, n):
coupled NS `4 s^2 max(m,n) + 6 k s^3` flops (this implementation skips the products that are known
in closed form: step 1 needs one s x s product, the last step two, so it does (3k - 3) instead of 3k);
NSDS `4 s^2 max(m,n) + O(k s^2)`; SR-Sinkhorn `~6 L m n` flops, memory-bound.

Range: every norm is computed without overflow or underflow for any finite input, from the fp32 maximum
(3.4e38) down to denormals: GradNorm and the first SR-Sinkhorn row step scale each row by a power of two
(exact) before summing squares, whitening scales the matrix (it is scale-free), and the C kernels fall back
to double for the rare rows whose fp32 sums leave a safe range. Only the `eps` floors see absolute units.

One module per operator family (`gradnorm`, `whitening`, `sinkhorn`, `muon`; shared helpers in
`_common`); this package re-exports them, so `optimizers.functional.grad_whiten` is the import to use.
"""

from __future__ import annotations

from optimizers.functional._common import (GRAD_NORM_EPS, GRAD_NORM_METHODS, SINKHORN_BLOCK_BYTES, SINKHORN_METHODS,
                                           WHITEN_METHODS, WHITEN_PRECISIONS, frobenius_rescale_)
from optimizers.functional.gradnorm import grad_norm
from optimizers.functional.muon import MUON_COEFFICIENTS, muon_quintic
from optimizers.functional.sinkhorn import resolve_sinkhorn_method, sinkhorn_block_rows, sinkhorn_scales, sr_sinkhorn
from optimizers.functional.whitening import (CENTERED_ROWS_RTOL, LOW_PRECISION_SHIFT, effective_whiten_precision,
                                             grad_whiten, whiten_buffers, whiten_diag, whiten_exact,
                                             whiten_newton_schulz)

__all__ = [
    "GRAD_NORM_EPS",
    "GRAD_NORM_METHODS",
    "WHITEN_METHODS",
    "WHITEN_PRECISIONS",
    "SINKHORN_METHODS",
    "SINKHORN_BLOCK_BYTES",
    "frobenius_rescale_",
    "grad_norm",
    "whiten_buffers",
    "CENTERED_ROWS_RTOL",
    "LOW_PRECISION_SHIFT",
    "effective_whiten_precision",
    "grad_whiten",
    "whiten_newton_schulz",
    "whiten_diag",
    "whiten_exact",
    "sinkhorn_block_rows",
    "resolve_sinkhorn_method",
    "sinkhorn_scales",
    "sr_sinkhorn",
    "MUON_COEFFICIENTS",
    "muon_quintic",
]
