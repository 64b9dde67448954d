"""`RunMeter`: the time and memory of one training run, cross-checked three ways; and `measure_overhead`.

The meter composes the package's concerns into runs.csv's measure columns: exact tensor bytes
(`memory`), the CUDA allocator (`allocator`), the torch profiler on sampled steps (`profiler`), the
process's RSS and NVML (`process`), and CUDA-event / perf_counter intervals (`timing`). Every CUDA call
names the meter's own device, so a meter on cuda:N measures device N whatever the current device is.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from swanbench.trackers.allocator import CudaAllocator, allocator_columns
from swanbench.trackers.errors import one_line
from swanbench.trackers.memory import ExactBytes, leaf_optimizers
from swanbench.trackers.process import NvmlSampler, RssWindow, nvml_columns
from swanbench.trackers.profiler import StepProfiler, write_timeline_json
from swanbench.trackers.timing import (
    FORWARD_BACKWARD,
    HOOK_TIMERS,
    OPTIMIZER_STEP,
    Interval,
    Series,
    StepRecord,
    time_columns,
)


def resolve_device(device: str | torch.device) -> torch.device:
    """The device with its index: "cuda" -> cuda:<current device> (so that profiler events, which are always
    indexed, and every allocator call name one device); "cuda:1" -> cuda:1; CPU as given."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


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
        self.device = resolve_device(device)
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.cuda_index: int | None = self.device.index if self.cuda else None  # None: time on the host
        self.warmup_steps = warmup_steps
        self.snapshot_path = Path(snapshot_path) if snapshot_path is not None else None
        self.snapshot_max_entries = snapshot_max_entries
        # Profile from the last warm-up step: optimizer state exists by then and that step is not timed.
        first = max(warmup_steps - 1, 1)
        self._profile_ordinals = set(range(first, first + profile_steps))
        self._records: dict[int, StepRecord] = {}  # steps begun and not yet ended
        self._started = 0
        self._current: StepRecord | None = None
        self._ended: deque[StepRecord] = deque()  # ended, waiting for their CUDA events
        self._series = Series()
        self._errors: list[str] = []  # `measure_errors`: "<source>: <reason>", in the order they happened
        self._exact = ExactBytes(model, optimizer)
        self._profiler = StepProfiler(self.device, self.cuda, enabled=bool(self._profile_ordinals),
                                      report=self._reporter("profiler"))
        self._allocator = CudaAllocator(self.cuda_index, self._reporter("snapshot")) if self.cuda else None
        self._nvml = NvmlSampler(self.device, nvml_interval_s) if self.cuda else None
        self._rss = RssWindow()
        self._prev_timers: list[tuple[Any, str, Any]] = []
        self._snapshot_written: Path | None = None
        self._exit_stack: contextlib.ExitStack | None = None

    def _reporter(self, source: str) -> Callable[[str], None]:
        return lambda reason: self._errors.append(f"{source}: {reason}")

    # -- context manager ------------------------------------------------------------------------

    def __enter__(self) -> "RunMeter":
        # __exit__ undoes these in reverse order. So the profiler (discarding a step that raised mid-profile),
        # the optimizer's timer hooks and NVML stop first; the RSS and allocator peaks are read before the
        # snapshot is dumped (pickling it allocates host memory); the history stops after the dump it feeds.
        # If a start fails, the `with` undoes what had started.
        with contextlib.ExitStack() as stack:
            if self._allocator is not None and self.snapshot_path is not None:
                self._allocator.start_history(self.snapshot_max_entries)
                stack.callback(self._allocator.stop_history)
            stack.push(self._dump_on_exit)
            if self._allocator is not None:
                self._allocator.start()
                stack.callback(self._allocator.fold)
            self._rss.start()  # the run's own peak, not the imports' before it
            stack.callback(self._rss.stop)
            if self._nvml is not None:
                self._start_nvml(stack)
            self._install_hook_timers()
            stack.callback(self._restore_hook_timers)
            stack.callback(self._profiler.stop, analyse=False)
            self._exit_stack = stack.pop_all()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        stack, self._exit_stack = self._exit_stack, None
        if stack is not None:
            stack.__exit__(exc_type, exc, tb)  # never suppresses: every callback returns None

    def _start_nvml(self, stack: contextlib.ExitStack) -> None:
        if self._nvml.start():
            stack.callback(self._stop_nvml)
        else:
            self._errors.append(f"nvml: {self._nvml.error}")

    def _stop_nvml(self) -> None:
        self._nvml.stop()
        if self._nvml.error:  # a failure after start-up (the driver, a lost GPU) or no figure for this PID
            self._errors.append(f"nvml: {self._nvml.error}")

    def _dump_on_exit(self, exc_type, exc, tb) -> None:
        """On a clean exit, or an OOM (when the allocator history is worth the most), write the snapshot."""
        oom = exc_type is not None and issubclass(exc_type, torch.OutOfMemoryError)
        if self.snapshot_path is not None and (oom or exc_type is None):
            self._safe_dump()

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

    def _begin(self, step: int) -> StepRecord:
        rec = self._records.get(step)
        if rec is None:
            ordinal = self._started
            self._started += 1
            profiled = ordinal in self._profile_ordinals
            if profiled:
                self._profiler.start()  # before the step's first interval, so its start is inside
            rec = StepRecord(step=step, ordinal=ordinal, warmup=ordinal < self.warmup_steps,
                             profiled=profiled and self._profiler.active, whole=Interval(self.cuda_index))
            self._records[step] = rec
            self._current = rec
        return rec

    @contextlib.contextmanager
    def phase(self, name: str, step: int) -> Iterator[None]:
        """Time `name` for `step` (ms); on CUDA also window the allocator around it (peak and transient bytes)."""
        t0 = time.perf_counter()
        rec = self._begin(step)
        bookkeeping = rec.ordinal <= self.warmup_steps or rec.profiled  # walk tensors on a few steps only
        if name == OPTIMIZER_STEP and bookkeeping:
            self._exact.observe_grads()
        allocated_before = self._allocator.open_window() if self._allocator is not None else None
        mark = self._profiler.mark(name) if rec.profiled else contextlib.nullcontext()
        mark.__enter__()  # by hand: the range must close before the bookkeeping below, which it must not see
        interval = Interval(self.cuda_index)
        rec.overhead_s += time.perf_counter() - t0
        try:
            yield
        finally:
            t1 = time.perf_counter()
            interval.stop()
            mark.__exit__(None, None, None)
            rec.phases.setdefault(name, []).append(interval)
            if self._allocator is not None:
                peak = self._allocator.close_window(name)
                if name == OPTIMIZER_STEP:
                    rec.transient_bytes = max(rec.transient_bytes or 0, peak - allocated_before)
            if name == OPTIMIZER_STEP and bookkeeping:
                self._exact.observe_state()
            rec.overhead_s += time.perf_counter() - t1

    def end_step(self, step: int, tokens: int) -> None:
        """Close `step`: stop its wall-clock interval and record the tokens it trained on (tokens/s)."""
        t0 = time.perf_counter()
        rec = self._begin(step)
        rec.whole.stop()
        rec.tokens = int(tokens)
        rec.ended = True
        self._current = None
        del self._records[step]
        if rec.profiled:
            self._profiler.stop(analyse=True)
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
        interval = Interval(self.cuda_index)
        try:
            yield
        finally:
            interval.stop()
            if rec is not None:  # a step() outside any metered step (e.g. a test call) is not attributed
                rec.hooks.setdefault(series, []).append(interval)

    def _fold_ready(self, wait: bool) -> None:
        """Fold ended steps into the series, in order, as soon as their intervals are known (no blocking
        unless `wait`): the CUDA event backlog stays a step or two long."""
        while self._ended and self._ended[0].resolve(wait):
            self._series.fold(self._ended.popleft())

    # -- snapshots --------------------------------------------------------------------------------

    def dump_snapshot(self, path: Path | None = None) -> Path | None:
        """Write a memory snapshot to `path` (default: `snapshot_path`); returns what was written, or None.

        CUDA: `torch.cuda.memory._dump_snapshot`, a pickle for pytorch.org/memory_viz (with alloc/free
        history and Python stacks when `snapshot_path` was given, else the allocator's segments only). CPU:
        the CPU allocator keeps no history, so the best record is the profiled step's memory by role over
        time, written as JSON next to `path` with the suffix .json (None if no step was profiled yet).
        """
        target = Path(path) if path is not None else self.snapshot_path
        if target is None:
            return None
        if not self.cuda:
            target = target.with_suffix(".json")  # not a memory_viz pickle: name it for what it is
        recording = self._allocator is not None and self._allocator.recording
        if target == self._snapshot_written and not recording:
            return target  # written on exit with the full history; a later dump would only lose it
        target.parent.mkdir(parents=True, exist_ok=True)
        if self._allocator is not None:
            self._allocator.dump(target)
        elif self._profiler.latest() is not None:
            write_timeline_json(self._profiler.latest(), target)
        else:
            return None
        self._snapshot_written = target
        return target

    def _safe_dump(self) -> None:
        try:
            self.dump_snapshot()
        except Exception as exc:  # noqa: BLE001 - failing to write a snapshot must not mask the run's result
            self._errors.append(f"snapshot: {one_line(exc)}")

    # -- results ----------------------------------------------------------------------------------

    def results(self) -> dict[str, Any]:
        """The runs.csv measure columns this meter owns, plus extras; None where the device cannot say.

        Safe to call after an exception (e.g. OOM): it reports what was measured up to then. Why a figure is
        missing is said in `profiler_error`, `nvml_error` (one line each) and `measure_errors` (all of them).
        """
        if self.cuda:
            torch.cuda.synchronize(self.cuda_index)
        self._fold_ready(wait=True)  # a step begun but never ended (an OOM mid-step) is not counted
        out: dict[str, Any] = {}
        out.update(self._exact.columns())
        out.update(allocator_columns(self._allocator))
        out.update(self._profiler.columns())
        out.update(self._rss.columns())
        out.update(nvml_columns(self._nvml))
        out.update(self._transient_columns())
        out.update(time_columns(self._series))
        out["measure_errors"] = "; ".join(self._errors) or None
        out["memory_snapshot"] = str(self._snapshot_written) if self._snapshot_written else None
        return out

    def _transient_columns(self) -> dict[str, Any]:
        """`step_transient_bytes`: CUDA allocator windows on every timed step (max), else the profiled steps."""
        cuda = self._series.transient  # None on CPU
        sampled = self._profiler.transient(OPTIMIZER_STEP)
        return {
            "step_transient_bytes": cuda if cuda is not None else sampled,
            "step_transient_source": ("cuda_allocator" if cuda is not None
                                      else "profiler" if sampled is not None else None),
            "profiled_step_transient_bytes": sampled,
            "profiled_forward_backward_transient_bytes": self._profiler.transient(FORWARD_BACKWARD),
        }


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
    device = resolve_device(device)
    cuda_index = device.index if device.type == "cuda" and torch.cuda.is_available() else None
    bare: list[float] = []
    metered: list[float] = []

    def timed(body: Callable[[], None], into: list[float]) -> None:
        if cuda_index is not None:
            torch.cuda.synchronize(cuda_index)  # sync points bracket each step in both arms alike
        t0 = time.perf_counter()
        body()
        if cuda_index is not None:
            torch.cuda.synchronize(cuda_index)
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
