"""Run a whole kernel suite: measure the machine, run every case shape by shape, write the tables.

Files written into the output directory: kernels.csv, machine.csv, models.csv, headline.md and env.json
(see the package docstring for what each holds).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import torch
from rich.markup import escape

from swanbench.kernels.cases import Case, Shape, ordered_work, skip_reason
from swanbench.kernels.inputs import ReferenceCache, make_input
from swanbench.kernels.measure import (MACHINE_COLUMNS, MachineLimits, finalize_peaks, machine_rows, matmul_row,
                                       measure_limits, time_matmul)
from swanbench.kernels.operators import missing_keywords, resolve_callable
from swanbench.schema import MACHINE_FILE, MODELS_FILE
from swanbench.kernels.rows import RunContext, budget_reason, native_reason, run_case, skipped_row
from swanbench.kernels.suite import KernelSuite
from swanbench.kernels.summary import MODEL_COLUMNS, headline_lines, model_summary, shape_table, summary_table

ENV_FILE, HEADLINE_FILE = "env.json", "headline.md"

Say = Callable[[object], None]


def _sayer(console) -> Say:
    if console is None:
        return lambda text: None
    return lambda text: console.print(text, highlight=False, soft_wrap=True)


def run_kernel_suite(suite: KernelSuite, out_dir: Path, console=None) -> Path:
    """Run every case of the suite; write kernels.csv, machine.csv, models.csv, headline.md and env.json.

    Returns the path of kernels.csv.
    """
    from swanbench import env as envmod
    from swanbench.env import resolve_device

    out_dir, say = Path(out_dir), _sayer(console)
    device = resolve_device(suite.device)
    _check_operators_exist(suite)
    before = {"load_average_before": _load_average(), "uptime_before": _uptime()}
    # Before anything is written: git_rev must describe the code that runs, not a tree the run's own
    # output files have made "dirty" (as the earlier result sets under results/ say).
    env = envmod.collect(device)
    device_name = envmod.device_info(device).get("device_name")
    ctx = RunContext(suite, device, device_name, _measure_machine(suite, device, device_name, say), ReferenceCache())
    started = time.perf_counter()
    if suite.max_total_seconds is not None:
        ctx.deadline = started + suite.max_total_seconds
    rows: list[dict] = []
    work = list(ordered_work(suite))
    for index, (shape, cases) in enumerate(work, 1):
        shape_started, before_count = time.perf_counter(), len(rows)
        _run_shape(ctx, shape, cases, rows, say)
        done = rows[before_count:]
        ran = sum(r.get("status") == "ok" for r in done)
        say(f"  [{index}/{len(work)}] {shape.rows}x{shape.cols} ({shape.role}): {ran} case(s) measured, "
            f"{len(done) - ran} skipped or failed, {time.perf_counter() - shape_started:.1f} s")
    finalize_peaks(rows, ctx.limits)
    path = _write_tables(ctx, rows, out_dir, say)
    env.update(before, wall_seconds=time.perf_counter() - started)
    _write_env(ctx, env, out_dir)
    say(f"wrote {path} ({len(rows)} rows), {out_dir / MODELS_FILE}, {out_dir / MACHINE_FILE}")
    return path


def _check_operators_exist(suite: KernelSuite) -> None:
    """Fail before any timing if an operator the suite names is missing from optimizers (a method whose
    operator lacks one of its keywords is skipped instead, with the reason in its rows)."""
    for method in suite.methods:
        if missing_keywords(method) is None:
            resolve_callable(method)


def _measure_machine(suite: KernelSuite, device: str, device_name: str | None, say: Say) -> MachineLimits:
    say(f"[bold]{suite.name}[/]: measuring {device_name} limits (matmul, copy)")
    # Compute precisions other than the input dtypes (TF32, a bf16 variant of fp32 input) get their own rate.
    computes = [m.compute for m in suite.methods if m.bound == "compute" and m.compute != "input"]
    limits = measure_limits(device, suite.dtypes, suite.matmul_sizes, suite.copy_mib, computes=computes)
    for dtype, rate in limits.matmul_tflops.items():
        say(f"  matmul {dtype}: {rate:.3f} TFLOP/s")
    say(f"  copy: {limits.copy_gbps:.1f} GB/s")
    return limits


# --------------------------------------------------------------------------------------------------
# One shape
# --------------------------------------------------------------------------------------------------

def _reason(ctx: RunContext, case: Case) -> str | None:
    """Why a case is not run before any time is spent on it: a skip rule, no native kernels, an operator
    without the method's keyword, hopeless."""
    return (skip_reason(ctx.suite, case) or native_reason(ctx, case) or missing_keywords(case.method)
            or budget_reason(ctx, case))


def _run_shape(ctx: RunContext, shape: Shape, cases: list[Case], rows: list[dict], say: Say) -> None:
    """Cases of one shape (inputs made once per dtype and batch; references cached across them)."""
    reasons = [_reason(ctx, c) for c in cases]
    if time.perf_counter() < ctx.deadline:
        _measure_here_rates(ctx, [c for c, r in zip(cases, reasons) if r is None], say)
    inputs: dict[tuple[str, int], Any] = {}
    for case, reason in zip(cases, reasons):
        if not reason and time.perf_counter() > ctx.deadline:
            # Primary cases run first (ordered_work), so an overloaded machine loses variants, not the core.
            reason = f"suite time budget exhausted (max_total_seconds = {ctx.suite.max_total_seconds:g})"
        if reason:
            rows.append(skipped_row(ctx, case, reason))
            continue
        key = (case.dtype, case.batch)
        if key not in inputs:
            inputs[key] = make_input(shape.rows, shape.cols, case.batch, case.dtype, ctx.suite.seed, ctx.device)
        rows.append(_run_or_error(ctx, case, inputs[key]))
        if rows[-1].get("status") != "ok":  # a failure is worth a line; each measured case is in kernels.csv
            say(f"    {_label(case)}: {_summary_text(rows[-1])}")


