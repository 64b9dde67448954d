"""The operators a kernel suite times, and their variants (methods), as one table.

A method names the function that runs by its dotted path and the keyword arguments it gets, so the suite
validates names without importing torch-heavy code and `resolve_callable` imports it only to run it. The
real operators live in `optimizers.functional`, the benchmark-only variants in `optimizers.variants`; the
method names follow the registry's step parts (`optimizers.registry.StepPart.methods`), which is how the
model summary finds the rows of an optimizer's step.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from swanbench import costmodel as cm
from swanbench.suite import SuiteError

FUNCTIONAL = "optimizers.functional"
VARIANTS = "optimizers.variants"  # benchmark-only: what each implementation choice costs


@dataclass(frozen=True)
class Method:
    """One benchmarked variant of an operator.

    `source` names what runs ("optimizers.functional.<name>" for the real operators,
    "optimizers.variants.<name>" for benchmark-only baselines) and `kwargs` what it is called with.
    `compute` is the precision the arithmetic runs in ("input" = the input's dtype; "tf32" = fp32 tensors
    whose matmuls run in TF32 on GPUs that have it), which picks the matmul rate a compute-bound row is
    compared with. `bound` is "compute" (compared with the matmul
    rate), "memory" (compared with the copy bandwidth) or "solver" (eigh: neither).
    `reference` names the float64 result its output is compared with: "polar" (exact whitening
    (G G^T)^{+1/2} G), "grad_norm" or "sr_sinkhorn" (see `optimizers.reference`).
    """

    operator: str
    method: str
    source: str
    kwargs: tuple[tuple[str, Any], ...]
    steps: int | None
    compute: str
    bound: str
    reference: str
    flops: Callable[[int, int], int]
    # The flops the implementation really executes where it skips nominal work (else the nominal count).
    executed: Callable[[int, int], int] | None = None
    # Methods that need optimizers.native (C kernels, CPU only): skipped, with the reason, where they can't run.
    native: bool = False
    # `source` is a class whose instances hold state between calls (a reused output buffer): each resolve
    # makes a new instance from `kwargs`, so that state belongs to one run and dies with it.
    stateful: bool = False

    @property
    def key(self) -> str:
        return f"{self.operator}:{self.method}"


def _m(operator, method, source, kwargs, steps, compute, bound, reference, flops, executed=None,
       native=False, stateful=False) -> Method:
    return Method(operator, method, source, tuple(kwargs.items()), steps, compute, bound, reference, flops,
                  executed, native, stateful)


def _ns(steps: int) -> Callable[[int, int], int]:
    return lambda r, c: cm.newton_schulz_flops(r, c, steps)


def _ns_executed(steps: int) -> Callable[[int, int], int]:
    return lambda r, c: cm.newton_schulz_executed_flops(r, c, steps)


def _sinkhorn(iters: int) -> Callable[[int, int], int]:
    return lambda r, c: cm.sr_sinkhorn_flops(r, c, iters)


def _whiten_precision(beta: float, steps: int, precision: str) -> Method:
    """SWAN's whitening with its products in `precision` ("tf32" or "bf16"; fp32 norms and output):
    `optimizers.functional.grad_whiten(g, steps, beta, precision=...)`. Where that function does not take
    `precision` yet, the rows are skipped with that reason (`missing_keywords`)."""
    compute = {"tf32": "tf32", "bf16": "bfloat16"}[precision]
    return _m("grad_whiten", f"ns-b{beta:g}-k{steps}-{precision}", f"{FUNCTIONAL}.grad_whiten",
              {"steps": steps, "beta": beta, "precision": precision}, steps, compute, "compute", "polar",
              _ns(steps), _ns_executed(steps))


def _sinkhorn_method(name: str, iters: int, method: str, native: bool = False) -> Method:
    """An SR-Sinkhorn row: `optimizers.functional.sr_sinkhorn(g, iters, method=...)`, memory-bound."""
    return _m("sr_sinkhorn", name, f"{FUNCTIONAL}.sr_sinkhorn", {"iters": iters, "method": method}, iters,
              "float32", "memory", "sr_sinkhorn", _sinkhorn(iters), native=native)


_ALL = [
    _m("grad_norm", "rowwise", f"{FUNCTIONAL}.grad_norm", {}, None, "float32", "memory", "grad_norm",
       cm.grad_norm_flops),
    _m("grad_norm", "rowwise-torch", f"{FUNCTIONAL}.grad_norm", {"method": "torch"}, None, "float32", "memory",
       "grad_norm", cm.grad_norm_flops),
    _m("grad_whiten", "ns-b0.5-k6", f"{FUNCTIONAL}.grad_whiten", {"steps": 6, "beta": 0.5}, 6, "float32",
       "compute", "polar", _ns(6), _ns_executed(6)),
    _m("grad_whiten", "ns-b0.8-k10", f"{FUNCTIONAL}.grad_whiten", {"steps": 10, "beta": 0.8}, 10, "float32",
       "compute", "polar", _ns(10), _ns_executed(10)),
    _m("grad_whiten", "ns-b0.5-k6-literal", f"{VARIANTS}.newton_schulz_literal", {"steps": 6, "beta": 0.5}, 6,
       "float32", "compute", "polar", _ns(6)),
    _m("grad_whiten", "ns-b0.5-k6-bf16-variant", f"{VARIANTS}.newton_schulz_bf16", {"steps": 6, "beta": 0.5}, 6,
       "bfloat16", "compute", "polar", _ns(6), _ns_executed(6)),
    _whiten_precision(0.5, 6, "tf32"),
    _whiten_precision(0.5, 6, "bf16"),
    _whiten_precision(0.8, 10, "tf32"),
    _whiten_precision(0.8, 10, "bf16"),
    _m("grad_whiten", "nsds-b0.4-k2", f"{FUNCTIONAL}.grad_whiten", {"steps": 2, "beta": 0.4, "method": "diag"},
       2, "float32", "compute", "polar", lambda r, c: cm.newton_schulz_diag_flops(r, c, 2)),
    _m("whiten_exact", "eigh-f64", f"{FUNCTIONAL}.whiten_exact", {}, None, "float64", "solver", "polar",
       cm.whiten_exact_flops),
    _sinkhorn_method("native-L1", 1, "native", native=True),
    _sinkhorn_method("native-L5", 5, "native", native=True),
    _m("sr_sinkhorn", "native-L5-out", f"{VARIANTS}.SrSinkhornReusedOut", {"iters": 5, "method": "native"}, 5,
       "float32", "memory", "sr_sinkhorn", _sinkhorn(5), native=True, stateful=True),
    _sinkhorn_method("blocked-L1", 1, "blocked"),
    _sinkhorn_method("blocked-L5", 5, "blocked"),
    _sinkhorn_method("vectors-L5", 5, "vectors"),
    _sinkhorn_method("naive-L5", 5, "naive"),
    _m("muon_quintic", "k5", f"{FUNCTIONAL}.muon_quintic", {"steps": 5}, 5, "float32", "compute", "polar",
       lambda r, c: cm.muon_quintic_flops(r, c, 5)),
]

# {operator: {method: Method}}, in the order above (the order of the rows of kernels.csv).
METHODS: dict[str, dict[str, Method]] = {}
for _method in _ALL:
    METHODS.setdefault(_method.operator, {})[_method.method] = _method


def method_names() -> list[str]:
    """Every method name of every operator (skip rules match on them)."""
    return sorted({m for methods in METHODS.values() for m in methods})


def method_keys() -> list[str]:
    """Every "operator:method" key (suites select methods by them)."""
    return [m.key for methods in METHODS.values() for m in methods.values()]


def _source(method: Method) -> Callable:
    module_name, name = method.source.rsplit(".", 1)
    found = getattr(importlib.import_module(module_name), name, None)
    if found is None:
        raise SuiteError(f"{method.key}: {method.source} does not exist (is optimizers.functional up to date?)")
    return found


def missing_keywords(method: Method) -> str | None:
    """Why `method` cannot run with this optimizers package: keyword arguments its function does not take
    (a method added ahead of its operator's option, e.g. `precision`), else None. Imports the operator."""
    import inspect

    try:
        params = inspect.signature(_source(method)).parameters
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    missing = [k for k, _ in method.kwargs if k not in params]
    if not missing:
        return None
    return (f"{method.source} does not take {', '.join(k + '=' for k in missing)} in this optimizers package "
            f"(method {method.key} needs it)")


def resolve_callable(method: Method) -> Callable:
    """The function a method runs, with its keyword arguments bound (imports the operators lazily).

    A stateful method gets a fresh instance per call of this function: the caller (one suite run) owns it.
    """
    func, kwargs = _source(method), dict(method.kwargs)
    if method.stateful:
        return func(**kwargs)

    def call(g):
        return func(g, **kwargs)

    call.__name__ = f"{func.__name__}_{method.method}".replace(".", "_").replace("-", "_")
    return call
