"""optimizers: the reference implementation of SWAN and SinkGD, beside the baselines they are judged against.

- `optimizers.functional`: the pure tensor operators (GradNorm, Newton-Schulz / NSDS whitening, the float64
  whitening reference, SR-Sinkhorn, Muon's quintic), fp32 inside, batched over same-shape matrices.
- `SWAN`, `SinkGD`: stateless `torch.optim.Optimizer` classes for 2-D parameters.
- `HybridOptimizer`, `partition`: hidden matrices to a matrix optimizer, the rest to AdamW, by name rules.
- `build(name, model, **hparams)`, `available()`, `info(name)`, `missing()`: the registry the suites use; a
  name may be an import path `"package.module:Name"` (`optimizers.external`, with entry points of the group
  `swanbench.optimizers`), and the memory-efficient peers (GaLore, APOLLO, APOLLO-Mini, Adam-mini) come from
  their own packages (`optimizers.peers`).
- `optimizers.reference` (float64, paper-literal) and `optimizers.variants` (benchmark-only): not imported
  here; the tests and the kernel benchmark import them by name.
"""

from optimizers import functional
from optimizers.hybrid import LLAMA_RULES, HybridOptimizer, partition
from optimizers.registry import OptimizerInfo, available, build, info, missing, registered, resolve_hparams
from optimizers.declare import ParamContext
from optimizers import controls, external, peers  # noqa: F401,E402 - importing them registers their entries
from optimizers.stateless import SWAN, NonFiniteGradientError, SinkGD

__all__ = [
    "functional",
    "SWAN",
    "SinkGD",
    "NonFiniteGradientError",
    "HybridOptimizer",
    "partition",
    "LLAMA_RULES",
    "OptimizerInfo",
    "build",
    "available",
    "info",
    "registered",
    "resolve_hparams",
    "missing",
    "ParamContext",
]
