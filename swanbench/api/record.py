"""Measure your own training loop into the harness's tables: `RunRecorder`.

The recorder is a `RunMeter` (`swanbench.trackers`) plus the run-directory protocol (`swanbench.rundir`):
a loop you wrote gets the same runs.csv row (identity, exact bytes by role, the profiler's role peaks, step
times, the analytic estimate where the model is a preset) and the same curves.csv rows as a suite's run::

    model = swanbench.build_model("nano")
    optimizer = optimizers.build("swan", model, lr=0.02)       # or any torch.optim.Optimizer
    with swanbench.RunRecorder(model, optimizer, out="results/mine", seq_len=128, batch_size=8) as run:
        for step in range(steps):
            with run.phase("forward_backward", step):
                loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
            with run.phase("optimizer_step", step):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            run.end_step(step, tokens=ids.numel(), loss=loss.item())
            if step % 50 == 0:
                run.log_eval(step + 1, eval_loss=evaluate(model))
    tables = swanbench.load("results/mine")                  # runs (one row per run) and curves

OUT/runs/<run_id>/ holds config.json, env.json, run.csv and curves.csv as for a suite's run; OUT/runs.csv and
OUT/curves.csv are assembled from every run folder under OUT after each run, so several runs (optimizers,
seeds) recorded into one OUT compare as a suite's do (`swanbench report OUT`, `swanbench plot OUT`).
The run id is a hash of what identifies the run (optimizer, model, shapes, hyperparameters, seed): a
safe file name whatever the optimizer is called; recording the same run again replaces it.

Status: "ok"; "oom" for an out-of-memory error; "diverged" for a non-finite loss given to `end_step` (or the
optimizers package's NonFiniteGradientError); "crashed" for any other exception, whose row is written and
which is raised again. When the profiler cannot attach (another profiler is running, a version mismatch),
`profiler_error` in the row says why.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import torch

from swanbench import rundir, schema

__all__ = ["RunRecorder", "optimizer_label", "assemble_dir"]


def optimizer_label(optimizer: Any) -> str:
    """The registry name the optimizer was built under, else its class as an import path ("module:Class")."""
    name = getattr(optimizer, "registry_name", None)
    if name:
        return str(name)
    cls = type(optimizer)
    return f"{cls.__module__}:{cls.__qualname__}"


def _first_param(model: torch.nn.Module) -> torch.Tensor | None:
    return next(iter(model.parameters()), None)


def assemble_dir(out: Path) -> tuple[Path, Path]:
    """(Re)write OUT/runs.csv and OUT/curves.csv from every run folder under OUT/runs (a finished run has
    run.csv), as a suite's assembly does (tokens-to-target against adamw where adamw ran)."""
    from swanbench.runner import assemble

    folders = sorted(p for p in (Path(out) / "runs").glob("*") if (p / rundir.ROW_FILE).is_file())
    return assemble(Path(out), [SimpleNamespace(run_dir=p) for p in folders], None)


