"""`fit`: the largest batch size that trains without running out of memory, found by measurement.

For one (optimizer, model, seq_len, dtype, device) and a memory budget, every probe trains a few steps of
the cell at one batch size in its own worker process (`python -m swanbench.run.worker RUN_DIR`, the harness's
own run machinery), so one probe's allocator state cannot help or hurt the next. The cell's
`memory_budget` makes exceeding the budget an "oom" status: on CUDA a real out-of-memory error
(`set_per_process_memory_fraction`), on CPU the process's peak RSS (VmHWM) checked after every step.

Search: the analytic estimate (swanbench.estimate), calibrated by the first probe at batch 1 (whatever
the process needs beyond the modelled tensors: interpreter, libraries, CUDA context, allocator slack),
predicts the answer; steps of 1, 2, 4, 8, ... from there bracket it (up while probes fit, down while
they do not), then bisection narrows the bracket to adjacent batch sizes. Each batch size is probed once,
so an accurate prediction costs three probes: batch 1, the prediction, and one more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

# Probe statuses that say "the memory was enough": a diverged loss ran every step it needed to.
FITTING_STATUSES = frozenset({"ok", "diverged"})
OOM_STATUS = "oom"
FIT_FILE = "fit.csv"
FIT_COLUMNS = ["optimizer", "model", "dtype", "device", "seq_len", "batch_size", "status", "fits",
               "memory_budget_bytes", "measured_bytes", "measured_column", "estimate_bytes", "probe_seconds",
               "run_dir", "error"]


class FitError(RuntimeError):
    """The search cannot go on (a probe crashed or timed out: not a memory answer); one line."""


@dataclass(frozen=True)
class Probe:
    """One batch size tried in its own process. Bytes; seconds of wall time for the whole process."""

    batch_size: int
    status: str
    measured_bytes: int | None  # what the budget limits: CPU peak RSS, CUDA peak reserved
    estimate_bytes: int | None
    seconds: float
    run_dir: str = ""
    error: str | None = None

    @property
    def fits(self) -> bool:
        return self.status in FITTING_STATUSES


@dataclass
class FitResult:
    """The answer (`best`, None when even batch 1 does not fit) and every probe, in the order run."""

    best: int | None
    probes: list[Probe] = field(default_factory=list)
    predicted: int | None = None  # the calibrated estimate's answer, before any bracketing


# --------------------------------------------------------------------------------------------------
# The search (pure: any probe function)
# --------------------------------------------------------------------------------------------------

class _Prober:
    """Calls `probe` at most once per batch size and keeps the probes in the order they ran."""

    def __init__(self, probe: Callable[[int], Probe], on_probe: Callable[[Probe], None]):
        self._probe, self._on_probe = probe, on_probe
        self.done: dict[int, Probe] = {}
        self.order: list[Probe] = []

    def fits(self, batch: int) -> bool:
        if batch not in self.done:
            result = self._probe(batch)
            self.done[batch] = result
            self.order.append(result)
            self._on_probe(result)  # recorded (fit.csv) before judging, so a crashed probe is on file
            if result.status not in FITTING_STATUSES and result.status != OOM_STATUS:
                raise FitError(f"probe at batch {batch} ended {result.status!r}, not a memory answer: "
                               f"{result.error or 'no error recorded'} (see {result.run_dir or 'its run dir'})")
        return self.done[batch].fits


def bracket(prober: _Prober, start: int, max_batch: int) -> tuple[int, int | None]:
    """(largest fitting, smallest failing) batch seen by an exponential search around `start`.

    From `start` the probes step by 1, 2, 4, 8, ... upward while they fit (up to `max_batch`) or
    downward while they fail (down to 1), so a good prediction is confirmed by two probes (start fits,
    start + 1 does not) and a prediction off by d costs about 2 log2(d) probes; from start 1 this is plain
    doubling (1, 2, 4, 8, ...). The first element is 0 when even batch 1 fails; the second is None when
    `max_batch` fits.
    """
    batch, step = min(max(1, start), max_batch), 1
    if prober.fits(batch):
        while batch < max_batch:
            nxt = min(batch + step, max_batch)
            if not prober.fits(nxt):
                return batch, nxt
            batch, step = nxt, step * 2
        return batch, None
    while batch > 1:
        lower = max(1, batch - step)
        if prober.fits(lower):
            return lower, batch
        batch, step = lower, step * 2
    return 0, 1


def bisect(prober: _Prober, fits: int, fails: int) -> int:
    """Narrow a (fitting, failing) bracket to adjacent batch sizes; returns the largest fitting one."""
    while fails - fits > 1:
        mid = (fits + fails) // 2
        if prober.fits(mid):
            fits = mid
        else:
            fails = mid
    return fits


def search(probe: Callable[[int], Probe], *, start: int = 1, max_batch: int = 4096,
           on_probe: Callable[[Probe], None] = lambda p: None) -> FitResult:
    """The largest batch size in [1, max_batch] whose probe fits, assuming fitting is monotone in batch.

    `start` is where bracketing begins (a prediction; clamped to [1, max_batch]).
    A probe that crashes or times out raises FitError: it says nothing about memory.
    """
    if max_batch < 1:
        raise FitError(f"max batch size must be >= 1, got {max_batch}")
    prober = _Prober(probe, on_probe)
    fits, fails = bracket(prober, start, max_batch)
    best = bisect(prober, fits, fails) if fails is not None and fits >= 1 else fits
    return FitResult(best=best or None, probes=prober.order)


# --------------------------------------------------------------------------------------------------
# The prediction that seeds the bracket
# --------------------------------------------------------------------------------------------------

def predict_batch(estimate_at: Callable[[int], int], budget: int, overhead: int, max_batch: int) -> int | None:
    """The largest batch b <= max_batch with estimate_at(b) + overhead <= budget (None if b = 1 fails).

    The estimate grows with the batch (activations), so a binary search over b is exact for it.
    """
    if estimate_at(1) + overhead > budget:
        return None
    lo, hi = 1, max_batch
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate_at(mid) + overhead <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def calibrated_start(first: Probe, estimate_at: Callable[[int], int], budget: int,
                     max_batch: int) -> tuple[int, int | None]:
    """(start of the bracket, predicted answer) after the first probe at batch 1.

    overhead = what batch 1 measured beyond its estimate: the part of the budget the model does not
    describe (process, libraries, allocator), assumed the same at every batch size.
    """
    if first.measured_bytes is None or first.estimate_bytes is None:
        return 1, None  # nothing to calibrate with: plain doubling from batch 1 (known to fit)
    overhead = max(0, first.measured_bytes - first.estimate_bytes)
    predicted = predict_batch(estimate_at, budget, overhead, max_batch)
    return predicted or 1, predicted


# --------------------------------------------------------------------------------------------------
# Probes in worker processes
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FitTarget:
    """What `fit` searches over. Units: tokens, bytes, seconds."""

    optimizer: str
    model: str
    seq_len: int
    dtype: str = "float32"
    device: str = "cpu"
    memory_budget: int | None = None  # required on CPU; on CUDA defaults to the device's memory
    steps: int = 3                    # training steps per probe: the step after the first has state
    timeout_s: float = 600.0
    hparams: tuple = ()               # (key, value) pairs for optimizers.build
    data: Any = None                  # swanbench.suite.DataSpec; None: the embedded corpus

    def cell(self, batch_size: int):
        """The harness cell of one probe: `steps` steps, no warm-up, one validation window per eval."""
        from swanbench.suite import Cell

        cell = Cell.from_dict({
            "optimizer": self.optimizer, "model": self.model, "dtype": self.dtype, "device": self.device,
            "seq_len": self.seq_len, "batch_size": batch_size, "steps": self.steps, "warmup_steps": 0,
            # evals only at step 0 and after the last step, on one window: a probe measures training
            "eval_every_tokens": self.steps * batch_size * self.seq_len, "eval_tokens": self.seq_len,
            "timeout_s": self.timeout_s, "memory_budget": self.memory_budget, "hparams": dict(self.hparams),
        })
        return cell if self.data is None else replace(cell, data=self.data)


def budget_column(device: str) -> str:
    """The runs.csv column the budget limits: CUDA's per-process fraction caps reserved memory; on CPU
    the worker compares peak RSS with the budget."""
    return "peak_reserved_bytes" if str(device).startswith("cuda") else "peak_rss_bytes"


def run_probe(target: FitTarget, batch_size: int, out_dir: Path,
              estimate_at: Callable[[int], int | None]) -> Probe:
    """Train `target` at `batch_size` in a fresh worker process under the budget; the probe's outcome."""
    from swanbench import rundir, runner
    from swanbench.launch import execute
    from swanbench.suite import Run, Suite

    cell = target.cell(batch_size)
    suite = Suite(name="fit", path=Path("fit"), description="swanbench fit probes", kind="train",
                  cells=(cell,), seeds=(0,))
    run = Run(cell, 0)
    run_dir = Path(out_dir) / "probes" / f"b{batch_size}"
    runner.write_config(suite, run, run_dir)
    started = time.perf_counter()
    status = execute(run_dir, target.timeout_s)
    seconds = time.perf_counter() - started
    rows = rundir.read_rows(run_dir / rundir.ROW_FILE)
    row = rows[0] if rows else {}
    measured = row.get(budget_column(target.device))
    return Probe(batch_size=batch_size, status=status,
                 measured_bytes=int(float(measured)) if measured not in (None, "") else None,
                 estimate_bytes=estimate_at(batch_size), seconds=seconds, run_dir=str(run_dir),
                 error=row.get("error") or None)


