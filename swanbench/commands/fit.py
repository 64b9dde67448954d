"""`swanbench fit`: the largest batch size that trains under a memory budget (library: swanbench.fit)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer


def fit(
    optimizer: Annotated[str, typer.Option("--optimizer", help="Optimizer name, e.g. swan.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model preset, e.g. nano, 1b.")],
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence.")] = 256,
    dtype: Annotated[str, typer.Option(help="Whole-model dtype: float32, bfloat16, float16.")] = "float32",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    memory_budget: Annotated[Optional[str], typer.Option(
        help="Budget, e.g. 2GiB, 1500MB or bytes. Required on CPU (checked against peak RSS); on CUDA "
             "defaults to the device's memory (enforced by the allocator).")] = None,
    max_batch: Annotated[int, typer.Option(help="Largest batch size to try.")] = 4096,
    steps: Annotated[int, typer.Option(help="Training steps per probe (>= 2: state exists from step 2).")] = 3,
    timeout_s: Annotated[float, typer.Option("--timeout", help="Seconds per probe before it is killed.")] = 600.0,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Output directory (default results/fit/<optimizer>-<model>-<seq_len>-<dtype>).")] = None,
) -> None:
    """Bisect the batch size: each probe trains a few steps in its own process under the budget."""
    from dataclasses import replace

    from rich.console import Console

    from swanbench import fit as fitlib
    from swanbench.estimate import EstimateError, canonical_dtype, format_bytes, parse_bytes
    from swanbench.models import UnknownModelError, get_preset
    from swanbench.userfiles import output_dir_problem

    console = Console()
    try:
        get_preset(model)
        target = fitlib.FitTarget(
            optimizer=_known_optimizer(optimizer), model=model, seq_len=_at_least("--seq-len", seq_len, 2),
            dtype=canonical_dtype(dtype), device=_usable_device(device, canonical_dtype(dtype)),
            memory_budget=None, steps=_at_least("--steps", steps, 2), timeout_s=_positive("--timeout", timeout_s))
        budget = parse_bytes(memory_budget) if memory_budget is not None else fitlib.default_budget(target.device)
        target = replace(target, memory_budget=budget)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", optimizer)  # an import path "pkg.mod:Name" has a colon
        out_dir = out or Path("results") / "fit" / f"{safe}-{model}-{seq_len}-{target.dtype}"
        problem = output_dir_problem(out_dir, subdirs=("probes",))
        if problem:  # before the first probe, not after it
            raise ValueError(f"--out {problem}")
        console.print(f"fit {optimizer} on {model}, seq_len {seq_len}, {target.dtype}, {target.device}, budget "
                      f"{format_bytes(budget)}: probes in {out_dir}")
        result = fitlib.fit(target, out_dir, max_batch=_at_least("--max-batch", max_batch, 1),
                            on_probe=lambda p: console.print(fitlib.probe_line(p)))
    except (fitlib.FitError, EstimateError, UnknownModelError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    console.print(fitlib.render_probes(target, result))
    console.print(fitlib.answer_line(target, result))
    console.print(f"wrote {out_dir / fitlib.FIT_FILE}")


def _known_optimizer(name: str) -> str:
    import optimizers

    optimizers.info(name)  # ValueError with a did-you-mean for an unknown name
    return name


def _usable_device(device: str, dtype: str) -> str:
    """The device resolved ("auto" -> cpu or cuda), or ValueError when it is not one or not here: rejected
    before any probe runs, as a suite's device is."""
    from swanbench.env import resolve_device
    from swanbench.suite import DEVICE_RE, device_problem

    if not DEVICE_RE.match(device):
        raise ValueError(f"--device: unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    problem = device_problem(device, dtype)
    if problem:
        raise ValueError(f"--device: {problem}")
    return resolve_device(device)


def _positive(flag: str, value: float) -> float:
    import math

    if not 0 < value < math.inf:
        raise ValueError(f"{flag} must be a positive number of seconds, got {value}")
    return value


def _at_least(flag: str, value: int, low: int) -> int:
    if value < low:
        raise ValueError(f"{flag} must be >= {low}, got {value}")
    return value
