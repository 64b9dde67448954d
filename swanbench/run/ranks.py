"""The rank side of a multi-process cell: what each of `world_size` processes does under torchrun.

A cell with `world_size > 1` is launched as torchrun over the worker (`swanbench.launch`); inside each rank
the worker and the training loop call this module:

- `launched_rank()`, `init_from_env(device)`: the process group from torchrun's environment (gloo on CPU,
  nccl on CUDA, one GPU per rank: `cuda:LOCAL_RANK`); `shutdown()`;
- `wrap_model(model, parallelism)`: DDP, or FSDP2 `fully_shard` on every decoder layer and the root;
- `build_optimizer(...)`: the registry's optimizer, SWAN/SinkGD swapped for their DDP/FSDP variants;
- `shard_batches(...)`: each rank's rows of the global micro-batch (data sharding, below);
- `reduce_sum(...)`: the global token count and loss of a step (all-reduce; tokens are counted, not multiplied);
- `grad_sync(...)`, `reshard(...)`: gradient synchronisation on the last micro-batch only; FSDP2 after an eval.

Each rank writes its own row; the launcher combines them (`swanbench.rundir.combine_rank_rows`). The
sharded eval is `swanbench.run.evaluate.evaluate_sharded`.

Data sharding: every rank draws the same global micro-batch of `world_size * batch_size` windows from the
seeded stream and keeps rows `[rank * batch_size, (rank + 1) * batch_size)`. So `batch_size` is per rank,
the global batch is `world_size x batch_size x grad_accum` sequences, and a 2-rank cell with batch_size
B/2 sees exactly the data (in the same order) of a 1-rank cell with batch_size B: their results differ
only by float reduction order.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

PARALLELISMS = ("ddp", "fsdp")


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


# ---------------------------------------------------------------- joining the job

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


def reshard(model: Any) -> None:
    """Free FSDP2's unsharded parameters after a forward without backward (an eval).

    FSDP2 keeps the root module's parameters unsharded after its forward (backward would gather them again
    at once); after an eval nothing follows, so they would sit whole on every rank until the next step and
    the run's per-rank parameter bytes would show the whole embedding and head. No-op outside FSDP2.
    """
    for module in unwrap(model).modules():
        if hasattr(module, "reshard") and hasattr(module, "set_requires_gradient_sync"):  # an FSDPModule
            module.reshard()
