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

1. exact tensor bytes by role (`memory`): parameters, gradients, optimizer state (walk the tensors; per
   group too);
2. the allocator: on CUDA `max_memory_allocated/reserved` per window (`allocator`: peaks reset before each
   phase and folded into run maxima, so nothing escapes), alloc retries and OOMs; on CPU and GPU the torch
   profiler's memory categories on sampled steps (`profiler`: peak per role); and `step_transient_bytes`,
   the peak inside `optimizer.step()` minus what was allocated just before it;
3. the process (`process`): peak RSS (VmHWM, reset when the meter starts) and, on GPU, NVML process and
   device memory sampled in a background thread (the CUDA context appears here and nowhere else).

Time (`timing`): CUDA events on GPU, `time.perf_counter` on CPU; warm-up steps and profiled steps are
excluded; medians with the interquartile range. The meter times its own bookkeeping (`tracker_overhead_ms`).

Why a figure is missing is a column too: `profiler_error`, `nvml_error` and `measure_errors`.

The names below are the package's public surface; inside the package, modules import from each other's
concern module, never from here.
"""

from __future__ import annotations

from swanbench.trackers.allocator import CudaAllocator
from swanbench.trackers.memory import (
    ExactBytes,
    leaf_optimizers,
    model_grad_bytes,
    model_param_bytes,
    optimizer_state_bytes,
    optimizer_state_tensors,
    per_group_bytes,
    split_state,
    tensor_bytes,
    tensors_in,
)
from swanbench.trackers.meter import RunMeter, measure_overhead, resolve_device
from swanbench.trackers.process import NvmlSampler, RssWindow, current_rss_bytes, peak_rss_bytes, reset_peak_rss
from swanbench.trackers.profiler import (
    MARK_PREFIX,
    PROFILER_ROLES,
    ROLE_NAMES,
    ProfiledStep,
    StepProfiler,
    analyse_profile,
    role_timeline,
    window_transient,
    write_timeline_json,
)
from swanbench.trackers.timing import FORWARD_BACKWARD, HOOK_TIMERS, OPTIMIZER_STEP, summarize

__all__ = [
    # the meter
    "RunMeter", "measure_overhead", "resolve_device", "FORWARD_BACKWARD", "OPTIMIZER_STEP", "HOOK_TIMERS",
    # time
    "summarize",
    # exact tensor bytes
    "ExactBytes", "tensor_bytes", "tensors_in", "split_state", "leaf_optimizers", "optimizer_state_tensors",
    "optimizer_state_bytes", "per_group_bytes", "model_param_bytes", "model_grad_bytes",
    # the CUDA allocator
    "CudaAllocator",
    # the profiler
    "ProfiledStep", "StepProfiler", "analyse_profile", "window_transient", "role_timeline",
    "write_timeline_json", "ROLE_NAMES", "PROFILER_ROLES", "MARK_PREFIX",
    # the process
    "NvmlSampler", "RssWindow", "current_rss_bytes", "peak_rss_bytes", "reset_peak_rss",
]
