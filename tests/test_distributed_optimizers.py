"""Distributed SWAN/SinkGD equal the single-process optimizers (2 gloo ranks on CPU)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from optimizers.stateless import SWAN, SinkGD
from optimizers.distributed import DDPSWAN, DDPSinkGD, FSDPSWAN, FSDPSinkGD, assign_owners

WORLD = 2
# Shapes cover: square (singular Gram after GradNorm), tall, wide, a repeated shape (batched chunk) and an
# odd row count (uneven FSDP row blocks: 5 rows -> 3 + 2).
SHAPES = [(6, 6), (6, 6), (9, 4), (5, 7), (4, 10)]
HPARAMS = {"swan": dict(lr=0.1, steps=6), "sinkgd": dict(lr=0.1, iterations=3),
           "swan-bf16": dict(lr=0.1, steps=6, beta=0.5, whiten_precision="bf16")}
SINGLE = {"swan": SWAN, "sinkgd": SinkGD, "swan-bf16": SWAN}


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(n, m, bias=False) for m, n in SHAPES])


def _loss(model: torch.nn.Module) -> torch.Tensor:
    # Each layer sees its own fixed input, so every weight gets a full-rank-ish gradient.
    torch.manual_seed(1)
    return sum((layer(torch.randn(8, layer.in_features)) ** 2).mean() for layer in model)


def _reference(name: str, steps: int) -> list[torch.Tensor]:
    model = _model()
    opt = SINGLE[name](model.parameters(), **HPARAMS[name])
    for _ in range(steps):
        opt.zero_grad()
        _loss(model).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, mode: str, name: str, steps: int, port: int, out: str) -> None:
    # A TCP store on loopback: a FileStore can be torn down under a rank that is still shutting down.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = _model()
        if mode == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for layer in model:
                fully_shard(layer)
            fully_shard(model)
            cls = {"swan": FSDPSWAN, "sinkgd": FSDPSinkGD, "swan-bf16": FSDPSWAN}[name]
        else:
            cls = {"swan": DDPSWAN, "sinkgd": DDPSinkGD, "swan-bf16": DDPSWAN}[name]
        opt = cls(model.parameters(), **HPARAMS[name])
        comm_calls = []
        opt.comm_timer = lambda: _Count(comm_calls)
        for _ in range(steps):
            opt.zero_grad()
            _loss(model).backward()  # DDP would all-reduce here; every rank's gradient is already equal
            opt.step()
        params = [p.full_tensor() if hasattr(p, "full_tensor") else p.detach() for p in model.parameters()]
        if rank == 0:
            torch.save({"params": [p.clone() for p in params], "comm_calls": len(comm_calls)}, out)
        dist.barrier()  # no rank tears its process group down while another still talks to it
    finally:
        dist.destroy_process_group()
    # gloo's threads can abort the interpreter's static teardown (SIGABRT, "terminate called without an
    # active exception") while the peer is still shutting down; the result is saved, so leave at once.
    sys.stderr.flush()
    os._exit(0)


class _Count:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def __enter__(self) -> None:
        self.calls.append(1)

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("name", ["swan", "sinkgd", "swan-bf16"])  # swan-bf16: whiten_precision reaches the owner
def test_two_ranks_equal_single_process(tmp_path: Path, mode: str, name: str) -> None:
    steps = 2
    out = tmp_path / "params.pt"
    mp.spawn(_worker, args=(mode, name, steps, _free_port(), str(out)), nprocs=WORLD, join=True)
    result = torch.load(out)
    for got, want in zip(result["params"], _reference(name, steps)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert result["comm_calls"] > 0  # the collectives ran under the comm timer


def test_owner_plan_balances_and_is_deterministic() -> None:
    costs = [8.0, 1.0, 1.0, 4.0, 2.0, 2.0]
    owners = assign_owners(costs, 2)
    assert owners == assign_owners(costs, 2)
    loads = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(2)]
    assert sorted(loads) == [9.0, 9.0]
    assert assign_owners(costs, 1) == [0] * len(costs)
    with pytest.raises(ValueError):
        assign_owners(costs, 0)


def test_needs_an_initialised_process_group() -> None:
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="torch.distributed"):
        DDPSWAN(_model().parameters())

