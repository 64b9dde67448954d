"""`swanbench estimate`: training memory from shapes alone (library: swanbench.estimate)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def estimate(
    model: Annotated[str, typer.Option("--model", "-m", help="Model preset (swanbench list models), e.g. 1b.")],
    optimizer: Annotated[str, typer.Option(
        "--optimizer", help="Optimizer name(s), comma-separated, e.g. adamw,swan,sinkgd.")] = "adamw",
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
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Also write the estimate as CSV (one row per optimizer).")]
    = None,
    hp: Annotated[Optional[list[str]], typer.Option(
        "--hp", help="A hyperparameter as KEY=VALUE (TOML value), repeatable: it goes to every listed optimizer "
                     "that takes KEY (e.g. --hp rank=512 for GaLore and APOLLO); NAME.KEY=VALUE for one.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimate as JSON (bytes) for scripts.")]
    = False,
) -> None:
    """Estimate parameters, gradients, optimizer state, activations and step workspace before running."""
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
        tables = hparams_by_optimizer(names, parse_hparams(hp or []))
        results, undeclared = [], []
        for name in names:
            try:
                results.append(est.estimate(model, name, dtype, batch_size, seq_len, grad_accum=grad_accum,
                                            attn_implementation=attn, world_size=world_size,
                                            parallelism=parallelism, hparams=tables[name] or None))
            except est.NotDeclared as exc:
                undeclared.append((name, str(exc)))
    except (est.EstimateError, KeyError) as exc:
        typer.echo(f"error: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(estimate_json(est, results, undeclared, capacity), indent=2))
    else:
        _print(est, results, undeclared, capacity)
    if out is not None and results:
        path = est.write_estimates(out, results, capacity)
        typer.echo(f"wrote {path}", err=as_json)


def parse_hparams(items: list[str]) -> dict:
    """{key: value} from KEY=VALUE items, each value read as a TOML value (a bare word stays a string)."""
    from swanbench.estimate import EstimateError

    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise EstimateError(f"--hp {item!r}: expected KEY=VALUE, e.g. rank=512")
        try:
            out[key.strip()] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = text.strip()
    return out


def hparams_by_optimizer(names: list[str], hparams: dict) -> dict[str, dict]:
    """{optimizer: its hyperparameters}: NAME.KEY to that optimizer, a plain KEY to every listed optimizer
    that takes it; a key no listed optimizer takes is an error (a typo must not pass silently)."""
    from swanbench.estimate import EstimateError, optimizer_info

    tables: dict[str, dict] = {name: {} for name in names}
    for key, value in hparams.items():
        owner, dot, bare = key.rpartition(".")
        if dot and owner in tables:
            tables[owner][bare] = value
            continue
        takers = [n for n in names if key in optimizer_info(n).hparams]
        if not takers:
            raise EstimateError(f"--hp {key}: no listed optimizer takes it ({', '.join(names)})")
        for name in takers:
            tables[name][key] = value
    return tables


def estimate_json(est, results: list, undeclared: list[tuple[str, str]], capacity: int | None) -> dict:
    """{"estimates": [one row per optimizer, bytes], "not_declared": [{"optimizer", "reason"}]}."""
    return {"estimates": [est.estimate_row(e, capacity) for e in results],
            "not_declared": [{"optimizer": name, "reason": reason} for name, reason in undeclared]}


def _print(est, results: list, undeclared: list[tuple[str, str]], capacity: int | None) -> None:
    from rich.console import Console

    console = Console()
    if results:
        console.print(est.render_table(results, capacity))
    for line in est.verdict_lines(results, capacity) if results else []:
        console.print(line)
    for name, _ in undeclared:
        console.print(f"{name}: not declared (no state or workspace declaration; a run measures its state "
                      "bytes exactly)")
