"""Multi-process cells: one run on `world_size` ranks under torchrun, with DDP or FSDP2.

A cell with `world_size > 1` runs its worker as
`python -m torch.distributed.run --standalone --nproc-per-node N -m swanbench.worker RUN_DIR`.
This module is what the worker, the training loop and the runner call for it:

- `worker_command(cell)`: the command line (torchrun for world_size > 1, the plain worker otherwise);
- `init_from_env(device)`: the process group from torchrun's environment (gloo on CPU, nccl on CUDA,
  one GPU per rank: `cuda:LOCAL_RANK`);
- `wrap_model(model, parallelism)`: DDP, or FSDP2 `fully_shard` on every decoder layer and the root;
- `build_optimizer(...)`: the registry's optimizer, SWAN/SinkGD swapped for their DDP/FSDP variants;
- `shard_batches(...)`: each rank's rows of the global micro-batch (data sharding, below);
- `reduce_sum(...)`: the global token count and loss of a step (all-reduce; tokens are counted, not multiplied);
- `evaluate_sharded(...)`: the eval, split over the ranks like the training batches;
- `rank_row_file`, `combine_rank_rows`: every rank writes its own row; the parent combines them into
  run.csv (rows per rank plus the `rank = "max"` row).

Data sharding: every rank draws the same global micro-batch of `world_size * batch_size` windows from the
seeded stream and keeps rows `[rank * batch_size, (rank + 1) * batch_size)`. So `batch_size` is per rank,
the global batch is `world_size x batch_size x grad_accum` sequences, and a 2-rank cell with batch_size
B/2 sees exactly the data (in the same order) of a 1-rank cell with batch_size B: their results differ
only by float reduction order.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

PARALLELISMS = ("ddp", "fsdp")
RANK_FILE_PREFIX = "rank-"
MAX_RANK = "max"  # the `rank` of a run's summary row (every run has exactly one)
# The worst status wins when ranks disagree (one rank's OOM is the run's OOM).
STATUS_PRIORITY = ("crashed", "timeout", "oom", "diverged", "ok")
TORCHRUN = ("-m", "torch.distributed.run", "--standalone")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job (torchrun's RANK, WORLD_SIZE, LOCAL_RANK) and its device."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# ---------------------------------------------------------------- launching

def worker_command(world_size: int, worker_module: str = "swanbench.worker",
                   python: str = sys.executable) -> list[str]:
    """The command that runs one run's worker on `world_size` processes (RUN_DIR is appended by the caller).

    world_size 1: the plain worker process. More: torchrun on this node (`--standalone` picks a free
    rendezvous port, so several cells may start at once), one process per rank.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if world_size == 1:
        return [python, "-m", worker_module]
    return [python, *TORCHRUN, "--nproc-per-node", str(world_size), "-m", worker_module]


def launched_rank() -> int | None:
    """This process's rank when torchrun started it (its RANK variable), else None."""
    value = os.environ.get("RANK")
    return int(value) if value is not None and "WORLD_SIZE" in os.environ else None


def init_from_env(device: str) -> DistEnv:
    """Join the process group torchrun set up; returns this rank's DistEnv (device with its index on CUDA).

    CUDA: rank r of a node uses `cuda:LOCAL_RANK` and the nccl backend. CPU: gloo.
    """
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device, backend = f"cuda:{local}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": torch.device(device)} if backend == "nccl" else {}
        dist.init_process_group(backend, **kwargs)
    return DistEnv(rank, world, local, backend, device)


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------- model and optimizer

def wrap_model(model: Any, parallelism: str, env: DistEnv) -> Any:
    """DDP, or FSDP2 (`fully_shard` on every decoder layer, then the root), around an identical model.

    Every rank builds the model from the same seed, so the replicas start equal (DDP also broadcasts
    rank 0's weights). FSDP2 shards each parameter by rows (`Shard(0)`), the layout the FSDP optimizers need.
    """
    if parallelism == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [int(env.device.split(":")[1])] if env.device.startswith("cuda") else None
        return DistributedDataParallel(model, device_ids=ids)
    if parallelism == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in decoder_layers(model):
            fully_shard(layer)
        fully_shard(model)
        return model
    raise ValueError(f"unknown parallelism {parallelism!r} (known: {', '.join(PARALLELISMS)})")


