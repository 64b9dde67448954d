"""The learning-rate schedule of the GaLore protocol: linear warm-up, then cosine decay to a floor.

This is the schedule SWAN, SinkGD and GaLore report their LLaMA-on-C4 numbers with (GaLore repository,
`peft_pretraining/training_utils.py`, scheduler "cosine" with `min_lr_ratio=0.1`, `--warmup_steps`
= 10% of `--num_training_steps`). `lr_factor` is the multiplier of the peak lr; the lr applied at an
update is `peak_lr * lr_factor(step, total_steps)`.

Step convention (the same as the reference script, which wraps this lambda in `torch.optim.lr_scheduler.
LambdaLR`): `step` is the 0-based index of the optimizer update about to be applied, i.e. the number of
updates already done. So update 0 uses factor 0 (a no-op step, as in the reference), warm-up ends with
factor 1 at `step == warmup_steps`, and the cosine reaches `min_ratio` at `step == total_steps`
(one past the last update; the last update, `total_steps - 1`, sits just above the floor).
"""

from __future__ import annotations

import math


def warmup_steps_for(total_steps: int, warmup_frac: float) -> int:
    """Warm-up length in updates: `floor(warmup_frac * total_steps)` (10k steps, 0.1 -> 1000, as GaLore)."""
    # round() first so 0.1 * 10_000 = 1000.0000000000001 or 999.999... floats cannot shift it by one.
    return int(math.floor(round(warmup_frac * total_steps, 9)))


def _validate(step: int, total_steps: int, warmup_frac: float, min_ratio: float) -> None:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    if not 0.0 <= warmup_frac < 1.0:
        raise ValueError(f"warmup_frac must be in [0, 1), got {warmup_frac!r}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio!r}")


def lr_factor(step: int, total_steps: int, warmup_frac: float = 0.1, min_ratio: float = 0.1) -> float:
    """Multiplier of the peak lr for update `step` (0-based) of `total_steps`.

    - warm-up, `step < w` with `w = warmup_steps_for(total_steps, warmup_frac)`: `step / w` (0 at step 0);
    - then cosine: `min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(pi * p))`, `p = (step - w) / (total_steps - w)`;
    - `step >= total_steps` (training past its planned length) stays at `min_ratio` rather than
      restarting a cycle as the reference's cyclical scheduler would.

    Raises ValueError on a negative step, total_steps < 1, warmup_frac outside [0, 1) or min_ratio
    outside [0, 1]. Dimensionless; pure Python, so it can drive `LambdaLR` or a hand-written loop.
    """
    _validate(step, total_steps, warmup_frac, min_ratio)
    warmup = warmup_steps_for(total_steps, warmup_frac)
    if step < warmup:
        return step / warmup
    if step >= total_steps:
        return float(min_ratio)
    progress = (step - warmup) / (total_steps - warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * cosine


def lr_lambda(total_steps: int, warmup_frac: float = 0.1, min_ratio: float = 0.1):
    """`lr_factor` with the run's constants bound, ready for `torch.optim.lr_scheduler.LambdaLR`.

    The arguments are validated now (at step 0), so a bad suite fails before the first update.
    """
    _validate(0, total_steps, warmup_frac, min_ratio)

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup_frac, min_ratio)

    return factor
