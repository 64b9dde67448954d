"""Operator micro-benchmarks: "is whitening affordable?" answered with numbers (suite kind = "kernels").

A kernel suite times each gradient preprocessing operator of `optimizers.functional` (GradNorm,
Newton-Schulz whitening and its diagonal-substitution fast variant, exact eigh whitening, SR-Sinkhorn,
Muon's quintic) over the hidden-matrix shapes of the LLaMA presets and a square sweep, per dtype,
eager and `torch.compile`d, and in the same run measures the device's own limits (square matmul
TFLOP/s per dtype, copy GB/s), so every row can say how close it is to the machine.

Files written into the output directory:

- `kernels.csv`   one row per (shape, dtype, operator, method, compile, batch): `KERNELS_COLUMNS` first
                  (median/IQR ms, cost-model flops, achieved TFLOP/s, peak extra bytes, relative error
                  against a float64 reference) then extras (GB/s, fractions of the measured limits, ...).
                  Skipped combinations are rows with status "skipped" and a reason, their measures empty.
- `machine.csv`   the measured limits: one row per matmul size and dtype, one row for the copy, and the
                  s x s matmul measured next to each shape (the same rows head kernels.csv as
                  operator "matmul" / "copy", so figures drawn from kernels.csv alone have them).
- `models.csv`    per preset and optimizer: preprocessing cost of one full step as a share of the
                  step's forward+backward flops (cost model) and as measured time vs the ideal
                  forward+backward time at the measured matmul rate.
- `headline.md`   the README's headline ratios, computed from the tables above.
- `env.json`      versions, device, torch threads, machine load before and after.

Suite layout (see suites/whitening.toml)::

    kind = "kernels"
    [kernels]
    operators = ["grad_norm", "grad_whiten:ns-b0.5-k6", ...]  # "operator" (all its methods) or "operator:method"
    models = ["60m", "1b"]        shapes = ["qkvo", "gate_up", "down"]     square = [256, 1024]
    dtypes = ["float32", "bfloat16"]   compile = ["eager", "compiled"]    compile_models = ["1b", "square"]
    batch = [1, 8]   repeats = 7   min_repeats = 3   warmup = 1   max_case_seconds = 20   max_total_seconds = 1200
    [[kernels.skip]]  operator = "whiten_exact"  model = ["3b", "7b"]  reason = "..."
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from swanbench import costmodel as cm
from swanbench.hints import did_you_mean
from swanbench.suite import SuiteError

MACHINE_FILE, MODELS_FILE, ENV_FILE, HEADLINE_FILE = "machine.csv", "models.csv", "env.json", "headline.md"
DTYPES = ("float32", "bfloat16", "float16")
COMPILE_MODES = ("eager", "compiled")
SHAPE_ROLES = ("qkvo", "gate_up", "down")
SKIP_FIELDS = ("operator", "method", "model", "shape", "dtype", "compile", "batch")


# --------------------------------------------------------------------------------------------------
# The operators and their variants
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    """One benchmarked variant of an operator.

    `source` names the function that runs ("optimizers.functional.<name>" for the real operators,
    "swanbench.kernels.<name>" for benchmark-only baselines) and `kwargs` what it is called with.
    `compute` is the precision the arithmetic runs in ("input" = the input's dtype), which picks the
    matmul rate a compute-bound row is compared with. `bound` is "compute" (compared with the matmul
    rate), "memory" (compared with the copy bandwidth) or "solver" (eigh: neither).
    `reference` names the float64 result its output is compared with: "polar" (exact whitening
    (G G^T)^{-1/2} G), "grad_norm" or "sr_sinkhorn".
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

    @property
    def key(self) -> str:
        return f"{self.operator}:{self.method}"


def _m(operator, method, source, kwargs, steps, compute, bound, reference, flops, executed=None,
       native=False) -> Method:
    return Method(operator, method, source, tuple(kwargs.items()), steps, compute, bound, reference, flops,
                  executed, native)


FUNCTIONAL = "optimizers.functional"
HERE = "swanbench.kernels"  # benchmark-only variants defined below, kept to show what each choice costs

METHODS: dict[str, dict[str, Method]] = {}
for _method in [
    _m("grad_norm", "rowwise", f"{FUNCTIONAL}.grad_norm", {}, None, "float32", "memory", "grad_norm",
       cm.grad_norm_flops),
    _m("grad_norm", "rowwise-torch", f"{FUNCTIONAL}.grad_norm", {"method": "torch"}, None, "float32", "memory",
       "grad_norm", cm.grad_norm_flops),
    _m("grad_whiten", "ns-b0.5-k6", f"{FUNCTIONAL}.grad_whiten", {"steps": 6, "beta": 0.5}, 6, "float32",
       "compute", "polar", lambda r, c: cm.newton_schulz_flops(r, c, 6),
       lambda r, c: cm.newton_schulz_executed_flops(r, c, 6)),
    _m("grad_whiten", "ns-b0.8-k10", f"{FUNCTIONAL}.grad_whiten", {"steps": 10, "beta": 0.8}, 10, "float32",
       "compute", "polar", lambda r, c: cm.newton_schulz_flops(r, c, 10),
       lambda r, c: cm.newton_schulz_executed_flops(r, c, 10)),
    _m("grad_whiten", "ns-b0.5-k6-literal", f"{HERE}.newton_schulz_literal", {"steps": 6, "beta": 0.5}, 6,
       "float32", "compute", "polar", lambda r, c: cm.newton_schulz_flops(r, c, 6)),
    _m("grad_whiten", "ns-b0.5-k6-bf16", f"{HERE}.newton_schulz_bf16", {"steps": 6, "beta": 0.5}, 6,
       "bfloat16", "compute", "polar", lambda r, c: cm.newton_schulz_flops(r, c, 6),
       lambda r, c: cm.newton_schulz_executed_flops(r, c, 6)),
    _m("grad_whiten", "nsds-b0.4-k2", f"{FUNCTIONAL}.grad_whiten", {"steps": 2, "beta": 0.4, "method": "diag"},
       2, "float32", "compute", "polar", lambda r, c: cm.newton_schulz_diag_flops(r, c, 2)),
    _m("whiten_exact", "eigh-f64", f"{FUNCTIONAL}.whiten_exact", {}, None, "float64", "solver", "polar",
       cm.whiten_exact_flops),
    _m("sr_sinkhorn", "native-L1", f"{FUNCTIONAL}.sr_sinkhorn", {"iters": 1, "method": "native"}, 1, "float32",
       "memory", "sr_sinkhorn", lambda r, c: cm.sr_sinkhorn_flops(r, c, 1), native=True),
    _m("sr_sinkhorn", "native-L5", f"{FUNCTIONAL}.sr_sinkhorn", {"iters": 5, "method": "native"}, 5, "float32",
       "memory", "sr_sinkhorn", lambda r, c: cm.sr_sinkhorn_flops(r, c, 5), native=True),
    _m("sr_sinkhorn", "native-L5-out", f"{HERE}.sr_sinkhorn_reused_out", {"iters": 5, "method": "native"}, 5,
       "float32", "memory", "sr_sinkhorn", lambda r, c: cm.sr_sinkhorn_flops(r, c, 5), native=True),
    _m("sr_sinkhorn", "blocked-L1", f"{FUNCTIONAL}.sr_sinkhorn", {"iters": 1, "method": "blocked"}, 1, "float32",
       "memory", "sr_sinkhorn", lambda r, c: cm.sr_sinkhorn_flops(r, c, 1)),
    _m("sr_sinkhorn", "blocked-L5", f"{FUNCTIONAL}.sr_sinkhorn", {"iters": 5, "method": "blocked"}, 5, "float32",
       "memory", "sr_sinkhorn", lambda r, c: cm.sr_sinkhorn_flops(r, c, 5)),
    _m("sr_sinkhorn", "vectors-L5", f"{FUNCTIONAL}.sr_sinkhorn", {"iters": 5, "method": "vectors"}, 5, "float32",
       "memory", "sr_sinkhorn", lambda r, c: cm.sr_sinkhorn_flops(r, c, 5)),
    _m("sr_sinkhorn", "naive-L5", f"{FUNCTIONAL}.sr_sinkhorn", {"iters": 5, "method": "naive"}, 5, "float32",
       "memory", "sr_sinkhorn", lambda r, c: cm.sr_sinkhorn_flops(r, c, 5)),
    _m("muon_quintic", "k5", f"{FUNCTIONAL}.muon_quintic", {"steps": 5}, 5, "float32", "compute", "polar",
       lambda r, c: cm.muon_quintic_flops(r, c, 5)),
]:
    METHODS.setdefault(_method.operator, {})[_method.method] = _method


_REUSED_OUT: dict[tuple, Any] = {}


def sr_sinkhorn_reused_out(g, iters: int, method: str):
    """Benchmark-only: SR-Sinkhorn into an output buffer kept across calls (one per shape and device), as
    an optimizer reusing its workspace would; the yardstick it is compared with, one copy into a
    preallocated buffer, is measured the same way. The allocating form's extra cost is page faults."""
    import torch

    from optimizers.functional import sr_sinkhorn

    key = (tuple(g.shape), str(g.device))
    out = _REUSED_OUT.get(key)
    if out is None:
        _REUSED_OUT.clear()  # keep one buffer: a 7b-shape run must not pile up gigabytes of them
        out = _REUSED_OUT[key] = torch.empty(g.shape, dtype=torch.float32, device=g.device)
    return sr_sinkhorn(g, iters=iters, method=method, out=out)


def newton_schulz_literal(g, steps: int, beta: float):
    """Benchmark-only: SWAN App. B.8 transcribed literally (explicit identity, every product of every step,
    a fresh tensor per operation, fp32). The yardstick for what optimizers.functional.grad_whiten's
    in-place, product-skipping loop saves. Output fp32, shape of g."""
    import torch

    x = g.float()
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    a = x @ x.mT
    fro = torch.linalg.matrix_norm(a, keepdim=True)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    y, z = a / fro, eye.expand_as(a)
    for _ in range(steps):
        t = 3 * eye - z @ y
        y, z = beta * (y @ t), beta * (t @ z)
    out = z @ x / fro.sqrt()
    return out.mT if tall else out


def newton_schulz_bf16(g, steps: int, beta: float):
    """Benchmark-only: the coupled iteration with every product in bfloat16 (fp32 norms, fp32 output).

    SWAN whitens in fp32; this variant measures what that choice costs where bf16 matmuls are much faster
    (AMX on recent Xeons, tensor cores on GPUs), and its rel_error shows the accuracy given up.
    """
    import torch

    x = g.to(torch.bfloat16)
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    a = (x @ x.mT).float()
    fro = torch.linalg.matrix_norm(a, keepdim=True)
    y = (a / fro).to(torch.bfloat16)
    eye = torch.eye(a.shape[-1], dtype=torch.bfloat16, device=a.device)
    t = beta * (3 * eye - y)  # Z0 = I: step 1 needs no product
    y, z = y @ t, t
    for k in range(2, steps + 1):
        t = torch.add(3 * beta * eye, z @ y, alpha=-beta)
        if k < steps:
            y = y @ t
        z = t @ z
    out = (z @ x).float() / fro.sqrt()
    return out.mT if tall else out


def resolve_callable(method: Method) -> Callable:
    """The function a method runs, with its keyword arguments bound (imports the operators lazily)."""
    import importlib

    module_name, func_name = method.source.rsplit(".", 1)
    func = getattr(importlib.import_module(module_name), func_name, None)
    if func is None:
        raise SuiteError(f"{method.key}: {method.source} does not exist (is optimizers.functional up to date?)")
    kwargs = dict(method.kwargs)

    def call(g):
        return func(g, **kwargs)

    call.__name__ = f"{func_name}_{method.method}".replace(".", "_").replace("-", "_")
    return call


# --------------------------------------------------------------------------------------------------
# Float64 references (paper-literal, slow, independent of optimizers.functional)
# --------------------------------------------------------------------------------------------------

def reference_polar(g64):
    """Exact whitening (G G^T)^{+1/2} G of one float64 matrix, on the smaller side.

    The pseudo-inverse square root drops eigenvalues below s * eps * lambda_max, so that a
    rank-deficient Gram (square matrix after GradNorm) stays finite; for a full-rank G this is U V^T.
    """
    import torch

    if g64.shape[-2] > g64.shape[-1]:
        return reference_polar(g64.mT).mT
    gram = g64 @ g64.mT
    evals, evecs = torch.linalg.eigh(gram)
    cutoff = evals.max() * gram.shape[-1] * torch.finfo(torch.float64).eps
    inv_sqrt = torch.where(evals > cutoff, evals.clamp_min(cutoff).rsqrt(), torch.zeros_like(evals))
    return (evecs * inv_sqrt) @ (evecs.mT @ g64)


def reference_grad_norm(g64, eps: float = 1e-8):
    """Row standardisation with the population std (ALGORITHMS.md 1.1); the std is floored at eps."""
    centered = g64 - g64.mean(dim=-1, keepdim=True)
    std = centered.pow(2).mean(dim=-1, keepdim=True).sqrt()
    return centered / std.clamp_min(eps)


def reference_sr_sinkhorn(g64, iters: int):
    """Algorithm 3 of arXiv 2502.06742 literally: rows to norm sqrt(n), then columns to norm sqrt(m), L times."""
    rows, cols = g64.shape[-2], g64.shape[-1]
    x = g64
    for _ in range(iters):
        x = x / x.norm(dim=-1, keepdim=True) * math.sqrt(cols)
        x = x / x.norm(dim=-2, keepdim=True) * math.sqrt(rows)
    return x


def relative_error(out, ref) -> float:
    """||out - ref||_F / ||ref||_F, computed in float64."""
    import torch

    out64 = out.to(torch.float64)
    return float(torch.linalg.matrix_norm(out64 - ref) / torch.linalg.matrix_norm(ref))


class ReferenceCache:
    """Float64 references of the current inputs; the polar factor (an eigh, 20 s at 2048 on 2 CPU cores)
    is shared by every whitening operator, both dtypes and the transposed (down vs gate_up) shape."""

    def __init__(self, size: int = 32):
        self.size = size
        self._polar: OrderedDict = OrderedDict()

    def polar(self, g64, key: tuple):
        """Polar reference of g64 (2-D); `key` identifies the wide-oriented input it was made from."""
        transposed = g64.shape[-2] > g64.shape[-1]
        if key not in self._polar:
            self._polar[key] = reference_polar(g64.mT if transposed else g64)
            while len(self._polar) > self.size:
                self._polar.popitem(last=False)
        self._polar.move_to_end(key)
        ref = self._polar[key]
        return ref.mT if transposed else ref

    def reference(self, method: Method, g64, key: tuple):
        if method.reference == "polar":
            return self.polar(g64, key)
        if method.reference == "grad_norm":
            return reference_grad_norm(g64)
        if method.reference == "sr_sinkhorn":
            return reference_sr_sinkhorn(g64, method.steps)
        raise ValueError(f"unknown reference {method.reference!r}")


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------

def make_input(rows: int, cols: int, batch: int, dtype: str, seed: int, device: str):
    """A Gaussian test gradient, [rows, cols] (batch 1) or [batch, rows, cols], in `dtype` on `device`.

    The values are drawn in the wide orientation and rounded to bfloat16 first, so that (a) the float32
    and bfloat16 inputs hold identical numbers and share one float64 reference, and (b) a tall shape is
    exactly the transpose of the wide one (down = gate_up^T), which shares the polar reference too.
    """
    import torch

    short, long = min(rows, cols), max(rows, cols)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + short * 7919 + long)
    x = torch.randn(batch, short, long, generator=gen).to(torch.bfloat16)
    if rows > cols:
        x = x.mT
    x = x.to(getattr(torch, dtype)).contiguous().to(device)
    return x[0] if batch == 1 else x


