"""Nominal flop counts of the gradient preprocessing operators: pure arithmetic, one function per operator.

A multiply-add counts 2 flops and an elementwise operation 1 flop per entry. The counts follow the written
algorithm, so that an "achieved TFLOP/s" means the same thing on every machine: an implementation that
skips work (the first Newton-Schulz product with Z0 = I, say) is still credited with the nominal count;
`newton_schulz_executed_flops` says what `functional.grad_whiten` really multiplies.

For an m x n matrix the whitening side is `s = min(m, n)` and the long side `l = max(m, n)`
(`(G G^T)^{-1/2} G` for wide, `G (G^T G)^{-1/2}` for tall: the same flops). The registry's step parts
(`OptimizerInfo.step_parts`) are built from these functions, so each optimizer's cost lives beside it.
"""

from __future__ import annotations

__all__ = [
    "grad_norm_flops", "newton_schulz_flops", "newton_schulz_executed_flops", "newton_schulz_diag_flops",
    "whiten_exact_flops", "sr_sinkhorn_flops", "muon_quintic_flops", "matmul_flops",
]


def _sides(rows: int, cols: int) -> tuple[int, int]:
    """(short side, long side) of a rows x cols matrix."""
    return min(rows, cols), max(rows, cols)


def grad_norm_flops(rows: int, cols: int) -> int:
    """Row standardisation: mean (1), subtract (1), square+sum (2), divide (1) per entry = 5*m*n."""
    return 5 * rows * cols


def newton_schulz_flops(rows: int, cols: int, steps: int) -> int:
    """Coupled Newton-Schulz whitening: Gram 2*s^2*l + k steps of three s x s products 6*k*s^3 + Z G 2*s^2*l.

    At 1.3B with k = 10 and the GaLore protocol's 131k-token step this is about 9% of the step's
    forward+backward flops, the share the SWAN paper quotes.
    """
    s, l = _sides(rows, cols)
    return 4 * s * s * l + 6 * steps * s ** 3


def newton_schulz_executed_flops(rows: int, cols: int, steps: int) -> int:
    """What `functional.grad_whiten` really multiplies: it skips the products known in closed form
    (Z0 = I in step 1, no Y update in the last step), 3k - 3 s x s products instead of 3k (k >= 2)."""
    s, l = _sides(rows, cols)
    return 4 * s * s * l + 2 * s ** 3 * (3 * steps - 3 if steps >= 2 else 0)


def newton_schulz_diag_flops(rows: int, cols: int, steps: int) -> int:
    """Diagonal-substitution Newton-Schulz (NSDS): the Gram and the final product dominate (4*s^2*l).

    Inside the loop only diagonals enter the products, so each step costs O(s^2) elementwise work; it is
    counted as 4*s^2 per step (scale and subtract on an s x s matrix, twice).
    """
    s, l = _sides(rows, cols)
    return 4 * s * s * l + 4 * steps * s * s


def whiten_exact_flops(rows: int, cols: int) -> int:
    """Float64 eigendecomposition whitening: Gram 2*s^2*l, symmetric eigh ~9*s^3 (tridiagonalisation +
    eigenvectors, Golub & Van Loan), V diag V^T 2*s^3, final product 2*s^2*l."""
    s, l = _sides(rows, cols)
    return 4 * s * s * l + 11 * s ** 3


def sr_sinkhorn_flops(rows: int, cols: int, iters: int) -> int:
    """SR-Sinkhorn: each of L iterations squares, sums and scales along rows and columns, ~6*L*m*n."""
    return 6 * iters * rows * cols


def muon_quintic_flops(rows: int, cols: int, steps: int) -> int:
    """Muon's quintic Newton-Schulz: per step A = X X^T (2*s^2*l), B = bA + cA^2 (2*s^3), BX (2*s^2*l)."""
    s, l = _sides(rows, cols)
    return steps * (4 * s * s * l + 2 * s ** 3)


def matmul_flops(m: int, k: int, n: int) -> int:
    """An (m x k) @ (k x n) product: 2*m*k*n."""
    return 2 * m * k * n