def _run_or_error(ctx: RunContext, case: Case, x) -> dict:
    try:
        return run_case(ctx, case, x)
    except Exception as exc:  # an operator or compiler failure is a result (status "error"), not a crash
        return skipped_row(ctx, case, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}", "error")


def _measure_here_rates(ctx: RunContext, cases: list[Case], say: Say) -> None:
    """Matmul rate of the compute-bound cases' s x s loop product, measured right before them.

    On a shared machine the load drifts during a long run; a same-size matmul measured next to the
    operator is the fairest yardstick for "how close to the BLAS" (column frac_of_matmul_here), while
    frac_of_matmul_peak compares with the best rate seen anywhere in the run.
    """
    for case in cases:
        key = (case.side, case.compute_dtype)
        if case.method.bound != "compute" or key in ctx.here_rates:
            continue
        samples = time_matmul(case.side, case.compute_dtype, ctx.device, 5, square_of_input=True)
        row = matmul_row("matmul_at_shape", case.side, case.compute_dtype, samples)
        # The median here (compared with the operator's median under the same load); the best call
        # competes for the run's peak in finalize_peaks.
        rate = row["flops"] / (row["ms_median"] * 1e-3) / 1e12
        ctx.here_rates[key] = rate
        ctx.limits.rows.append({**row, "tflops_median": rate})


def _label(case: Case) -> str:
    return (f"{case.method.key} {case.shape.rows}x{case.shape.cols} ({case.shape.role}) {case.dtype} "
            f"{case.compile} b{case.batch}")


def _summary_text(row: dict) -> str:
    if row.get("status") != "ok":
        return f"[red]{row['status']}[/]: {escape(str(row.get('skip_reason')))}"
    frac = row.get("frac_of_matmul_here") or row.get("frac_of_bandwidth")
    err = row.get("rel_error")
    return (f"{row['ms_median']:.3f} ms (n={row['n_repeats']}), {row['tflops']:.3f} TFLOP/s, {row['gbps']:.1f} GB/s"
            + (f", {frac:.0%} of limit" if frac else "")
            + (f", {row['x_copy']:.1f}x copy" if row.get("x_copy") else "")
            + (f", rel err {err:.2e}" if err is not None else ""))


# --------------------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------------------

def _write_tables(ctx: RunContext, rows: list[dict], out_dir: Path, say: Say) -> Path:
    """machine.csv, kernels.csv (limits first), models.csv and headline.md; returns kernels.csv's path."""
    from swanbench.schema import KERNELS_COLUMNS, KERNELS_FILE
    from swanbench.tables import write_rows_atomic

    suite, limits = ctx.suite, ctx.limits
    write_rows_atomic(out_dir / MACHINE_FILE, [
        {"device": ctx.device, "device_name": ctx.device_name, "torch_threads": torch.get_num_threads(), **r}
        for r in limits.rows], MACHINE_COLUMNS)
    path = write_rows_atomic(out_dir / KERNELS_FILE, machine_rows(limits, ctx.device, ctx.device_name) + rows,
                             KERNELS_COLUMNS)
    summary = model_summary(rows, limits, suite.summary_models, suite.summary_tokens, ctx.device, ctx.device_name)
    write_rows_atomic(out_dir / MODELS_FILE, summary, MODEL_COLUMNS)
    lines = headline_lines(rows, summary, limits)
    (out_dir / HEADLINE_FILE).write_text("\n".join(
        [f"# {suite.name}: headline ({ctx.device_name})", ""] + lines
        + ["", *shape_table(rows, 2048), "", *summary_table(summary)]) + "\n")
    say(f"headline: {out_dir / HEADLINE_FILE}")
    _say_summary(out_dir, say)
    return path


def _say_summary(out_dir: Path, say: Say) -> None:
    """The suite in one table: per operator and dtype the method nearest the machine's limit, and how near."""
    from rich.table import Table

    from swanbench.analysis.kernel_summary import machine_limits, summary
    from swanbench.analysis.results import load_results

    results = load_results(out_dir)
    frame = summary(results.kernels, machine_limits(results))
    if frame.empty:
        return
    table = Table(*frame.columns, title=f"best method per operator ({out_dir}; every case: kernels.csv)")
    for row in frame.itertuples(index=False):
        table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row))
    say(table)


def _write_env(ctx: RunContext, env: dict, out_dir: Path) -> None:
    """env.json: versions, device, threads, the machine's load before and after, the measured limits."""
    env.update(suite=ctx.suite.name, torch_threads=torch.get_num_threads(), load_average_after=_load_average(),
               uptime_after=_uptime(), matmul_tflops=ctx.limits.matmul_tflops, copy_gbps=ctx.limits.copy_gbps)
    (out_dir / ENV_FILE).write_text(json.dumps(env, indent=2, sort_keys=True, default=str) + "\n")


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _uptime() -> str | None:
    """The `uptime` line (load averages over 1, 5, 15 min): on a shared machine the context of every number."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