def _estimate_fn(target: FitTarget) -> Callable[[int], int | None]:
    """batch -> the analytic peak (bytes); None where the estimator cannot say (the search then doubles)."""
    from swanbench.estimate import EstimateError, estimate

    def at(batch: int) -> int | None:
        try:
            return estimate(target.model, target.optimizer, target.dtype, batch, target.seq_len).peak_bytes
        except EstimateError:
            return None

    return at


def default_budget(device: str) -> int | None:
    """The whole device's memory on CUDA (bytes); None on CPU, where a budget must be stated."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    index = torch.device(device).index or 0
    return int(torch.cuda.get_device_properties(index).total_memory)


def fit(target: FitTarget, out_dir: Path, *, max_batch: int = 4096,
        on_probe: Callable[[Probe], None] = lambda p: None) -> FitResult:
    """Find the largest batch size of `target` that trains under its memory budget (see module doc).

    Writes OUT/fit.csv (one row per probe, rewritten after each) and OUT/probes/b<N>/ (each probe's run
    directory: config, log, row). Raises FitError when the target cannot be searched.
    """
    from swanbench.tables import write_rows_atomic

    if target.memory_budget is None:
        raise FitError("a memory budget is needed (e.g. --memory-budget 2GiB): on CPU there is no device "
                       "memory to fill, and on CUDA none was found")
    estimate_at = _estimate_fn(target)
    probes: list[Probe] = []

    def record(probe: Probe) -> None:
        probes.append(probe)
        write_rows_atomic(Path(out_dir) / FIT_FILE, [probe_row(target, p) for p in probes], FIT_COLUMNS)
        on_probe(probe)

    first = run_probe(target, 1, out_dir, estimate_at)
    record(first)
    if first.status not in FITTING_STATUSES and first.status != OOM_STATUS:
        raise FitError(f"probe at batch 1 ended {first.status!r}: {first.error or 'no error recorded'} "
                       f"(see {first.run_dir})")
    if not first.fits:
        return FitResult(best=None, probes=probes, predicted=None)
    start, predicted = calibrated_start(first, estimate_at, target.memory_budget, max_batch)

    def probe(batch: int) -> Probe:  # batch 1 already ran: reuse it, never run a batch twice
        return first if batch == 1 else run_probe(target, batch, out_dir, estimate_at)

    result = search(probe, start=start, max_batch=max_batch,
                    on_probe=lambda p: None if p is first else record(p))
    return FitResult(best=result.best, probes=probes, predicted=predicted)


def probe_row(target: FitTarget, probe: Probe) -> dict[str, Any]:
    """One fit.csv row (bytes, seconds)."""
    return {"optimizer": target.optimizer, "model": target.model, "dtype": target.dtype, "device": target.device,
            "seq_len": target.seq_len, "batch_size": probe.batch_size, "status": probe.status, "fits": probe.fits,
            "memory_budget_bytes": target.memory_budget, "measured_bytes": probe.measured_bytes,
            "measured_column": budget_column(target.device), "estimate_bytes": probe.estimate_bytes,
            "probe_seconds": round(probe.seconds, 3), "run_dir": probe.run_dir, "error": probe.error}


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------

def probe_line(probe: Probe) -> str:
    """One progress line per finished probe."""
    from swanbench.estimate import format_bytes

    mark = "[green]fits[/]" if probe.fits else f"[red]{probe.status}[/]"
    return (f"  batch {probe.batch_size:>5}: {mark}  measured {format_bytes(probe.measured_bytes)}, "
            f"estimate {format_bytes(probe.estimate_bytes)}, {probe.seconds:.1f} s")


def render_probes(target: FitTarget, result: FitResult):
    """A rich Table of the probes, by batch size."""
    from rich.table import Table

    from swanbench.estimate import format_bytes

    table = Table(title=f"fit: {target.optimizer} on {target.model}, seq_len {target.seq_len}, {target.dtype}, "
                        f"{target.device}, budget {format_bytes(target.memory_budget)}",
                  caption=f"measured = {budget_column(target.device)} of the probe; estimate = swanbench estimate")
    for name in ("batch", "status", "measured", "estimate", "seconds"):
        table.add_column(name, justify="left" if name == "status" else "right")
    for p in sorted(result.probes, key=lambda p: p.batch_size):
        style = "green" if p.fits else "red"
        table.add_row(str(p.batch_size), f"[{style}]{p.status}[/]", format_bytes(p.measured_bytes),
                      format_bytes(p.estimate_bytes), f"{p.seconds:.1f}")
    return table


def answer_line(target: FitTarget, result: FitResult) -> str:
    """The verdict: the largest batch that fits (and what the calibrated estimate predicted)."""
    predicted = f"; the calibrated estimate predicted {result.predicted}" if result.predicted else ""
    if result.best is None:
        return f"even batch size 1 does not fit in the budget ({len(result.probes)} probe)"
    return (f"largest batch size that fits: {result.best} ({result.best * target.seq_len} tokens per step, "
            f"{len(result.probes)} probes{predicted})")
