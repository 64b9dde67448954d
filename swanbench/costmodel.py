"""The cost model of the gradient preprocessing operators, pure arithmetic.

Flop counts are nominal: a multiply-add counts 2 flops, an elementwise op 1 flop per entry, and the
counts follow the formulas below (docs/whitening.md states them) so that a measured "achieved TFLOP/s"
means the same thing on every machine (an implementation that skips work, e.g. the first Newton-Schulz
product with Z0 = I, is credited with the nominal count). Byte counts are the *ideal* traffic of a memory-bound operator:
read the input once and write the output once; anything above that shows up as a lower GB/s.

For an m x n matrix the whitening side is `s = min(m, n)` and the long side `l = max(m, n)`
(`(G G^T)^{-1/2} G` for wide, `G (G^T G)^{-1/2}` for tall, the same flops).

The model-level helpers give the cost of one full optimizer step over a preset's hidden matrices and
the forward+backward flops of a training step (`6 * params * tokens`, Kaplan et al.; with this
convention the 1.3B / k = 10 / 131k-token whitening share comes out at ~9%, the figure the SWAN paper quotes).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

# The per-operator flop counts live beside the optimizers (pure arithmetic); re-exported for the kernel suite.
from optimizers.costs import (grad_norm_flops, matmul_flops, muon_quintic_flops, newton_schulz_diag_flops,
                              newton_schulz_executed_flops, newton_schulz_flops, sr_sinkhorn_flops,
                              whiten_exact_flops)

__all__ = [
    "PAPER_TOKENS_PER_STEP", "DTYPE_BYTES", "StepConfig", "STEP_CONFIGS", "step_config", "ideal_bytes", "copy_bytes",
    "shape_counts", "step_flops", "forward_backward_flops", "whitening_share", "grad_norm_flops", "matmul_flops",
    "muon_quintic_flops", "newton_schulz_diag_flops", "newton_schulz_executed_flops", "newton_schulz_flops",
    "sr_sinkhorn_flops", "whiten_exact_flops",
]

# Tokens per optimizer step in the GaLore protocol both papers use: 512 sequences x 256 tokens.
PAPER_TOKENS_PER_STEP = 512 * 256

DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


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


@dataclass(frozen=True)
class StepConfig:
    """One optimizer configuration whose per-step preprocessing cost is modelled (and benchmarked).

    The operators and their flops come from the registry (`OptimizerInfo.step_parts`), so a new optimizer
    declares its cost where it is registered; `hparams` picks a configuration (SWAN's b and k, say).
    """

    optimizer: str
    hparams: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """"swan" for the defaults, "swan beta=0.5 steps=6" for another configuration."""
        return " ".join([self.optimizer, *(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in self.hparams)])

    def parts(self):
        import optimizers

        return optimizers.info(self.optimizer).step_parts(**dict(self.hparams))

    def flops(self, rows: int, cols: int) -> int:
        return sum(part.flops(rows, cols) for part in self.parts())


def step_config(optimizer: str, **hparams: Any) -> StepConfig:
    return StepConfig(optimizer, tuple(sorted(hparams.items())))


# The configurations the kernel suite and the README report: SWAN's two public settings (b=0.5, k=6 and the
# default b=0.8, k=10), its NSDS fast variant, SinkGD at L=5 (default) and L=1, and Muon for comparison.
STEP_CONFIGS: tuple[StepConfig, ...] = (
    step_config("swan", beta=0.5, steps=6),
    step_config("swan"),
    step_config("swan-fast"),
    step_config("sinkgd"),
    step_config("sinkgd", iterations=1),
    step_config("muon"),
)


def whitening_share(shapes: list[tuple[int, int]], params: int, per_matrix: Callable[[int, int], int],
                    tokens: int = PAPER_TOKENS_PER_STEP) -> float:
    """Preprocessing flops of one step as a fraction of that step's forward+backward flops."""
    return step_flops(shapes, per_matrix) / forward_backward_flops(params, tokens)
