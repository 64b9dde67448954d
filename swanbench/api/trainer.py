"""A Hugging Face `Trainer` run recorded into the harness's tables: `SwanbenchCallback`.

    from swanbench.api.trainer import SwanbenchCallback      # or swanbench.SwanbenchCallback
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      callbacks=[SwanbenchCallback("results/hf", seq_len=128)])
    trainer.train()
    swanbench.load("results/hf").runs                        # the same runs.csv row as a suite's run

The Trainer's callback events bracket the phases a suite's loop times: `on_step_begin` ..
`on_pre_optimizer_step` is forward + backward of all micro-batches (and gradient clipping, which the Trainer
does there), `on_pre_optimizer_step` .. `on_optimizer_step` is `optimizer.step()`. Each `evaluate()` adds a
curves.csv row (its `eval_loss`, the mean of the logged training losses since the previous one, the lr).
Tokens per step: the Trainer's own count when `include_num_input_tokens_seen` is on, else
`per_device_train_batch_size x gradient_accumulation_steps x world size x seq_len` when `seq_len` is given,
else `tokens_per_step`. The optimizer is unwrapped from accelerate's wrapper, so the exact state bytes and
SWAN's/SinkGD's whitening time are the optimizer's own.

Needs `transformers` (a dependency) and, for the Trainer itself, `accelerate` (the extra `swanbench[hf]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from swanbench.api.record import RunRecorder

__all__ = ["SwanbenchCallback", "unwrap_optimizer"]


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's `AcceleratedOptimizer` (which forwards `state` and groups but
    would hide the attributes the meter sets, such as `preprocess_timer`); any other optimizer as it is."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if inner is not None and hasattr(inner, "param_groups") else optimizer


class SwanbenchCallback(TrainerCallback):
    """Records the Trainer's run into OUT (runs.csv, curves.csv, OUT/runs/<run_id>/) as `RunRecorder` does.

    Args:
        out: the results directory.
        seq_len: tokens per sequence (for tokens per step, the identity and the estimate).
        tokens_per_step: tokens per optimizer step when neither the Trainer counts them nor seq_len is given.
        optimizer_name, model_name, suite, hparams, warmup_steps, profile_steps: as `RunRecorder`'s.

    After training, `recorder.row` is the runs.csv row.
    """

    def __init__(self, out: str | Path, *, seq_len: int | None = None, tokens_per_step: int | None = None,
                 optimizer_name: str | None = None, model_name: str | None = None, suite: str = "trainer",
                 hparams: dict[str, Any] | None = None, warmup_steps: int = 3, profile_steps: int = 1):
        self.out = Path(out)
        self.seq_len, self.tokens_per_step = seq_len, tokens_per_step
        self.names = {"optimizer_name": optimizer_name, "model_name": model_name, "suite": suite,
                      "hparams": hparams, "warmup_steps": warmup_steps, "profile_steps": profile_steps}
        self.recorder: RunRecorder | None = None
        self._open: Any = None  # the phase being timed (a context manager entered by hand)
        self._tokens_seen = 0
        self._last_lr: float | None = None
        self._losses: list[float] = []

    # -- the run --------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        world = max(1, int(getattr(args, "world_size", 1) or 1))
        if self.tokens_per_step is None and self.seq_len:
            self.tokens_per_step = (args.per_device_train_batch_size * args.gradient_accumulation_steps * world
                                    * self.seq_len)
        self.recorder = RunRecorder(model, unwrap_optimizer(optimizer), out=self.out, seq_len=self.seq_len,
                                    batch_size=args.per_device_train_batch_size,
                                    grad_accum=args.gradient_accumulation_steps, seed=args.seed,
                                    steps=state.max_steps or None, **self.names)
        self.recorder.__enter__()

    def on_train_end(self, args, state, control, **kwargs):
        self._close()
        if self.recorder is not None and self.recorder._meter is not None:
            self.recorder.__exit__(None, None, None)

    # -- the phases -----------------------------------------------------------------------------------

    def _phase(self, name: str, step: int) -> None:
        self._close()
        self._open = self.recorder.phase(name, step)
        self._open.__enter__()

    def _close(self) -> None:
        phase, self._open = self._open, None
        if phase is not None:
            phase.__exit__(None, None, None)

    def on_step_begin(self, args, state, control, **kwargs):
        self._phase("forward_backward", state.global_step)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._phase("optimizer_step", state.global_step)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._close()

    def on_step_end(self, args, state, control, **kwargs):
        self._close()
        seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        tokens = seen - self._tokens_seen if seen else self.tokens_per_step
        self._tokens_seen = seen
        self.recorder.end_step(state.global_step - 1, tokens)

    # -- losses and evaluations -----------------------------------------------------------------------

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self._losses.append(float(logs["loss"]))
        if "learning_rate" in logs:
            self._last_lr = float(logs["learning_rate"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        if self.recorder is None or "eval_loss" not in metrics:
            return
        train_loss = sum(self._losses) / len(self._losses) if self._losses else None
        self._losses = []
        self.recorder.log_eval(state.global_step, eval_loss=metrics["eval_loss"], train_loss=train_loss,
                               lr=self._last_lr)
