"""One case, one row of kernels.csv: run it within its budget, or say why it was not run.

The `RunContext` is everything one suite run shares between its cases: the measured limits, the float64
references and the callables (a stateful method's instance, holding its reused output buffer, lives
there and dies with the run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from swanbench import costmodel as cm
from swanbench.kernels.cases import Case
from swanbench.kernels.inputs import ReferenceCache, reference_key, relative_error
from swanbench.kernels.measure import (MachineLimits, copy_yardstick, median_iqr, peak_extra_bytes, synchronize,
                                       time_call)
from swanbench.kernels.operators import resolve_callable
from swanbench.kernels.suite import KernelSuite

# A case is hopeless when one call, by the cost model at the best measured rate, would take this many
# case budgets. Generous on purpose: a loaded start must not skip cases the suite asks for; a case
# that merely exceeds its budget still runs once (see run_case).
HOPELESS_BUDGETS = 4


@dataclass
class RunContext:
    suite: KernelSuite
    device: str
    device_name: str | None
    limits: MachineLimits
    references: ReferenceCache
    # {method key: its callable}, made once per run (see resolve_callable for stateful methods)
    callables: dict = field(default_factory=dict)
    # {(side, dtype): TFLOP/s of a side x side matmul measured just before that shape's cases}
    here_rates: dict = field(default_factory=dict)
    deadline: float = math.inf  # perf_counter() after which the remaining cases are skipped (max_total_seconds)


# --------------------------------------------------------------------------------------------------
# Whether a case runs
# --------------------------------------------------------------------------------------------------

def estimated_seconds(case: Case, limits: MachineLimits) -> float | None:
    """Cost-model time of one call at the machine's measured limit (None when no rate applies)."""
    r, c, m = case.shape.rows, case.shape.cols, case.method
    if m.bound == "compute":
        rate = limits.rate(case.compute_dtype)
        return m.flops(r, c) * case.batch / (rate * 1e12) if rate else None
    if m.bound == "memory" and limits.copy_gbps:
        # A copy of the matrix times the number of passes the cost model implies (~ steps + 1).
        passes = 2 * (m.steps or 1) + 2
        return passes * r * c * case.batch * cm.DTYPE_BYTES["float32"] / (limits.copy_gbps * 1e9)
    return None


def native_reason(ctx: RunContext, case: Case) -> str | None:
    """Why a method built on optimizers.native cannot run here (a GPU, or no C compiler), else None."""
    if not case.method.native:
        return None
    if not ctx.device.startswith("cpu"):
        return "native SR-Sinkhorn kernels are CPU-only (GPUs run the 'vectors' method)"
    from optimizers import native

    return None if native.available() else f"native kernels unavailable: {native.unavailable_reason()}"


def budget_reason(ctx: RunContext, case: Case) -> str | None:
    """Skip a case whose single call, by the cost model at the measured limit, exceeds 4 case budgets."""
    est = estimated_seconds(case, ctx.limits)
    if est is not None and est > HOPELESS_BUDGETS * ctx.suite.max_case_seconds:
        return (f"estimated {est:.1f} s per call at the measured limit exceeds {HOPELESS_BUDGETS} x "
                f"max_case_seconds = {ctx.suite.max_case_seconds:g}")
    return None


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


# --------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------

def _callable(ctx: RunContext, case: Case) -> Callable:
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
    """The columns every row has, run or skipped: what the case is and what the machine offers it."""
    from swanbench import __version__
    from swanbench.schema import SCHEMA_VERSION

    m, r, c = case.method, case.shape.rows, case.shape.cols
    return {
        "schema_version": SCHEMA_VERSION, "suite": ctx.suite.name, "operator": m.operator,
        "method": m.method, "rows": r, "cols": c, "dtype": case.dtype,
        "device": ctx.device, "device_name": ctx.device_name, "steps": m.steps,
        "compile": case.compile == "compiled", "batch": case.batch, "shape_name": case.shape.role,
        "model": "+".join(case.shape.models) or None, "compute_dtype": case.compute_dtype, "bound": m.bound,
        "source": m.source, "flops": m.flops(r, c) * case.batch,
        "flops_executed": (m.executed or m.flops)(r, c) * case.batch,
        "matmul_tflops_peak": ctx.limits.rate(case.compute_dtype),
        "copy_gbps_peak": ctx.limits.copy_gbps, "torch_version": torch.__version__,
        "swanbench_version": __version__, "torch_threads": torch.get_num_threads(),
    }


