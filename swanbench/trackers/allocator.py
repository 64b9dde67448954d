"""The CUDA caching allocator of one device: peak bytes per window, retries and OOMs, and its history.

Every call names the device by index (`torch.cuda.*(device=index)`): without it torch answers for the
*current* device, which is not the meter's when the meter runs on cuda:N and the current device is another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from swanbench.trackers.errors import one_line


class CudaAllocator:
    """Windows on the allocator of CUDA device `index` (bytes).

    `max_memory_allocated/reserved` are reset before every window and folded into run maxima when the next
    one opens (or at `fold()`), so that no peak escapes: the gaps between windows count too. Host-side
    counters only, no device synchronisation: the caching allocator accounts an allocation when the op is
    enqueued, so a window is exact in stream order.
    """

    def __init__(self, index: int, report: Callable[[str], None] = lambda reason: None):
        self.index = index
        self.peak_allocated: int | None = None
        self.peak_reserved: int | None = None
        self.window_peaks: dict[str, int] = {}  # window name -> max peak allocated over its windows
        self.recording = False  # allocation history on, for a snapshot
        self._counters_at_start: dict[str, int] = {}
        self._report = report

    def start(self) -> None:
        """Zero the run: retry/OOM counters are taken relative to now, and the peaks reset."""
        self._counters_at_start = self.counters()
        torch.cuda.reset_peak_memory_stats(self.index)

    def counters(self) -> dict[str, int]:
        """The allocator's lifetime counts: alloc retries (cache flushes under pressure) and OOMs."""
        stats = torch.cuda.memory_stats(self.index)
        return {"alloc_retries": int(stats.get("num_alloc_retries", 0)), "ooms": int(stats.get("num_ooms", 0))}

    def _stats(self) -> tuple[int, int, int]:
        """(peak allocated, peak reserved, allocated now) in bytes since the last reset: one stats call.

        The nested dict skips `memory_stats()`'s flattening of ~100 counters: this runs 4 times a step.
        """
        stats = torch.cuda.memory_stats_as_nested_dict(self.index)
        allocated = stats.get("allocated_bytes", {}).get("all", {})
        reserved = stats.get("reserved_bytes", {}).get("all", {})
        return int(allocated.get("peak", 0)), int(reserved.get("peak", 0)), int(allocated.get("current", 0))

    def fold(self) -> tuple[int, int]:
        """Fold the peaks since the last reset into the run maxima; return (that peak, allocated now), bytes."""
        allocated, reserved, now = self._stats()
        self.peak_allocated = max(self.peak_allocated or 0, allocated)
        self.peak_reserved = max(self.peak_reserved or 0, reserved)
        return allocated, now

    def open_window(self) -> int:
        """Fold the peak since the last window, reset the peaks, and return the bytes allocated now."""
        _, now = self.fold()
        torch.cuda.reset_peak_memory_stats(self.index)
        return now

    def close_window(self, name: str) -> int:
        """Fold and return the window's peak allocated bytes; `<name>_peak_allocated_bytes` keeps the max."""
        peak, _ = self.fold()
        self.window_peaks[name] = max(self.window_peaks.get(name, 0), peak)
        return peak

    def columns(self) -> dict[str, Any]:
        """`peak_allocated_bytes`, `peak_reserved_bytes`, `<window>_peak_allocated_bytes` (bytes) and
        `alloc_retries`, `oom_count` (counts during the run)."""
        self.fold()
        now = self.counters()
        out: dict[str, Any] = {
            "peak_allocated_bytes": self.peak_allocated,
            "peak_reserved_bytes": self.peak_reserved,
            "alloc_retries": now["alloc_retries"] - self._counters_at_start.get("alloc_retries", 0),
            "oom_count": now["ooms"] - self._counters_at_start.get("ooms", 0),
        }
        for name, peak in self.window_peaks.items():
            out[f"{name}_peak_allocated_bytes"] = peak
        return out

    # -- history and snapshots --------------------------------------------------------------------

    def start_history(self, max_entries: int) -> None:
        """Record every alloc/free (the last `max_entries`) with Python stack traces, for a snapshot.

        Python stacks only: stacks="all" symbolises C++ frames at dump time, which takes minutes per
        snapshot (and fails without addr2line); the Python frames name the model code and the optimizer.
        """
        try:
            torch.cuda.memory._record_memory_history(enabled="all", stacks="python", max_entries=max_entries,
                                                     device=self.index)
            self.recording = True
        except Exception as exc:  # noqa: BLE001 - no history costs the snapshot's detail, never the run
            self._report(one_line(exc))

    def stop_history(self) -> None:
        """Stop recording (the meter does it after its exit snapshot, which needs the history)."""
        if self.recording:
            torch.cuda.memory._record_memory_history(enabled=None, device=self.index)
            self.recording = False

    @staticmethod
    def dump(path: Path) -> None:
        """A pickle for pytorch.org/memory_viz: the segments, and the history while it is recorded."""
        torch.cuda.memory._dump_snapshot(str(path))


def allocator_columns(allocator: CudaAllocator | None) -> dict[str, Any]:
    """The allocator's columns, or all None where there is none (CPU: no allocator with statistics)."""
    if allocator is None:
        return {"peak_allocated_bytes": None, "peak_reserved_bytes": None, "alloc_retries": None, "oom_count": None}
    return allocator.columns()
