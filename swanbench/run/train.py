"""One training run inside the worker process: model, data, optimizer, lr schedule, meter, evals, status.

`train(cell, seed, run_dir, emit)` returns a `TrainOutcome` whatever happens: out-of-memory (a real CUDA OOM,
a CPU allocator failure, or the cell's `memory_budget` exceeded) is status "oom", a non-finite training loss
is "diverged" (the curve so far is kept). Anything else propagates and the worker records "crashed".

Conventions (also in the README):
- a step is one optimizer update over `grad_accum` micro-batches of `batch_size` sequences of `seq_len`
  tokens; tokens counted are input tokens (`tokens_per_step = batch_size * grad_accum * seq_len`);
- the lr follows `swanbench.schedule.lr_factor` (linear warm-up over `lr_warmup` of the steps, cosine to
  `lr_min_ratio`) applied to every param group's own initial lr, so a hybrid's groups keep their ratios;
- `train_seconds` is the wall time of the training steps only (forward, backward, optimizer step, up to the
  loss read-back that synchronizes the device); evaluation is excluded;
- evals run at step 0, every `eval_every_tokens` and after the last step, on the same fixed validation
  windows for every optimizer and seed. `eval_loss` is token-weighted (sum of token losses / tokens);
  `eval_loss_galore` is the GaLore script's number (sum of per-batch mean losses / (batches + 1)).
"""

from __future__ import annotations

import errno
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from swanbench.run.evaluate import evaluate, evaluate_sharded
from swanbench.schema import DIVERGED as STATUS_DIVERGED, OK as STATUS_OK, OOM as STATUS_OOM
from swanbench.env import resolve_device
from swanbench.suite import Cell


class MemoryBudgetExceeded(RuntimeError):
    """The run's measured peak exceeded the cell's memory_budget (on CPU: peak process RSS, VmHWM)."""


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainOutcome:
    status: str
    error: str | None = None
    measures: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)


# Allocation failures torch raises as a plain RuntimeError (or torch.AcceleratorError, a subclass) rather
# than torch.OutOfMemoryError: the CUDA runtime's own "CUDA error: out of memory" (memory taken outside the
# caching allocator: a context, a kernel's launch), cuBLAS/cuDNN/cuSOLVER/cuSPARSE handles and workspaces
# ("CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", "cuDNN error:
# CUDNN_STATUS_ALLOC_FAILED"), and the CPU allocator ("DefaultCPUAllocator: can't allocate memory").
OOM_MESSAGES = ("out of memory", "can't allocate memory", "_status_alloc_failed")


def is_oom(exc: BaseException) -> bool:
    """CUDA OOM (the caching allocator's, the CUDA runtime's, or a cuBLAS/cuDNN allocation failure), a CPU
    allocator failure, MemoryError, or our own budget check; also when one of these caused `exc`."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _is_oom_here(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _is_oom_here(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryBudgetExceeded, MemoryError, torch.OutOfMemoryError)):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in OOM_MESSAGES)


def is_nonfinite_gradient(exc: BaseException) -> bool:
    """The optimizers package's NonFiniteGradientError (raised by SWAN/SinkGD with nonfinite="raise")."""
    import optimizers

    cls = getattr(optimizers, "NonFiniteGradientError", None)
    return cls is not None and isinstance(exc, cls)


# ---------------------------------------------------------------- pieces of the loop

def lr_groups(optimizer: Any) -> list[dict]:
    """Every param group that carries an lr, over the optimizer and (for a hybrid) its parts, each once."""
    from swanbench.trackers import leaf_optimizers

    groups: dict[int, dict] = {}
    for opt in [optimizer, *leaf_optimizers(optimizer)]:
        for group in getattr(opt, "param_groups", []):
            if "lr" in group:
                group.setdefault("initial_lr", float(group["lr"]))
                groups[id(group)] = group
    return list(groups.values())


def apply_lr(groups: list[dict], factor: float) -> None:
    # initial_lr * factor is idempotent, so a group aliased by a hybrid and its part is never scaled twice.
    for group in groups:
        group["lr"] = group["initial_lr"] * factor


def forward_backward(model: torch.nn.Module, micro_batches: list[torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss over the micro-batches, gradients accumulated (loss / n per micro-batch)."""
    from swanbench.run.ranks import grad_sync

    total = torch.zeros((), device=micro_batches[0].device, dtype=torch.float32)
    for i, ids in enumerate(micro_batches):
        # DDP/FSDP: synchronise gradients on the last micro-batch only (a plain model: no-op)
        with grad_sync(model, enabled=i == len(micro_batches) - 1):
            loss = model(input_ids=ids, labels=ids).loss / len(micro_batches)
            loss.backward()
        total += loss.detach().float()
    return total


def check_memory_budget(budget: int | None, device: str) -> None:
    """On CPU, compare the process's peak RSS (VmHWM) with the budget; CUDA enforces its own (a real OOM)."""
    if budget is None or device.startswith("cuda"):
        return
    from swanbench.trackers import peak_rss_bytes

    peak = peak_rss_bytes()
    if peak is not None and peak > budget:
        raise MemoryBudgetExceeded(f"peak RSS {peak} bytes > memory_budget {budget} bytes")


def set_cuda_budget(budget: int | None, device: str) -> None:
    """Cap this process's CUDA allocator at `budget` bytes, so exceeding it is a real torch OOM."""
    if budget is None or not device.startswith("cuda"):
        return
    index = torch.device(device).index or 0
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), index)