def reference_key(rows: int, cols: int, seed: int, batch: int = 1) -> tuple:
    """Identity of the matrix make_input draws (its wide orientation): the first matrix of a batch is
    drawn from a longer random stream, so the batch size is part of the key."""
    return (min(rows, cols), max(rows, cols), seed, batch)


# --------------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------------

def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_call(fn: Callable, x, device: str) -> tuple[float, Any]:
    """Seconds of one call (CUDA events on GPU, perf_counter on CPU) and its output."""
    import torch

    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn(x)
        end.record()
        end.synchronize()  # a CPU-GPU sync point: the elapsed time is only valid after it
        return start.elapsed_time(end) / 1e3, out
    t0 = time.perf_counter()
    out = fn(x)
    return time.perf_counter() - t0, out


def median_iqr(samples_ms: list[float]) -> tuple[float | None, float | None]:
    """Median and interquartile range (ms); the IQR needs at least 3 samples (else None)."""
    if not samples_ms:
        return None, None
    med = statistics.median(samples_ms)
    if len(samples_ms) < 3:
        return med, None
    q1, _, q3 = statistics.quantiles(samples_ms, n=4, method="inclusive")
    return med, q3 - q1


def _dispatch_mode_base():
    from torch.utils._python_dispatch import TorchDispatchMode

    return TorchDispatchMode


