"""Evaluation of a run's model on its fixed validation windows: token-weighted and GaLore-compatible numbers.

- `eval_loss` = sum of token losses / predicted tokens over every validation window (primary);
- `eval_loss_galore` = the GaLore reference script's number: the mean of per-batch mean losses divided by
  (batches + 1), because its counter starts at 1 (biased low; kept beside the primary number so that
  published tables can be compared);
- perplexity = exp(loss), None where it would overflow.

`evaluate` runs on one process; `evaluate_sharded` gives the same numbers with the ranks of a multi-rank
cell splitting every validation batch by rows. Evaluation is never counted as training time.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def ppl(loss: float) -> float | None:
    """exp(loss), or None where it is not finite (a diverged run, or a loss past exp's range)."""
    return math.exp(loss) if math.isfinite(loss) and loss < 700 else None


def batch_loss_sum(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy of one batch (fp32), as a 0-dim tensor."""
    logits = model(input_ids=ids).logits
    targets = ids[:, 1:].reshape(-1)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets, reduction="sum")


def summarise(per_batch: Sequence[tuple[float, float]]) -> dict[str, float | None]:
    """The eval record from (loss sum, predicted tokens) per batch."""
    loss_sum = sum(s for s, _ in per_batch)
    tokens = int(sum(n for _, n in per_batch))
    loss = loss_sum / tokens
    galore = sum(s / n for s, n in per_batch) / (len(per_batch) + 1)  # the reference script's counter starts at 1
    return {"eval_loss": loss, "eval_ppl": ppl(loss), "eval_loss_galore": galore,
            "eval_ppl_galore": ppl(galore), "eval_tokens": tokens}


def _ids(window: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(window)).to(device=device, dtype=torch.long)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[np.ndarray], device: str) -> dict[str, float | None]:
    """Validation loss over the fixed validation windows, on this process."""
    model.eval()
    per_batch = []
    for window in batches:
        ids = _ids(window, device)
        value = batch_loss_sum(model, ids).item()  # a CPU-GPU sync point, outside the timed phases
        per_batch.append((value, ids[:, 1:].numel()))
    model.train()
    return summarise(per_batch)


@torch.no_grad()
def evaluate_sharded(model: Any, batches: Sequence[Any], device: str, env: Any) -> dict[str, float | None]:
    """`evaluate`'s numbers, computed by all ranks together (`env`: the rank's `swanbench.run.ranks.DistEnv`).

    Each global validation batch is split by rows like the training batches; every rank runs its rows
    (a rank left without rows runs the first row and drops it, because FSDP2's forward is a collective
    every rank must enter), and one all-reduce sums the per-batch loss sums and token counts. So the
    token-weighted loss and the GaLore number equal a 1-rank eval with batch_size = world_size x B, and
    no rank holds more than its own micro-batch's activations.
    """
    import torch.distributed as dist

    from swanbench.run.ranks import reshard

    model.eval()
    sums = torch.zeros(2 * len(batches), dtype=torch.float64)  # [loss sum, tokens] per global batch
    for i, window in enumerate(batches):
        per_rank = math.ceil(len(window) / env.world_size)
        rows = window[env.rank * per_rank:(env.rank + 1) * per_rank]
        counted = len(rows) > 0
        ids = _ids(rows if counted else window[:1], device)
        summed = batch_loss_sum(model, ids)
        if counted:
            sums[2 * i] = summed.item()
            sums[2 * i + 1] = ids[:, 1:].numel()
    model.train()
    reshard(model)
    sums = sums.to(device)  # nccl reduces device tensors; on CPU this is the same tensor
    dist.all_reduce(sums)
    return summarise([tuple(pair) for pair in sums.view(-1, 2).tolist()])
