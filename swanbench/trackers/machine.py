"""How busy the machine was while a run measured its times: load average and CPU steal (Linux /proc).

A step time measured on a machine that other processes keep busy is the machine's number, not the
optimizer's. Every run records, as columns of its row:

- `load_avg_start`, `load_avg_end`: the 1-minute load average (runnable processes, averaged by the kernel
  over about a minute) when the run's process started measuring and when it finished; compare with
  `cpu_count`: a load above the cores means processes queued for a core;
- `cpu_steal_pct`: the share of all CPU time, over the run, that the hypervisor gave to other virtual
  machines (the `steal` column of /proc/stat; empty where the kernel does not report it);
- `cpu_busy_pct`: the share of all CPU time, over the run, that was not idle (this run's own work included).

Values that cannot be read (not Linux) are None, never 0.
"""

from __future__ import annotations

import os
from typing import Any

# /proc/stat "cpu" line fields, in order (man 5 proc); steal is the 8th.
_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def cpu_times(path: str = "/proc/stat") -> dict[str, int] | None:
    """The machine's cumulative CPU time by kind (clock ticks), from the aggregate `cpu` line; None off Linux."""
    try:
        with open(path) as fh:
            first = fh.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    values = [int(v) for v in first[1:]]
    return {name: value for name, value in zip(_STAT_FIELDS, values)}


def shares(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, float | None]:
    """Steal and busy as percentages of all CPU time between two `cpu_times` readings."""
    if not before or not after:
        return {"cpu_steal_pct": None, "cpu_busy_pct": None}
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    total = sum(delta.values())
    if total <= 0:
        return {"cpu_steal_pct": None, "cpu_busy_pct": None}
    idle = delta.get("idle", 0) + delta.get("iowait", 0)
    steal = 100.0 * delta["steal"] / total if "steal" in delta else None
    return {"cpu_steal_pct": steal, "cpu_busy_pct": 100.0 * (total - idle) / total}


class MachineLoad:
    """Load average at start and end and the CPU shares in between: `start()`, then `columns()`."""

    def __init__(self) -> None:
        self._load_start: float | None = None
        self._times_start: dict[str, int] | None = None

    def start(self) -> "MachineLoad":
        self._load_start, self._times_start = load_average(), cpu_times()
        return self

    def columns(self) -> dict[str, Any]:
        """The runs.csv columns (see the module docstring), read now."""
        return {"load_avg_start": self._load_start, "load_avg_end": load_average(), "cpu_count": os.cpu_count(),
                **shares(self._times_start, cpu_times())}
