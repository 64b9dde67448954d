"""The optimizer registry: `build(name, model, **hparams)`, `available()`, `info(name)`.

Every entry names the code that runs (`OptimizerInfo.implementation`), its hyperparameters with defaults
(anything else is a `ValueError` naming it), and its memory declaration for the analytic estimator:
`state_numel(shape)` persistent state elements per parameter, `state_dtype`, `scalar_state_bytes` (0-dim
per-parameter counters such as Adam's `step`, which torch keeps as a float32 tensor) and
`workspace_numel(shape)` transient fp32 elements inside `step()`.

Baselines are torch's own optimizers (fused kernels where the device has them, else foreach) or a
maintained package (`lion-pytorch`), never a copy. `swan`, `swan-fast`, `sinkgd` and `muon` are hybrids:
the hidden matrices (LLaMA: q/k/v/o/gate/up/down projections, or `rules=`) go to the matrix optimizer,
everything else to AdamW at the global lr. The controls of a fair comparison are hybrids too: `adamw-split`
(AdamW on both groups, each at its own lr) and `muon-nomomentum` (Newton-Schulz on the raw gradient).

The module is longer than 600 lines because it is the one table that knows every optimizer (its builder,
validation, memory and cost declarations side by side): split, an entry would be scattered over modules.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from optimizers import costs
from optimizers.ablation import ABLATIONS, SWANAblation
from optimizers.hybrid import LLAMA_RULES, HybridOptimizer, partition
from optimizers.stateless import SWAN, SinkGD, sinkgd_workspace_numel, swan_workspace_numel

__all__ = ["OptimizerInfo", "StepPart", "build", "available", "info", "registered", "display_order"]

log = logging.getLogger("optimizers")
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
    _workspace: Callable[[Shape], int] = field(repr=False)
    rest_optimizer: str | None = None
    whole_matrix: bool = False
    color: str | None = None
    order: int = 1000
    _parts: Callable[[Mapping[str, Any]], tuple[StepPart, ...]] = field(default=lambda hp: (), repr=False)

    def step_parts(self, **hparams: Any) -> tuple[StepPart, ...]:
        """The preprocessing operators one step applies to each hidden matrix, for these hyperparameters
        (defaults filled in); empty for optimizers without a separable preprocessing (AdamW, SGD, ...)."""
        return self._parts({**self.hparams, **hparams})

    def step_flops(self, rows: int, cols: int, **hparams: Any) -> int:
        """Nominal preprocessing flops of one step on one rows x cols hidden matrix (0 when it has none)."""
        return sum(part.flops(rows, cols) for part in self.step_parts(**hparams))

    def state_numel(self, shape: Shape) -> int:
        """Persistent optimizer-state elements for one parameter of `shape` (scalars excluded)."""
        return int(self._state(tuple(shape)))

    def workspace_numel(self, shape: Shape) -> int:
        """Peak transient fp32 elements allocated inside `step()` for one parameter of `shape`."""
        return int(self._workspace(tuple(shape)))

    def state_bytes(self, shape: Shape, param_dtype: torch.dtype) -> int:
        """state_numel * element size of the state dtype, plus the scalar counters."""
        dtype = param_dtype if self.state_dtype == "param" else getattr(torch, self.state_dtype)
        return self.state_numel(shape) * dtype.itemsize + self.scalar_state_bytes


# --------------------------------------------------------------------------------------------------
# hyperparameter validation
# --------------------------------------------------------------------------------------------------

def _number(name: str, value: Any, low: float = 0.0, low_open: bool = False, high: float | None = None,
            high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (low_open and value == low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")
    return float(value)


def _betas(name: str, value: Any) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2), got {value!r}")
    return tuple(_number(f"{name}[{i}]", v, 0.0, False, 1.0, True) for i, v in enumerate(value))  # type: ignore


def _int(name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _common(hp: dict[str, Any]) -> None:
    hp["lr"] = _number("lr", hp["lr"])
    hp["weight_decay"] = _number("weight_decay", hp["weight_decay"])


def _adamw_hp(hp: dict[str, Any], prefix: str = "") -> None:
    hp[prefix + "betas"] = _betas(prefix + "betas", hp[prefix + "betas"])
    hp[prefix + "eps"] = _number(prefix + "eps", hp[prefix + "eps"], 0.0, True)


# --------------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------------

def _trainable(model: torch.nn.Module) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return params


def _fused_or_foreach(cls: type, params: Any, **kwargs: Any) -> tuple[torch.optim.Optimizer, str]:
    """cls(..., fused=True) where every parameter's device has the fused kernel, else foreach=True."""
    try:
        return cls(params, fused=True, **kwargs), f"torch.optim.{cls.__name__}(fused=True)"
    except (RuntimeError, ValueError):  # e.g. a device without the fused kernel
        return cls(params, foreach=True, **kwargs), f"torch.optim.{cls.__name__}(foreach=True)"