class LiveBytes:
    """Peak bytes of tensors allocated while active, counted over aten ops (CPU "peak extra memory").

    A TorchDispatchMode sees every aten op's outputs: a storage that did not exist when the counter
    started is added to the live total, and removed once its last reference dies (checked with a weak
    storage reference at each op). Inputs, and views of them, are never counted. The peak therefore is
    the high-water mark of intermediate + output tensors of one call. Not seen: workspace a kernel
    allocates internally (e.g. LAPACK's in eigh) and anything inside a torch.compile'd graph.
    """

    def __init__(self, existing: Iterable = ()):
        import torch
        from torch.multiprocessing.reductions import StorageWeakRef

        self._weak = StorageWeakRef
        self._torch = torch
        self.known = {t.untyped_storage().data_ptr() for t in existing}
        self.live: dict[int, tuple[Any, int]] = {}
        self.current = 0
        self.peak = 0
        counter = self

        class _Mode(_dispatch_mode_base()):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                counter._observe(out)
                return out

        self._mode = _Mode()

    def _purge(self) -> None:
        for ptr in [p for p, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(ptr)[1]

    def _observe(self, out) -> None:
        from torch.utils._pytree import tree_leaves

        self._purge()
        for t in tree_leaves(out):
            if not isinstance(t, self._torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr == 0 or ptr in self.known or ptr in self.live:
                continue
            self.live[ptr] = (self._weak(storage), storage.nbytes())
            self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)

    def __enter__(self) -> "LiveBytes":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


@contextlib.contextmanager
def peak_extra_bytes(device: str, x, enabled: bool = True) -> Iterator[dict]:
    """Measure the peak extra memory of the calls inside: {"bytes": int | None, "method": str | None}.

    GPU: CUDA max_memory_allocated minus what was allocated before (the allocator's own view).
    CPU eager: the LiveBytes dispatch-mode counter. Anything else (compiled on CPU): None.
    """
    import torch

    result: dict[str, Any] = {"bytes": None, "method": None}
    if device.startswith("cuda"):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield result
        synchronize(device)
        result.update(bytes=torch.cuda.max_memory_allocated(device) - before, method="cuda_max_allocated")
    elif enabled:
        with LiveBytes([x]) as counter:
            yield result
        result.update(bytes=counter.peak, method="dispatch_live_tensors")
    else:
        yield result


# --------------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SkipRule:
    """Combinations not run, with the reason written into their rows. An absent field matches anything."""

    reason: str
    match: tuple[tuple[str, tuple], ...]

    def matches(self, case: dict) -> bool:
        return all(str(case[k]) in values for k, values in self.match)


@dataclass(frozen=True)
class KernelSuite:
    name: str
    path: Path | None
    description: str
    methods: tuple[Method, ...]
    models: tuple[str, ...]
    roles: tuple[str, ...]
    square: tuple[int, ...]
    dtypes: tuple[str, ...]
    compile: tuple[str, ...]
    compile_models: tuple[str, ...]
    batch: tuple[int, ...]
    repeats: int = 7
    min_repeats: int = 3
    warmup: int = 1
    max_case_seconds: float = 20.0
    device: str = "auto"
    seed: int = 0
    reference: bool = True
    matmul_sizes: tuple[int, ...] = (1024, 2048)
    copy_mib: int = 256
    summary_models: tuple[str, ...] = ()
    summary_tokens: int = cm.PAPER_TOKENS_PER_STEP
    skip: tuple[SkipRule, ...] = ()
    max_total_seconds: float | None = None


KERNEL_KEYS = {
    "operators", "models", "shapes", "square", "dtypes", "compile", "compile_models", "batch", "repeats",
    "min_repeats", "warmup", "max_case_seconds", "device", "seed", "reference", "matmul_sizes", "copy_mib",
    "summary_models", "summary_tokens", "skip", "max_total_seconds",
}
TOP_KEYS = {"name", "description", "kind", "kernels"}


def _hint(word: object, choices: Iterable[str]) -> str:
    return did_you_mean(word, choices, cutoff=0.5)  # operator/method names are short: a looser match


class _Validator:
    """Reads the [kernels] table key by key; every mistake is one SuiteError line: file, key, problem."""

    def __init__(self, path: Path | None, table: dict):
        self.path, self.table = path, table

    def fail(self, key: str, problem: str) -> SuiteError:
        return SuiteError(f"{self.path}: kernels.{key}: {problem}")

    def strings(self, key: str, default, choices: Iterable[str] | None = None) -> tuple[str, ...]:
        value = self.table.get(key, default)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"expected a list of strings, got {value!r}")
        if choices is not None:
            choices = list(choices)
            for v in value:
                if v not in choices:
                    raise self.fail(key, f"unknown value {v!r}{_hint(v, choices)} (known: {', '.join(choices)})")
        return tuple(dict.fromkeys(value))

    def ints(self, key: str, default, low: int = 1) -> tuple[int, ...]:
        value = self.table.get(key, default)
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self.fail(key, f"expected a list of integers, got {value!r}")
        for v in value:
            if v < low:
                raise self.fail(key, f"expected integers >= {low}, got {v}")
        return tuple(dict.fromkeys(value))

    def integer(self, key: str, default: int, low: int) -> int:
        value = self.table.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise self.fail(key, f"expected an integer >= {low}, got {value!r}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.table.get(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise self.fail(key, f"expected a positive number, got {value!r}")
        return float(value)


def _parse_operators(v: _Validator) -> tuple[Method, ...]:
    """"operator" selects all its methods, "operator:method" one of them."""
    entries = v.strings("operators", list(METHODS))
    known = [m.key for ms in METHODS.values() for m in ms.values()]
    selected: list[Method] = []
    for entry in entries:
        op, _, method = entry.partition(":")
        if op not in METHODS:
            raise v.fail("operators", f"unknown operator {op!r}{_hint(op, METHODS)} (known: {', '.join(METHODS)})")
        if method and method not in METHODS[op]:
            raise v.fail("operators", f"unknown method {entry!r}{_hint(entry, known)} "
                                      f"(known for {op}: {', '.join(METHODS[op])})")
        selected.extend(METHODS[op].values() if not method else [METHODS[op][method]])
    if not selected:
        raise v.fail("operators", "needs at least one operator")
    return tuple(dict.fromkeys(selected))


def _parse_skip(v: _Validator, models: Iterable[str]) -> tuple[SkipRule, ...]:
    raw = v.table.get("skip", [])
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise v.fail("skip", "expected an array of tables [[kernels.skip]]")
    choices = {
        "operator": list(METHODS), "method": sorted({m for ms in METHODS.values() for m in ms}),
        "model": list(models) + ["square"], "shape": list(SHAPE_ROLES) + ["square"], "dtype": list(DTYPES),
        "compile": list(COMPILE_MODES), "batch": None,
    }
    rules = []
    for i, rule in enumerate(raw):
        key = f"skip[{i}]"
        for k in rule:
            if k not in (*SKIP_FIELDS, "reason"):
                raise v.fail(f"{key}.{k}", f"unknown key{_hint(k, (*SKIP_FIELDS, 'reason'))} "
                                           f"(known: {', '.join(SKIP_FIELDS)}, reason)")
        reason = rule.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise v.fail(f"{key}.reason", "every skip rule needs a reason (it is written into the skipped rows)")
        match = []
        for k in SKIP_FIELDS:
            if k not in rule:
                continue
            values = rule[k] if isinstance(rule[k], list) else [rule[k]]
            for val in values:
                if choices[k] is not None and str(val) not in choices[k]:
                    raise v.fail(f"{key}.{k}", f"unknown value {val!r}{_hint(val, choices[k])}")
            match.append((k, tuple(str(x) for x in values)))
        rules.append(SkipRule(reason.strip(), tuple(match)))
    return tuple(rules)


def load_kernel_suite(table: dict, path: Path | None) -> KernelSuite:
    """Validate a kind = "kernels" suite (the whole TOML document, or just its [kernels] table).

    Raises SuiteError (a ValueError) with one line naming the file, the key and a did-you-mean.
    """
    from swanbench.models import PRESETS

    outer = table if "kernels" in table or "kind" in table else {"kernels": table}
    for key in outer:
        if key not in TOP_KEYS:
            raise SuiteError(f"{path}: {key}: not allowed in a kind = \"kernels\" suite{_hint(key, TOP_KEYS)} "
                             f"(allowed: name, description, kind, [kernels])")
    kernels = outer.get("kernels")
    if not isinstance(kernels, dict):
        raise SuiteError(f"{path}: kernels: a kind = \"kernels\" suite needs a [kernels] table")
    for key in kernels:
        if key not in KERNEL_KEYS:
            raise SuiteError(f"{path}: kernels.{key}: unknown key{_hint(key, KERNEL_KEYS)} "
                             f"(known: {', '.join(sorted(KERNEL_KEYS))})")
    v = _Validator(path, kernels)
    models = v.strings("models", ["60m", "130m", "350m", "1b"], PRESETS)
    device = kernels.get("device", "auto")
    if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise v.fail("device", f"expected auto, cpu, cuda or cuda:N, got {device!r}")
    reference = kernels.get("reference", True)
    if not isinstance(reference, bool):
        raise v.fail("reference", f"expected true or false, got {reference!r}")
    name = outer.get("name", path.stem if path else "kernels")
    return KernelSuite(
        name=str(name), path=path, description=str(outer.get("description", "")),
        methods=_parse_operators(v), models=models, roles=v.strings("shapes", list(SHAPE_ROLES), SHAPE_ROLES),
        square=v.ints("square", [], low=1), dtypes=v.strings("dtypes", ["float32"], DTYPES),
        compile=v.strings("compile", ["eager"], COMPILE_MODES),
        compile_models=v.strings("compile_models", list(models) + ["square"], list(PRESETS) + ["square"]),
        batch=v.ints("batch", [1]), repeats=v.integer("repeats", 7, 1), min_repeats=v.integer("min_repeats", 3, 1),
        warmup=v.integer("warmup", 1, 0), max_case_seconds=v.number("max_case_seconds", 20.0), device=device,
        seed=v.integer("seed", 0, 0), reference=reference, matmul_sizes=v.ints("matmul_sizes", [1024, 2048]),
        copy_mib=v.integer("copy_mib", 256, 1), summary_models=v.strings("summary_models", list(models), PRESETS),
        summary_tokens=v.integer("summary_tokens", cm.PAPER_TOKENS_PER_STEP, 1),
        skip=_parse_skip(v, PRESETS),
        max_total_seconds=v.number("max_total_seconds", 1.0) if "max_total_seconds" in kernels else None,
    )


def load_kernel_suite_file(path: Path) -> KernelSuite:
    """Read and validate a kernels TOML file directly (the suite loader does the same via load_kernel_suite)."""
    import tomllib

    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read ({exc.strerror})") from None
    if raw.get("kind") != "kernels":
        raise SuiteError(f"{path}: kind: expected \"kernels\" for an operator benchmark suite")
    return load_kernel_suite(raw, path)


# --------------------------------------------------------------------------------------------------
# Shapes and cases
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """A distinct matrix shape; `role` and `models` say where it occurs (first role wins on duplicates)."""

    rows: int
    cols: int
    role: str
    models: tuple[str, ...]


def role_shapes(model: str) -> dict[str, tuple[int, int]]:
    """{role: [out, in] shape} of a preset's hidden matrices: q/k/v/o, gate/up and down."""
    from swanbench.models import PRESETS

    p = PRESETS[model]
    return {"qkvo": (p.hidden, p.hidden), "gate_up": (p.intermediate, p.hidden), "down": (p.hidden, p.intermediate)}


def suite_shapes(suite: KernelSuite) -> list[Shape]:
    """Every distinct (rows, cols) of the suite, in model order then the square sweep."""
    found: dict[tuple[int, int], Shape] = {}
    for model in suite.models:
        for role, (r, c) in role_shapes(model).items():
            if role not in suite.roles:
                continue
            old = found.get((r, c))
            found[(r, c)] = Shape(r, c, old.role if old else role, (old.models if old else ()) + (model,))
    for n in suite.square:
        found.setdefault((n, n), Shape(n, n, "square", ()))
    return list(found.values())


@dataclass(frozen=True)
class Case:
    shape: Shape
    dtype: str
    method: Method
    compile: str
    batch: int

    def fields(self) -> dict:
        """The fields skip rules match on (a shape used by several models matches any of them)."""
        return {"operator": self.method.operator, "method": self.method.method, "shape": self.shape.role,
                "dtype": self.dtype, "compile": self.compile, "batch": self.batch}

    def model_names(self) -> tuple[str, ...]:
        return self.shape.models or ("square",)


def expand_cases(suite: KernelSuite, shapes: list[Shape]) -> list[Case]:
    cases = []
    for shape in shapes:
        for dtype in suite.dtypes:
            for method in suite.methods:
                for mode in suite.compile:
                    if mode == "compiled" and not set(shape.models or ("square",)) & set(suite.compile_models):
                        continue
                    cases.extend(Case(shape, dtype, method, mode, b) for b in suite.batch)
    return cases


def skip_reason(suite: KernelSuite, case: Case) -> str | None:
    """The first matching skip rule's reason (rules with a model match any model of a shared shape)."""
    for rule in suite.skip:
        models = case.model_names()
        if any(rule.matches({**case.fields(), "model": m}) for m in models):
            return rule.reason
    return None


# --------------------------------------------------------------------------------------------------
# Machine limits
# --------------------------------------------------------------------------------------------------

@dataclass
class MachineLimits:
    """The device's own limits, measured in the same run: TFLOP/s per dtype and copy GB/s."""

    matmul_tflops: dict[str, float] = field(default_factory=dict)
    copy_gbps: float | None = None
    rows: list[dict] = field(default_factory=list)


def _repeat_ms(fn: Callable, x, device: str, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn(x)
    synchronize(device)
    return [time_call(fn, x, device)[0] * 1e3 for _ in range(repeats)]


def measure_limits(device: str, dtypes: Iterable[str], sizes: Iterable[int], copy_mib: int,
                   repeats: int = 7) -> MachineLimits:
    """Square matmul rate per dtype and copy bandwidth of a copy_mib buffer.

    A limit is the best the machine can do, so it is computed from the fastest of `repeats` calls
    (ms_min) and the best size: on a shared machine a median would fold other users' load into the
    yardstick. The median is kept in the row beside it.
    """
    import torch

    limits = MachineLimits()
    for dtype in dict.fromkeys(["float32", *dtypes]):
        for n in sizes:
            a = torch.randn(n, n, device=device).to(getattr(torch, dtype))
            b = torch.randn(n, n, device=device).to(getattr(torch, dtype))
            samples = _repeat_ms(lambda x: x @ b, a, device, repeats, 1)
            ms, iqr = median_iqr(samples)
            tflops = cm.matmul_flops(n, n, n) / (min(samples) * 1e-3) / 1e12
            limits.rows.append({"measure": "matmul", "dtype": dtype, "size": n, "ms_median": ms, "ms_iqr": iqr,
                                "ms_min": min(samples), "flops": cm.matmul_flops(n, n, n), "tflops": tflops,
                                "bytes": None, "gbps": None})
            limits.matmul_tflops[dtype] = max(limits.matmul_tflops.get(dtype, 0.0), tflops)
    numel = copy_mib * 2**20 // 4
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    samples = _repeat_ms(lambda x: dst.copy_(x), src, device, repeats, 1)
    ms, iqr = median_iqr(samples)
    nbytes = cm.copy_bytes(numel, "float32")
    limits.copy_gbps = nbytes / (min(samples) * 1e-3) / 1e9
    limits.rows.append({"measure": "copy", "dtype": "float32", "size": numel, "ms_median": ms, "ms_iqr": iqr,
                        "ms_min": min(samples), "flops": None, "tflops": None, "bytes": nbytes,
                        "gbps": limits.copy_gbps})
    return limits


# --------------------------------------------------------------------------------------------------
# Running one case
# --------------------------------------------------------------------------------------------------

@dataclass
class RunContext:
    suite: KernelSuite
    device: str
    device_name: str | None
    limits: MachineLimits
    references: ReferenceCache
    callables: dict = field(default_factory=dict)
    # {(side, dtype): TFLOP/s of a side x side matmul measured just before that shape's cases}
    here_rates: dict = field(default_factory=dict)
    deadline: float = math.inf  # perf_counter() after which the remaining cases are skipped (max_total_seconds)


def estimated_seconds(case: Case, limits: MachineLimits) -> float | None:
    """Cost-model time of one call at the machine's measured limit (None when no rate applies)."""
    r, c, m = case.shape.rows, case.shape.cols, case.method
    if m.bound == "compute":
        rate = limits.matmul_tflops.get(m.compute if m.compute != "input" else case.dtype)
        return m.flops(r, c) * case.batch / (rate * 1e12) if rate else None
    if m.bound == "memory" and limits.copy_gbps:
        # A copy of the matrix times the number of passes the cost model implies (~ steps + 1).
        passes = 2 * (m.steps or 1) + 2
        return passes * r * c * case.batch * cm.DTYPE_BYTES["float32"] / (limits.copy_gbps * 1e9)
    return None


def _callable(ctx: RunContext, case: Case) -> Callable:
    import torch

    key = case.method.key
    if key not in ctx.callables:
        ctx.callables[key] = resolve_callable(case.method)
    fn = ctx.callables[key]
    if case.compile == "eager":
        return fn
    # A fresh compile per case (caches reset), so first_call_s is the compile cost of this shape and no
    # case silently falls back to eager after dynamo's recompile limit. dynamic=False: one graph
    # specialised to this shape, which is what a training loop sees.
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def _base_row(ctx: RunContext, case: Case) -> dict:
    import torch

    from swanbench import __version__
    from swanbench.tables import SCHEMA_VERSION

    return {
        "schema_version": SCHEMA_VERSION, "suite": ctx.suite.name, "operator": case.method.operator,
        "method": case.method.method, "rows": case.shape.rows, "cols": case.shape.cols, "dtype": case.dtype,
        "device": ctx.device, "device_name": ctx.device_name, "steps": case.method.steps,
        "compile": case.compile == "compiled", "batch": case.batch, "shape_name": case.shape.role,
        "model": "+".join(case.shape.models) or None, "compute_dtype": case.method.compute
        if case.method.compute != "input" else case.dtype, "bound": case.method.bound,
        "source": case.method.source, "flops": case.method.flops(case.shape.rows, case.shape.cols) * case.batch,
        "flops_executed": (case.method.executed or case.method.flops)(case.shape.rows, case.shape.cols) * case.batch,
        "matmul_tflops_peak": ctx.limits.matmul_tflops.get(case.method.compute if case.method.compute != "input"
                                                           else case.dtype),
        "copy_gbps_peak": ctx.limits.copy_gbps, "torch_version": torch.__version__,
        "swanbench_version": __version__, "torch_threads": torch.get_num_threads(),
    }


def plan_repeats(suite: KernelSuite, first_s: float | None, estimate_s: float | None) -> tuple[int, int]:
    """(warm-up calls, timed calls) that fit the case's budget `max_case_seconds`.

    The steady-state call time is guessed from the eager first call, else (compiled: the first call
    is mostly compilation) from the cost model at the measured limit. At least one timed call always
    runs; warm-up is dropped before timed calls are, and never fewer than `min_repeats` timed calls
    are planned when the budget allows them.
    """
    per_call = first_s if first_s is not None else estimate_s
    if per_call is None or per_call <= 0:
        return suite.warmup, suite.repeats
    fit = int(suite.max_case_seconds // per_call)
    warmup = suite.warmup if fit >= suite.warmup + suite.min_repeats else 0
    return warmup, max(1, min(suite.repeats, fit - warmup))


def run_case(ctx: RunContext, case: Case, x) -> dict:
    """Time one case: first call (compile included), warm-up, then up to `repeats` timed calls within
    the case's time budget; peak extra memory on the first call; error against the float64 reference."""
    suite, device = ctx.suite, ctx.device
    row = _base_row(ctx, case)
    fn = _callable(ctx, case)
    eager_cpu = case.compile == "eager" or device.startswith("cuda")
    with peak_extra_bytes(device, x, enabled=eager_cpu) as mem:
        first_s, out = time_call(fn, x, device)
    warmup, repeats = plan_repeats(suite, first_s if case.compile == "eager" else None,
                                   estimated_seconds(case, ctx.limits))
    samples: list[float] = []
    if case.compile == "eager" and first_s > suite.max_case_seconds:
        # One eager call alone exceeds the budget (e.g. float64 eigh at 2048 on 2 cores, ~20 s): its first
        # call is the only sample (flagged in `timed_first_call`); warm-up is noise next to its length.
        samples, warmup, repeats = [first_s * 1e3], 0, 0
    for _ in range(warmup):
        fn(x)
    synchronize(device)
    for _ in range(repeats):
        seconds, out = time_call(fn, x, device)
        samples.append(seconds * 1e3)
    ms, iqr = median_iqr(samples)
    row["ms_min"] = min(samples)
    # Ideal traffic: read the input once, write the output once, in the dtypes they really have
    # (the operators return fp32 for bf16 input).
    row["ideal_bytes"] = x.numel() * x.element_size() + out.numel() * out.element_size()
    row.update(status="ok", first_call_s=first_s, n_repeats=len(samples), timed_first_call=repeats == 0,
               ms_median=ms, ms_iqr=iqr, per_matrix_ms=ms / case.batch, peak_bytes=mem["bytes"],
               peak_bytes_method=mem["method"])
    row.update(_rates(ctx, case, row))
    if case.method.bound == "memory":
        row.update(copy_yardstick(x, device, ms))
    if suite.reference:
        row.update(_accuracy(ctx, case, x, out))
    return row


def _rates(ctx: RunContext, case: Case, row: dict) -> dict:
    """Achieved TFLOP/s and GB/s and their fractions of the measured limits."""
    seconds = row["ms_median"] * 1e-3
    tflops = row["flops"] / seconds / 1e12
    gbps = row["ideal_bytes"] / seconds / 1e9
    peak = row["matmul_tflops_peak"]
    here = ctx.here_rates.get((min(case.shape.rows, case.shape.cols), row["compute_dtype"]))
    out = {"tflops": tflops, "gbps": gbps, "frac_of_matmul_peak": None, "frac_of_bandwidth": None,
           "matmul_tflops_here": here, "frac_of_matmul_here": None,
           "tflops_executed": row["flops_executed"] / seconds / 1e12, "frac_executed_of_matmul_here": None}
    if case.method.bound == "compute" and peak:
        out["frac_of_matmul_peak"] = tflops / peak
    if case.method.bound == "compute" and here:
        out["frac_of_matmul_here"] = tflops / here
        out["frac_executed_of_matmul_here"] = out["tflops_executed"] / here
    if case.method.bound == "memory" and ctx.limits.copy_gbps:
        out["frac_of_bandwidth"] = gbps / ctx.limits.copy_gbps
    return out


def _accuracy(ctx: RunContext, case: Case, x, out) -> dict:
    """Relative error of the first matrix of the batch against its float64 reference."""
    import torch

    g = x if case.batch == 1 else x[0]
    o = out if case.batch == 1 else out[0]
    if not torch.isfinite(o).all():
        return {"rel_error": float("inf"), "reference": case.method.reference, "finite": False}
    key = reference_key(case.shape.rows, case.shape.cols, ctx.suite.seed, case.batch)
    ref = ctx.references.reference(case.method, g.to(torch.float64), key)
    return {"rel_error": relative_error(o, ref), "reference": f"{case.method.reference}_f64", "finite": True}


def skipped_row(ctx: RunContext, case: Case, reason: str, status: str = "skipped") -> dict:
    row = _base_row(ctx, case)
    row.update(status=status, skip_reason=reason)
    return row


def copy_yardstick(x, device: str, op_ms: float) -> dict:
    """One copy of the same matrix, measured right after the operator (same load): into a preallocated
    buffer (copy_ms: pure read + write) and allocating (clone_ms: + page faults of a fresh buffer, as an
    out-of-place operator pays), and the operator's time as multiples of each."""
    dst = x.clone()
    copy = median_iqr(_repeat_ms(lambda t: dst.copy_(t), x, device, 7, 1))[0]
    clone = median_iqr(_repeat_ms(lambda t: t.clone(), x, device, 7, 1))[0]
    return {"copy_ms": copy, "x_copy": op_ms / copy, "clone_ms": clone, "x_clone": op_ms / clone}


# --------------------------------------------------------------------------------------------------
# The whole suite
# --------------------------------------------------------------------------------------------------

def run_kernel_suite(suite: KernelSuite, out_dir: Path, console=None) -> Path:
    """Run every case of the suite; write kernels.csv, machine.csv, models.csv and env.json. Returns kernels.csv."""
    import torch

    from swanbench import env as envmod
    from swanbench.suite import resolve_device
    from swanbench.tables import KERNELS_COLUMNS, KERNELS_FILE, write_rows_atomic

    out_dir = Path(out_dir)
    device = resolve_device(suite.device)
    say = (lambda text: console.print(text, highlight=False, soft_wrap=True)) if console is not None \
        else (lambda text: None)
    _check_operators_exist(suite)
    load_before, uptime_before = _load_average(), _uptime()
    # Before anything is written: git_rev must describe the code that runs, not a tree the run's own
    # output files have made "dirty" (as the earlier result sets under results/ say).
    env = envmod.collect(device)
    info = envmod.device_info(device)
    say(f"[bold]{suite.name}[/]: measuring {info.get('device_name')} limits (matmul, copy)")
    limits = measure_limits(device, suite.dtypes, suite.matmul_sizes, suite.copy_mib)
    for dtype, rate in limits.matmul_tflops.items():
        say(f"  matmul {dtype}: {rate:.3f} TFLOP/s")
    say(f"  copy: {limits.copy_gbps:.1f} GB/s")
    ctx = RunContext(suite, device, info.get("device_name"), limits, ReferenceCache())
    rows: list[dict] = []
    started = time.perf_counter()
    if suite.max_total_seconds is not None:
        ctx.deadline = started + suite.max_total_seconds
    for shape, cases in ordered_work(suite):
        _run_shape(ctx, shape, cases, rows, say)
    finalize_peaks(rows, limits)
    write_rows_atomic(out_dir / MACHINE_FILE, [
        {"device": device, "device_name": ctx.device_name, "torch_threads": torch.get_num_threads(), **r}
        for r in limits.rows], ["measure", "dtype", "size", "ms_median", "ms_iqr", "ms_min", "flops", "tflops",
                                "bytes", "gbps", "device", "device_name"])
    path = write_rows_atomic(out_dir / KERNELS_FILE, machine_rows(limits, device, ctx.device_name) + rows,
                             KERNELS_COLUMNS)
    write_rows_atomic(out_dir / MODELS_FILE, model_summary(rows, limits, suite.summary_models,
                                                           suite.summary_tokens, device, ctx.device_name),
                      MODEL_COLUMNS)
    summary_rows = model_summary(rows, limits, suite.summary_models, suite.summary_tokens, device, ctx.device_name)
    lines = headline_lines(rows, summary_rows, limits)
    (out_dir / HEADLINE_FILE).write_text("\n".join([f"# {suite.name}: headline ({ctx.device_name})", ""] + lines
                                                   + ["", *shape_table(rows, 2048), "", *summary_table(summary_rows)])
                                         + "\n")
    for line in lines:
        say(line)
    env.update(suite=suite.name, torch_threads=torch.get_num_threads(), load_average_before=load_before,
               load_average_after=_load_average(), uptime_before=uptime_before, uptime_after=_uptime(), wall_seconds=time.perf_counter() - started,
               matmul_tflops=limits.matmul_tflops, copy_gbps=limits.copy_gbps)
    (out_dir / ENV_FILE).write_text(json.dumps(env, indent=2, sort_keys=True, default=str) + "\n")
    say(f"wrote {path} ({len(rows)} rows), {out_dir / MODELS_FILE}, {out_dir / MACHINE_FILE}")
    return path


def _check_operators_exist(suite: KernelSuite) -> None:
    """Fail before any timing if an operator the suite names is missing from optimizers.functional."""
    for method in suite.methods:
        resolve_callable(method)


def is_primary(suite: KernelSuite, case: Case) -> bool:
    """A case on the suite's first dtype, first compile mode and first batch size (the core table)."""
    return (case.dtype, case.compile, case.batch) == (suite.dtypes[0], suite.compile[0], suite.batch[0])


def ordered_work(suite: KernelSuite) -> list[tuple[Shape, list[Case]]]:
    """(shape, cases) in run order: the primary cases of every shape first, then the other dtypes, compile
    modes and batch sizes. If max_total_seconds runs out on a loaded machine, the variants are lost first."""
    primary, secondary = [], []
    for shape in suite_shapes(suite):
        cases = expand_cases(suite, [shape])
        primary.append((shape, [c for c in cases if is_primary(suite, c)]))
        secondary.append((shape, [c for c in cases if not is_primary(suite, c)]))
    return [(shape, cases) for shape, cases in primary + secondary if cases]


def _run_shape(ctx: RunContext, shape: Shape, cases: list[Case], rows: list[dict], say) -> None:
    """Cases of one shape (inputs made once per dtype and batch; references cached across them)."""
    reasons = [skip_reason(ctx.suite, c) or _native_reason(ctx, c) or _budget_reason(ctx, c) for c in cases]
    if time.perf_counter() < ctx.deadline:
        _measure_here_rates(ctx, [c for c, r in zip(cases, reasons) if r is None], say)
    inputs: dict[tuple[str, int], Any] = {}
    for case, reason in zip(cases, reasons):
        if not reason and time.perf_counter() > ctx.deadline:
            # Primary cases run first (ordered_work), so an overloaded machine loses variants, not the core.
            reason = f"suite time budget exhausted (max_total_seconds = {ctx.suite.max_total_seconds:g})"
        if reason:
            rows.append(skipped_row(ctx, case, reason))
            say(f"  skip {_label(case)}: {reason}")
            continue
        key = (case.dtype, case.batch)
        if key not in inputs:
            inputs[key] = make_input(shape.rows, shape.cols, case.batch, case.dtype, ctx.suite.seed, ctx.device)
        try:
            row = run_case(ctx, case, inputs[key])
        except Exception as exc:  # an operator or compiler failure is a result (status "error"), not a crash
            row = skipped_row(ctx, case, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}", "error")
        rows.append(row)
        say(f"  {_label(case)}: {_summary_text(row)}")


def _measure_here_rates(ctx: RunContext, cases: list[Case], say) -> None:
    """Matmul rate of the compute-bound cases' s x s loop product, measured right before them.

    On a shared machine the load drifts during a long run; a same-size matmul measured next to the
    operator is the fairest yardstick for "how close to the BLAS" (column frac_of_matmul_here), while
    frac_of_matmul_peak compares with the best rate seen anywhere in the run.
    """
    import torch

    for case in cases:
        if case.method.bound != "compute":
            continue
        side = min(case.shape.rows, case.shape.cols)
        dtype = case.method.compute if case.method.compute != "input" else case.dtype
        if (side, dtype) in ctx.here_rates:
            continue
        a = torch.randn(side, side, device=ctx.device).to(getattr(torch, dtype))
        samples = _repeat_ms(lambda x: x @ a, a, ctx.device, 5, 1)
        ms, iqr = median_iqr(samples)
        # The median here (compared with the operator's median under the same load); the best call
        # competes for the run's peak in finalize_peaks.
        rate = cm.matmul_flops(side, side, side) / (ms * 1e-3) / 1e12
        ctx.here_rates[(side, dtype)] = rate
        ctx.limits.rows.append({"measure": "matmul_at_shape", "dtype": dtype, "size": side, "ms_median": ms,
                                "ms_iqr": iqr, "ms_min": min(samples), "flops": cm.matmul_flops(side, side, side),
                                "tflops": cm.matmul_flops(side, side, side) / (min(samples) * 1e-3) / 1e12,
                                "tflops_median": rate, "bytes": None, "gbps": None})
        say(f"  matmul {side}x{side} {dtype} now: {rate:.3f} TFLOP/s")


def machine_rows(limits: MachineLimits, device: str, device_name: str | None) -> list[dict]:
    """The measured limits as kernels.csv rows (operator "matmul" / "copy", bound "limit"), so that a figure
    or report drawn from kernels.csv alone has the machine's lines."""
    out = []
    for r in limits.rows:
        matmul = r["measure"].startswith("matmul")
        out.append({"operator": "matmul" if matmul else "copy", "method": r["measure"],
                    "rows": r["size"], "cols": r["size"] if matmul else 1, "dtype": r["dtype"], "device": device,
                    "device_name": device_name, "ms_median": r["ms_median"], "ms_iqr": r["ms_iqr"],
                    "ms_min": r["ms_min"],
                    "flops": r["flops"], "tflops": r["tflops"], "gbps": r["gbps"], "ideal_bytes": r["bytes"],
                    "status": "ok", "bound": "limit", "compile": False, "batch": 1})
    return out


def finalize_peaks(rows: list[dict], limits: MachineLimits) -> None:
    """The machine's matmul limit is the best rate measured anywhere in the run (start or next to a shape);
    every compute-bound row's frac_of_matmul_peak is recomputed against it."""
    for r in limits.rows:
        if r["measure"].startswith("matmul"):
            limits.matmul_tflops[r["dtype"]] = max(limits.matmul_tflops.get(r["dtype"], 0.0), r["tflops"])
    for row in rows:
        peak = limits.matmul_tflops.get(row["compute_dtype"])
        row["matmul_tflops_peak"] = peak
        if row.get("status") == "ok" and row["bound"] == "compute" and peak:
            row["frac_of_matmul_peak"] = row["tflops"] / peak


# A case is hopeless when one call, by the cost model at the best measured rate, would take this many
# case budgets. Generous on purpose: a loaded start must not skip cases the suite asks for; a case
# that merely exceeds its budget still runs once (see run_case).
HOPELESS_BUDGETS = 4


def _native_reason(ctx: RunContext, case: Case) -> str | None:
    """Why a method built on optimizers.native cannot run here (a GPU, or no C compiler), else None."""
    if not case.method.native:
        return None
    if not ctx.device.startswith("cpu"):
        return "native SR-Sinkhorn kernels are CPU-only (GPUs run the 'vectors' method)"
    from optimizers import native

    return None if native.available() else f"native kernels unavailable: {native.unavailable_reason()}"


def _budget_reason(ctx: RunContext, case: Case) -> str | None:
    """Skip a case whose single call, by the cost model at the measured limit, exceeds 4 case budgets."""
    est = estimated_seconds(case, ctx.limits)
    if est is not None and est > HOPELESS_BUDGETS * ctx.suite.max_case_seconds:
        return (f"estimated {est:.1f} s per call at the measured limit exceeds {HOPELESS_BUDGETS} x "
                f"max_case_seconds = {ctx.suite.max_case_seconds:g}")
    return None


def _label(case: Case) -> str:
    return (f"{case.method.key} {case.shape.rows}x{case.shape.cols} ({case.shape.role}) {case.dtype} "
            f"{case.compile} b{case.batch}")


def _summary_text(row: dict) -> str:
    if row.get("status") != "ok":
        return f"[red]{row['status']}[/]: {row.get('skip_reason')}"
    frac = row.get("frac_of_matmul_here") or row.get("frac_of_bandwidth")
    err = row.get("rel_error")
    return (f"{row['ms_median']:.3f} ms (n={row['n_repeats']}), {row['tflops']:.3f} TFLOP/s, {row['gbps']:.1f} GB/s"
            + (f", {frac:.0%} of limit" if frac else "")
            + (f", {row['x_copy']:.1f}x copy" if row.get("x_copy") else "")
            + (f", rel err {err:.2e}" if err is not None else ""))


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _uptime() -> str | None:
    """The `uptime` line (load averages over 1, 5, 15 min): on a shared machine the context of every number."""
    import subprocess

    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------------------------------
# Per-model summary
# --------------------------------------------------------------------------------------------------

# What one optimizer step runs on every hidden matrix, as (operator, method) parts; a tuple of methods means
# "whichever of these is fastest here" (the optimizer picks its kernel per device).
STEP_PARTS: dict[str, tuple[tuple[str, str | tuple[str, ...]], ...]] = {
    "swan_b0.5_k6": (("grad_norm", "rowwise"), ("grad_whiten", "ns-b0.5-k6")),
    "swan_b0.8_k10": (("grad_norm", "rowwise"), ("grad_whiten", "ns-b0.8-k10")),
    "swan_nsds_b0.4_k2": (("grad_norm", "rowwise"), ("grad_whiten", "nsds-b0.4-k2")),
    # SinkGD's own step picks its kernel per device ("auto": native on CPU, vectors on GPUs) and never
    # allocates the scaled matrix, so its part is the fastest of the kernels it can run, measured here.
    "sinkgd_L5": (("sr_sinkhorn", ("native-L5-out", "native-L5", "blocked-L5", "vectors-L5")),),
    "sinkgd_L1": (("sr_sinkhorn", ("native-L1", "blocked-L1")),),
    "muon_k5": (("muon_quintic", "k5"),),
}

MODEL_COLUMNS = [
    "model", "params", "optimizer", "dtype", "device", "device_name", "tokens_per_step", "matrices",
    "step_flops", "fwd_bwd_flops", "flop_share", "measured_step_ms", "measured_step_ms_best",
    "ideal_fwd_bwd_ms_fp32", "ideal_fwd_bwd_ms_bf16", "time_share_vs_fp32_model", "time_share_vs_bf16_model",
    "time_share_best_vs_bf16_model", "missing",
]


def _per_matrix_ms(rows: list[dict], column: str = "ms_median") -> dict[tuple, float]:
    """Best eager ms per matrix (`column` / batch) for each (operator, method, rows, cols, dtype), over batch sizes."""
    best: dict[tuple, float] = {}
    for r in rows:
        if r.get("status") != "ok" or r.get("compile") or r.get(column) is None:
            continue
        key = (r["operator"], r["method"], r["rows"], r["cols"], r["dtype"])
        best[key] = min(best.get(key, math.inf), r[column] / r["batch"])
    return best


def _step_ms(measured: dict, counts: dict, parts, dtype: str) -> tuple[float | None, list[str]]:
    """Sum over every hidden matrix of its parts' per-matrix ms; None (and what is missing) if any is absent."""
    total, missing = 0.0, []
    for (r, c), n in counts.items():
        for op, methods in parts:
            alternatives = (methods,) if isinstance(methods, str) else methods
            found = [measured[k] for k in ((op, m, r, c, dtype) for m in alternatives) if k in measured]
            if not found:
                missing.append(f"{op}:{'|'.join(alternatives)}@{r}x{c}")
            else:
                total += n * min(found)
    return (None if missing else total), missing


def _share(ms: float | None, ideal: float | None) -> float | None:
    return ms / ideal if ms is not None and ideal else None


def model_summary(rows: list[dict], limits: MachineLimits, models: Iterable[str], tokens: int,
                  device: str, device_name: str | None) -> list[dict]:
    """Per preset x optimizer x dtype: the step's preprocessing cost from the cost model and from measurement.

    `flop_share` = preprocessing flops / (6 * params * tokens). `measured_step_ms` sums, over every hidden
    matrix, the measured eager per-matrix median of each part (best over batch sizes; empty if any shape
    was not measured); `measured_step_ms_best` the same from each case's fastest call, which on a shared
    machine filters out calls that waited for a core. `time_share_vs_*_model` = measured_step_ms /
    (forward+backward flops at the measured fp32 or bf16 matmul rate): that ideal is a lower bound on the
    forward+backward time, so the share is an upper bound.
    """
    from swanbench.models import PRESETS

    median, fastest = _per_matrix_ms(rows, "ms_median"), _per_matrix_ms(rows, "ms_min")
    dtypes = sorted({r["dtype"] for r in rows}) or ["float32"]
    costs = cm.optimizer_step_costs()
    out = []
    for model in models:
        preset = PRESETS[model]
        shapes = preset.hidden_matrix_shapes()
        counts = cm.shape_counts(shapes)
        fwd_bwd = cm.forward_backward_flops(preset.param_count(), tokens)
        ideal = {d: fwd_bwd / (limits.matmul_tflops[d] * 1e12) * 1e3 if limits.matmul_tflops.get(d) else None
                 for d in ("float32", "bfloat16")}
        for opt, parts in STEP_PARTS.items():
            flops = cm.step_flops(shapes, costs[opt])
            for dtype in dtypes:
                step_ms, missing = _step_ms(median, counts, parts, dtype)
                best_ms, _ = _step_ms(fastest, counts, parts, dtype)
                out.append({
                    "model": model, "params": preset.param_count(), "optimizer": opt, "dtype": dtype,
                    "device": device, "device_name": device_name, "tokens_per_step": tokens,
                    "matrices": len(shapes), "step_flops": flops, "fwd_bwd_flops": fwd_bwd,
                    "flop_share": flops / fwd_bwd, "measured_step_ms": step_ms, "measured_step_ms_best": best_ms,
                    "ideal_fwd_bwd_ms_fp32": ideal["float32"], "ideal_fwd_bwd_ms_bf16": ideal["bfloat16"],
                    "time_share_vs_fp32_model": _share(step_ms, ideal["float32"]),
                    "time_share_vs_bf16_model": _share(step_ms, ideal["bfloat16"]),
                    "time_share_best_vs_bf16_model": _share(best_ms, ideal["bfloat16"]),
                    "missing": " ".join(missing[:6]) + (" ..." if len(missing) > 6 else "") if missing else None,
                })
    return out


# --------------------------------------------------------------------------------------------------
# Headline numbers (the three ratios the README reports)
# --------------------------------------------------------------------------------------------------

def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def headline_lines(rows: list[dict], summary: list[dict], limits: MachineLimits) -> list[str]:
    """Markdown bullet lines: Newton-Schulz rate vs the matmul rate on the 1b shapes, SR-Sinkhorn L=5 on
    2048 x 5461 as a multiple of one copy, SinkGD / SWAN step time and the whitening share of a 1b step."""
    lines = [f"- measured limits: matmul " + ", ".join(f"{d} {r:.3f} TFLOP/s" for d, r in limits.matmul_tflops.items())
             + f"; copy {_fmt(limits.copy_gbps, '.1f')} GB/s"]
    ok = [r for r in rows if r.get("status") == "ok" and not r.get("compile") and r.get("batch") == 1]
    for r in ok:
        if r["operator"] == "grad_whiten" and r["method"] in ("ns-b0.5-k6", "ns-b0.8-k10") and \
                r["dtype"] == "float32" and (r["rows"], r["cols"]) in {(2048, 2048), (5461, 2048), (2048, 5461)}:
            lines.append(f"- Newton-Schulz {r['method']} {r['rows']}x{r['cols']} fp32: {r['ms_median']:.0f} ms, "
                         f"{r['tflops']:.3f} TFLOP/s (cost model) = {_fmt(r.get('frac_of_matmul_here'), '.0%')} of "
                         f"the same-size matmul measured beside it, {_fmt(r.get('frac_of_matmul_peak'), '.0%')} of "
                         f"the run's best matmul rate; executed flops: "
                         f"{_fmt(r.get('frac_executed_of_matmul_here'), '.0%')}")
    for r in ok:
        if r["operator"] == "sr_sinkhorn" and r["dtype"] == "float32" and (r["rows"], r["cols"]) == (2048, 5461):
            lines.append(f"- SR-Sinkhorn {r['method']} 2048x5461 fp32: {r['ms_median']:.2f} ms = "
                         f"{_fmt(r.get('x_copy'), '.1f')} x one copy ({_fmt(r.get('copy_ms'), '.2f')} ms), "
                         f"{_fmt(r.get('x_clone'), '.1f')} x one allocating clone "
                         f"({_fmt(r.get('clone_ms'), '.2f')} ms)")
    by = {(s["model"], s["optimizer"], s["dtype"]): s for s in summary}
    for model in dict.fromkeys(s["model"] for s in summary):
        swan, sink = by.get((model, "swan_b0.5_k6", "float32")), by.get((model, "sinkgd_L5", "float32"))
        if swan and sink and swan["measured_step_ms"] and sink["measured_step_ms"]:
            lines.append(f"- {model}: SinkGD (L=5) step / SWAN (b=0.5, k=6) step = "
                         f"{sink['measured_step_ms'] / swan['measured_step_ms']:.4f} "
                         f"({sink['measured_step_ms']:.1f} ms / {swan['measured_step_ms']:.0f} ms, fp32 gradients, "
                         f"medians; fastest calls: {sink['measured_step_ms_best'] / swan['measured_step_ms_best']:.4f})")
    for opt in ("swan_b0.5_k6", "swan_b0.8_k10", "swan_nsds_b0.4_k2"):
        s1 = by.get(("1b", opt, "bfloat16")) or by.get(("1b", opt, "float32"))
        if s1:
            lines.append(f"- 1b {opt}: {s1['flop_share']:.1%} of the step's forward+backward flops (cost model); "
                         f"measured {_fmt(s1['measured_step_ms'], '.0f')} ms = "
                         f"{_fmt(s1['time_share_vs_fp32_model'], '.1%')} of an ideal fp32 / "
                         f"{_fmt(s1['time_share_vs_bf16_model'], '.1%')} of an ideal bf16 forward+backward "
                         f"at the measured matmul rate (fastest calls: "
                         f"{_fmt(s1['time_share_best_vs_bf16_model'], '.1%')} of bf16; {s1['dtype']} gradients)")
    return lines


def _md(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in body]


def shape_table(rows: list[dict], side: int) -> list[str]:
    """Markdown table of the eager, batch-1 rows whose short side is `side` (2048: the 1b shapes)."""
    body = []
    for r in rows:
        if r.get("status") != "ok" or r.get("compile") or r.get("batch") != 1 or r.get("bound") == "limit" \
                or min(r["rows"], r["cols"]) != side:
            continue
        frac = r.get("frac_of_matmul_here") if r["bound"] == "compute" else r.get("x_copy")
        body.append([f"{r['operator']} {r['method']}", f"{r['rows']}x{r['cols']}", r["dtype"],
                     _fmt(r["ms_median"], ".3g"), _fmt(r.get("tflops"), ".3g"), _fmt(r.get("gbps"), ".3g"),
                     (f"{_fmt(frac, '.0%')} of matmul" if r["bound"] == "compute" else
                      f"{_fmt(frac, '.1f')} x copy" if frac is not None else ""),
                     _fmt(r["peak_bytes"] / 2**20 if r.get("peak_bytes") is not None else None, ".1f"),
                     _fmt(r.get("rel_error"), ".1e")])
    return _md(["operator", "shape", "dtype", "ms (median)", "TFLOP/s", "GB/s", "vs limit", "peak MiB",
                "rel error"], body) if body else []


def summary_table(summary: list[dict], dtype: str = "float32") -> list[str]:
    """Markdown table of models.csv for one gradient dtype."""
    body = [[s["model"], s["optimizer"], _fmt(s["flop_share"], ".2%"), _fmt(s["measured_step_ms"], ".4g"),
             _fmt(s["measured_step_ms_best"], ".4g"), _fmt(s["time_share_vs_fp32_model"], ".1%"),
             _fmt(s["time_share_vs_bf16_model"], ".1%")]
            for s in summary if s["dtype"] == dtype]
    return _md(["model", "step", "flops / fwd+bwd flops", "measured ms (median)", "measured ms (fastest)",
                "median vs ideal fp32 fwd+bwd", "median vs ideal bf16 fwd+bwd"], body) if body else []
