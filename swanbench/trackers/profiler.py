"""The torch profiler on sampled steps: memory by role over time, and the transient of each phase (bytes).

Two analyses of one `torch.profiler.profile` run (profile_memory, record_shapes and with_stack, all three
needed by torch to attribute memory to parameters, gradients and optimizer state):

- roles: torch's memory categories (parameter, gradient, optimizer_state, activation, temporary, input,
  autograd_detail, unclassified) over time on the device; the peak of each (`<role>_peak_bytes`) and of
  their sum (`profiled_step_peak_bytes`);
- window transients: from the raw allocation events (every allocator call, exact), for each phase the
  meter marked with `MARK_PREFIX + name`, the peak allocated during it minus what was allocated at its
  start. On CPU, where no allocator keeps statistics, this is `step_transient_bytes`.

The two are independent: torch's role analysis has known failures (an AssertionError "version mismatch"
in `torch.profiler._memory_profiler` on some CUDA programs) that cost the role columns, not the transients.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from swanbench.trackers.errors import one_line

# Profiler category -> column stem. None is memory the profiler saw allocated but could not attribute.
ROLE_NAMES = {
    "PARAMETER": "parameter",
    "GRADIENT": "gradient",
    "OPTIMIZER_STATE": "optimizer_state",
    "ACTIVATION": "activation",
    "TEMPORARY": "temporary",
    "INPUT": "input",
    "AUTOGRAD_DETAIL": "autograd_detail",
    None: "unclassified",
}
# Column stems of the profiler's per-role peaks (`<role>_peak_bytes`), in column order.
PROFILER_ROLES = ("parameter", "gradient", "optimizer_state", "activation", "temporary", "input",
                  "autograd_detail", "unclassified")
MARK_PREFIX = "swanbench::"  # record_function names the meter puts around its phases while profiling


@dataclass
class ProfiledStep:
    """What one profiled training step showed (bytes; times in ns of the profiler's clock).

    role_peaks: peak bytes per role (parameter, gradient, optimizer_state, activation, temporary, input,
        autograd_detail, unclassified) on the device, from torch.profiler's memory categories.
    total_peak: peak of the sum over roles (the live tensor memory the step touched, at its highest).
    window_transients: for each marked phase, peak allocated during it minus allocated at its start,
        from the raw allocation events (every allocator call, exact).
    timeline: (times in us, bytes per category at each time), kept for the CPU snapshot.
    """

    device: str
    role_peaks: dict[str, int] = field(default_factory=dict)
    total_peak: int | None = None
    window_transients: dict[str, int] = field(default_factory=dict)
    timeline: tuple[list[int], list[list[int]]] | None = None


# --------------------------------------------------------------------------------------------------
# Analysis of a finished profile
# --------------------------------------------------------------------------------------------------


def _walk(events: Iterable[Any]) -> Iterator[Any]:
    stack = list(events)
    while stack:
        e = stack.pop()
        yield e
        stack.extend(e.children)


def _marks_and_allocations(result: Any, device: torch.device) -> tuple[dict[str, list[tuple[int, int]]],
                                                                       list[tuple[int, int]]]:
    """Phase marks {name: [(start_ns, end_ns)]} and the allocation events [(t_ns, +/-bytes)] on `device`."""
    from torch._C._profiler import _EventType

    marks: dict[str, list[tuple[int, int]]] = {}
    allocs: list[tuple[int, int]] = []
    for e in _walk(result.experimental_event_tree()):
        kind = e.typed[0]
        if kind == _EventType.Allocation:
            f = e.typed[1]
            if f.device == device:
                allocs.append((e.start_time_ns, int(f.alloc_size)))
        elif kind == _EventType.TorchOp and e.name.startswith(MARK_PREFIX):
            marks.setdefault(e.name[len(MARK_PREFIX):], []).append((e.start_time_ns, e.end_time_ns))
    allocs.sort()
    return marks, allocs


def window_transient(allocs: list[tuple[int, int]], start_ns: int, end_ns: int) -> int:
    """Peak of (bytes allocated since `start_ns`) over the window: what the window needed beyond its start.

    Frees of memory allocated before the window count negative, as they do for the CUDA allocator's
    `max_memory_allocated() - memory_allocated()` measured around the same window.
    """
    running = peak = 0
    for t, delta in allocs:
        if t < start_ns:
            continue
        if t > end_ns:
            break
        running += delta
        peak = max(peak, running)
    return peak


def role_timeline(prof: Any, device: torch.device) -> tuple[list[int], list[list[int]]]:
    """(times in us, bytes per category at each time) for `device`, from torch's memory profile.

    Column order of each size row: [unused, then one per `_memory_profiler._CATEGORY_TO_INDEX`].
    """
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    return MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(str(device))


def add_window_transients(out: ProfiledStep, prof: Any, device: torch.device) -> None:
    """Fill `out.window_transients` (bytes per marked phase, the max over its spans) from the raw events."""
    marks, allocs = _marks_and_allocations(prof.profiler.kineto_results, device)
    for name, spans in marks.items():
        out.window_transients[name] = max(window_transient(allocs, s, e) for s, e in spans)


def add_role_peaks(out: ProfiledStep, prof: Any, device: torch.device) -> None:
    """Fill `out.role_peaks`, `out.total_peak` (bytes) and `out.timeline` from torch's memory categories."""
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX

    times, sizes = role_timeline(prof, device)
    if sizes:
        for category, index in _CATEGORY_TO_INDEX.items():
            role = ROLE_NAMES[category.name if category is not None else None]
            out.role_peaks[role] = max(row[index + 1] for row in sizes)
        out.total_peak = max(sum(row[1:]) for row in sizes)
    out.timeline = (times, sizes)


def analyse_profile(prof: Any, device: torch.device) -> ProfiledStep:
    """Role peaks, total peak and per-phase transients of a finished `torch.profiler.profile` run.

    Raises whatever torch's analysis raises; `StepProfiler` keeps the transients when only the roles fail.
    """
    out = ProfiledStep(device=str(device))
    add_role_peaks(out, prof, device)
    add_window_transients(out, prof, device)
    return out


def write_timeline_json(step: ProfiledStep, path: Path) -> Path:
    """Write a profiled step's memory by role over time as JSON: {"device", "roles", "times_us", "bytes"}.

    This is the CPU counterpart of a CUDA snapshot: the CPU allocator keeps no history, so the profiled
    step's attributed timeline is the most detailed record there is.
    """
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX

    times, sizes = step.timeline or ([], [])
    roles = [ROLE_NAMES[c.name if c is not None else None] for c in _CATEGORY_TO_INDEX]
    payload = {"device": step.device, "roles": roles, "times_us": times,
               "bytes": [row[1:] for row in sizes], "role_peaks": step.role_peaks,
               "window_transients": step.window_transients}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return path


# --------------------------------------------------------------------------------------------------
# The profiler around sampled steps
# --------------------------------------------------------------------------------------------------


class StepProfiler:
    """Runs torch.profiler around the meter's sampled steps and keeps their analyses.

    A broken profiler costs its columns, never the run: every failure is caught, its first one-line
    reason is kept in `error` (the `profiler_error` column) and each is passed to `report`.

    Attributes: steps (the analysed ProfiledSteps), seconds (host seconds spent starting, stopping and
    analysing the profiler), error (None when all went well).
    """

    def __init__(self, device: torch.device, cuda: bool, *, enabled: bool,
                 report: Callable[[str], None] = lambda reason: None):
        self.device = device
        self.cuda = cuda
        self.enabled = enabled
        self.steps: list[ProfiledStep] = []
        self.seconds = 0.0
        self.error: str | None = None
        self._report = report
        self._prof: Any = None

    @property
    def active(self) -> bool:
        """True while a sampled step is being profiled."""
        return self._prof is not None

    def start(self) -> bool:
        """Start profiling (before the sampled step's first interval); False, with the reason kept, if it fails."""
        from torch.profiler import ProfilerActivity, profile

        t0 = time.perf_counter()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        try:
            # All three flags are required by torch to attribute memory to parameters/grads/state.
            self._prof = profile(activities=activities, profile_memory=True, record_shapes=True, with_stack=True)
            self._prof.start()
        except Exception as exc:  # noqa: BLE001 - a broken profiler costs its columns, never the run
            self._prof = None
            self._fail(exc)
        self.seconds += time.perf_counter() - t0
        return self._prof is not None

    def stop(self, analyse: bool) -> None:
        """Stop profiling; analyse the step (`analyse=True`) or discard it (a step that raised mid-profile)."""
        prof, self._prof = self._prof, None
        if prof is None:
            return
        t0 = time.perf_counter()
        try:
            prof.stop()
            if analyse:
                if self.steps:  # only the latest timeline is ever written (snapshot): free the others
                    self.steps[-1].timeline = None
                self.steps.append(self._analyse(prof))
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            warnings.warn(f"swanbench: memory profile of a sampled step failed: {exc}", stacklevel=2)
        self.seconds += time.perf_counter() - t0

    def mark(self, phase: str) -> contextlib.AbstractContextManager:
        """A profiler range named MARK_PREFIX + phase: the window of that phase's transient."""
        return torch.profiler.record_function(MARK_PREFIX + phase)

    def _analyse(self, prof: Any) -> ProfiledStep:
        out = ProfiledStep(device=str(self.device))
        add_window_transients(out, prof, self.device)  # raw events: independent of torch's role analysis
        try:
            add_role_peaks(out, prof, self.device)
        except Exception as exc:  # noqa: BLE001 - e.g. torch's "version mismatch" assertion on CUDA
            self._fail(exc)
            warnings.warn(f"swanbench: the profiler's memory roles failed: {one_line(exc)}", stacklevel=3)
            return out
        if not out.role_peaks:
            self._fail(f"NoMemoryEvents: the profiler recorded no memory on {self.device}")
        return out

    def _fail(self, reason: BaseException | str) -> None:
        line = one_line(reason)
        if self.error is None:  # the first failure is the cause; a second sampled step usually repeats it
            self.error = line
        self._report(line)

    def latest(self) -> ProfiledStep | None:
        """The last analysed step (its timeline is the CPU snapshot), or None."""
        return self.steps[-1] if self.steps else None

    def transient(self, phase: str) -> int | None:
        """The largest window transient of `phase` over the profiled steps, bytes (None if never marked)."""
        values = [p.window_transients[phase] for p in self.steps if phase in p.window_transients]
        return max(values) if values else None

    def columns(self) -> dict[str, Any]:
        """`<role>_peak_bytes`, `profiled_step_peak_bytes` (bytes), `profiled_steps` (count),
        `profiler_overhead_s` (host seconds; None when profiling is off) and `profiler_error` (one line)."""
        out: dict[str, Any] = {}
        for role in PROFILER_ROLES:
            peaks = [p.role_peaks[role] for p in self.steps if role in p.role_peaks]
            out[f"{role}_peak_bytes"] = max(peaks) if peaks else None
        totals = [p.total_peak for p in self.steps if p.total_peak is not None]
        out["profiled_step_peak_bytes"] = max(totals) if totals else None
        out["profiled_steps"] = len(self.steps)
        out["profiler_overhead_s"] = self.seconds if self.enabled else None
        out["profiler_error"] = self.error
        return out