def _adamw(params: Any, lr: float, betas: tuple, eps: float, weight_decay: float):
    return _fused_or_foreach(torch.optim.AdamW, params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def _build_adamw(model, hp):
    return _adamw(_trainable(model), hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"])


def _build_adam(model, hp):
    return _fused_or_foreach(torch.optim.Adam, _trainable(model), lr=hp["lr"], betas=hp["betas"],
                             eps=hp["eps"], weight_decay=hp["weight_decay"])


def _build_sgd(model, hp, momentum: float):
    return _fused_or_foreach(torch.optim.SGD, _trainable(model), lr=hp["lr"], momentum=momentum,
                             weight_decay=hp["weight_decay"])


def _build_adafactor(model, hp):
    opt = torch.optim.Adafactor(_trainable(model), lr=hp["lr"], beta2_decay=hp["beta2_decay"],
                                eps=(None, hp["eps"]), d=hp["d"], weight_decay=hp["weight_decay"], foreach=True)
    return opt, "torch.optim.Adafactor(foreach=True)"


def _build_lion(model, hp):
    if importlib.util.find_spec("lion_pytorch") is None:
        raise ValueError("optimizer 'lion' needs the package lion-pytorch (pip install lion-pytorch)")
    from lion_pytorch import Lion

    return Lion(_trainable(model), lr=hp["lr"], betas=hp["betas"], weight_decay=hp["weight_decay"]), \
        "lion_pytorch.Lion"


def _hybrid(model, hp, make_matrix: Callable[[list, dict], tuple[torch.optim.Optimizer, str]]):
    groups = partition(model, hp["rules"] if hp["rules"] is not None else LLAMA_RULES)
    for name, p in groups["matrix"]:
        if p.dim() != 2:
            raise ValueError(f"rule sends {name} (shape {tuple(p.shape)}) to the matrix optimizer, "
                             "which only takes 2-D parameters")
    parts: dict[str, torch.optim.Optimizer] = {}
    impl = []
    if groups["matrix"]:
        params = [p for _, p in groups["matrix"]]
        parts["matrix"], text = make_matrix(params, hp)
        impl.append(f"matrix: {text}")
    if groups["adamw"]:
        adamw_lr = hp["lr"] if hp["adamw_lr"] is None else hp["adamw_lr"]
        parts["adamw"], text = _adamw([p for _, p in groups["adamw"]], adamw_lr, hp["adamw_betas"],
                                      hp["adamw_eps"], hp["weight_decay"])
        impl.append(f"rest: {text}")
    for name, members in groups.items():
        if members:
            numel = sum(p.numel() for _, p in members)
            log.info("hybrid group %s: %d tensors, %d parameters -> %s", name, len(members), numel,
                     type(parts[name]).__name__)
    for name, opt in parts.items():
        for group in opt.param_groups:
            group["name"] = name  # labels for per-group memory reports
    return HybridOptimizer(parts), "HybridOptimizer(" + "; ".join(impl) + ")"


def _swan_matrix(params, hp, whitening: str):
    opt = SWAN(params, lr=hp["lr"], alpha=hp["alpha"], steps=hp["steps"], beta=hp["beta"], whitening=whitening,
               eps=hp["eps"], weight_decay=hp["weight_decay"], nonfinite=hp["nonfinite"],
               batch_budget=hp["batch_budget"])
    return opt, f"optimizers.SWAN(whitening={whitening!r}, steps={hp['steps']}, beta={hp['beta']})"


def _sinkgd_matrix(params, hp):
    opt = SinkGD(params, lr=hp["lr"], alpha=hp["alpha"], iterations=hp["iterations"], eps=hp["eps"],
                 weight_decay=hp["weight_decay"], nonfinite=hp["nonfinite"])
    return opt, f"optimizers.SinkGD(iterations={hp['iterations']})"


def _muon_matrix(params, hp):
    opt = torch.optim.Muon(params, lr=hp["lr"], weight_decay=hp["weight_decay"], momentum=hp["momentum"],
                           nesterov=hp["nesterov"], ns_steps=hp["ns_steps"])
    return opt, "torch.optim.Muon"


# --------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    info: OptimizerInfo
    build: Callable[[torch.nn.Module, dict[str, Any]], tuple[torch.optim.Optimizer, str]]
    validate: Callable[[dict[str, Any]], None]


_HYBRID_DEFAULTS = dict(lr=0.02, weight_decay=0.0, rules=None, adamw_lr=None, adamw_betas=(0.9, 0.999),
                        adamw_eps=1e-8)
_STATELESS_DEFAULTS = dict(_HYBRID_DEFAULTS, alpha=0.05, eps=1e-8, nonfinite="raise")


def _validate_hybrid(hp: dict[str, Any]) -> None:
    _common(hp)
    _adamw_hp(hp, "adamw_")
    if hp["adamw_lr"] is not None:
        hp["adamw_lr"] = _number("adamw_lr", hp["adamw_lr"])


def _validate_stateless(hp: dict[str, Any]) -> None:
    _validate_hybrid(hp)
    hp["alpha"] = _number("alpha", hp["alpha"], 0.0, True)
    hp["eps"] = _number("eps", hp["eps"], 0.0, True)
    if hp["nonfinite"] not in ("raise", "skip"):
        raise ValueError(f"nonfinite must be 'raise' or 'skip', got {hp['nonfinite']!r}")


def _validate_swan(hp: dict[str, Any]) -> None:
    _validate_stateless(hp)
    hp["steps"] = _int("steps", hp["steps"])
    hp["beta"] = _number("beta", hp["beta"], 0.0, True, 1.0, True)
    if hp["batch_budget"] is not None:
        hp["batch_budget"] = _int("batch_budget", hp["batch_budget"])


def _validate_sinkgd(hp: dict[str, Any]) -> None:
    _validate_stateless(hp)
    hp["iterations"] = _int("iterations", hp["iterations"])


def _validate_muon(hp: dict[str, Any]) -> None:
    _validate_hybrid(hp)
    hp["momentum"] = _number("momentum", hp["momentum"], 0.0, False, 1.0, True)
    hp["ns_steps"] = _int("ns_steps", hp["ns_steps"])
    if hp["ns_steps"] >= 100:
        raise ValueError(f"ns_steps must be < 100 (torch.optim.Muon), got {hp['ns_steps']}")
    if not isinstance(hp["nesterov"], bool):
        raise ValueError(f"nesterov must be true or false, got {hp['nesterov']!r}")


def _validate_adam(hp: dict[str, Any]) -> None:
    _common(hp)
    _adamw_hp(hp)


def _validate_adafactor(hp: dict[str, Any]) -> None:
    _common(hp)
    hp["beta2_decay"] = _number("beta2_decay", hp["beta2_decay"], -math.inf, False, 0.0, False)
    hp["eps"] = _number("eps", hp["eps"], 0.0, True)
    hp["d"] = _number("d", hp["d"], 0.0, True)


def _validate_lion(hp: dict[str, Any]) -> None:
    _common(hp)
    if hp["lr"] == 0:
        raise ValueError("lr must be > 0 for lion")
    hp["betas"] = _betas("betas", hp["betas"])


def _swan_state(shape: Shape) -> int:
    _matrix(shape)
    return 0


def _info(name, description, implementation, state, workspace, hparams, hybrid=False, scalar=0,
          requires=None, whole_matrix=False, parts=None, color=None, order=1000) -> OptimizerInfo:
    return OptimizerInfo(name=name, description=description, implementation=implementation, hybrid=hybrid,
                         state_dtype="param", scalar_state_bytes=scalar, requires=requires,
                         hparams=dict(hparams), _state=state, _workspace=workspace,
                         rest_optimizer="adamw" if hybrid else None, whole_matrix=whole_matrix,
                         color=color, order=order, _parts=parts or (lambda hp: ()))


# Step parts: the kernel suite names a method by the hyperparameters it runs with ("ns-b0.8-k10"), so the
# parts of a configuration are found by name; flops come from optimizers.costs.

def _num_text(value: float) -> str:
    return f"{value:g}"


def _grad_norm_part() -> StepPart:
    return StepPart("grad_norm", ("rowwise",), costs.grad_norm_flops)


def _swan_parts(hp: Mapping[str, Any]) -> tuple[StepPart, ...]:
    k, b = int(hp["steps"]), float(hp["beta"])
    whiten = StepPart("grad_whiten", (f"ns-b{_num_text(b)}-k{k}",),
                      lambda r, c: costs.newton_schulz_flops(r, c, k))
    return _grad_norm_part(), whiten


def _swan_fast_parts(hp: Mapping[str, Any]) -> tuple[StepPart, ...]:
    k, b = int(hp["steps"]), float(hp["beta"])
    whiten = StepPart("grad_whiten", (f"nsds-b{_num_text(b)}-k{k}",),
                      lambda r, c: costs.newton_schulz_diag_flops(r, c, k))
    return _grad_norm_part(), whiten


def _sinkgd_parts(hp: Mapping[str, Any]) -> tuple[StepPart, ...]:
    # SinkGD's own step picks its kernel per device (native on CPU, vectors on GPUs) and never allocates the
    # scaled matrix: its part is the fastest of the kernels it can run.
    L = int(hp["iterations"])
    methods = tuple(f"{m}-L{L}" for m in ("native", "blocked", "vectors"))
    if L == 5:
        methods = ("native-L5-out", *methods)
    return (StepPart("sr_sinkhorn", methods, lambda r, c: costs.sr_sinkhorn_flops(r, c, L)),)


def _muon_parts(hp: Mapping[str, Any]) -> tuple[StepPart, ...]:
    k = int(hp["ns_steps"])
    return (StepPart("muon_quintic", (f"k{k}",), lambda r, c: costs.muon_quintic_flops(r, c, k)),)


def _adafactor_state(shape: Shape) -> int:
    # torch.optim.Adafactor: row_var [.., m, 1] and col_var [.., 1, n] for >= 2-D, a full `variance` else
    if len(shape) >= 2:
        lead = math.prod(shape[:-2])
        return lead * (int(shape[-2]) + int(shape[-1]))
    return _numel(shape)


def _muon_workspace(shape: Shape) -> int:
    # torch.optim.Muon (fp32 params): the Nesterov blend (m n), the bf16 copy and its NS iterate
    # (2 x m n bf16 = m n fp32), the bf16 Gram and its polynomial (2 s^2 bf16 = s^2 fp32).
    m, n = _matrix(shape)
    return 2 * m * n + min(m, n) ** 2


_ADAM_HP = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
_ENTRIES: dict[str, _Entry] = {}


def _register(info_: OptimizerInfo, build_fn, validate) -> None:
    _ENTRIES[info_.name] = _Entry(info_, build_fn, validate)


_register(_info("adamw", "AdamW: Adam with decoupled weight decay (2 moments per parameter)",
                "torch.optim.AdamW(fused=True where the device has it, else foreach=True)",
                lambda s: 2 * _numel(s), lambda s: 0, _ADAM_HP, scalar=4, color="#1f77b4", order=0),
          _build_adamw, _validate_adam)
_register(_info("adam", "Adam (L2 weight decay coupled into the gradient)",
                "torch.optim.Adam(fused=True where the device has it, else foreach=True)",
                lambda s: 2 * _numel(s), lambda s: 0, _ADAM_HP, scalar=4, color="#6baed6", order=10),
          _build_adam, _validate_adam)
_register(_info("sgd", "plain SGD, no state", "torch.optim.SGD(momentum=0, fused=True/foreach=True)",
                lambda s: 0, lambda s: 0, dict(lr=1e-2, weight_decay=0.0), color="#7f7f7f", order=20),
          lambda m, hp: _build_sgd(m, hp, 0.0), _common)
_register(_info("sgd-momentum", "SGD with heavy-ball momentum 0.9 (one buffer per parameter)",
                "torch.optim.SGD(momentum=0.9, fused=True/foreach=True)",
                lambda s: _numel(s), lambda s: 0, dict(lr=1e-2, weight_decay=0.0), color="#bcbd22", order=30),
          lambda m, hp: _build_sgd(m, hp, 0.9), _common)
_register(_info("adafactor", "Adafactor: factored second moment (row + column statistics), no momentum",
                "torch.optim.Adafactor(foreach=True)", _adafactor_state, lambda s: _numel(s),
                dict(lr=1e-2, beta2_decay=-0.8, eps=1e-3, d=1.0, weight_decay=0.0), scalar=4,
                color="#9467bd", order=40),
          _build_adafactor, _validate_adafactor)
_register(_info("lion", "Lion: sign of an interpolated momentum (one buffer per parameter)",
                "lion_pytorch.Lion", lambda s: _numel(s), lambda s: 2 * _numel(s),
                dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0), requires="lion-pytorch",
                color="#e377c2", order=60),
          _build_lion, _validate_lion)
_register(_info("muon", "Muon (momentum + quintic Newton-Schulz) on hidden matrices, AdamW on the rest",
                "HybridOptimizer(torch.optim.Muon + torch.optim.AdamW)",
                lambda s: _numel(_matrix(s)), _muon_workspace,
                dict(_HYBRID_DEFAULTS, momentum=0.95, nesterov=True, ns_steps=5), hybrid=True,
                parts=_muon_parts, color="#8c564b", order=50),
          lambda m, hp: _hybrid(m, hp, _muon_matrix), _validate_muon)
_register(_info("swan", "SWAN: GradNorm + Newton-Schulz GradWhitening, stateless, on hidden matrices; "
                "AdamW on the rest", "HybridOptimizer(optimizers.SWAN(newton-schulz) + torch.optim.AdamW)",
                _swan_state, lambda s: swan_workspace_numel(_matrix(s), 10, "newton-schulz"),
                dict(_STATELESS_DEFAULTS, steps=10, beta=0.8, batch_budget=None), hybrid=True,
                whole_matrix=True, parts=_swan_parts, color="#d62728", order=70),
          lambda m, hp: _hybrid(m, hp, lambda p, h: _swan_matrix(p, h, "newton-schulz")), _validate_swan)
_register(_info("swan-fast", "SWAN with NSDS (diagonal-substitution) whitening, b=0.4, k=2; AdamW on the rest",
                "HybridOptimizer(optimizers.SWAN(diag) + torch.optim.AdamW)",
                _swan_state, lambda s: swan_workspace_numel(_matrix(s), 2, "diag"),
                dict(_STATELESS_DEFAULTS, steps=2, beta=0.4, batch_budget=None), hybrid=True,
                whole_matrix=True, parts=_swan_fast_parts, color="#ff9896", order=80),
          lambda m, hp: _hybrid(m, hp, lambda p, h: _swan_matrix(p, h, "diag")), _validate_swan)
_register(_info("sinkgd", "SinkGD: SR-Sinkhorn (L=5) normalised gradient, stateless, on hidden matrices; "
                "AdamW on the rest", "HybridOptimizer(optimizers.SinkGD + torch.optim.AdamW)",
                _swan_state, lambda s: sinkgd_workspace_numel(_matrix(s)),
                dict(_STATELESS_DEFAULTS, iterations=5), hybrid=True,
                parts=_sinkgd_parts, color="#2ca02c", order=90),
          lambda m, hp: _hybrid(m, hp, _sinkgd_matrix), _validate_sinkgd)


# --------------------------------------------------------------------------------------------------
# controls: what a fair comparison with the hybrids needs beside plain AdamW
# --------------------------------------------------------------------------------------------------
# The hybrids train embeddings, head and norms with AdamW at their own (global or `adamw_lr`) lr. A speedup
# over plain AdamW at one lr for everything may come from that grouping and its lrs rather than from the
# matrix update: `adamw-split` is AdamW with exactly the hybrids' grouping and per-group lrs, and
# `muon-nomomentum` is an orthogonalised update with no momentum (the bar "stateless" has to clear).

def _build_adamw_split(model, hp):
    # the rest group's betas/eps are the matrix group's: one AdamW configuration, two lrs
    hp = dict(hp, adamw_betas=hp["betas"], adamw_eps=hp["eps"])
    return _hybrid(model, hp, lambda params, h: _adamw(params, h["lr"], h["betas"], h["eps"], h["weight_decay"]))


def _validate_adamw_split(hp: dict[str, Any]) -> None:
    _validate_adam(hp)
    if hp["adamw_lr"] is not None:
        hp["adamw_lr"] = _number("adamw_lr", hp["adamw_lr"])


def _validate_muon_nomomentum(hp: dict[str, Any]) -> None:
    _validate_hybrid(hp)
    hp["ns_steps"] = _int("ns_steps", hp["ns_steps"])
    if hp["ns_steps"] >= 100:
        raise ValueError(f"ns_steps must be < 100 (torch.optim.Muon), got {hp['ns_steps']}")


def _muon_nomomentum_workspace(shape: Shape) -> int:
    # torch.optim.Muon with momentum 0 and no Nesterov blend, fp32 params: the bf16 copy of the gradient and
    # the next iterate (2 x m n bf16 = m n fp32), the bf16 Gram and its polynomial (2 s^2 bf16 = s^2 fp32).
    m, n = _matrix(shape)
    return m * n + min(m, n) ** 2


_register(_info("adamw-split", "AdamW with the hybrids' grouping: hidden matrices at lr, embeddings/head/norms at "
                "adamw_lr (default: lr)", "HybridOptimizer(torch.optim.AdamW + torch.optim.AdamW)",
                lambda s: 2 * _numel(_matrix(s)), lambda s: 0,
                dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, rules=None, adamw_lr=None),
                hybrid=True, scalar=4, color="#3b5b92", order=5),
          _build_adamw_split, _validate_adamw_split)
