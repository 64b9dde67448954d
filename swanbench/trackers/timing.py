"""Time: intervals (CUDA events on GPU, `time.perf_counter` on CPU) folded into medians with IQR (ms).

A step's intervals are kept in a `StepRecord` until they are known (CUDA events resolve when the GPU
reaches them, without a sync), then folded into a `Series`: the numbers of the timed steps (past warm-up,
not profiled). `time_columns` turns a series into runs.csv's `<x>_ms` / `<x>_iqr_ms` columns.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

# The phases the harness times; any other name is accepted and reported as `<name>_ms`.
FORWARD_BACKWARD = "forward_backward"
OPTIMIZER_STEP = "optimizer_step"
# Timer hooks an optimizer may expose (attribute -> series, reported as `<series>_ms`): a zero-arg callable
# returning a context manager, entered around its gradient preprocessing (SWAN's GradNorm + whitening,
# SinkGD's SR-Sinkhorn) and, for the distributed variants, around every collective. The two may overlap.
HOOK_TIMERS = {"preprocess_timer": "whitening", "comm_timer": "comm"}


class Interval:
    """One timed interval, in ms: perf_counter on CPU, a pair of CUDA events on GPU (resolved lazily, no sync).

    `cuda_index` is the CUDA device whose current stream the events are recorded on (None: CPU). It is
    explicit because `Event.record()` without a stream records on the *current* device's stream, which is
    not the meter's device when that is cuda:N and the current device is another.
    """

    __slots__ = ("start", "end", "ms", "cuda_index")

    def __init__(self, cuda_index: int | None):
        self.ms: float | None = None
        self.end: Any = None
        self.cuda_index = cuda_index
        self.start: Any = self._event() if cuda_index is not None else time.perf_counter()

    def _event(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.cuda_index))
        return event

    def stop(self) -> None:
        if self.cuda_index is not None:
            self.end = self._event()
        else:
            self.ms = (time.perf_counter() - self.start) * 1e3

    def resolve(self, wait: bool) -> bool:
        """Fill `ms` once the end event completed (wait=True blocks on it); True when `ms` is known."""
        if self.ms is None and self.end is not None:
            if wait:
                self.end.synchronize()  # a CPU-GPU sync point: only in results()
            if self.end.query():
                self.ms = self.start.elapsed_time(self.end)
                self.start = self.end = None  # release the CUDA events of long runs
        return self.ms is not None


def summarize(values: list[float]) -> dict[str, float | int | None]:
    """Median, interquartile range (inclusive quartiles), min, max and count; None where there are no values."""
    if not values:
        return {"median": None, "iqr": None, "min": None, "max": None, "n": 0}
    vals = sorted(values)
    iqr = 0.0
    if len(vals) >= 2:
        q = statistics.quantiles(vals, n=4, method="inclusive")
        iqr = q[2] - q[0]
    return {"median": statistics.median(vals), "iqr": iqr, "min": vals[0], "max": vals[-1], "n": len(vals)}


def total_ms(intervals: list[Interval]) -> float | None:
    """Sum of a step's intervals of one kind, ms, or None if any is still unresolved or there are none."""
    if not intervals or any(i.ms is None for i in intervals):
        return None
    return sum(i.ms for i in intervals)


@dataclass
class StepRecord:
    """What one training step measured. `ordinal` counts steps in the order they began (0-based)."""

    step: int
    ordinal: int
    warmup: bool
    profiled: bool
    whole: Interval
    phases: dict[str, list[Interval]] = field(default_factory=dict)
    hooks: dict[str, list[Interval]] = field(default_factory=dict)  # "whitening", "comm": inside step()
    tokens: int = 0
    ended: bool = False
    transient_bytes: int | None = None  # CUDA: peak inside optimizer.step() minus allocated before it
    overhead_s: float = 0.0  # host seconds the meter spent on its own bookkeeping in this step

    @property
    def timed(self) -> bool:
        """Counts in the time statistics: past warm-up, not slowed by the profiler, and finished."""
        return self.ended and not self.warmup and not self.profiled

    def resolve(self, wait: bool) -> bool:
        """Resolve every interval of the step; True once all are known (CUDA: once the events completed)."""
        intervals = [self.whole, *(i for v in [*self.phases.values(), *self.hooks.values()] for i in v)]
        return all([i.resolve(wait) for i in intervals])  # a list, not a generator: try every one


class Series:
    """The timed steps' numbers, folded from finished step records so that a 100k-step run keeps floats,
    not objects (the meter must not inflate the RSS it reports)."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}  # "step", each phase, "whitening", "overhead": ms per step
        self.tokens = 0
        self.seconds = 0.0
        self.count = 0
        self.transient: int | None = None  # bytes, max over steps past warm-up (never the first step)

    def add(self, key: str, value: float | None) -> None:
        if value is not None:
            self.values.setdefault(key, []).append(value)

    def fold(self, rec: StepRecord) -> None:
        # Never the first step for the transient: there an optimizer creates its state (persistent).
        if not rec.warmup and rec.ordinal > 0 and rec.transient_bytes is not None:
            self.transient = max(self.transient or 0, rec.transient_bytes)
        if not rec.timed or rec.whole.ms is None:
            return
        self.count += 1
        self.add("step", rec.whole.ms)
        for name, intervals in rec.phases.items():
            self.add(name, total_ms(intervals))
        # None (never 0) when the optimizer never entered a hook timer: it has no such phase.
        for series in HOOK_TIMERS.values():
            self.add(series, total_ms(rec.hooks.get(series, [])))
        self.add("overhead", rec.overhead_s * 1e3)
        self.tokens += rec.tokens
        self.seconds += rec.whole.ms / 1e3


def put_summary(out: dict[str, Any], column: str, values: list[float]) -> None:
    """`<x>_ms` = median, `<x>_iqr_ms` = interquartile range, both None without values."""
    s = summarize(values)
    out[column] = s["median"]
    out[column.removesuffix("_ms") + "_iqr_ms"] = s["iqr"]


def time_columns(series: Series) -> dict[str, Any]:
    """runs.csv's time columns: `<x>_ms` and `<x>_iqr_ms` for the step, each phase and each hook (ms),
    `tokens_per_s`, `timed_steps` (count) and `tracker_overhead_ms` / `tracker_overhead_pct`."""
    out: dict[str, Any] = {}
    names = ["step", FORWARD_BACKWARD, OPTIMIZER_STEP]
    hooks = list(HOOK_TIMERS.values())
    names += sorted(set(series.values) - set(names) - set(hooks) - {"overhead"}) + hooks
    for name in names:
        put_summary(out, f"{name}_ms", series.values.get(name, []))
    out["tokens_per_s"] = series.tokens / series.seconds if series.seconds > 0 else None
    out["timed_steps"] = series.count
    overhead = series.values.get("overhead", [])
    out["tracker_overhead_ms"] = statistics.median(overhead) if overhead else None
    step = out.get("step_ms")
    out["tracker_overhead_pct"] = (100 * out["tracker_overhead_ms"] / step) if overhead and step else None
    return out
