"""SWAN and SinkGD across ranks: DDP (replicated gradients) and FSDP2 (row-sharded gradients).

Under DDP every rank holds every (all-reduced) gradient, so stepping SWAN on every rank repeats the
whole whitening world_size times. `DDPSWAN` gives each rank a share of the work (chunks of same-shape
matrices, balanced by their Newton-Schulz cost), whitens its share, and broadcasts each update from its
owner (the scheme of the distributed Muon implementations). `DDPSinkGD` does the same for the
SR-Sinkhorn scales: the owner broadcasts only the m + n scale entries, not an m x n update.

Under FSDP2 (`fully_shard`) each rank holds a block of rows of every gradient (`Shard(0)`):
- GradNorm standardises rows, so it is local;
- SR-Sinkhorn's row step is local and its column step needs only the column sums of squares, one
  all-reduce of n floats per iteration (`sharded_sinkhorn_scales`);
- whitening needs the whole matrix: each row-block (after the local GradNorm) is gathered to the
  matrix's owner rank, whitened there, and the update's row-blocks are scattered back.

The results equal the single-process optimizers (tests run both on 2 gloo ranks). Communication is
timed through `comm_timer`, the same hook shape as `preprocess_timer`: a zero-argument callable
returning a context manager, entered around every collective the optimizer issues.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from optimizers import functional as F
from optimizers.functional.gradnorm import _grad_norm_into
from optimizers.functional.sinkhorn import _sinkhorn_inplace_
from optimizers.functional.whitening import _whiten_batch
from optimizers.stateless import SWAN, SinkGD, _add_update_, _chunks, _same_shape_buckets

__all__ = [
    "DDPSWAN", "DDPSinkGD", "FSDPSWAN", "FSDPSinkGD", "assign_owners", "sharded_sinkhorn_scales",
    "DISTRIBUTED_MODES", "DISTRIBUTED_VARIANTS", "build_distributed",
]

DISTRIBUTED_MODES = ("ddp", "fsdp")
# Matrix optimizers whose update is elementwise: correct on FSDP's row shards with no variant.
ELEMENTWISE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def assign_owners(costs: Sequence[float], world_size: int) -> list[int]:
    """Owner rank of each work item: greedy longest-first onto the least-loaded rank.

    Deterministic (ties broken by item index, then rank), so every rank computes the same plan from the
    same shapes without communicating.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    load = [0.0] * world_size
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owners[i] = rank
        load[rank] += costs[i]
    return owners


def _whitening_cost(shape: Sequence[int], steps: int) -> float:
    """Flops of one whitening (the cost model's nominal 4 s^2 l + 6 k s^3, s the smaller side, l the longer)."""
    s, l = sorted((int(shape[-2]), int(shape[-1])))
    return 4.0 * s * s * l + 6.0 * steps * s ** 3


class _Collectives:
    """Process-group bookkeeping and the timed collectives the distributed optimizers share."""

    comm_timer: Callable[[], contextlib.AbstractContextManager] | None = None

    def __init__(self, params: Iterable[Any], *, process_group: Any = None, **kwargs: Any) -> None:
        """The wrapped optimizer's arguments, plus `process_group` (default: the world)."""
        super().__init__(params, **kwargs)
        self._init_group(process_group)

    def _init_group(self, process_group: Any) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(f"{type(self).__name__} needs torch.distributed initialised "
                               "(torchrun / init_process_group) before it is built")
        self.process_group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self.comm_timer = None

    def _comm(self) -> contextlib.AbstractContextManager:
        return self.comm_timer() if self.comm_timer is not None else contextlib.nullcontext()

    def _global(self, group_rank: int) -> int:
        # Collectives take global ranks in torch < 2.6; translate once here.
        if self.process_group is None:
            return group_rank
        return dist.get_global_rank(self.process_group, group_rank)

    def _broadcast(self, tensor: Tensor, owner: int) -> None:
        with self._comm():
            dist.broadcast(tensor, src=self._global(owner), group=self.process_group)

    def _all_reduce(self, tensor: Tensor) -> None:
        with self._comm():
            dist.all_reduce(tensor, group=self.process_group)