# torch.optim.Muon allocates its momentum buffer whatever the momentum; at 0 the gradient overwrites it every
# step and it is never read back. It is declared (m n) because it is what torch holds.
_register(_info("muon-nomomentum", "Muon's quintic Newton-Schulz on the raw gradient (momentum 0) on hidden "
                "matrices, AdamW on the rest: the stateless orthogonalisation control",
                "HybridOptimizer(torch.optim.Muon(momentum=0, nesterov=False) + torch.optim.AdamW)",
                lambda s: _numel(_matrix(s)), _muon_nomomentum_workspace,
                dict(_HYBRID_DEFAULTS, ns_steps=5), hybrid=True, parts=_muon_parts, color="#d2a679", order=55),
          lambda m, hp: _hybrid(m, dict(hp, momentum=0.0, nesterov=False), _muon_matrix), _validate_muon_nomomentum)


# SWAN's ablation (its paper's): `ablation = "gradnorm-only" | "whitening-only"` runs one of its two stages
# (optimizers.ablation); "none" (default) is SWAN. Added to the swan entry here, after it is registered.

def _swan_ablation_matrix(params, hp):
    opt = SWANAblation(params, ablation=hp["ablation"], lr=hp["lr"], alpha=hp["alpha"], steps=hp["steps"],
                       beta=hp["beta"], eps=hp["eps"], weight_decay=hp["weight_decay"],
                       nonfinite=hp["nonfinite"], batch_budget=hp["batch_budget"])
    return opt, f"optimizers.SWANAblation({hp['ablation']}, steps={hp['steps']}, beta={hp['beta']})"


