"""The cost model of the gradient preprocessing operators (ALGORITHMS.md section 3), pure arithmetic.

Flop counts are nominal: a multiply-add counts 2 flops, an elementwise op 1 flop per entry, and the
counts follow the formulas in ALGORITHMS.md so that a measured "achieved TFLOP/s" means the same thing
on every machine (an implementation that skips work, e.g. the first Newton-Schulz product with Z0 = I,
is credited with the nominal count). Byte counts are the *ideal* traffic of a memory-bound operator:
read the input once and write the output once; anything above that shows up as a lower GB/s.

For an m x n matrix the whitening side is `s = min(m, n)` and the long side `l = max(m, n)`
(`(G G^T)^{-1/2} G` for wide, `G (G^T G)^{-1/2}` for tall, the same flops).

The model-level helpers give the cost of one full optimizer step over a preset's hidden matrices and
the forward+backward flops of a training step (`6 * params * tokens`, Kaplan et al.; with this
convention the 1.3B / k = 10 / 131k-token whitening share comes out at ~9%, the figure the SWAN paper quotes).
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Mapping

# Tokens per optimizer step in the GaLore protocol both papers use: 512 sequences x 256 tokens.
PAPER_TOKENS_PER_STEP = 512 * 256

DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


def _sides(rows: int, cols: int) -> tuple[int, int]:
    """(short side, long side) of a rows x cols matrix."""
    return min(rows, cols), max(rows, cols)


def grad_norm_flops(rows: int, cols: int) -> int:
    """Row standardisation: mean (1), subtract (1), square+sum (2), divide (1) per entry = 5*m*n."""
    return 5 * rows * cols


def newton_schulz_flops(rows: int, cols: int, steps: int) -> int:
    """Coupled Newton-Schulz whitening: Gram 2*s^2*l + k steps of three s x s products 6*k*s^3 + Z G 2*s^2*l."""
    s, l = _sides(rows, cols)
    return 4 * s * s * l + 6 * steps * s ** 3


def newton_schulz_executed_flops(rows: int, cols: int, steps: int) -> int:
    """What optimizers.functional.grad_whiten really multiplies: it skips the products known in closed form
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


def ideal_bytes(rows: int, cols: int, dtype: str) -> int:
    """Minimal traffic of an elementwise-style operator: read the input once, write the output once."""
    return 2 * rows * cols * DTYPE_BYTES[dtype]


def copy_bytes(numel: int, dtype: str) -> int:
    """Bytes a copy moves (one read + one write), the convention for the device's copy bandwidth."""
    return 2 * numel * DTYPE_BYTES[dtype]


# --------------------------------------------------------------------------------------------------
# Model level
# --------------------------------------------------------------------------------------------------

def shape_counts(shapes: list[tuple[int, int]]) -> Counter:
    """{(rows, cols): how many matrices of that shape} over a preset's hidden matrices."""
    return Counter(tuple(s) for s in shapes)


def step_flops(shapes: list[tuple[int, int]], per_matrix: Callable[[int, int], int]) -> int:
    """Flops of one optimizer step that applies `per_matrix(rows, cols)` to every hidden matrix."""
    return sum(count * per_matrix(r, c) for (r, c), count in shape_counts(shapes).items())


def forward_backward_flops(params: int, tokens: int = PAPER_TOKENS_PER_STEP) -> int:
    """Forward+backward flops of one training step: 6 * params * tokens (attention scores not included)."""
    return 6 * params * tokens


# Per-step preprocessing of each optimizer, as (name, per-matrix flop function). SWAN is GradNorm then
# GradWhitening (ALGORITHMS.md section 1); SinkGD is SR-Sinkhorn; Muon is listed for comparison.
def optimizer_step_costs() -> Mapping[str, Callable[[int, int], int]]:
    return {
        "swan_b0.5_k6": lambda r, c: grad_norm_flops(r, c) + newton_schulz_flops(r, c, 6),
        "swan_b0.8_k10": lambda r, c: grad_norm_flops(r, c) + newton_schulz_flops(r, c, 10),
        "swan_nsds_b0.4_k2": lambda r, c: grad_norm_flops(r, c) + newton_schulz_diag_flops(r, c, 2),
        "sinkgd_L5": lambda r, c: sr_sinkhorn_flops(r, c, 5),
        "sinkgd_L1": lambda r, c: sr_sinkhorn_flops(r, c, 1),
        "muon_k5": lambda r, c: muon_quintic_flops(r, c, 5),
    }


def whitening_share(shapes: list[tuple[int, int]], params: int, per_matrix: Callable[[int, int], int],
                    tokens: int = PAPER_TOKENS_PER_STEP) -> float:
    """Preprocessing flops of one step as a fraction of that step's forward+backward flops."""
    return step_flops(shapes, per_matrix) / forward_backward_flops(params, tokens)
