"""The optimizer registry: `build(name, model, **hparams)`, `available()`, `info(name)`.

Every entry names the code that runs (`OptimizerInfo.implementation`), its hyperparameters with defaults
(anything else is a `ValueError` naming it), and its memory declaration for the analytic estimator:
`state_numel(shape)` persistent state elements per parameter, `state_dtype`, `scalar_state_bytes` (0-dim
per-parameter counters such as Adam's `step`, which torch keeps as a float32 tensor) and
`workspace_numel(shape, context)` transient fp32 elements inside `step()` (the context: the parameter's
name and dtype, the device, the hyperparameters; defaults: CPU, fp32, the entry's defaults). Declarations
are `f(shape)` or `f(shape, context)` (`optimizers.declare`).

Baselines are torch's own optimizers (fused kernels where the device has them, else foreach) or a
maintained package (`lion-pytorch`), never a copy. `swan`, `swan-fast`, `sinkgd` and `muon` are hybrids:
the hidden matrices (LLaMA: q/k/v/o/gate/up/down projections, or `rules=`) go to the matrix optimizer,
everything else to AdamW at the global lr. Entries registered elsewhere, with this module's `_register`:
the controls of a fair comparison (`optimizers.controls`: `adamw-split`, `muon-nomomentum`, SWAN's
ablation), the memory-efficient peers (`optimizers.peers`), and optimizers from outside the package
(`optimizers.external`: import paths, entry points).
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from optimizers import costs
from optimizers import functional as F
from optimizers.declare import ParamContext
from optimizers.info import OptimizerInfo, Shape, StepPart, _matrix, _numel
from optimizers.hybrid import LLAMA_RULES, HybridOptimizer, partition
from optimizers.stateless import SWAN, SinkGD, sinkgd_workspace_numel, swan_workspace_numel

__all__ = ["OptimizerInfo", "StepPart", "ParamContext", "build", "available", "info", "registered", "display_order",
           "missing"]

log = logging.getLogger("optimizers")
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
               batch_budget=hp["batch_budget"], whiten_precision=hp["whiten_precision"])
    precision = "" if hp["whiten_precision"] == "fp32" else f", whiten_precision={hp['whiten_precision']!r}"
    return opt, f"optimizers.SWAN(whitening={whitening!r}, steps={hp['steps']}, beta={hp['beta']}{precision})"


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
    open_hparams: bool = False  # any keyword passes through (an external optimizer without declared defaults)
    extra_keys: tuple[str, ...] = ()  # accepted beyond info.hparams (an external optimizer's hybrid settings)


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
    if hp["whiten_precision"] not in F.WHITEN_PRECISIONS:
        raise ValueError(f"whiten_precision must be one of {', '.join(map(repr, F.WHITEN_PRECISIONS))}, "
                         f"got {hp['whiten_precision']!r}")
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


def _precision_suffix(hp: Mapping[str, Any]) -> str:
    """"" for fp32 whitening (the kernel suite's plain names), "-tf32" / "-bf16" otherwise."""
    precision = hp.get("whiten_precision", "fp32")
    return "" if precision == "fp32" else f"-{precision}"


def _swan_parts(hp: Mapping[str, Any]) -> tuple[StepPart, ...]:
    k, b = int(hp["steps"]), float(hp["beta"])
    whiten = StepPart("grad_whiten", (f"ns-b{_num_text(b)}-k{k}{_precision_suffix(hp)}",),
                      lambda r, c: costs.newton_schulz_flops(r, c, k))
    return _grad_norm_part(), whiten


def _swan_fast_parts(hp: Mapping[str, Any]) -> tuple[StepPart, ...]:
    k, b = int(hp["steps"]), float(hp["beta"])
    whiten = StepPart("grad_whiten", (f"nsds-b{_num_text(b)}-k{k}{_precision_suffix(hp)}",),
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


def _no_workspace(shape: Shape) -> int:
    return 0


def _swan_workspace(whitening: str) -> Callable[..., int]:
    """SWAN's declaration (`stateless.swan_workspace_numel`): the same on every device and parameter dtype."""
    def workspace(shape: Shape, ctx: ParamContext) -> int:
        hp = ctx.hparams
        return swan_workspace_numel(_matrix(shape), int(hp["steps"]), whitening, hp["whiten_precision"])
    return workspace


def _sinkgd_workspace(shape: Shape, ctx: ParamContext) -> int:
    """SinkGD's declaration (`stateless.sinkgd_workspace_numel`) for the kernel its step picks on the device."""
    return sinkgd_workspace_numel(_matrix(shape), "auto", torch.device(ctx.device), getattr(torch, ctx.dtype))


_ADAM_HP = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
_ENTRIES: dict[str, _Entry] = {}


def _register(info_: OptimizerInfo, build_fn, validate) -> None:
    _ENTRIES[info_.name] = _Entry(info_, build_fn, validate)


_register(_info("adamw", "AdamW: Adam with decoupled weight decay (2 moments per parameter)",
                "torch.optim.AdamW(fused=True where the device has it, else foreach=True)",
                lambda s: 2 * _numel(s), _no_workspace, _ADAM_HP, scalar=4, color="#1f77b4", order=0),
          _build_adamw, _validate_adam)
_register(_info("adam", "Adam (L2 weight decay coupled into the gradient)",
                "torch.optim.Adam(fused=True where the device has it, else foreach=True)",
                lambda s: 2 * _numel(s), _no_workspace, _ADAM_HP, scalar=4, color="#6baed6", order=10),
          _build_adam, _validate_adam)
_register(_info("sgd", "plain SGD, no state", "torch.optim.SGD(momentum=0, fused=True/foreach=True)",
                lambda s: 0, _no_workspace, dict(lr=1e-2, weight_decay=0.0), color="#7f7f7f", order=20),
          lambda m, hp: _build_sgd(m, hp, 0.0), _common)
_register(_info("sgd-momentum", "SGD with heavy-ball momentum 0.9 (one buffer per parameter)",
                "torch.optim.SGD(momentum=0.9, fused=True/foreach=True)",
                lambda s: _numel(s), _no_workspace, dict(lr=1e-2, weight_decay=0.0), color="#bcbd22", order=30),
          lambda m, hp: _build_sgd(m, hp, 0.9), _common)
_register(_info("adafactor", "Adafactor: factored second moment (row + column statistics), no momentum",
                "torch.optim.Adafactor(foreach=True)", _adafactor_state, lambda s, *_: _numel(s),
                dict(lr=1e-2, beta2_decay=-0.8, eps=1e-3, d=1.0, weight_decay=0.0), scalar=4,
                color="#9467bd", order=40),
          _build_adafactor, _validate_adafactor)
_register(_info("lion", "Lion: sign of an interpolated momentum (one buffer per parameter)",
                "lion_pytorch.Lion", lambda s: _numel(s), lambda s, *_: 2 * _numel(s),
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
                _swan_state, _swan_workspace("newton-schulz"),
                dict(_STATELESS_DEFAULTS, steps=10, beta=0.8, batch_budget=None, whiten_precision="fp32"),
                hybrid=True,
                whole_matrix=True, parts=_swan_parts, color="#d62728", order=70),
          lambda m, hp: _hybrid(m, hp, lambda p, h: _swan_matrix(p, h, "newton-schulz")), _validate_swan)
_register(_info("swan-fast", "SWAN with NSDS (diagonal-substitution) whitening, b=0.4, k=2; AdamW on the rest",
                "HybridOptimizer(optimizers.SWAN(diag) + torch.optim.AdamW)",
                _swan_state, _swan_workspace("diag"),
                dict(_STATELESS_DEFAULTS, steps=2, beta=0.4, batch_budget=None, whiten_precision="fp32"),
                hybrid=True,
                whole_matrix=True, parts=_swan_fast_parts, color="#ff9896", order=80),
          lambda m, hp: _hybrid(m, hp, lambda p, h: _swan_matrix(p, h, "diag")), _validate_swan)
_register(_info("sinkgd", "SinkGD: SR-Sinkhorn (L=5) normalised gradient, stateless, on hidden matrices; "
                "AdamW on the rest", "HybridOptimizer(optimizers.SinkGD + torch.optim.AdamW)",
                _swan_state, _sinkgd_workspace,
                dict(_STATELESS_DEFAULTS, iterations=5), hybrid=True,
                parts=_sinkgd_parts, color="#2ca02c", order=90),
          lambda m, hp: _hybrid(m, hp, _sinkgd_matrix), _validate_sinkgd)


# --------------------------------------------------------------------------------------------------
# entries from elsewhere: the peers (optimizers.peers registers them) and optimizers from outside the package
# (optimizers.external installs these hooks: import paths and the entry points of `swanbench.optimizers`)
# --------------------------------------------------------------------------------------------------

_RESOLVERS: list[Callable[[str], "_Entry"]] = []    # name with a colon -> entry (an import path)
_DISCOVERERS: list[Callable[[], dict[str, str]]] = []  # register entries, return {name: why it failed}
_BROKEN: dict[str, str] = {}
_discovered = False  # optimizers.external.refresh_entry_points() resets it


def _discover() -> None:
    """Run the discoverers once per process (entry points are read on first use, not at import)."""
    global _discovered
    if not _discovered:
        _discovered = True
        for discover in _DISCOVERERS:
            _BROKEN.update(discover())


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------

def registered() -> list[str]:
    """Every registry name, including entries whose package is not installed here."""
    _discover()
    return sorted(_ENTRIES)


def missing() -> dict[str, str]:
    """Registry names that cannot be built here, with why: a package to install, or a broken entry point."""
    _discover()
    out = {name: f"needs {e.info.requires} (pip install {e.info.requires}"
                 + (', or the extra swanbench[peers])' if e.info.source == 'peer' else ')')
           for name, e in _ENTRIES.items() if not _installed(e)}
    return dict(sorted({**out, **_BROKEN}.items()))


def display_order(names: Sequence[str]) -> list[str]:
    """Names in the registry's display order (`OptimizerInfo.order`); unregistered names follow, sorted."""
    _discover()

    def key(name: str) -> tuple[int, str]:
        entry = _ENTRIES.get(str(name).strip().lower())
        return (entry.info.order if entry else 10**9, str(name))

    return sorted(dict.fromkeys(names), key=key)


def _installed(entry: _Entry) -> bool:
    req = entry.info.requires
    return req is None or importlib.util.find_spec(req.replace("-", "_")) is not None


def available() -> list[str]:
    """Registry names that can be built in this environment (sorted)."""
    _discover()
    return sorted(name for name, entry in _ENTRIES.items() if _installed(entry))


def _did_you_mean(word: str, choices) -> str:
    """`; did you mean 'x'?` for the closest choice, or "" (this package imports nothing from swanbench, so it
    keeps its own copy of `swanbench.hints.did_you_mean`, with the same wording and cutoff)."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _entry(name: str) -> _Entry:
    if not isinstance(name, str):
        raise ValueError(f"optimizer name must be a string, got {name!r}")
    if ":" in name and _RESOLVERS:  # "package.module:Name" (optimizers.external): imported, never evaluated
        return _RESOLVERS[0](name)
    _discover()
    entry = _ENTRIES.get(name.strip().lower())
    if entry is None:
        hint = _did_you_mean(name.strip().lower(), _ENTRIES)
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
        if key not in known and not entry.open_hparams and key not in entry.extra_keys:
            hint = _did_you_mean(key, known)
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
        raise ValueError(f"optimizer {entry.info.name!r} {missing()[entry.info.name]}")
    hp = resolve_hparams(name, **hparams)
    opt, implementation = entry.build(model, hp)
    if not hasattr(opt, "preprocess_timer"):
        opt.preprocess_timer = None  # torch's optimizers have no separable preprocessing: they ignore it
    opt.implementation = implementation
    opt.registry_name = entry.info.name
    return opt
