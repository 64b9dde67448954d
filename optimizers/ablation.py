"""SWAN's own ablation: one of its two stages alone (the `ablation` hyperparameter of the `swan` entry).

SWAN's update is GradNorm (row standardisation) followed by GradWhitening ((G G^T)^(-1/2) G); its paper
ablates each stage. `SWANAblation` keeps everything else of `optimizers.SWAN` (buckets of same-shape
matrices, the non-finite check, the RMS-1 rescale, `lr * alpha`, decoupled weight decay) and changes only
the preprocessing:

- "gradnorm-only": update = GradNorm(G), rescaled to entry RMS 1 (no whitening);
- "whitening-only": update = GradWhiten(G) on the raw fp32 gradient, rescaled to entry RMS 1 (no GradNorm).

Workspace (fp32 elements inside one step, per m x n matrix): "whitening-only" allocates what SWAN does (the
fp32 copy of the gradient and the Newton-Schulz buffers); "gradnorm-only" only the fp32 GradNorm'd copy
(m n). The registry declares SWAN's workspace for both: an upper bound for "gradnorm-only".
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor

from optimizers import functional as F
from optimizers.functional.gradnorm import _grad_norm_into
from optimizers.functional.whitening import _whiten_batch
from optimizers.stateless import SWAN

__all__ = ["ABLATIONS", "SWANAblation"]

# "none" is SWAN itself (the registry builds optimizers.SWAN for it).
ABLATIONS = ("none", "gradnorm-only", "whitening-only")


class SWANAblation(SWAN):
    """SWAN with one stage: `ablation="gradnorm-only"` or `"whitening-only"`; other arguments as `SWAN`."""

    def __init__(self, params: Iterable[Any], ablation: str = "gradnorm-only", **kwargs: Any) -> None:
        if ablation not in ABLATIONS[1:]:
            raise ValueError(f"ablation must be 'gradnorm-only' or 'whitening-only', got {ablation!r}")
        super().__init__(params, **kwargs)
        self.ablation = ablation

    def _preprocess(self, params: list[Tensor], group: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """(update, scratch) as `SWAN._preprocess`: one stage of SWAN's preprocessing, then the RMS-1 rescale.

        whitening-only whitens the raw gradient, whose rows need not sum to zero: no centring is assumed
        (`centered=None` lets the whitening detect it, as for any matrix)."""
        m, n = params[0].shape
        x = torch.empty((len(params), m, n), dtype=torch.float32, device=params[0].device)
        if self.ablation == "gradnorm-only":
            for i, p in enumerate(params):
                _grad_norm_into(p.grad, x[i], group["eps"])
            update = x
        else:
            for i, p in enumerate(params):
                x[i].copy_(p.grad)
            update = _whiten_batch(x, group["steps"], group["beta"], group["whitening"], group["whiten_precision"],
                                   centered=None, owned=True)
        F.frobenius_rescale_(update, math.sqrt(m * n), group["eps"], check_finite=True)
        return update, (None if update is x else x)
