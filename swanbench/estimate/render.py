"""The estimate as a user sees it: a rich table, a fits / does-not-fit verdict, and CSV rows."""

from __future__ import annotations

from typing import Any

from swanbench.estimate.model import GIB, MemoryEstimate

ESTIMATE_COLUMNS = [
    "model", "optimizer", "dtype", "batch_size", "seq_len", "grad_accum", "attn_implementation", "params",
    "param_bytes", "grad_bytes", "optimizer_state_bytes", "activation_bytes", "loss_transient_bytes",
    "workspace_bytes", "weights_and_state_bytes", "weights_and_state_gib", "backward_peak_bytes",
    "step_peak_bytes", "peak_bytes", "peak_phase", "device_memory_bytes", "headroom_bytes", "fits",
    "world_size", "parallelism", "comm_bytes",
]


def format_bytes(n_bytes: int | None) -> str:
    """Human units (KiB/MiB/GiB = 1024^k), three significant digits; '-' for None."""
    if n_bytes is None:
        return "-"
    value, unit = float(n_bytes), "B"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"


def estimate_row(est: MemoryEstimate, device_memory: int | None = None) -> dict[str, Any]:
    """One CSV row (bytes; weights_and_state_gib to two decimals as the papers give it)."""
    row: dict[str, Any] = {
        "model": est.model, "optimizer": est.optimizer, "dtype": est.dtype, "batch_size": est.batch_size,
        "seq_len": est.seq_len, "grad_accum": est.grad_accum, "attn_implementation": est.attn_implementation,
        "params": est.params, "param_bytes": est.param_bytes, "grad_bytes": est.grad_bytes,
        "optimizer_state_bytes": est.optimizer_state_bytes, "activation_bytes": est.activation_bytes,
        "loss_transient_bytes": est.loss_transient_bytes, "workspace_bytes": est.workspace_bytes,
        "weights_and_state_bytes": est.weights_and_state_bytes,
        "weights_and_state_gib": round(est.weights_and_state_bytes / GIB, 2),
        "backward_peak_bytes": est.backward_peak_bytes, "step_peak_bytes": est.step_peak_bytes,
        "peak_bytes": est.peak_bytes, "peak_phase": est.peak_phase, "device_memory_bytes": device_memory,
        "headroom_bytes": None if device_memory is None else device_memory - est.peak_bytes,
        "fits": None if device_memory is None else est.peak_bytes <= device_memory,
        "world_size": est.world_size, "parallelism": est.parallelism, "comm_bytes": est.comm_bytes,
    }
    for g in est.groups:
        row[f"optimizer_state_bytes.{g.name}"] = g.state_bytes
        row[f"optimizer.{g.name}"] = g.optimizer
    return row


def write_estimates(path: Any, estimates: list[MemoryEstimate], device_memory: int | None = None):
    """Write one row per estimate to `path` (CSV, atomically); returns the path."""
    from pathlib import Path

    from swanbench.tables import write_rows_atomic

    return write_rows_atomic(Path(path), [estimate_row(e, device_memory) for e in estimates], ESTIMATE_COLUMNS)


def _state_cell(est: MemoryEstimate) -> str:
    if len(est.groups) == 1:
        return format_bytes(est.optimizer_state_bytes)
    parts = " + ".join(f"{format_bytes(g.state_bytes)} {g.name}" for g in est.groups)
    return f"{format_bytes(est.optimizer_state_bytes)} ({parts})"


def render_table(estimates: list[MemoryEstimate], device_memory: int | None = None):
    """A rich Table: one row per optimizer, one column per component (GiB = 1024^3)."""
    from rich.table import Table

    first = estimates[0]
    title = (f"{first.model}: {first.params / 1e6:.1f}M parameters, {first.dtype}, batch {first.batch_size}"
             f" x {first.seq_len} tokens" + (f" x {first.grad_accum} micro-batches" if first.grad_accum > 1 else "")
             + f", attention {first.attn_implementation}"
             + (f"; per rank of {first.world_size} ({first.parallelism})" if first.world_size > 1 else ""))
    table = Table(title=title, caption="weights+state: the papers' number, GiB to two decimals; "
                                       "peak = max(backward start, optimizer step)")
    columns = ["optimizer", "weights", "grads", "optimizer state", "activations", "loss buffers", "workspace",
               *(["ddp buckets" if first.parallelism == "ddp" else "fsdp gathered"] if first.world_size > 1 else []),
               "weights+state GiB", "peak"]
    if device_memory is not None:
        columns.append("headroom")
    for name in columns:
        table.add_column(name, justify="left" if name in ("optimizer", "optimizer state") else "right")
    for est in estimates:
        cells = [est.optimizer, format_bytes(est.param_bytes), format_bytes(est.grad_bytes), _state_cell(est),
                 format_bytes(est.activation_bytes), format_bytes(est.loss_transient_bytes),
                 format_bytes(est.workspace_bytes),
                 *([format_bytes(est.comm_bytes)] if est.world_size > 1 else []),
                 f"{est.weights_and_state_bytes / GIB:.2f}",
                 f"{format_bytes(est.peak_bytes)} ({est.peak_phase})"]
        if device_memory is not None:
            headroom = device_memory - est.peak_bytes
            style = "green" if headroom >= 0 else "red"
            cells.append(f"[{style}]{'+' if headroom >= 0 else '-'}{format_bytes(abs(headroom))}[/]")
        table.add_row(*cells)
    return table


def verdict_lines(estimates: list[MemoryEstimate], device_memory: int | None) -> list[str]:
    """One line per optimizer: fits / does not fit in `device_memory`, with the headroom (empty if None)."""
    if device_memory is None:
        return []
    lines = []
    for est in estimates:
        headroom = device_memory - est.peak_bytes
        if headroom >= 0:
            lines.append(f"{est.optimizer}: fits: peak {format_bytes(est.peak_bytes)} of "
                         f"{format_bytes(device_memory)}, headroom {format_bytes(headroom)}")
        else:
            lines.append(f"{est.optimizer}: does not fit: peak {format_bytes(est.peak_bytes)} exceeds "
                         f"{format_bytes(device_memory)} by {format_bytes(-headroom)}")
    lines.append("not counted: the CUDA context (~0.5 GiB, outside the allocator), allocator fragmentation, "
                 "cuBLAS workspaces")
    return lines
