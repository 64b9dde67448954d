"""Benchmark-only variants kept to show what each implementation choice costs.

The kernel benchmark (suite kind "kernels") times these beside the operators of `optimizers.functional`;
no optimizer uses them. Each one undoes a single choice the real operator makes, so the difference between
the two rows is the price (or the saving) of that choice:

- `newton_schulz_literal`: SWAN App. B.8 as written (explicit identity, every product of every step, a fresh
  tensor per operation) vs `functional.grad_whiten`'s in-place loop that skips the products known in
  closed form.
- `newton_schulz_bf16`: the coupled iteration with bf16 products vs SWAN's fp32 whitening (faster where bf16
  matmuls are, less accurate: its rel_error shows how much).
- `SrSinkhornReusedOut`: SR-Sinkhorn into one output buffer kept across calls vs the allocating call (the
  difference is the page faults of a fresh buffer).

Shapes: `g` is [..., m, n]; every variant returns fp32 of g's shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

from optimizers.functional import sr_sinkhorn

__all__ = ["newton_schulz_literal", "newton_schulz_bf16", "SrSinkhornReusedOut"]


def _wide(x: Tensor) -> tuple[Tensor, bool]:
    """x in its wide orientation (the Gram on the smaller side), and whether it was transposed."""
    tall = x.shape[-2] > x.shape[-1]
    return (x.mT if tall else x), tall


def newton_schulz_literal(g: Tensor, steps: int, beta: float) -> Tensor:
    """SWAN App. B.8 transcribed literally: Y <- b Y (3I - Z Y), Z <- b (3I - Z Y) Z, all 3k products, fp32.

    The yardstick for what `functional.grad_whiten`'s in-place, product-skipping loop saves.
    """
    x, tall = _wide(g.float())
    a = x @ x.mT
    fro = torch.linalg.matrix_norm(a, keepdim=True)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    y, z = a / fro, eye.expand_as(a)
    for _ in range(steps):
        t = 3 * eye - z @ y
        y, z = beta * (y @ t), beta * (t @ z)
    out = z @ x / fro.sqrt()
    return out.mT if tall else out


def newton_schulz_bf16(g: Tensor, steps: int, beta: float) -> Tensor:
    """The coupled iteration with every product in bfloat16 (fp32 norms, fp32 output).

    SWAN whitens in fp32; this measures what that choice costs where bf16 matmuls are much faster (AMX on
    recent Xeons, tensor cores on GPUs). It skips the same closed-form products as `grad_whiten` (Z0 = I in
    step 1, no Y update in the last step), so the two differ only in precision.
    """
    x, tall = _wide(g.to(torch.bfloat16))
    a = (x @ x.mT).float()
    fro = torch.linalg.matrix_norm(a, keepdim=True)
    y = (a / fro).to(torch.bfloat16)
    eye = torch.eye(a.shape[-1], dtype=torch.bfloat16, device=a.device)
    t = beta * (3 * eye - y)  # Z0 = I: step 1 needs no product
    y, z = y @ t, t
    for k in range(2, steps + 1):
        t = torch.add(3 * beta * eye, z @ y, alpha=-beta)
        if k < steps:
            y = y @ t
        z = t @ z
    out = (z @ x).float() / fro.sqrt()
    return out.mT if tall else out


class SrSinkhornReusedOut:
    """SR-Sinkhorn into an output buffer kept across calls, as an optimizer reusing its workspace would.

    The benchmark's memory-bound yardstick, one copy into a preallocated buffer, is measured the same way,
    so this row compares like with like; the allocating form's extra cost is the page faults of a fresh
    buffer. The buffer belongs to the instance (make one per benchmark run), and only one is kept: a new
    shape, dtype or device replaces it, so a run over 7b shapes does not pile up gigabytes of buffers.
    """

    def __init__(self, iters: int, method: str = "auto"):
        self.iters, self.method = iters, method
        self._out: Tensor | None = None

    def _buffer(self, g: Tensor) -> Tensor:
        dtype = torch.promote_types(g.dtype, torch.float32)  # what sr_sinkhorn returns for g
        old = self._out
        if old is None or old.shape != g.shape or old.dtype != dtype or old.device != g.device:
            del old
            self._out = None  # free the old buffer before its successor is allocated
            self._out = torch.empty(g.shape, dtype=dtype, device=g.device)
        return self._out

    def __call__(self, g: Tensor) -> Tensor:
        return sr_sinkhorn(g, iters=self.iters, method=self.method, out=self._buffer(g))
