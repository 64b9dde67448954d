"""A tiny LLaMA-named model and task for optimizer tests (CPU, milliseconds per step); test helpers only."""

from __future__ import annotations

import torch
from torch import nn

VOCAB, DIM, HIDDEN = 32, 16, 40


class ToyBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(DIM)
        self.q_proj = nn.Linear(DIM, DIM, bias=False)      # square: singular Gram after GradNorm
        self.o_proj = nn.Linear(DIM, DIM, bias=False)
        self.up_proj = nn.Linear(DIM, HIDDEN, bias=False)  # tall
        self.down_proj = nn.Linear(HIDDEN, DIM, bias=False)  # wide

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_layernorm(x)
        x = x + self.o_proj(torch.tanh(self.q_proj(h)))
        return x + self.down_proj(torch.relu(self.up_proj(x)))


class ToyLM(nn.Module):
    """Parameter names follow transformers' LLaMA, so the default hybrid rules apply unchanged."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed_tokens = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList([ToyBlock(), ToyBlock()])
        self.norm = nn.RMSNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


def batch(seed: int = 0, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of a learnable map: target = (3 * token + 1) mod VOCAB."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, 1), generator=gen)
    return ids, (3 * ids + 1) % VOCAB


def loss_fn(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    ids, target = data
    return nn.functional.cross_entropy(model(ids).reshape(-1, VOCAB), target.reshape(-1))


def hidden_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.endswith(("q_proj.weight", "o_proj.weight",
                                                                   "up_proj.weight", "down_proj.weight"))]


def step_allocation_peak(opt: torch.optim.Optimizer) -> int:
    """Peak of (bytes allocated - bytes freed) during one `opt.step()`, from the CPU profiler's allocation
    events: what a workspace declaration (`info(name).workspace_numel`) is checked against."""
    return allocation_peak(opt.step)


def allocation_peak(fn) -> int:
    """Peak of (bytes allocated - bytes freed) while `fn()` runs, from the CPU profiler's allocation events."""
    from torch._C._profiler import _EventType

    def walk(nodes):
        for node in nodes:
            yield node
            yield from walk(node.children)

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_time_ns, int(e.typed[1].alloc_size))
                    for e in walk(prof.profiler.kineto_results.experimental_event_tree())
                    if e.typed[0] == _EventType.Allocation)
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak
