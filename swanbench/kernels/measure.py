"""Timing, peak extra memory and the machine's own limits, for the kernel suite.

Timing is wall-clock on CPU (`time.perf_counter`) and CUDA events on GPU; the limits (square matmul
TFLOP/s per dtype, copy GB/s) are measured in the same run, so every row can say how close it is to the
machine it ran on rather than to a datasheet.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from swanbench import costmodel as cm

MACHINE_COLUMNS = ["measure", "dtype", "size", "ms_median", "ms_iqr", "ms_min", "flops", "tflops", "bytes", "gbps",
                   "device", "device_name"]

# --------------------------------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a no-op on CPU, whose calls return when done)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_call(fn: Callable, x, device: str) -> tuple[float, Any]:
    """Seconds of one call (CUDA events on GPU, perf_counter on CPU) and its output."""
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn(x)
        end.record()
        end.synchronize()  # a CPU-GPU sync point: the elapsed time is only valid after it
        return start.elapsed_time(end) / 1e3, out
    t0 = time.perf_counter()
    out = fn(x)
    return time.perf_counter() - t0, out


def repeat_ms(fn: Callable, x, device: str, repeats: int, warmup: int) -> list[float]:
    """Milliseconds of `repeats` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn(x)
    synchronize(device)
    return [time_call(fn, x, device)[0] * 1e3 for _ in range(repeats)]


def median_iqr(samples_ms: list[float]) -> tuple[float | None, float | None]:
    """Median and interquartile range (ms); the IQR needs at least 3 samples (else None)."""
    if not samples_ms:
        return None, None
    med = statistics.median(samples_ms)
    if len(samples_ms) < 3:
        return med, None
    q1, _, q3 = statistics.quantiles(samples_ms, n=4, method="inclusive")
    return med, q3 - q1


# --------------------------------------------------------------------------------------------------
# Peak extra memory
# --------------------------------------------------------------------------------------------------

class _Observer(TorchDispatchMode):
    """Hands every aten op's outputs to `observe`."""

    def __init__(self, observe: Callable[[Any], None]):
        super().__init__()
        self._observe = observe

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._observe(out)
        return out


class LiveBytes:
    """Peak bytes of tensors allocated while active, counted over aten ops (CPU "peak extra memory").

    A TorchDispatchMode sees every aten op's outputs: a storage that did not exist when the counter
    started is added to the live total, and removed once its last reference dies (checked with a weak
    storage reference at each op). Inputs, and views of them, are never counted. The peak therefore is
    the high-water mark of intermediate + output tensors of one call. Not seen: workspace a kernel
    allocates internally (e.g. LAPACK's in eigh) and anything inside a torch.compile'd graph.
    """

    def __init__(self, existing: Iterable = ()):
        self.known = {t.untyped_storage().data_ptr() for t in existing}
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0
        self._mode = _Observer(self._observe)

    def _purge(self) -> None:
        for ptr in [p for p, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(ptr)[1]

    def _observe(self, out) -> None:
        self._purge()
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr == 0 or ptr in self.known or ptr in self.live:
                continue
            self.live[ptr] = (StorageWeakRef(storage), storage.nbytes())
            self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)

    def __enter__(self) -> "LiveBytes":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


@contextlib.contextmanager
def peak_extra_bytes(device: str, x, enabled: bool = True) -> Iterator[dict]:
    """Measure the peak extra memory of the calls inside: {"bytes": int | None, "method": str | None}.

    GPU: CUDA max_memory_allocated minus what was allocated before (the allocator's own view).
    CPU eager: the LiveBytes dispatch-mode counter. Anything else (compiled on CPU): None.
    """
    result: dict[str, Any] = {"bytes": None, "method": None}
    if device.startswith("cuda"):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield result
        synchronize(device)
        result.update(bytes=torch.cuda.max_memory_allocated(device) - before, method="cuda_max_allocated")
    elif enabled:
        with LiveBytes([x]) as counter:
            yield result
        result.update(bytes=counter.peak, method="dispatch_live_tensors")
    else:
        yield result


# --------------------------------------------------------------------------------------------------
# Machine limits
# --------------------------------------------------------------------------------------------------

@dataclass
class MachineLimits:
    """The device's own limits, measured in the same run: TFLOP/s per dtype and copy GB/s."""

    matmul_tflops: dict[str, float] = field(default_factory=dict)
    copy_gbps: float | None = None
    rows: list[dict] = field(default_factory=list)

    def rate(self, dtype: str) -> float | None:
        """The best matmul TFLOP/s measured for `dtype` (None if none was)."""
        return self.matmul_tflops.get(dtype)

    def offer_rate(self, dtype: str, tflops: float) -> None:
        """Keep `tflops` if it beats the best rate seen for `dtype` (a limit is what the machine can do)."""
        self.matmul_tflops[dtype] = max(self.matmul_tflops.get(dtype, 0.0), tflops)