def _add_swan_ablation(name: str) -> None:
    entry = _ENTRIES[name]
    base_parts = entry.info._parts
    stage = {"gradnorm-only": "grad_norm", "whitening-only": "grad_whiten"}

    def parts(hp: Mapping[str, Any]) -> tuple[StepPart, ...]:
        keep = stage.get(hp["ablation"])
        return tuple(p for p in base_parts(hp) if keep is None or p.operator == keep)

    def validate(hp: dict[str, Any]) -> None:
        entry.validate(hp)
        if hp["ablation"] not in ABLATIONS:
            raise ValueError(f"ablation must be one of {', '.join(map(repr, ABLATIONS))}, got {hp['ablation']!r}")

    def build(model, hp):
        if hp["ablation"] == "none":
            return entry.build(model, hp)
        return _hybrid(model, hp, _swan_ablation_matrix)

    info_ = dataclasses.replace(entry.info, hparams={**entry.info.hparams, "ablation": "none"}, _parts=parts)
    _register(info_, build, validate)


_add_swan_ablation("swan")

# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------

def registered() -> list[str]:
    """Every registry name, including entries whose package is not installed here."""
    return sorted(_ENTRIES)


def display_order(names: Sequence[str]) -> list[str]:
    """Names in the registry's display order (`OptimizerInfo.order`); unregistered names follow, sorted."""
    def key(name: str) -> tuple[int, str]:
        entry = _ENTRIES.get(str(name).strip().lower())
        return (entry.info.order if entry else 10**9, str(name))

    return sorted(dict.fromkeys(names), key=key)