def decoder_layers(model: Any) -> list[Any]:
    """The transformer blocks of a transformers causal LM (`model.model.layers`), or [] if it has none."""
    inner = getattr(model, "model", None)
    return list(getattr(inner, "layers", []))


def build_optimizer(name: str, model: Any, parallelism: str, hparams: dict[str, Any]) -> Any:
    """The registry optimizer for a wrapped model (SWAN/SinkGD -> DDP/FSDP variants; see build_distributed)."""
    from optimizers.distributed import build_distributed

    return build_distributed(name, model, parallelism, **hparams)


def unwrap(model: Any) -> Any:
    """The module inside DDP (FSDP2 wraps in place)."""
    return getattr(model, "module", model)


# ---------------------------------------------------------------- data and per-step reductions

def shard_batches(global_batches: Iterator[Any], rank: int, world_size: int) -> Iterator[Any]:
    """Rank's rows of each global micro-batch ([world_size * B, T] -> [B, T]); see the module doc."""
    for batch in global_batches:
        per_rank, rest = divmod(len(batch), world_size)
        if rest:
            raise ValueError(f"a global batch of {len(batch)} rows does not split over {world_size} ranks")
        yield batch[rank * per_rank:(rank + 1) * per_rank]


def reduce_sum(values: Sequence[float], device: str) -> list[float]:
    """Each value summed over ranks, with one all-reduce (float64: token counts stay exact).

    The training loop uses it for the step's global token count (before the step) and the mean loss
    (after it), so every rank takes the same divergence and eval decisions. Both calls sit outside the
    timed phases (they are synchronisation points).
    """
    import torch
    import torch.distributed as dist

    buf = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(buf)
    return buf.tolist()


@contextlib.contextmanager
def grad_sync(model: Any, enabled: bool) -> Iterator[None]:
    """Gradient synchronisation on (the last micro-batch of a step) or off (the ones before it).

    DDP: `no_sync()` skips the all-reduce; FSDP2: `set_requires_gradient_sync(False)` skips the
    reduce-scatter (gradients accumulate unsharded until the last micro-batch). A plain module: no-op.
    """
    if enabled:
        yield
    elif hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def evaluate_sharded(model: Any, batches: Sequence[Any], device: str, env: DistEnv) -> dict[str, float]:
    """`swanbench.train.evaluate`'s numbers, computed by all ranks together (same definitions).

    Each global validation batch is split by rows like the training batches; every rank runs its rows
    (a rank left without rows runs the first row and drops it, because FSDP2's forward is a collective
    every rank must enter), and one all-reduce sums the per-batch loss sums and token counts. So the
    token-weighted loss and the GaLore number equal a 1-rank eval with batch_size = world_size x B, and
    no rank holds more than its own micro-batch's activations.
    """
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from swanbench.train import _ppl

    model.eval()
    sums = torch.zeros(2 * len(batches), dtype=torch.float64)  # [loss sum, tokens] per global batch
    with torch.no_grad():
        for i, window in enumerate(batches):
            per_rank = math.ceil(len(window) / env.world_size)
            rows = window[env.rank * per_rank:(env.rank + 1) * per_rank]
            counted = len(rows) > 0
            ids = torch.from_numpy(np.ascontiguousarray(rows if counted else window[:1])).to(
                device=device, dtype=torch.long)
            logits = model(input_ids=ids).logits
            targets = ids[:, 1:].reshape(-1)
            summed = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets,
                                     reduction="sum")
            if counted:
                sums[2 * i] = summed.item()
                sums[2 * i + 1] = targets.numel()
    model.train()
    reshard(model)
    sums = sums.to(device)  # nccl reduces device tensors; on CPU this is the same tensor
    dist.all_reduce(sums)
    per_batch = sums.view(-1, 2).tolist()
    loss_sum = sum(s for s, _ in per_batch)
    tokens = int(sum(n for _, n in per_batch))
    loss = loss_sum / tokens
    galore = sum(s / n for s, n in per_batch) / (len(per_batch) + 1)  # the reference script's quirk
    return {"eval_loss": loss, "eval_ppl": _ppl(loss), "eval_loss_galore": galore,
            "eval_ppl_galore": _ppl(galore), "eval_tokens": tokens}