class RunRecorder:
    """Records one training run you drive yourself (see the module doc for the loop).

    Args:
        model, optimizer: what you train (any torch.optim.Optimizer; the registry's too).
        out: the results directory (OUT/runs/<run_id>/ and OUT's tables).
        optimizer_name: the `optimizer` column (default: the registry name, else "module:Class").
        model_name: the `model` column (default: the preset `swanbench.build_model` built, else "own").
        seq_len, batch_size, grad_accum: the shapes of a step (for the identity and the estimate).
        seed, suite: identity columns (suite default "own").
        hparams: the optimizer's hyperparameters, recorded and used by the estimate.
        warmup_steps, profile_steps, snapshot: as `RunMeter`'s.
    """

    def __init__(self, model: torch.nn.Module, optimizer: Any, *, out: str | Path,
                 optimizer_name: str | None = None, model_name: str | None = None,
                 seq_len: int | None = None, batch_size: int | None = None, grad_accum: int = 1,
                 seed: int = 0, suite: str = "own", hparams: dict[str, Any] | None = None,
                 warmup_steps: int = 3, profile_steps: int = 1, snapshot: bool = False,
                 steps: int | None = None):
        from swanbench.suite import Cell, Run

        param = _first_param(model)
        self.model, self.optimizer = model, optimizer
        self.device = str(param.device) if param is not None else "cpu"
        dtype = str(param.dtype).removeprefix("torch.") if param is not None else "float32"
        self.cell = Cell.from_dict({
            "optimizer": optimizer_name or optimizer_label(optimizer),
            "model": model_name or getattr(model, "swanbench_preset", None) or "own",
            "dtype": dtype, "device": self.device, "seq_len": int(seq_len or 0),
            "batch_size": int(batch_size or 0), "grad_accum": int(grad_accum), "steps": int(steps or 0),
            "warmup_steps": warmup_steps, "hparams": dict(hparams or {}), "data": {"source": "own"}})
        self.seed = int(seed)
        self.run_id = Run(self.cell, self.seed).run_id
        self.out = Path(out)
        self.run_dir = self.out / "runs" / self.run_id
        self.suite = suite
        self.warmup_steps, self.profile_steps, self.snapshot = warmup_steps, profile_steps, snapshot
        self.curve: list[dict[str, Any]] = []
        self.row: dict[str, Any] | None = None  # the runs.csv row, once the run ended
        self.status, self.error = schema.OK, None
        self._meter = None
        self._identity: dict[str, Any] = {}
        self._steps, self._tokens, self._train_seconds = 0, 0, 0.0
        self._step_started: float | None = None
        self._losses: list[float] = []

    # -- the run ------------------------------------------------------------------------------------

    def __enter__(self) -> "RunRecorder":
        from swanbench import env as envmod
        from swanbench.trackers import RunMeter

        config = {"suite": self.suite, "baseline": None, "run_id": self.run_id, "cell_id": self.cell.cell_id,
                  "seed": self.seed, "cell": self.cell.to_dict(),
                  "params": sum(p.numel() for p in self.model.parameters())}
        rundir.write_config(self.run_dir, config)
        environment = envmod.collect(self.device)
        rundir.write_json_atomic(self.run_dir / rundir.ENV_FILE, environment)
        self._identity = rundir.identity_row(config, environment)
        for key in ("seq_len", "batch_size", "steps"):  # not given: unknown, never 0
            self._identity[key] = self._identity.get(key) or None
        snapshot = self.run_dir / rundir.SNAPSHOT_FILE if self.snapshot else None
        self._meter = RunMeter(self.model, self.optimizer, self.device, warmup_steps=self.warmup_steps,
                               profile_steps=self.profile_steps, snapshot_path=snapshot)
        self._meter.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        meter, self._meter = self._meter, None
        if meter is not None:
            meter.__exit__(exc_type, exc, tb)
        if exc is not None:
            self._status_from(exc)
        self._write(meter)

    @contextlib.contextmanager
    def phase(self, name: str, step: int) -> Iterator[None]:
        """Time (and on CUDA window the allocator around) "forward_backward" or "optimizer_step" of `step`."""
        if self._meter is None:
            raise RuntimeError("RunRecorder.phase outside `with RunRecorder(...)`")
        if self._step_started is None:
            self._step_started = time.perf_counter()
        with self._meter.phase(name, step):
            yield

    def end_step(self, step: int, tokens: int | None = None, loss: float | None = None) -> None:
        """Close `step`: the tokens it trained on (tokens/s) and, optionally, its training loss."""
        if self._meter is None:
            raise RuntimeError("RunRecorder.end_step outside `with RunRecorder(...)`")
        self._meter.end_step(step, int(tokens or 0))
        if self._step_started is not None:
            self._train_seconds += time.perf_counter() - self._step_started
            self._step_started = None
        self._steps += 1
        self._tokens += int(tokens or 0)
        if loss is not None:
            loss = float(loss)
            self._losses.append(loss)
            if not math.isfinite(loss) and self.status == schema.OK:
                self.status, self.error = schema.DIVERGED, f"training loss {loss} at step {self._steps}"

    def log_eval(self, step: int | None = None, *, eval_loss: float | None = None, tokens: int | None = None,
                 train_loss: float | None = None, lr: float | None = None, **extra: Any) -> None:
        """One curves.csv row: `eval_loss` (token-weighted mean, nats), `eval_ppl` = exp(eval_loss); the
        training loss defaults to the mean of the losses given to `end_step` since the last eval."""
        if train_loss is None and self._losses:
            train_loss = sum(self._losses) / len(self._losses)
        self._losses = []
        point = {"step": self._steps if step is None else int(step),
                 "tokens": self._tokens if tokens is None else int(tokens),
                 "train_seconds": self._train_seconds, "train_loss": train_loss, "lr": lr,
                 "eval_loss": None if eval_loss is None else float(eval_loss),
                 "eval_ppl": _ppl(eval_loss), **extra}
        self.curve.append(point)
        rundir.write_curve(self.run_dir, self._identity, self.curve)

    # -- the row --------------------------------------------------------------------------------------

    def _status_from(self, exc: BaseException) -> None:
        from swanbench.run.train import is_nonfinite_gradient, is_oom

        text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:rundir.ERROR_CHARS]
        status = schema.OOM if is_oom(exc) else schema.DIVERGED if is_nonfinite_gradient(exc) else schema.CRASHED
        self.status, self.error = status, text

    def _measures(self, meter) -> dict[str, Any]:
        try:
            out = dict(meter.results()) if meter is not None else {}
        except Exception as exc:  # noqa: BLE001 - after an OOM the allocator may refuse: say why, keep the row
            out = {"measure_error": f"{type(exc).__name__}: {exc}"}
        final = next((p for p in reversed(self.curve) if p.get("eval_loss") is not None), None)
        ok = self.status == schema.OK
        lrs = [g.get("lr") for g in getattr(self.optimizer, "param_groups", []) if "lr" in g]
        out.update({
            "params": sum(p.numel() for p in self.model.parameters()),
            "optimizer_impl": getattr(self.optimizer, "implementation", type(self.optimizer).__name__),
            "lr": lrs[0] if lrs else None, "train_seconds": self._train_seconds, "steps_done": self._steps,
            "tokens_seen": self._tokens, "grad_accum": self.cell.grad_accum,
            "final_eval_loss": final["eval_loss"] if final and ok else None,
            "final_eval_ppl": final["eval_ppl"] if final and ok else None,
        })
        return out

    def _write(self, meter) -> None:
        from swanbench.run.worker import estimate_columns

        if not self.cell.steps:  # no planned step count: the steps it ran
            self._identity["steps"] = self._steps
        row = {**self._identity, **self._measures(meter), "status": self.status, "error": self.error}
        if self.cell.seq_len and self.cell.batch_size:  # the analytic estimate needs the step's shapes
            row.update(estimate_columns(self.cell, self.device, row))
        rundir.write_curve(self.run_dir, self._identity, self.curve)
        rundir.write_row(self.run_dir, row)
        self.row = row
        assemble_dir(self.out)


def _ppl(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(float(loss)):
        return None
    return math.exp(min(float(loss), 700.0))  # exp overflows past ~709 nats
