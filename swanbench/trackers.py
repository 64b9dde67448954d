"""Measurement you can trust: the time and memory of one training run, cross-checked three ways.

`RunMeter` wraps a training loop::

    meter = RunMeter(model, optimizer, device, warmup_steps=3)
    with meter:                                       # starts samplers; sets optimizer.preprocess_timer
        for step in range(steps):
            with meter.phase("forward_backward", step): ...   # forward + loss.backward() (all micro-batches)
            with meter.phase("optimizer_step", step): optimizer.step()
            meter.end_step(step, tokens_this_step)
    row = meter.results()                             # runs.csv measure columns (+ extras), None = unknown

Memory, side by side (see docs/measurement.md for why the figures differ):

1. exact tensor bytes by role: parameters, gradients, optimizer state (walk the tensors; per group too);
2. the allocator: on CUDA `max_memory_allocated/reserved` per window (peaks reset before each phase and
   folded into run maxima, so nothing escapes), alloc retries and OOMs; on CPU and GPU the torch profiler's
   memory categories on sampled steps (peak per role); and `step_transient_bytes`, the peak inside
   `optimizer.step()` minus what was allocated just before it;
3. the process: peak RSS (VmHWM, reset when the meter starts) and, on GPU, NVML process and device memory
   sampled in a background thread (the CUDA context appears here and nowhere else).

Time: CUDA events on GPU, `time.perf_counter` on CPU; warm-up steps and profiled steps are excluded;
medians with the interquartile range. The meter times its own bookkeeping (`tracker_overhead_ms`).
"""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from swanbench.memprofile import (  # re-exported: the harness and tests import them from here
    MARK_PREFIX,
    NvmlSampler,
    ProfiledStep,
    analyse_profile,
    current_rss_bytes,
    leaf_optimizers,
    model_grad_bytes,
    model_param_bytes,
    optimizer_state_bytes,
    optimizer_state_tensors,
    peak_rss_bytes,
    per_group_bytes,
    reset_peak_rss,
    tensor_bytes,
    write_timeline_json,
)

__all__ = [
    "RunMeter", "summarize", "measure_overhead", "tensor_bytes", "model_param_bytes", "model_grad_bytes",
    "optimizer_state_bytes", "optimizer_state_tensors", "per_group_bytes", "peak_rss_bytes", "NvmlSampler",
    "ProfiledStep", "FORWARD_BACKWARD", "OPTIMIZER_STEP", "PROFILER_ROLES",
]

# The phases the harness times; any other name is accepted and reported as `<name>_ms`.
FORWARD_BACKWARD = "forward_backward"
OPTIMIZER_STEP = "optimizer_step"
# Timer hooks an optimizer may expose (attribute -> series, reported as `<series>_ms`): a zero-arg callable
# returning a context manager, entered around its gradient preprocessing (SWAN's GradNorm + whitening,
# SinkGD's SR-Sinkhorn) and, for the distributed variants, around every collective. The two may overlap.
HOOK_TIMERS = {"preprocess_timer": "whitening", "comm_timer": "comm"}
# Column stems of the profiler's per-role peaks (`<role>_peak_bytes`).
PROFILER_ROLES = ("parameter", "gradient", "optimizer_state", "activation", "temporary", "input",
                  "autograd_detail", "unclassified")


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------

class _Interval:
    """One timed interval: perf_counter on CPU, a pair of CUDA events on GPU (resolved lazily, no sync)."""

    __slots__ = ("start", "end", "ms")

    def __init__(self, cuda: bool):
        self.ms: float | None = None
        self.end: Any = None
        if cuda:
            self.start: Any = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.start = time.perf_counter()

    def stop(self, cuda: bool) -> None:
        if cuda:
            self.end = torch.cuda.Event(enable_timing=True)
            self.end.record()
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


def _total_ms(intervals: list[_Interval]) -> float | None:
    """Sum of a step's intervals of one kind, or None if any is still unresolved or there are none."""
    if not intervals or any(i.ms is None for i in intervals):
        return None
    return sum(i.ms for i in intervals)


