"""`swanbench estimate`: training memory from shapes alone (library: swanbench.estimate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def estimate(
    model: Annotated[str, typer.Option("--model", "-m", help="Model preset (swanbench list models), e.g. 1b.")],
    optimizer: Annotated[str, typer.Option(
        "--optimizer", "-o", help="Optimizer name(s), comma-separated, e.g. adamw,swan,sinkgd.")] = "adamw",
    dtype: Annotated[str, typer.Option(help="Whole-model dtype: float32, bfloat16, float16.")] = "float32",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Sequences per micro-batch.")] = 8,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence.")] = 256,
    grad_accum: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    attn: Annotated[str, typer.Option(help="Attention implementation: sdpa or eager.")] = "sdpa",
    world_size: Annotated[int, typer.Option(
        "--world-size", help="Ranks (GPUs) the cell runs on; the numbers are then per rank.")] = 1,
    parallelism: Annotated[Optional[str], typer.Option(
        help="With --world-size > 1: ddp (replicated) or fsdp (FSDP2, sharded by rows).")] = None,
    device_memory: Annotated[Optional[str], typer.Option(
        help="Memory of the target device, e.g. 80GiB, 80GB or bytes: adds a fits / does not fit verdict.")]
    = None,
    out: Annotated[Optional[Path], typer.Option(help="Also write the estimate as CSV (one row per optimizer).")]
    = None,
) -> None:
    """Estimate parameters, gradients, optimizer state, activations and step workspace before running."""
    from rich.console import Console

    from swanbench import estimate as est
    from swanbench.userfiles import output_file_problem

    names = [n.strip() for n in optimizer.split(",") if n.strip()]
    try:
        problem = output_file_problem(out) if out is not None else None
        if problem:
            raise est.EstimateError(f"--out {problem}")
        if not names:
            raise est.EstimateError("--optimizer needs at least one optimizer name")
        capacity = est.parse_bytes(device_memory) if device_memory is not None else None
        results = est.estimate_many(model, names, dtype, batch_size, seq_len, grad_accum=grad_accum,
                                    attn_implementation=attn, world_size=world_size,
                                    parallelism=parallelism)
    except (est.EstimateError, KeyError) as exc:
        typer.echo(f"error: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}", err=True)
        raise typer.Exit(2) from None
    console = Console()
    console.print(est.render_table(results, capacity))
    for line in est.verdict_lines(results, capacity):
        console.print(line)
    if out is not None:
        path = est.write_estimates(out, results, capacity)
        console.print(f"wrote {path}")
