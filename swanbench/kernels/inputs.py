"""The test gradients a kernel suite feeds the operators, and the float64 results they are judged by.

The references themselves are `optimizers.reference` (paper-literal, float64); this module only draws
inputs so that references can be shared, and caches the expensive one (an eigh per shape).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from optimizers.reference import grad_norm_reference, polar_reference, sr_sinkhorn_reference
from swanbench.kernels.operators import Method


def make_input(rows: int, cols: int, batch: int, dtype: str, seed: int, device: str) -> torch.Tensor:
    """A Gaussian test gradient, [rows, cols] (batch 1) or [batch, rows, cols], in `dtype` on `device`.

    The values are drawn in the wide orientation and rounded to bfloat16 first, so that (a) the float32
    and bfloat16 inputs hold identical numbers and share one float64 reference, and (b) a tall shape is
    exactly the transpose of the wide one (down = gate_up^T), which shares the polar reference too.
    """
    short, long = min(rows, cols), max(rows, cols)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + short * 7919 + long)
    x = torch.randn(batch, short, long, generator=gen).to(torch.bfloat16)
    if rows > cols:
        x = x.mT
    x = x.to(getattr(torch, dtype)).contiguous().to(device)
    return x[0] if batch == 1 else x


def reference_key(rows: int, cols: int, seed: int, batch: int = 1) -> tuple:
    """Identity of the matrix make_input draws (its wide orientation): the first matrix of a batch is
    drawn from a longer random stream, so the batch size is part of the key."""
    return (min(rows, cols), max(rows, cols), seed, batch)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_F / ||ref||_F, computed in float64."""
    out64 = out.to(torch.float64)
    return float(torch.linalg.matrix_norm(out64 - ref) / torch.linalg.matrix_norm(ref))


class ReferenceCache:
    """Float64 references of the current inputs; the polar factor (an eigh, 20 s at 2048 on 2 CPU cores)
    is shared by every whitening operator, both dtypes and the transposed (down vs gate_up) shape."""

    def __init__(self, size: int = 32):
        self.size = size
        self._polar: OrderedDict = OrderedDict()

    def polar(self, g64: torch.Tensor, key: tuple) -> torch.Tensor:
        """Polar reference of g64 (2-D); `key` identifies the wide-oriented input it was made from."""
        transposed = g64.shape[-2] > g64.shape[-1]
        if key not in self._polar:
            self._polar[key] = polar_reference(g64.mT if transposed else g64)
            while len(self._polar) > self.size:
                self._polar.popitem(last=False)
        self._polar.move_to_end(key)
        ref = self._polar[key]
        return ref.mT if transposed else ref

    def reference(self, method: Method, g64: torch.Tensor, key: tuple) -> torch.Tensor:
        """The float64 result `method` approximates on the single matrix g64."""
        if method.reference == "polar":
            return self.polar(g64, key)
        if method.reference == "grad_norm":
            return grad_norm_reference(g64)
        if method.reference == "sr_sinkhorn":
            return sr_sinkhorn_reference(g64, method.steps)
        raise ValueError(f"unknown reference {method.reference!r}")