@dataclass
class _StepRecord:
    """What one training step measured. `ordinal` counts steps in the order they began (0-based)."""

    step: int
    ordinal: int
    warmup: bool
    profiled: bool
    whole: _Interval
    phases: dict[str, list[_Interval]] = field(default_factory=dict)
    hooks: dict[str, list[_Interval]] = field(default_factory=dict)  # "whitening", "comm": inside step()
    tokens: int = 0
    ended: bool = False
    transient_bytes: int | None = None
    overhead_s: float = 0.0

    @property
    def timed(self) -> bool:
        """Counts in the time statistics: past warm-up, not slowed by the profiler, and finished."""
        return self.ended and not self.warmup and not self.profiled

    def resolve(self, wait: bool) -> bool:
        """Resolve every interval of the step; True once all are known (CUDA: once the events completed)."""
        intervals = [self.whole, *(i for v in [*self.phases.values(), *self.hooks.values()] for i in v)]
        return all([i.resolve(wait) for i in intervals])  # a list, not a generator: try every one


class _Series:
    """The timed steps' numbers, folded from finished step records so that a 100k-step run keeps floats,
    not objects (the meter must not inflate the RSS it reports)."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}  # "step", each phase, "whitening", "overhead": ms per step
        self.tokens = 0
        self.seconds = 0.0
        self.count = 0
        self.transient: int | None = None  # max over steps past warm-up (never the first step)

    def add(self, key: str, value: float | None) -> None:
        if value is not None:
            self.values.setdefault(key, []).append(value)

    def fold(self, rec: _StepRecord) -> None:
        # Never the first step for the transient: there an optimizer creates its state (persistent).
        if not rec.warmup and rec.ordinal > 0 and rec.transient_bytes is not None:
            self.transient = max(self.transient or 0, rec.transient_bytes)
        if not rec.timed or rec.whole.ms is None:
            return
        self.count += 1
        self.add("step", rec.whole.ms)
        for name, intervals in rec.phases.items():
            self.add(name, _total_ms(intervals))
        # None (never 0) when the optimizer never entered a hook timer: it has no such phase.
        for series in HOOK_TIMERS.values():
            self.add(series, _total_ms(rec.hooks.get(series, [])))
        self.add("overhead", rec.overhead_s * 1e3)
        self.tokens += rec.tokens
        self.seconds += rec.whole.ms / 1e3


# --------------------------------------------------------------------------------------------------
# The run meter
# --------------------------------------------------------------------------------------------------

class RunMeter:
    """Times and measures one training run; `results()` gives the runs.csv measure columns.

    Args:
        model: the model being trained (its parameters and `.grad`s are walked for exact bytes).
        optimizer: the optimizer; its state is walked, and while the meter is active its `preprocess_timer`
            (and `comm_timer`, where it has one) is set so that SWAN/SinkGD time their gradient
            preprocessing (`whitening_ms`) and the distributed variants their collectives (`comm_ms`).
        device: the training device ("cpu", "cuda", "cuda:1" or a torch.device).
        warmup_steps: the first this-many steps are excluded from every time and transient statistic.
        snapshot_path: if given, a memory snapshot is written there when the meter exits (and on OOM):
            on CUDA an allocator snapshot with history for pytorch.org/memory_viz; on CPU (no allocator
            history exists) the profiled step's memory-by-role timeline as JSON.
        profile_steps: how many steps to run under torch.profiler (memory categories, CPU step transient);
            they start at the last warm-up step and are excluded from timing. 0 disables the profiler.
        nvml_interval_s: NVML sampling period on GPU, seconds.
        snapshot_max_entries: allocator history length kept for a CUDA snapshot (alloc/free events).
    """

    def __init__(self, model: torch.nn.Module, optimizer: Any, device: str | torch.device, *,
                 warmup_steps: int, snapshot_path: Path | None = None, profile_steps: int = 1,
                 nvml_interval_s: float = 0.02, snapshot_max_entries: int = 200_000):
        if warmup_steps < 0 or profile_steps < 0:
            raise ValueError(f"warmup_steps and profile_steps must be >= 0, got {warmup_steps}, {profile_steps}")
        self.model = model
        self.optimizer = optimizer
        self.device = _with_index(torch.device(device))
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.warmup_steps = warmup_steps
        self.snapshot_path = Path(snapshot_path) if snapshot_path is not None else None
        self.snapshot_max_entries = snapshot_max_entries
        # Profile from the last warm-up step: optimizer state exists by then and that step is not timed.
        first = max(warmup_steps - 1, 1)
        self._profile_ordinals = set(range(first, first + profile_steps))
        self._records: dict[int, _StepRecord] = {}  # steps begun and not yet ended
        self._started = 0
        self._current: _StepRecord | None = None
        self._ended: deque[_StepRecord] = deque()  # ended, waiting for their CUDA events
        self._series = _Series()
        self._profiler: Any = None
        self._profiled: list[ProfiledStep] = []
        self._profiler_s = 0.0  # host seconds spent starting, stopping and analysing the profiler
        self._errors: list[str] = []
        self._nvml = NvmlSampler(self.device, nvml_interval_s) if self.cuda else None
        self._prev_timers: list[tuple[Any, str, Any]] = []
        self._grad_bytes: int | None = None
        self._state: tuple[int, int] | None = None
        self._cuda_peak_allocated: int | None = None
        self._cuda_peak_reserved: int | None = None
        self._cuda_phase_peaks: dict[str, int] = {}
        self._cuda_counters_at_start: dict[str, int] = {}
        self._rss_at_start: int | None = None
        self._peak_rss: int | None = None
        self._rss_reset = False
        self._snapshot_written: Path | None = None
        self._recording_history = False

    # -- context manager ------------------------------------------------------------------------

    def __enter__(self) -> "RunMeter":
        self._rss_at_start = current_rss_bytes()
        self._rss_reset = reset_peak_rss()  # the run's own peak, not the imports' before it
        if self.cuda:
            self._cuda_counters_at_start = self._cuda_counters()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start_history()
        if self._nvml is not None and not self._nvml.start():
            self._errors.append(f"nvml: {self._nvml.error}")
        self._install_hook_timers()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop_profiler(analyse=False)  # a step that raised mid-profile: discard, never half-analyse
        self._restore_hook_timers()
        if self._nvml is not None:
            self._nvml.stop()
        self._peak_rss = peak_rss_bytes()
        if self.cuda:
            self._fold_cuda_peaks()
        oom = exc_type is not None and issubclass(exc_type, torch.OutOfMemoryError)
        if self.snapshot_path is not None and (oom or exc_type is None):
            self._safe_dump()
        if self._recording_history:
            torch.cuda.memory._record_memory_history(enabled=None)
            self._recording_history = False

    def _install_hook_timers(self) -> None:
        targets = {id(o): o for o in [self.optimizer, *leaf_optimizers(self.optimizer)]}
        for opt in targets.values():
            for attr, series in HOOK_TIMERS.items():
                if attr == "comm_timer" and not hasattr(opt, attr):
                    continue  # only the distributed optimizers have collectives to time
                self._prev_timers.append((opt, attr, getattr(opt, attr, None)))
                try:
                    setattr(opt, attr, self._hook_timer(series))
                except AttributeError:  # an optimizer that refuses attributes simply reports no such time
                    pass

    def _restore_hook_timers(self) -> None:
        for opt, attr, previous in reversed(self._prev_timers):
            with contextlib.suppress(AttributeError):
                setattr(opt, attr, previous)
        self._prev_timers.clear()

    # -- per-step hooks ---------------------------------------------------------------------------

    def _begin(self, step: int) -> _StepRecord:
        rec = self._records.get(step)
        if rec is None:
            ordinal = self._started
            self._started += 1
            profiled = ordinal in self._profile_ordinals
            if profiled:
                self._start_profiler()  # before the step's first interval, so its start is inside
            rec = _StepRecord(step=step, ordinal=ordinal, warmup=ordinal < self.warmup_steps,
                              profiled=profiled and self._profiler is not None, whole=_Interval(self.cuda))
            self._records[step] = rec
            self._current = rec
        return rec

    @contextlib.contextmanager
    def phase(self, name: str, step: int) -> Iterator[None]:
        """Time `name` for `step`; on CUDA also window the allocator around it (peak and transient)."""
        t0 = time.perf_counter()
        rec = self._begin(step)
        bookkeeping = rec.ordinal <= self.warmup_steps or rec.profiled  # walk tensors on a few steps only
        if name == OPTIMIZER_STEP and bookkeeping:
            self._grad_bytes = max(self._grad_bytes or 0, model_grad_bytes(self.model))
        allocated_before = self._open_cuda_window() if self.cuda else None
        mark = torch.profiler.record_function(MARK_PREFIX + name) if rec.profiled else contextlib.nullcontext()
        mark.__enter__()
        interval = _Interval(self.cuda)
        rec.overhead_s += time.perf_counter() - t0
        try:
            yield
        finally:
            t1 = time.perf_counter()
            interval.stop(self.cuda)
            mark.__exit__(None, None, None)
            rec.phases.setdefault(name, []).append(interval)
            if self.cuda:
                peak = self._close_cuda_window(name)
                if name == OPTIMIZER_STEP:
                    rec.transient_bytes = max(rec.transient_bytes or 0, peak - allocated_before)
            if name == OPTIMIZER_STEP and bookkeeping:
                self._state = optimizer_state_bytes(self.optimizer)
            rec.overhead_s += time.perf_counter() - t1

    def end_step(self, step: int, tokens: int) -> None:
        """Close `step`: stop its wall-clock interval and record the tokens it trained on (tokens/s)."""
        t0 = time.perf_counter()
        rec = self._begin(step)
        rec.whole.stop(self.cuda)
        rec.tokens = int(tokens)
        rec.ended = True
        self._current = None
        del self._records[step]
        if rec.profiled:
            self._stop_profiler(analyse=True)
        self._fold_ready(wait=False)  # earlier steps whose events have completed
        rec.overhead_s += time.perf_counter() - t0
        self._ended.append(rec)

    def _hook_timer(self, series: str) -> Callable[[], contextlib.AbstractContextManager]:
        """What the optimizer's `preprocess_timer` / `comm_timer` is set to: a zero-arg callable returning a
        context manager that times one interval into the current step's `series`."""
        return lambda: self._hook_interval(series)

    @contextlib.contextmanager
    def _hook_interval(self, series: str) -> Iterator[None]:
        rec = self._current
        interval = _Interval(self.cuda)
        try:
            yield
        finally:
            interval.stop(self.cuda)
            if rec is not None:  # a step() outside any metered step (e.g. a test call) is not attributed
                rec.hooks.setdefault(series, []).append(interval)

    def _fold_ready(self, wait: bool) -> None:
        """Fold ended steps into the series, in order, as soon as their intervals are known (no blocking
        unless `wait`): the CUDA event backlog stays a step or two long."""
        while self._ended and self._ended[0].resolve(wait):
            self._series.fold(self._ended.popleft())

    # -- the profiler on sampled steps -----------------------------------------------------------

    def _start_profiler(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        t0 = time.perf_counter()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        try:
            # All three flags are required by torch to attribute memory to parameters/grads/state.
            self._profiler = profile(activities=activities, profile_memory=True, record_shapes=True,
                                     with_stack=True)
            self._profiler.start()
        except Exception as exc:  # noqa: BLE001 - a broken profiler costs its columns, never the run
            self._profiler = None
            self._errors.append(f"profiler: {type(exc).__name__}: {exc}")
        self._profiler_s += time.perf_counter() - t0

    def _stop_profiler(self, analyse: bool) -> None:
        prof, self._profiler = self._profiler, None
        if prof is None:
            return
        t0 = time.perf_counter()
        try:
            prof.stop()
            if analyse:
                if self._profiled:  # only the latest timeline is ever written (snapshot): free the others
                    self._profiled[-1].timeline = None
                self._profiled.append(analyse_profile(prof, self.device))
        except Exception as exc:  # noqa: BLE001
            self._errors.append(f"profiler: {type(exc).__name__}: {exc}")
            warnings.warn(f"swanbench: memory profile of a sampled step failed: {exc}", stacklevel=2)
        self._profiler_s += time.perf_counter() - t0

    # -- CUDA allocator windows -------------------------------------------------------------------

    def _cuda_counters(self) -> dict[str, int]:
        stats = torch.cuda.memory_stats(self.device)
        return {"alloc_retries": int(stats.get("num_alloc_retries", 0)), "ooms": int(stats.get("num_ooms", 0))}

    def _cuda_allocated(self) -> tuple[int, int, int]:
        """(peak allocated, peak reserved, allocated now) in bytes since the last reset: one stats call.

        The nested dict skips `memory_stats()`'s flattening of ~100 counters: this runs 4 times a step.
        """
        stats = torch.cuda.memory_stats_as_nested_dict(self.device)
        allocated = stats.get("allocated_bytes", {}).get("all", {})
        reserved = stats.get("reserved_bytes", {}).get("all", {})
        return int(allocated.get("peak", 0)), int(reserved.get("peak", 0)), int(allocated.get("current", 0))

    def _fold_cuda_peaks(self) -> tuple[int, int]:
        """Fold the allocator's peaks since the last reset into the run maxima; return (peak, allocated now)."""
        allocated, reserved, now = self._cuda_allocated()
        self._cuda_peak_allocated = max(self._cuda_peak_allocated or 0, allocated)
        self._cuda_peak_reserved = max(self._cuda_peak_reserved or 0, reserved)
        return allocated, now

    def _open_cuda_window(self) -> int:
        """Fold the peak since the last window (the gap between phases counts too), reset, return allocated now.

        Host-side counters only: no device synchronisation. The caching allocator accounts an allocation
        when the op is enqueued, so the window is exact in stream order.
        """
        _, now = self._fold_cuda_peaks()
        torch.cuda.reset_peak_memory_stats(self.device)
        return now

    def _close_cuda_window(self, name: str) -> int:
        peak, _ = self._fold_cuda_peaks()
        self._cuda_phase_peaks[name] = max(self._cuda_phase_peaks.get(name, 0), peak)
        return peak

    # -- snapshots --------------------------------------------------------------------------------

    def _start_history(self) -> None:
        if self.snapshot_path is None:
            return
        try:
            torch.cuda.memory._record_memory_history(enabled="all", max_entries=self.snapshot_max_entries)
            self._recording_history = True
        except Exception as exc:  # noqa: BLE001
            self._errors.append(f"snapshot: {type(exc).__name__}: {exc}")

    def dump_snapshot(self, path: Path | None = None) -> Path | None:
        """Write a memory snapshot to `path` (default: `snapshot_path`); returns what was written, or None.

        CUDA: `torch.cuda.memory._dump_snapshot`, a pickle for pytorch.org/memory_viz (with alloc/free
        history and stacks when `snapshot_path` was given, else the allocator's segments only). CPU: the
        CPU allocator keeps no history, so the best record is the profiled step's memory by role over time,
        written as JSON next to `path` with the suffix .json (None if no step was profiled yet).
        """
        target = Path(path) if path is not None else self.snapshot_path
        if target is None:
            return None
        if not self.cuda:
            target = target.with_suffix(".json")  # not a memory_viz pickle: name it for what it is
        if target == self._snapshot_written and not self._recording_history:
            return target  # written on exit with the full history; a later dump would only lose it
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.cuda:
            torch.cuda.memory._dump_snapshot(str(target))
        elif self._profiled:
            write_timeline_json(self._profiled[-1], target)
        else:
            return None
        self._snapshot_written = target
        return target

    def _safe_dump(self) -> None:
        try:
            self.dump_snapshot()
        except Exception as exc:  # noqa: BLE001 - failing to write a snapshot must not mask the run's result
            self._errors.append(f"snapshot: {type(exc).__name__}: {exc}")

    # -- results ----------------------------------------------------------------------------------

    def results(self) -> dict[str, Any]:
        """The runs.csv measure columns this meter owns, plus extras; None where the device cannot say.

        Safe to call after an exception (e.g. OOM): it reports what was measured up to then.
        """
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self._fold_ready(wait=True)  # a step begun but never ended (an OOM mid-step) is not counted
        out: dict[str, Any] = {}
        out.update(self._exact_columns())
        out.update(self._allocator_columns())
        out.update(self._process_columns())
        out.update(self._transient_columns())
        out.update(self._time_columns())
        out["measure_errors"] = "; ".join(self._errors) or None
        out["memory_snapshot"] = str(self._snapshot_written) if self._snapshot_written else None
        return out

    def _exact_columns(self) -> dict[str, Any]:
        buffers, scalars = optimizer_state_bytes(self.optimizer)
        if self._state is not None:  # max: the state may have been larger mid-run than it is now
            buffers, scalars = max(buffers, self._state[0]), max(scalars, self._state[1])
        grads = self._grad_bytes
        if grads is None:  # no optimizer_step phase was metered: whatever .grad holds now, if anything
            grads = model_grad_bytes(self.model) or None
        out: dict[str, Any] = {
            "param_bytes": model_param_bytes(self.model),
            "grad_bytes": grads,
            "optimizer_state_bytes": buffers,
            "optimizer_state_scalar_bytes": scalars,
        }
        for label, b in per_group_bytes(self.optimizer).items():
            out[f"param_bytes.{label}"] = b["params"]
            out[f"optimizer_state_bytes.{label}"] = b["state"]
        return out

    def _allocator_columns(self) -> dict[str, Any]:
        out: dict[str, Any] = {"peak_allocated_bytes": None, "peak_reserved_bytes": None,
                               "alloc_retries": None, "oom_count": None}
        if self.cuda:
            self._fold_cuda_peaks()
            now = self._cuda_counters()
            out["peak_allocated_bytes"] = self._cuda_peak_allocated
            out["peak_reserved_bytes"] = self._cuda_peak_reserved
            out["alloc_retries"] = now["alloc_retries"] - self._cuda_counters_at_start.get("alloc_retries", 0)
            out["oom_count"] = now["ooms"] - self._cuda_counters_at_start.get("ooms", 0)
            for name, peak in self._cuda_phase_peaks.items():
                out[f"{name}_peak_allocated_bytes"] = peak
        # The profiler's view of a sampled step, by role (CPU and GPU).
        for role in PROFILER_ROLES:
            peaks = [p.role_peaks[role] for p in self._profiled if role in p.role_peaks]
            out[f"{role}_peak_bytes"] = max(peaks) if peaks else None
        totals = [p.total_peak for p in self._profiled if p.total_peak is not None]
        out["profiled_step_peak_bytes"] = max(totals) if totals else None
        out["profiled_steps"] = len(self._profiled)
        out["profiler_overhead_s"] = self._profiler_s if self._profile_ordinals else None
        return out

    def _process_columns(self) -> dict[str, Any]:
        nv = self._nvml
        return {
            "peak_rss_bytes": self._peak_rss if self._peak_rss is not None else peak_rss_bytes(),
            "rss_at_start_bytes": self._rss_at_start,
            # "meter": the high-water mark was reset when the meter started; "process": lifetime peak.
            "peak_rss_scope": "meter" if self._rss_reset else "process",
            "nvml_peak_bytes": nv.process_peak if nv is not None else None,
            "nvml_device_peak_bytes": nv.device_peak if nv is not None else None,
            "nvml_device_baseline_bytes": nv.device_baseline if nv is not None else None,
        }

    def _transient_columns(self) -> dict[str, Any]:
        """`step_transient_bytes`: CUDA allocator windows on every timed step (max), else the profiled steps."""
        cuda = self._series.transient  # None on CPU
        profiled = [p.window_transients[OPTIMIZER_STEP] for p in self._profiled
                    if OPTIMIZER_STEP in p.window_transients]
        sampled = max(profiled) if profiled else None
        out: dict[str, Any] = {
            "step_transient_bytes": cuda if cuda is not None else sampled,
            "step_transient_source": "cuda_allocator" if cuda is not None else ("profiler" if profiled else None),
            "profiled_step_transient_bytes": sampled,
        }
        fb = [p.window_transients[FORWARD_BACKWARD] for p in self._profiled
              if FORWARD_BACKWARD in p.window_transients]
        out["profiled_forward_backward_transient_bytes"] = max(fb) if fb else None
        return out

    def _time_columns(self) -> dict[str, Any]:
        series = self._series
        out: dict[str, Any] = {}
        names = ["step", FORWARD_BACKWARD, OPTIMIZER_STEP]
        hooks = list(HOOK_TIMERS.values())
        names += sorted(set(series.values) - set(names) - set(hooks) - {"overhead"}) + hooks
        for name in names:
            _put_summary(out, f"{name}_ms", series.values.get(name, []))
        out["tokens_per_s"] = series.tokens / series.seconds if series.seconds > 0 else None
        out["timed_steps"] = series.count
        overhead = series.values.get("overhead", [])
        out["tracker_overhead_ms"] = statistics.median(overhead) if overhead else None
        step = out.get("step_ms")
        out["tracker_overhead_pct"] = (100 * out["tracker_overhead_ms"] / step) if overhead and step else None
        return out


def _put_summary(out: dict[str, Any], column: str, values: list[float]) -> None:
    """`<x>_ms` = median, `<x>_iqr_ms` = interquartile range, both None without values."""
    s = summarize(values)
    out[column] = s["median"]
    out[column.removesuffix("_ms") + "_iqr_ms"] = s["iqr"]


def _with_index(device: torch.device) -> torch.device:
    """cuda -> cuda:<current>, so profiler events (always indexed) and allocator calls name one device."""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


# --------------------------------------------------------------------------------------------------
# The overhead of measuring
# --------------------------------------------------------------------------------------------------

def measure_overhead(forward_backward: Callable[[], int], optimizer_step: Callable[[], Any],
                     model: torch.nn.Module, optimizer: Any, device: str | torch.device, *, steps: int = 20,
                     warmup_steps: int = 3, rounds: int = 3) -> dict[str, float]:
    """Median ms per training step without and with a `RunMeter` (profiler off), interleaved in rounds.

    `forward_backward()` runs forward + backward and returns the tokens it used; `optimizer_step()` steps
    (and zeroes the gradients). Each round runs `steps` bare steps then `steps` metered ones, so the drift
    of a shared machine hits both arms alike. Returns {"bare_ms", "metered_ms", "overhead_ms", "overhead_pct"}.
    """
    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    bare: list[float] = []
    metered: list[float] = []

    def timed(body: Callable[[], None], into: list[float]) -> None:
        if cuda:
            torch.cuda.synchronize(device)  # sync points bracket each step in both arms alike
        t0 = time.perf_counter()
        body()
        if cuda:
            torch.cuda.synchronize(device)
        into.append((time.perf_counter() - t0) * 1e3)

    for _ in range(warmup_steps):
        forward_backward()
        optimizer_step()
    for _ in range(rounds):
        for _ in range(steps):
            timed(lambda: (forward_backward(), optimizer_step()), bare)
        with RunMeter(model, optimizer, device, warmup_steps=0, profile_steps=0) as meter:
            for i in range(steps):
                def one(i: int = i) -> None:
                    with meter.phase(FORWARD_BACKWARD, i):
                        tokens = forward_backward()
                    with meter.phase(OPTIMIZER_STEP, i):
                        optimizer_step()
                    meter.end_step(i, tokens)
                timed(one, metered)
    b, m = statistics.median(bare), statistics.median(metered)
    return {"bare_ms": b, "metered_ms": m, "overhead_ms": m - b, "overhead_pct": 100 * (m - b) / b}
