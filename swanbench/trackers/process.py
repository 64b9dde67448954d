"""The process's memory, as the operating system and the GPU driver see it (bytes).

- RSS (host): the resident set size now and its high-water mark (Linux /proc/self/status), which the meter
  resets when it starts so that `peak_rss_bytes` is the run's own peak, not the imports' before it.
- NVML (GPU): this process's GPU memory and the device's used memory, sampled in a background thread. NVML
  sees what the CUDA allocator cannot: the CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers and other
  libraries' allocations.

A value that cannot be measured here is None, never 0; NVML says why in `NvmlSampler.error`.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import torch

from swanbench.trackers.errors import one_line

# --------------------------------------------------------------------------------------------------
# RSS (host)
# --------------------------------------------------------------------------------------------------


def _read_status_bytes(field_name: str) -> int | None:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM) in bytes, or None off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the resident-set high-water mark (Linux: write 5 to /proc/self/clear_refs); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> int | None:
    """Resident set size of this process now, bytes (None off Linux)."""
    return _read_status_bytes("VmRSS")


def peak_rss_bytes() -> int | None:
    """Peak resident set size, bytes: VmHWM (since the last reset), else ru_maxrss (process lifetime)."""
    hwm = _read_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024  # macOS reports bytes, Linux KiB
    except (ImportError, OSError):
        return None


class RssWindow:
    """The host RSS over one window (the meter's lifetime): at its start and at its peak, bytes."""

    def __init__(self) -> None:
        self.at_start: int | None = None
        self.peak: int | None = None
        self.reset = False  # True when the high-water mark was reset at the start (the peak is the window's)

    def start(self) -> None:
        """Read the RSS now and reset the high-water mark, so that the peak is this window's."""
        self.at_start = current_rss_bytes()
        self.reset = reset_peak_rss()

    def stop(self) -> None:
        """Read the peak now: whatever runs after the window (a snapshot dump, say) must not count."""
        self.peak = peak_rss_bytes()

    def columns(self) -> dict[str, Any]:
        """`peak_rss_bytes`, `rss_at_start_bytes` (bytes) and `peak_rss_scope` ("meter" or "process")."""
        return {
            "peak_rss_bytes": self.peak if self.peak is not None else peak_rss_bytes(),
            "rss_at_start_bytes": self.at_start,
            # "meter": the high-water mark was reset when the meter started; "process": lifetime peak.
            "peak_rss_scope": "meter" if self.reset else "process",
        }


# --------------------------------------------------------------------------------------------------
# NVML (GPU)
# --------------------------------------------------------------------------------------------------


def _nvml_index(device: torch.device) -> int | None:
    """NVML's index of a CUDA device: match the UUID (robust to CUDA_VISIBLE_DEVICES), else torch's mapping."""
    import pynvml

    try:
        uuid = str(torch.cuda.get_device_properties(device).uuid).lower()
        for i in range(pynvml.nvmlDeviceGetCount()):
            nv = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
            nv = nv.decode() if isinstance(nv, bytes) else nv
            if nv.lower().removeprefix("gpu-") == uuid.removeprefix("gpu-"):
                return i
    except Exception:  # noqa: BLE001 - any NVML/driver failure just means "try the other way"
        pass
    try:
        return torch.cuda._get_nvml_device_index(device)
    except Exception:  # noqa: BLE001
        return None


def _max(peak: int | None, value: int | None) -> int | None:
    return peak if value is None else max(peak or 0, value)


class NvmlSampler:
    """Samples NVML memory in a background thread: this process's GPU memory and the device's used memory.

    Every failure (no pynvml, no driver, MIG, a container that hides PIDs, an NVML error mid-run) leaves the
    corresponding peak None or short and says why in `error`; the sampler never raises into the training loop.

    Attributes (bytes, None until seen): process_peak, device_peak, device_baseline (used memory when
    sampling started, i.e. other processes + what this process already held), samples (count), error (the
    first failure, one line, or why the process figure is missing; None when all went well).
    """

    def __init__(self, device: torch.device, interval_s: float = 0.02):
        self.device = device
        self.interval_s = interval_s
        self.process_peak: int | None = None
        self.device_peak: int | None = None
        self.device_baseline: int | None = None
        self.samples = 0
        self.error: str | None = None
        self._handle: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def start(self) -> bool:
        """Initialise NVML and start sampling; False (with `error` set) when NVML is unavailable."""
        try:
            self._handle = self._open()
        except Exception as exc:  # noqa: BLE001 - ImportError, NVMLError, RuntimeError: all mean "no NVML"
            self.error = one_line(exc)
            return False
        self._sample()
        self.device_baseline = self.device_peak
        self._thread = threading.Thread(target=self._loop, name="swanbench-nvml", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Stop sampling (one last sample first, so a peak at the very end is not missed)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()
        self._thread = None
        self._close()
        if self.process_peak is None and self.error is None:
            # No exception, yet no figure: NVML listed processes, but not this one with a size.
            self.error = (f"no process figure: NVML lists no GPU memory for pid {self._pid} "
                          "(a container's PID namespace, MIG or missing privileges hide it)")

    def columns(self) -> dict[str, Any]:
        """The `nvml_*` columns: bytes, and `nvml_error` (why a figure is missing, else None)."""
        return {
            "nvml_peak_bytes": self.process_peak,
            "nvml_device_peak_bytes": self.device_peak,
            "nvml_device_baseline_bytes": self.device_baseline,
            "nvml_error": self.error,
        }

    # -- NVML calls (one place each, so that a test can stand in for the driver) ------------------

    def _open(self) -> Any:
        """Initialise NVML and return the handle of this sampler's device."""
        import pynvml

        pynvml.nvmlInit()
        index = _nvml_index(self.device)
        if index is None:
            raise RuntimeError("cannot map the CUDA device to an NVML device")
        return pynvml.nvmlDeviceGetHandleByIndex(index)

    def _close(self) -> None:
        try:
            import pynvml

            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - nothing left to measure: a failed shutdown costs nothing
            pass

    def _device_used(self) -> int:
        """The whole device's used memory now, bytes (every process, and the driver's reservations)."""
        import pynvml

        return int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def _process_used(self) -> int | None:
        """This process's GPU memory now, bytes; None when NVML does not list it with a size."""
        import pynvml

        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
            mem = getattr(proc, "usedGpuMemory", None)
            # NVML reports None (not available, e.g. under MIG or without privileges): leave it None.
            if proc.pid == self._pid and isinstance(mem, int):
                return mem
        return None

    # -- sampling ---------------------------------------------------------------------------------

    def _sample(self) -> None:
        try:
            self.device_peak = _max(self.device_peak, self._device_used())
        except Exception as exc:  # noqa: BLE001 - the background thread must never die on a driver error
            self._fail(exc)
        try:
            self.process_peak = _max(self.process_peak, self._process_used())
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
        self.samples += 1

    def _fail(self, exc: BaseException) -> None:
        # The first failure is the cause; later ones (every 20 ms) usually repeat it.
        if self.error is None:
            self.error = one_line(exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()


def nvml_columns(sampler: NvmlSampler | None) -> dict[str, Any]:
    """The `nvml_*` columns of a sampler, or all None where there is none (a CPU run: not applicable)."""
    if sampler is None:
        return {"nvml_peak_bytes": None, "nvml_device_peak_bytes": None, "nvml_device_baseline_bytes": None,
                "nvml_error": None}
    return sampler.columns()