def _tflops(flops: int, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def matmul_row(measure: str, n: int, dtype: str, samples: list[float]) -> dict:
    """A machine.csv row of an n x n matmul: its rate from the fastest call, the median kept beside it."""
    ms, iqr = median_iqr(samples)
    flops = cm.matmul_flops(n, n, n)
    return {"measure": measure, "dtype": dtype, "size": n, "ms_median": ms, "ms_iqr": iqr, "ms_min": min(samples),
            "flops": flops, "tflops": _tflops(flops, min(samples)), "bytes": None, "gbps": None}


TF32 = "tf32"  # a compute precision, not a tensor dtype: fp32 tensors, matmuls in TF32 where the GPU has it


@contextlib.contextmanager
def matmul_precision(compute: str) -> Iterator[None]:
    """fp32 matmuls in TF32 inside (compute "tf32"; torch's float32 matmul precision "high"), else unchanged."""
    if compute != TF32:
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def time_matmul(n: int, dtype: str, device: str, repeats: int, square_of_input: bool = False) -> list[float]:
    """ms of `repeats` n x n matmuls in `dtype` (a @ b, or a @ a with `square_of_input`), after one warm-up.

    dtype "tf32": fp32 tensors with TF32 matmuls allowed (the rate TF32 whitening is compared with).
    """
    tensor_dtype = torch.float32 if dtype == TF32 else getattr(torch, dtype)
    a = torch.randn(n, n, device=device).to(tensor_dtype)
    b = a if square_of_input else torch.randn(n, n, device=device).to(tensor_dtype)
    with matmul_precision(dtype):
        return repeat_ms(lambda x: x @ b, a, device, repeats, 1)


def _copy_row(copy_mib: int, device: str, repeats: int) -> dict:
    """Copy bandwidth of a copy_mib float32 buffer into a preallocated one, from the fastest call."""
    numel = copy_mib * 2**20 // 4
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    samples = repeat_ms(lambda x: dst.copy_(x), src, device, repeats, 1)
    ms, iqr = median_iqr(samples)
    nbytes = cm.copy_bytes(numel, "float32")
    return {"measure": "copy", "dtype": "float32", "size": numel, "ms_median": ms, "ms_iqr": iqr,
            "ms_min": min(samples), "flops": None, "tflops": None, "bytes": nbytes,
            "gbps": nbytes / (min(samples) * 1e-3) / 1e9}


def measure_limits(device: str, dtypes: Iterable[str], sizes: Iterable[int], copy_mib: int,
                   repeats: int = 7, computes: Iterable[str] = ()) -> MachineLimits:
    """Square matmul rate per dtype (and per extra compute precision, e.g. "tf32") and copy bandwidth of a
    copy_mib buffer.

    A limit is the best the machine can do, so it is computed from the fastest of `repeats` calls
    (ms_min) and the best size: on a shared machine a median would fold other users' load into the
    yardstick. The median is kept in the row beside it.
    """
    limits = MachineLimits()
    for dtype in dict.fromkeys(["float32", *dtypes, *computes]):
        for n in sizes:
            row = matmul_row("matmul", n, dtype, time_matmul(n, dtype, device, repeats))
            limits.rows.append(row)
            limits.offer_rate(dtype, row["tflops"])
    copy = _copy_row(copy_mib, device, repeats)
    limits.copy_gbps = copy["gbps"]
    limits.rows.append(copy)
    return limits


def copy_yardstick(x, device: str, op_ms: float) -> dict:
    """One copy of the same matrix, measured right after the operator (same load): into a preallocated
    buffer (copy_ms: pure read + write) and allocating (clone_ms: + page faults of a fresh buffer, as an
    out-of-place operator pays), and the operator's time as multiples of each."""
    dst = x.clone()
    copy = median_iqr(repeat_ms(lambda t: dst.copy_(t), x, device, 7, 1))[0]
    clone = median_iqr(repeat_ms(lambda t: t.clone(), x, device, 7, 1))[0]
    return {"copy_ms": copy, "x_copy": op_ms / copy, "clone_ms": clone, "x_clone": op_ms / clone}


def finalize_peaks(rows: list[dict], limits: MachineLimits) -> None:
    """The machine's matmul limit is the best rate measured anywhere in the run (start or next to a shape);
    every compute-bound row's frac_of_matmul_peak is recomputed against it."""
    for r in limits.rows:
        if r["measure"].startswith("matmul"):
            limits.offer_rate(r["dtype"], r["tflops"])
    for row in rows:
        peak = limits.rate(row["compute_dtype"])
        row["matmul_tflops_peak"] = peak
        if row.get("status") == "ok" and row["bound"] == "compute" and peak:
            row["frac_of_matmul_peak"] = row["tflops"] / peak


def machine_rows(limits: MachineLimits, device: str, device_name: str | None) -> list[dict]:
    """The measured limits as kernels.csv rows (operator "matmul" / "copy", bound "limit"), so that a figure
    or report drawn from kernels.csv alone has the machine's lines."""
    out = []
    for r in limits.rows:
        matmul = r["measure"].startswith("matmul")
        out.append({"operator": "matmul" if matmul else "copy", "method": r["measure"],
                    "rows": r["size"], "cols": r["size"] if matmul else 1, "dtype": r["dtype"], "device": device,
                    "device_name": device_name, "ms_median": r["ms_median"], "ms_iqr": r["ms_iqr"],
                    "ms_min": r["ms_min"],
                    "flops": r["flops"], "tflops": r["tflops"], "gbps": r["gbps"], "ideal_bytes": r["bytes"],
                    "status": "ok", "bound": "limit", "compile": False, "batch": 1})
    return out
