"""What the registry knows about an optimizer: `OptimizerInfo` (memory declarations, step parts, display) and
`StepPart` (one preprocessing operator of a step, with its flops).

Declarations (`state`, `workspace`, optional `scalars` bytes) are `f(shape)` or `f(shape, context)` with a
`optimizers.declare.ParamContext` (the parameter's name and dtype, the device, the model's heads and hidden
size, the hyperparameters): GaLore's state depends on its rank, Adam-mini's on the parameter's name,
SinkGD's workspace on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import torch

from optimizers.declare import ParamContext, takes_context

Shape = Sequence[int]


def _numel(shape: Shape) -> int:
    return math.prod(int(d) for d in shape)


def _matrix(shape: Shape) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"a matrix optimizer declares state for 2-D shapes only, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


@dataclass(frozen=True)
class StepPart:
    """One preprocessing operator a step applies to every hidden matrix (for the kernel suite and cost model).

    operator: an operator of `optimizers.functional` ("grad_norm", "grad_whiten", "sr_sinkhorn",
        "muon_quintic"), as the kernel suite names it.
    methods: the kernel suite's methods that compute it with these hyperparameters, in order of preference
        (the first that was measured on the device stands for the step).
    flops: nominal flops for one rows x cols matrix (`optimizers.costs`).
    """

    operator: str
    methods: tuple[str, ...]
    flops: Callable[[int, int], int] = field(repr=False, compare=False)


@dataclass(frozen=True)
class OptimizerInfo:
    """What a registry name runs and what memory it holds (for `swanbench estimate` and the README).

    Attributes:
        name, description: the registry name and one line on the method.
        implementation: the code that runs, e.g. "torch.optim.AdamW(fused=True)".
        hybrid: True when hidden matrices go to a matrix optimizer and the rest to `rest_optimizer`;
            `state_numel` / `workspace_numel` then describe one hidden matrix.
        state_dtype: "param" (torch allocates state with `zeros_like(param)`, i.e. in the parameter dtype;
            true of every entry here) or a dtype name.
        scalar_state_bytes: bytes of 0-dim per-parameter counters (torch's Adam/AdamW/Adafactor keep `step`
            as a float32 tensor: 4); not included in `state_numel`.
        requires: the pip package the entry needs beyond torch, or None.
        hparams: the accepted hyperparameters and their defaults.
        whole_matrix: the matrix optimizer needs each hidden matrix whole on one rank (whitening), whatever
            the sharding: the estimator adds the gather under FSDP.
        color, order: how figures and tables show it (a matplotlib colour; position in legends and tables).
        declared: False when the optimizer declares no state and workspace (an import path, an entry point
            without declarations): the estimator then says "not declared"; a run still measures it exactly.
        source: "built-in", "peer" (a maintained package's optimizer), "entry point (<dist>)" or "import path".

    Declarations (`state`, `workspace`, optional `scalars` bytes) are `f(shape)` or `f(shape, context)`:
    `optimizers.declare` (GaLore's state depends on its rank, Adam-mini's on the parameter's name).
    """

    name: str
    description: str
    implementation: str
    hybrid: bool
    state_dtype: str
    scalar_state_bytes: int
    requires: str | None
    hparams: Mapping[str, Any]
    _state: Callable[[Shape], int] = field(repr=False)
    # (shape, hparams, device, dtype) -> fp32 elements; see `workspace_numel`
    _workspace: Callable[..., int] = field(repr=False)
    rest_optimizer: str | None = None
    whole_matrix: bool = False
    color: str | None = None
    order: int = 1000
    _parts: Callable[[Mapping[str, Any]], tuple[StepPart, ...]] = field(default=lambda hp: (), repr=False)
    declared: bool = True
    source: str = "built-in"
    _scalars: Callable | None = field(default=None, repr=False)

    def step_parts(self, **hparams: Any) -> tuple[StepPart, ...]:
        """The preprocessing operators one step applies to each hidden matrix, for these hyperparameters
        (defaults filled in); empty for optimizers without a separable preprocessing (AdamW, SGD, ...)."""
        return self._parts({**self.hparams, **hparams})

    def step_flops(self, rows: int, cols: int, **hparams: Any) -> int:
        """Nominal preprocessing flops of one step on one rows x cols hidden matrix (0 when it has none)."""
        return sum(part.flops(rows, cols) for part in self.step_parts(**hparams))

    def _context(self, context: ParamContext | None) -> ParamContext:
        ctx = context or ParamContext()
        return replace(ctx, hparams={**self.hparams, **ctx.hparams})

    def _declared(self, fn: Callable, shape: Shape, context: ParamContext | None) -> int:
        if not self.declared:
            raise ValueError(f"optimizer {self.name!r} declares no state or workspace (not declared)")
        return int(fn(tuple(shape), self._context(context)) if takes_context(fn) else fn(tuple(shape)))

    def state_numel(self, shape: Shape, context: ParamContext | None = None) -> int:
        """Persistent optimizer-state elements for one parameter of `shape` (scalars excluded)."""
        return self._declared(self._state, shape, context)

    def workspace_numel(self, shape: Shape, context: ParamContext | None = None, *,
                        device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                        **hparams: Any) -> int:
        """Peak transient fp32 elements allocated inside `step()` for one parameter of `shape`.

        context: the parameter's `ParamContext`; or, in short, device: where the step runs ("cpu" by default;
        SinkGD's CUDA path materialises an m x n iterate its CPU kernels avoid), dtype: the parameter dtype
        (a torch.dtype or a name such as "bfloat16"), hparams: the configuration (e.g. SWAN's `steps`,
        `whiten_precision`); an unknown hyperparameter is a ValueError.
        """
        unknown = sorted(set(hparams) - set(self.hparams))
        if unknown:
            raise ValueError(f"workspace_numel: unknown hyperparameter(s) {', '.join(unknown)} for {self.name!r}")
        ctx = context or ParamContext()
        ctx = replace(ctx, device=str(device) if device is not None else ctx.device,
                      dtype=_dtype_name(dtype) if dtype is not None else ctx.dtype,
                      hparams={**ctx.hparams, **hparams})
        return self._declared(self._workspace, shape, ctx)

    def scalar_bytes(self, shape: Shape, context: ParamContext | None = None) -> int:
        """Bytes of 0-dim state tensors for one parameter (Adam's `step`; APOLLO's last update norm)."""
        if self._scalars is None:
            return self.scalar_state_bytes
        return self._declared(self._scalars, shape, context)

    def state_bytes(self, shape: Shape, param_dtype: torch.dtype) -> int:
        """state_numel * element size of the state dtype, plus the scalar counters."""
        dtype = param_dtype if self.state_dtype == "param" else getattr(torch, self.state_dtype)
        ctx = ParamContext(dtype=str(param_dtype).removeprefix("torch."))
        return self.state_numel(shape, ctx) * dtype.itemsize + self.scalar_bytes(shape, ctx)


def _dtype_name(dtype: str | torch.dtype) -> str:
    """"bfloat16" from torch.bfloat16, "torch.bfloat16", "bf16" or "bfloat16"."""
    name = str(dtype).removeprefix("torch.").strip().lower()
    return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "half": "float16"}.get(name, name)