def reshard(model: Any) -> None:
    """Free FSDP2's unsharded parameters after a forward without backward (an eval).

    FSDP2 keeps the root module's parameters unsharded after its forward (backward would gather them again
    at once); after an eval nothing follows, so they would sit whole on every rank until the next step and
    the run's per-rank parameter bytes would show the whole embedding and head. No-op outside FSDP2.
    """
    for module in unwrap(model).modules():
        if hasattr(module, "reshard") and hasattr(module, "set_requires_gradient_sync"):  # an FSDPModule
            module.reshard()


# ---------------------------------------------------------------- per-rank rows

def rank_row_file(rank: int) -> str:
    return f"{RANK_FILE_PREFIX}{rank}.csv"


def worst_status(statuses: Sequence[str | None]) -> str:
    """The run's status from its ranks': the first of crashed, timeout, oom, diverged, ok that a rank reported.

    A missing rank (None) counts as crashed only when no rank reported a failure: after one rank's OOM,
    torchrun stops the others before they can write, and the run is an OOM, not a crash.
    """
    reported = {s if s in STATUS_PRIORITY else "crashed" for s in statuses if s is not None}
    worst = next((s for s in STATUS_PRIORITY if s in reported), "crashed")
    return "crashed" if worst == "ok" and None in statuses else worst


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not (
        isinstance(value, float) and math.isnan(value))


def max_row(rows: Sequence[dict[str, Any]], world_size: int) -> dict[str, Any]:
    """The run's summary row from its per-rank rows (rank 0's first, if present).

    - memory (`*_bytes`) and time (`*_ms`) columns: the maximum over ranks (the slowest rank sets the step
      time; the fullest rank sets the memory you must provision);
    - `tokens_per_s`: global tokens / the slowest rank's time, i.e. the minimum over ranks;
    - status: the worst rank's; `ranks_reported`: how many of `world_size` ranks wrote a row;
    - everything else (eval loss, params, identity): rank 0's (every rank evaluates the same model).
    """
    base = dict(sorted(rows, key=lambda r: str(r.get("rank")))[0]) if rows else {}
    for key in {k for r in rows for k in r}:
        values = [r[key] for r in rows if _is_number(r.get(key))]
        if not values:
            continue
        if key.endswith("_bytes") or key.endswith("_ms"):
            base[key] = max(values)
        elif key == "tokens_per_s":
            base[key] = min(values)
    statuses = [r.get("status") for r in rows] + [None] * (world_size - len(rows))
    base["status"] = worst_status(statuses)
    errors = [f"rank {r.get('rank')}: {r['error']}" for r in rows if r.get("error")]
    if len(rows) < world_size:
        missing = world_size - len(rows)
        errors.append(f"{missing} of {world_size} ranks wrote no row (killed or crashed: see log.txt)")
    base["error"] = "; ".join(errors)[:2000] or None
    base["rank"] = MAX_RANK
    base["ranks_reported"] = len(rows)
    return base


def combine_rank_rows(run_dir: Path, world_size: int) -> list[dict[str, Any]] | None:
    """Write run.csv from the ranks' rank-<r>.csv: the `rank = "max"` row first, then one row per rank.

    Returns the rows, or None when no rank wrote a row (the caller records the crash or timeout).
    Called by the parent after torchrun exits, so a rank killed mid-run cannot leave a half-combined file.
    """
    from swanbench.runner import read_json_rows
    from swanbench.tables import RUNS_COLUMNS, write_rows_atomic
    from swanbench.worker import ROW_FILE

    run_dir = Path(run_dir)
    rows = []
    for rank in range(world_size):
        found = read_json_rows(run_dir / rank_row_file(rank))
        for row in found:
            row["rank"] = str(rank)
        rows.extend(found)
    if not rows:
        return None
    combined = [max_row(rows, world_size), *rows]
    write_rows_atomic(run_dir / ROW_FILE, combined, RUNS_COLUMNS)
    return combined