# ---------------------------------------------------------------- the run

class _Loop:
    """State of one run's loop: small methods over shared state rather than one long function."""

    def __init__(self, cell: Cell, seed: int, run_dir: Path, emit: Callable[[dict], None]):
        self.cell, self.seed, self.run_dir, self.emit = cell, seed, Path(run_dir), emit
        self.device = resolve_device(cell.device)
        self.curve: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self.losses_since_eval: list[float] = []
        self.done = 0  # completed optimizer steps
        self.factor = 0.0
        self.on_curve: Callable[[list[dict]], None] = lambda curve: None
        self.last_eval: dict[str, Any] | None = None
        self.info: dict[str, Any] = {}
        self.dist = None  # swanbench.run.ranks.DistEnv of a multi-rank cell
        self.tokens = 0  # global input tokens trained on so far (counted, all-reduced across ranks)
        self.step_tokens = 0

    def setup(self) -> None:
        import optimizers

        from swanbench.data import load_data
        from swanbench.models import build_model, get_preset

        cell = self.cell
        if cell.world_size > 1:
            from swanbench.run.ranks import init_from_env

            self.dist = init_from_env(self.device)
            self.device = self.dist.device  # cuda:LOCAL_RANK on GPUs
        set_cuda_budget(cell.memory_budget, self.device)
        self.emit({"event": "phase", "phase": "data"})
        preset = get_preset(cell.model)
        self.data = load_data(cell.data, model_vocab=preset.vocab, val_tokens=cell.eval_tokens + cell.seq_len)
        # Global batches of world_size x batch_size windows; each rank keeps its rows (swanbench.run.ranks)
        global_batch = cell.batch_size * cell.world_size
        self.val = self.data.val_batches(cell.seq_len, cell.eval_tokens, global_batch)
        self.batches = self.data.train_batches(cell.seq_len, global_batch, self.seed)
        if self.dist is not None:
            from swanbench.run.ranks import shard_batches

            self.batches = shard_batches(self.batches, self.dist.rank, self.dist.world_size)
        self.emit({"event": "phase", "phase": "model"})
        self.model = build_model(cell.model, dtype=getattr(torch, cell.dtype), device=self.device, seed=self.seed)
        if self.dist is not None:
            from swanbench.run.ranks import build_optimizer, wrap_model

            self.model = wrap_model(self.model, cell.parallelism, self.dist)
            self.optimizer = build_optimizer(cell.optimizer, self.model, cell.parallelism, cell.hparams_dict())
        else:
            self.optimizer = optimizers.build(cell.optimizer, self.model, **cell.hparams_dict())
        self.model.train()
        self.groups = lr_groups(self.optimizer)
        hparams = _resolved_hparams(cell)
        self.peak_lr = hparams.get("lr", self.groups[0]["initial_lr"] if self.groups else None)
        available = None if self.data.train is None else int(len(self.data.train))  # C4 streams: unknown
        self.info = {"params": sum(p.numel() for p in self.model.parameters()), "lr": self.peak_lr,
                     "optimizer_impl": getattr(self.optimizer, "implementation", type(self.optimizer).__name__),
                     "optimizer_hparams": json.dumps(hparams, sort_keys=True, default=str),
                     "tokenizer": self.data.tokenizer, "tokenizer_vocab": self.data.vocab_size,
                     "train_tokens_available": available}

    def next_micro_batches(self) -> list[torch.Tensor]:
        return [torch.from_numpy(next(self.batches)).to(device=self.device, dtype=torch.long)
                for _ in range(self.cell.grad_accum)]

    def train_step(self, meter, step: int) -> float:
        """One optimizer update; returns its training loss (a device sync, after the timed phases)."""
        from swanbench.schedule import lr_factor

        cell = self.cell
        self.factor = lr_factor(step, cell.steps, cell.lr_warmup, cell.lr_min_ratio)
        apply_lr(self.groups, self.factor)
        micro = self.next_micro_batches()  # host-to-device copies of the data are not step time
        self.step_tokens = self._global([sum(ids.numel() for ids in micro)])[0]
        t0 = time.perf_counter()
        with meter.phase("forward_backward", step):
            loss = forward_backward(self.model, micro)
        with meter.phase("optimizer_step", step):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        meter.end_step(step, int(self.step_tokens))
        value = self._global([loss.item()])[0] / cell.world_size  # every rank sees the same mean loss
        self.train_seconds += time.perf_counter() - t0
        return value

    def _global(self, values: list[float]) -> list[float]:
        """Sums over ranks (an all-reduce in a multi-rank cell; one rank: the values themselves)."""
        if self.dist is None:
            return [float(v) for v in values]
        from swanbench.run.ranks import reduce_sum

        return reduce_sum(values, self.device)

    def current_lr(self) -> float | None:
        """The lr of the last update applied (None before the first update)."""
        return self.peak_lr * self.factor if self.peak_lr is not None and self.done else None

    def eval_point(self, step: int, tokens: int) -> None:
        """Evaluate now and append a curve row (eval time is not train time)."""
        if self.dist is not None:  # the ranks split each validation batch and sum their losses
            result = evaluate_sharded(self.model, self.val, self.device, self.dist)
        else:
            result = evaluate(self.model, self.val, self.device)
        train_loss = float(np.mean(self.losses_since_eval)) if self.losses_since_eval else None
        self.losses_since_eval = []
        row = {"step": step, "tokens": tokens, "train_seconds": self.train_seconds,
               "train_loss": train_loss, "lr": self.current_lr(), **result}
        self.curve.append(row)
        self.last_eval = row
        self.emit({"event": "eval", "step": step, "tokens": tokens, "eval_loss": row["eval_loss"],
                   "train_loss": train_loss})
        self.on_curve(self.curve)

    def run(self, meter) -> None:
        cell = self.cell
        check_memory_budget(cell.memory_budget, self.device)
        self.eval_point(0, 0)
        next_eval = cell.eval_every_tokens
        for step in range(cell.steps):
            loss = self.train_step(meter, step)
            self.done = step + 1
            self.tokens += int(self.step_tokens)
            tokens = self.tokens
            self.emit({"event": "step", "step": self.done, "steps": cell.steps, "loss": loss})
            check_memory_budget(cell.memory_budget, self.device)
            if not math.isfinite(loss):
                self.curve.append({"step": self.done, "tokens": tokens, "train_seconds": self.train_seconds,
                                   "train_loss": loss, "lr": self.current_lr()})
                self.on_curve(self.curve)
                raise Diverged(f"training loss {loss} at step {self.done}")
            self.losses_since_eval.append(loss)
            if tokens >= next_eval or self.done == cell.steps:
                self.eval_point(self.done, tokens)
                while next_eval <= tokens:
                    next_eval += cell.eval_every_tokens