# --------------------------------------------------------------------------------------------------
# DDP: replicated gradients, work split by owner
# --------------------------------------------------------------------------------------------------

class DDPSWAN(_Collectives, SWAN):
    """SWAN under DDP: each rank whitens its share of the matrices; owners broadcast the updates.

    Same arguments as `SWAN`, plus `process_group` (default: the world). Every rank must hold the same
    parameters with the same (all-reduced) gradients, as DDP guarantees; the update equals `SWAN`'s.
    Transient memory: a rank keeps its own chunks' fp32 updates until they are broadcast, plus one
    receive buffer, i.e. about (1/world_size) of SWAN's stepped matrices in fp32, not all of them.
    """

    def _plan(self, group: dict[str, Any], params: list[Tensor]) -> list[list[Tensor]]:
        """The chunks of same-shape matrices SWAN would whiten together, in SWAN's order."""
        budget = self._budget(group)
        chunks: list[list[Tensor]] = []
        for bucket in _same_shape_buckets(params):
            per_matrix = self._workspace(tuple(bucket[0].shape), group)
            chunks.extend(_chunks(bucket, max(1, budget // per_matrix)))
        return chunks

    def _step_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        chunks = self._plan(group, params)
        costs = [len(c) * _whitening_cost(c[0].shape, group["steps"]) for c in chunks]
        owners = assign_owners(costs, self.world_size)
        mine: dict[int, Tensor] = {}
        for i, chunk in enumerate(chunks):  # all local work first, so ranks whiten in parallel
            if owners[i] == self.rank:
                with self._timer():
                    mine[i], _ = self._preprocess(chunk, group)  # the scratch is dropped: keep one buffer
        for i, chunk in enumerate(chunks):
            m, n = chunk[0].shape
            update = mine.pop(i, None)
            if update is None:
                update = torch.empty((len(chunk), m, n), dtype=torch.float32, device=chunk[0].device)
            self._broadcast(update, owners[i])
            self._apply(chunk, update, group)
            del update


class DDPSinkGD(_Collectives, SinkGD):
    """SinkGD under DDP: each matrix's owner computes its SR-Sinkhorn scales and broadcasts them.

    Only m + n floats travel per matrix; every rank then applies diag(r) G diag(c) to its replica.
    """

    def _step_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        self._decay_(params, group)
        step = -group["lr"] * group["alpha"]
        owners = assign_owners([float(p.numel()) for p in params], self.world_size)
        scales: list[Tensor] = []
        methods = [F.resolve_sinkhorn_method(p.grad, group["method"]) for p in params]
        for p, owner, method in zip(params, owners, methods):
            m, n = p.shape
            if owner == self.rank:
                with self._timer():
                    r, c = F.sinkhorn_scales(p.grad, group["iterations"], group["eps"], method)
                scales.append(torch.cat([r, c]))
            else:
                scales.append(torch.empty(m + n, dtype=torch.float32, device=p.device))
        for p, owner, rc, method in zip(params, owners, scales, methods):
            self._broadcast(rc, owner)
            m = p.shape[0]
            self._apply_scaled_(p, rc[:m], rc[m:], step, method)


# --------------------------------------------------------------------------------------------------
# FSDP2: gradients sharded by rows
# --------------------------------------------------------------------------------------------------

def _local(t: Tensor) -> Tensor:
    """The rank-local block of a DTensor (a plain tensor is already local)."""
    return t.to_local() if hasattr(t, "to_local") else t


def _check_row_sharded(p: Tensor) -> None:
    placements = getattr(p, "placements", None)
    if placements is None or len(placements) != 1 or not placements[0].is_shard(0):
        raise ValueError(
            f"FSDP optimizers expect parameters sharded by rows (fully_shard's Shard(0) on a 1-D mesh), "
            f"got {type(p).__name__} with placements {placements}")


def _row_block(rows: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows [start, stop) that rank holds under Shard(0) (torch.chunk's split: ceil-sized blocks)."""
    size = math.ceil(rows / world_size)
    start = min(rows, rank * size)
    return start, min(rows, start + size)


def sharded_sinkhorn_scales(g_local: Tensor, rows: int, iters: int, eps: float,
                            all_reduce: Callable[[Tensor], None]) -> tuple[Tensor, Tensor]:
    """SR-Sinkhorn scales (r for the local rows, c for all columns) of a row-sharded matrix.

    The same iteration as `functional.sr_sinkhorn(..., method="vectors")` on the local rows' iterate (an
    fp32 copy, scaled in place, eps floors on the iterate's norms): the row step needs only local rows; the
    column step needs every row's squares, so the n column sums of squares are all-reduced per iteration.
    """
    x = g_local.to(torch.float32, copy=True).unsqueeze(0)
    _, r, c = _sinkhorn_inplace_(x, iters, eps, all_reduce=all_reduce, rows_total=rows)
    del x
    return r.reshape(-1), c.reshape(-1)


class _FSDPMixin(_Collectives):
    def _all_finite(self, groups: list[list[Tensor]]) -> bool:
        """Every rank sees only its rows: agree on finiteness with one all-reduce of a flag."""
        local = [_local(p.grad) for params in groups for p in params]
        ok = all(bool(t.isfinite().all()) for t in local if t.numel())
        flag = torch.tensor([0.0 if ok else 1.0], device=local[0].device if local else "cpu")
        self._all_reduce(flag)
        return flag.item() == 0.0

    @staticmethod
    def _decay_local_(params: list[Tensor], group: dict[str, Any]) -> None:
        if group["weight_decay"] != 0:
            torch._foreach_mul_([_local(p) for p in params], 1.0 - group["lr"] * group["weight_decay"])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            _check_row_sharded(p)


class FSDPSWAN(_FSDPMixin, SWAN):
    """SWAN on FSDP2 row shards: local GradNorm, gather to the owner, whiten, scatter the rows back.

    Owners are balanced by whitening cost; the owner holds one full fp32 matrix and its workspace while
    whitening, the other ranks only their row-block. Same arguments as `SWAN` plus `process_group`
    (default: the parameters' mesh group).
    """

    def _step_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        self._decay_local_(params, group)
        step = -group["lr"] * group["alpha"]
        owners = assign_owners([_whitening_cost(p.shape, group["steps"]) for p in params], self.world_size)
        for p, owner in zip(params, owners):
            update = self._whiten_sharded(p, owner, group)
            _add_update_(_local(p), update, step)

    def _whiten_sharded(self, p: Tensor, owner: int, group: dict[str, Any]) -> Tensor:
        m, n = p.shape
        block = math.ceil(m / self.world_size)
        g = _local(p.grad)
        padded = torch.zeros((block, n), dtype=torch.float32, device=g.device)
        with self._timer():
            _grad_norm_into(g, padded[: g.shape[0]], group["eps"])  # rows are independent: local
        is_owner = owner == self.rank
        blocks = [torch.empty_like(padded) for _ in range(self.world_size)] if is_owner else None
        with self._comm():
            dist.gather(padded, blocks, dst=self._global(owner), group=self.process_group)
        if is_owner:
            with self._timer():
                full = torch.cat(blocks)[:m].unsqueeze(0)
                update = _whiten_batch(full, group["steps"], group["beta"], group["whitening"],
                                         group["whiten_precision"], centered=True, owned=True)
                F.frobenius_rescale_(update, math.sqrt(m * n), group["eps"])
            update = update[0]
            blocks = [torch.zeros_like(padded) for _ in range(self.world_size)]
            for r in range(self.world_size):
                start, stop = _row_block(m, self.world_size, r)
                blocks[r][: stop - start] = update[start:stop]
        with self._comm():
            dist.scatter(padded, blocks, src=self._global(owner), group=self.process_group)
        return padded[: g.shape[0]]


class FSDPSinkGD(_FSDPMixin, SinkGD):
    """SinkGD on FSDP2 row shards: local row steps, one all-reduce of n column sums per iteration.

    No rank ever holds a full matrix; the communication is iterations x n floats per matrix.
    """

    def _step_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        self._decay_local_(params, group)
        step = -group["lr"] * group["alpha"]
        for p in params:
            g = _local(p.grad)
            with self._timer():
                r, c = sharded_sinkhorn_scales(g, p.shape[0], group["iterations"], group["eps"],
                                               self._all_reduce)
            update = g * r.unsqueeze(-1)  # (g r) c, the order that stays in range
            _add_update_(_local(p), update.mul_(c), step)


# --------------------------------------------------------------------------------------------------
# The registry's hybrids with their matrix part swapped for the distributed variant
# --------------------------------------------------------------------------------------------------

# mode -> single-process matrix optimizer -> its distributed variant.
DISTRIBUTED_VARIANTS: dict[str, dict[type, type]] = {
    "ddp": {SWAN: DDPSWAN, SinkGD: DDPSinkGD},
    "fsdp": {SWAN: FSDPSWAN, SinkGD: FSDPSinkGD},
}


def build_distributed(name: str, model: torch.nn.Module, mode: str, *, process_group: Any = None,
                      **hparams: Any) -> torch.optim.Optimizer:
    """`optimizers.build(name, model, **hparams)` for a model wrapped in DDP (`mode="ddp"`) or FSDP2.

    The registry builds the optimizer exactly as for one process (same name rules, hyperparameters and
    AdamW part); a hybrid's SWAN/SinkGD child is then rebuilt as its distributed variant (DDPSWAN,
    FSDPSinkGD, ...) over the same parameters with the same group settings, so the update equals the
    single-process one. Torch's optimizers (AdamW, SGD, ... and a hybrid's AdamW part) run unchanged on
    the wrapped model: DDP replicates their state, FSDP2's DTensor parameters shard it by rows.
    Raises ValueError for an unknown mode, and for a hybrid whose matrix optimizer has no variant for
    `mode` under FSDP (e.g. torch's Muon would orthogonalise each row-shard on its own).
    """
    from optimizers.hybrid import HybridOptimizer
    from optimizers.registry import build

    if mode not in DISTRIBUTED_MODES:
        raise ValueError(f"unknown distributed mode {mode!r} (known: {', '.join(DISTRIBUTED_MODES)})")
    opt = build(name, model, **hparams)
    if not isinstance(opt, HybridOptimizer):
        return opt
    parts = dict(opt.optimizers)
    matrix = parts.get("matrix")
    variant = DISTRIBUTED_VARIANTS[mode].get(type(matrix)) if matrix is not None else None
    if variant is None:
        # torch's elementwise optimizers (adamw-split's matrix part) update a row shard as they would the whole
        if matrix is not None and mode == "fsdp" and not isinstance(matrix, ELEMENTWISE):
            raise ValueError(f"optimizer {name!r}: its matrix optimizer {type(matrix).__name__} has no FSDP "
                             "variant (it needs whole matrices); use parallelism = \"ddp\"")
        return opt
    parts["matrix"] = _distributed_twin(matrix, variant, process_group)
    hybrid = HybridOptimizer(parts)
    hybrid.preprocess_timer = None
    hybrid.implementation = opt.implementation.replace(f"optimizers.{type(matrix).__name__}(",
                                                       f"optimizers.distributed.{variant.__name__}(")
    hybrid.registry_name = opt.registry_name
    return hybrid


def _distributed_twin(single: torch.optim.Optimizer, variant: type, process_group: Any) -> torch.optim.Optimizer:
    """`variant` over `single`'s parameter groups, with each group's settings (lr, alpha, steps, ...)."""
    groups = [dict(g) for g in single.param_groups]
    twin = variant(groups, process_group=process_group, **single.defaults)
    return twin
