"""The memory-declaration protocol of a registry entry: `f(shape)` or `f(shape, context)`.

Every registry entry declares, per parameter, its persistent state elements, the transient fp32 elements of
one `step()` and the bytes of 0-dim state tensors (`optimizers.registry.OptimizerInfo`). Most need only the
shape; some need more (GaLore's state depends on its rank, Adam-mini's on the parameter's name): those take
a `ParamContext` as a second argument.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

__all__ = ["ParamContext", "takes_context", "element_bytes"]

_ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


@dataclass(frozen=True)
class ParamContext:
    """What a declaration may need beyond the shape (every field optional; the estimator fills them all).

    name: the parameter's qualified name (transformers' naming, as `model.named_parameters()` gives it).
    dtype: the parameter dtype name ("float32", "bfloat16", ...).
    heads, hidden: the model's attention heads and hidden size.
    hparams: the optimizer's hyperparameters, defaults filled in.
    device: where the step runs ("cpu", "cuda", "cuda:1"): SinkGD's CUDA path holds an m x n iterate that
        its CPU kernels avoid.
    """

    name: str | None = None
    dtype: str = "float32"
    heads: int | None = None
    hidden: int | None = None
    hparams: Mapping[str, Any] = field(default_factory=dict)
    device: str = "cpu"


def takes_context(fn: Callable) -> bool:
    """A declaration written `f(shape, context)` (two positional parameters) rather than `f(shape)`."""
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):  # a builtin without a signature: the one-argument form
        return False
    return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def element_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name ("bfloat16", "torch.float32"; 4 for an unknown one)."""
    return _ELEMENT_BYTES.get(str(dtype).removeprefix("torch."), 4)