def train(cell: Cell, seed: int, run_dir: Path, emit: Callable[[dict], None] = lambda e: None,
          on_curve: Callable[[list[dict]], None] = lambda curve: None) -> TrainOutcome:
    """Run one (cell, seed); expected failures (oom, diverged) come back as a status, not an exception.

    emit: receives progress events (dicts); on_curve: receives the whole curve after every eval point,
    so the caller can persist it and a later kill keeps the curve so far.
    """
    from swanbench.trackers import RunMeter

    torch.manual_seed(seed)
    loop = _Loop(cell, seed, run_dir, emit)
    loop.on_curve = on_curve
    try:
        loop.setup()
    except BaseException as exc:
        if is_oom(exc):
            return TrainOutcome(STATUS_OOM, _describe(exc), dict(loop.info), loop.curve)
        raise
    snapshot = Path(run_dir) / "memory_snapshot.pickle" if cell.memory_snapshot else None
    meter = RunMeter(loop.model, loop.optimizer, loop.device, warmup_steps=cell.warmup_steps, snapshot_path=snapshot)
    status, error = STATUS_OK, None
    try:
        with meter:
            loop.run(meter)
    except Diverged as exc:
        status, error = STATUS_DIVERGED, str(exc)
    except BaseException as exc:
        if is_nonfinite_gradient(exc):  # SWAN/SinkGD refuse a non-finite gradient: the run diverged
            status, error = STATUS_DIVERGED, _describe(exc)
        elif is_oom(exc):
            status, error = STATUS_OOM, _describe(exc)
            meter.dump_snapshot()  # an OOM is exactly when the allocator history is worth having
        else:
            raise
    return TrainOutcome(status, error, _measures(loop, meter, status), loop.curve)


def _resolved_hparams(cell: Cell) -> dict[str, Any]:
    """The hyperparameters that ran: the registry's defaults merged with the suite's (as recorded in runs.csv)."""
    import optimizers

    resolve = getattr(optimizers, "resolve_hparams", None)
    return resolve(cell.optimizer, **cell.hparams_dict()) if resolve else cell.hparams_dict()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000]


def _measures(loop: _Loop, meter, status: str) -> dict[str, Any]:
    """runs.csv measures: the meter's columns, the final eval (only when the run finished), and run facts."""
    try:
        out = dict(meter.results())
    except Exception as exc:  # after an OOM the allocator may refuse; keep the run's status, say why
        out = {"measure_error": _describe(exc)}
    out.update(loop.info)
    done_steps = loop.done
    out.update({"train_seconds": loop.train_seconds, "steps_done": done_steps,
                "tokens_seen": loop.tokens, "tokens_per_step": loop.cell.tokens_per_step,
                "parallelism": loop.cell.parallelism,
                "grad_accum": loop.cell.grad_accum})
    final = loop.last_eval if status == STATUS_OK else None
    for key in ("eval_loss", "eval_ppl", "eval_loss_galore", "eval_ppl_galore"):
        out[f"final_{key}"] = final.get(key) if final else None
    out["eval_tokens_used"] = final.get("eval_tokens") if final else None
    return out