def _installed(entry: _Entry) -> bool:
    req = entry.info.requires
    return req is None or importlib.util.find_spec(req.replace("-", "_")) is not None


def available() -> list[str]:
    """Registry names that can be built in this environment (sorted)."""
    return sorted(name for name, entry in _ENTRIES.items() if _installed(entry))


def _entry(name: str) -> _Entry:
    if not isinstance(name, str):
        raise ValueError(f"optimizer name must be a string, got {name!r}")
    entry = _ENTRIES.get(name.strip().lower())
    if entry is None:
        close = difflib.get_close_matches(name.strip().lower(), list(_ENTRIES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown optimizer {name!r}{hint} (available: {', '.join(registered())})")
    return entry


def info(name: str) -> OptimizerInfo:
    """The `OptimizerInfo` of a registry name (ValueError with a did-you-mean for an unknown one)."""
    return _entry(name).info


def resolve_hparams(name: str, **hparams: Any) -> dict[str, Any]:
    """Defaults merged with `hparams`, validated (ValueError naming an unknown or invalid one)."""
    entry = _entry(name)
    known = entry.info.hparams
    for key in hparams:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown hyperparameter {key!r} for optimizer {entry.info.name!r}{hint} "
                             f"(accepted: {', '.join(known)})")
    hp = {**known, **hparams}
    entry.validate(hp)
    return hp


def build(name: str, model: torch.nn.Module, **hparams: Any) -> torch.optim.Optimizer:
    """Build registry optimizer `name` for `model`'s trainable parameters.

    `lr` is the global learning rate and `weight_decay` is accepted by every entry. For the hybrids
    (swan, swan-fast, sinkgd, muon) the result is a `HybridOptimizer` (a `torch.optim.Optimizer`) whose
    "matrix" part gets the hidden matrices (`rules=[(regex, "matrix"|"adamw"), ...]` overrides the LLaMA
    name rules; first match wins) and whose "adamw" part gets the rest at `adamw_lr` (default: `lr`).
    The returned optimizer has `preprocess_timer` (None) and `implementation` (the code that runs).
    """
    entry = _entry(name)
    if not _installed(entry):
        raise ValueError(f"optimizer {entry.info.name!r} needs the package {entry.info.requires} "
                         f"(pip install {entry.info.requires})")
    hp = resolve_hparams(name, **hparams)
    opt, implementation = entry.build(model, hp)
    if not hasattr(opt, "preprocess_timer"):
        opt.preprocess_timer = None  # torch's optimizers have no separable preprocessing: they ignore it
    opt.implementation = implementation
    opt.registry_name = entry.info.name
    return opt