def skipped_row(ctx: RunContext, case: Case, reason: str, status: str = "skipped") -> dict:
    row = _base_row(ctx, case)
    row.update(status=status, skip_reason=reason)
    return row


def _timed_samples(ctx: RunContext, case: Case, fn: Callable, x, first_s: float) -> tuple[list[float], bool, object]:
    """(ms samples, whether the first call is the only one, last output) within the case's budget."""
    suite, device = ctx.suite, ctx.device
    eager = case.compile == "eager"
    if eager and first_s > suite.max_case_seconds:
        # One eager call alone exceeds the budget (e.g. float64 eigh at 2048 on 2 cores, ~20 s): its first
        # call is the only sample (flagged in `timed_first_call`); warm-up is noise next to its length.
        return [first_s * 1e3], True, None
    warmup, repeats = plan_repeats(suite, first_s if eager else None, estimated_seconds(case, ctx.limits))
    for _ in range(warmup):
        fn(x)
    synchronize(device)
    samples, out = [], None
    for _ in range(repeats):
        seconds, out = time_call(fn, x, device)
        samples.append(seconds * 1e3)
    return samples, False, out


def run_case(ctx: RunContext, case: Case, x) -> dict:
    """Time one case: first call (compile included), warm-up, then up to `repeats` timed calls within
    the case's time budget; peak extra memory on the first call; error against the float64 reference."""
    row = _base_row(ctx, case)
    fn = _callable(ctx, case)
    eager_cpu = case.compile == "eager" or ctx.device.startswith("cuda")
    with peak_extra_bytes(ctx.device, x, enabled=eager_cpu) as mem:
        first_s, out = time_call(fn, x, ctx.device)
    samples, first_only, last = _timed_samples(ctx, case, fn, x, first_s)
    out = out if last is None else last
    ms, iqr = median_iqr(samples)
    row["ms_min"] = min(samples)
    # Ideal traffic: read the input once, write the output once, in the dtypes they really have
    # (the operators return fp32 for bf16 input).
    row["ideal_bytes"] = x.numel() * x.element_size() + out.numel() * out.element_size()
    row.update(status="ok", first_call_s=first_s, n_repeats=len(samples), timed_first_call=first_only,
               ms_median=ms, ms_iqr=iqr, per_matrix_ms=ms / case.batch, peak_bytes=mem["bytes"],
               peak_bytes_method=mem["method"])
    row.update(_rates(ctx, case, row))
    if case.method.bound == "memory":
        row.update(copy_yardstick(x, ctx.device, ms))
    if ctx.suite.reference:
        row.update(_accuracy(ctx, case, x, out))
    return row


def _rates(ctx: RunContext, case: Case, row: dict) -> dict:
    """Achieved TFLOP/s and GB/s and their fractions of the measured limits."""
    seconds = row["ms_median"] * 1e-3
    tflops = row["flops"] / seconds / 1e12
    gbps = row["ideal_bytes"] / seconds / 1e9
    peak = row["matmul_tflops_peak"]
    here = ctx.here_rates.get((case.side, row["compute_dtype"]))
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
    g = x if case.batch == 1 else x[0]
    o = out if case.batch == 1 else out[0]
    if not torch.isfinite(o).all():
        return {"rel_error": float("inf"), "reference": case.method.reference, "finite": False}
    key = reference_key(case.shape.rows, case.shape.cols, ctx.suite.seed, case.batch)
    ref = ctx.references.reference(case.method, g.to(torch.float64), key)
    return {"rel_error": relative_error(o, ref), "reference": f"{case.method.reference}_f64", "finite": True}
