"""Memory measurement primitives, three ways: exact tensor bytes, the allocator (via the torch profiler's
memory categories and raw allocation events), and the process (RSS, NVML).

Everything here is usable on its own; `swanbench.trackers.RunMeter` composes it into a run's columns.
A value that cannot be measured on this machine is None, never 0.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

# --------------------------------------------------------------------------------------------------
# 1. Exact tensor bytes by role (walk the tensors)
# --------------------------------------------------------------------------------------------------


def _storage_key(t: torch.Tensor) -> tuple:
    """Identity of the memory a tensor uses, so that views and tied weights are counted once."""
    storage = t.untyped_storage()
    return (t.device.type, t.device.index, storage.data_ptr(), storage.nbytes())


def _local(t: torch.Tensor) -> torch.Tensor:
    """The tensor holding this rank's memory: a DTensor's (FSDP2, tensor parallel) local shard, else `t`."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` on this rank (a view or a shared tensor counts once).

    Uses the storage size, not numel * element_size, because that is what the allocator holds: a view of a
    larger buffer costs the whole buffer. A DTensor counts its local shard (memory is per rank). Tensors
    without real storage (meta, wrapper subclasses) count numel * element_size.
    """
    seen: set[tuple] = set()
    total = 0
    for t in tensors:
        t = _local(t)
        try:
            key = _storage_key(t) if t.device.type != "meta" else None
        except RuntimeError:  # a wrapper subclass with no storage of its own
            key = None
        if key is None:
            key = ("tensor", id(t), 0, t.numel() * t.element_size())
        if key in seen:
            continue
        seen.add(key)
        total += key[3]
    return total


def tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside a nested state value (dicts, lists, tuples); numbers and strings yield nothing."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors_in(v)


def leaf_optimizers(optimizer: Any) -> list[Any]:
    """The torch optimizers that hold state: the optimizer itself, or a composite's parts.

    A hybrid (SWAN on hidden matrices + AdamW on the rest) may keep its parts in an attribute such as
    `optimizers` or `parts`; those are walked instead of the wrapper, so nothing is counted twice.
    """
    for attr in ("optimizers", "parts", "children_optimizers"):
        parts = getattr(optimizer, attr, None)
        if isinstance(parts, dict):
            parts = list(parts.values())
        if isinstance(parts, (list, tuple)) and parts and all(hasattr(p, "param_groups") for p in parts):
            return [leaf for p in parts for leaf in leaf_optimizers(p)]
    return [optimizer]


def split_state(tensors: Iterable[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(per-parameter buffers, 0-dim bookkeeping scalars such as Adam's `step` counters).

    The buffers are the memory an optimizer's claim is about (Adam: 2 per parameter); the scalars are a few
    bytes per parameter tensor and are reported separately so neither hides in the other.
    """
    buffers, scalars = [], []
    for t in tensors:
        (scalars if t.dim() == 0 else buffers).append(t)
    return buffers, scalars


def optimizer_state_tensors(optimizer: Any) -> list[torch.Tensor]:
    """All tensors in the optimizer state (momenta, second moments, factored statistics, step counters)."""
    out: list[torch.Tensor] = []
    for opt in leaf_optimizers(optimizer):
        for state in opt.state.values():
            out.extend(tensors_in(state))
    return out


def optimizer_state_bytes(optimizer: Any) -> tuple[int, int]:
    """(bytes of per-parameter state buffers, bytes of 0-dim bookkeeping scalars); exact, storages deduped."""
    buffers, scalars = split_state(optimizer_state_tensors(optimizer))
    return tensor_bytes(buffers), tensor_bytes(scalars)


def _group_label(index: int, group: dict, taken: set[str]) -> str:
    name = group.get("name")
    label = str(name) if isinstance(name, str) and name else f"group{index}"
    return label if label not in taken else f"{label}{index}"  # two parts may both call a group "default"


def per_group_bytes(optimizer: Any) -> dict[str, dict[str, int]]:
    """{group label: {"params", "grads", "state"}: bytes} over every leaf optimizer's param groups.

    Labels are the group's "name" entry when it has one, else group<i> (i counts across a hybrid's parts).
    "state" counts the per-parameter buffers only (0-dim step counters excluded, as in the run total).
    """
    out: dict[str, dict[str, int]] = {}
    index = 0
    for opt in leaf_optimizers(optimizer):
        for group in opt.param_groups:
            params = list(group["params"])
            label = _group_label(index, group, set(out))
            buffers, _ = split_state(t for p in params for t in tensors_in(opt.state.get(p, {})))
            out[label] = {
                "params": tensor_bytes(params),
                "grads": tensor_bytes(p.grad for p in params if p.grad is not None),
                "state": tensor_bytes(buffers),
            }
            index += 1
    return out


def model_param_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters (tied weights once; frozen ones included: they are resident)."""
    return tensor_bytes(model.parameters())


def model_grad_bytes(model: torch.nn.Module) -> int:
    """Bytes of the gradients currently held in `.grad` (0 after zero_grad(set_to_none=True))."""
    return tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)


# --------------------------------------------------------------------------------------------------
# 2. The allocator as the torch profiler sees it: roles over time and the transient of a window
# --------------------------------------------------------------------------------------------------

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
MARK_PREFIX = "swanbench::"  # record_function names the meter puts around its phases while profiling


@dataclass
class ProfiledStep:
    """What one profiled training step showed (bytes; times in ns of the profiler's clock).

    role_peaks: peak bytes per role (parameter, gradient, optimizer_state, activation, temporary, input,
        autograd_detail, unclassified) on the device, from torch.profiler's memory categories.
    total_peak: peak of the sum over roles (the live tensor memory the step touched, at its highest).
    window_transients: for each marked phase, peak allocated during it minus allocated at its start,
        from the raw allocation events (every allocator call, exact).
    """

    device: str
    role_peaks: dict[str, int] = field(default_factory=dict)
    total_peak: int | None = None
    window_transients: dict[str, int] = field(default_factory=dict)
    timeline: tuple[list[int], list[list[int]]] | None = None


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


def analyse_profile(prof: Any, device: torch.device) -> ProfiledStep:
    """Role peaks, total peak and per-phase transients of a finished `torch.profiler.profile` run.

    The profiler must have run with record_shapes, profile_memory and with_stack (torch needs all three to
    attribute memory to parameters, gradients and optimizer state).
    """
    from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX

    out = ProfiledStep(device=str(device))
    times, sizes = role_timeline(prof, device)
    if sizes:
        for category, index in _CATEGORY_TO_INDEX.items():
            role = ROLE_NAMES[category.name if category is not None else None]
            out.role_peaks[role] = max(row[index + 1] for row in sizes)
        out.total_peak = max(sum(row[1:]) for row in sizes)
    out.timeline = (times, sizes)
    marks, allocs = _marks_and_allocations(prof.profiler.kineto_results, device)
    for name, spans in marks.items():
        out.window_transients[name] = max(window_transient(allocs, s, e) for s, e in spans)
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
# 3. The process: RSS (host) and NVML (device)
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


class NvmlSampler:
    """Samples NVML memory in a background thread: this process's GPU memory and the device's used memory.

    NVML sees what the CUDA allocator cannot: the CUDA context, cuBLAS/cuDNN workspaces, NCCL buffers and
    other libraries' allocations. Every failure (no pynvml, no driver, MIG, a container that hides PIDs)
    leaves the corresponding peak None; the sampler never raises into the training loop.

    Attributes (bytes, None until seen): process_peak, device_peak, device_baseline (used memory when
    sampling started, i.e. other processes + what this process already held), samples (count).
    """

    def __init__(self, device: torch.device, interval_s: float = 0.02):
        self.device = device
        self.interval_s = interval_s
        self.process_peak: int | None = None
        self.device_peak: int | None = None
        self.device_baseline: int | None = None
        self.samples = 0
        self.error: str | None = None
        self._handle = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def start(self) -> bool:
        """Initialise NVML and start sampling; False (with `error` set) when NVML is unavailable."""
        try:
            import pynvml

            pynvml.nvmlInit()
            index = _nvml_index(self.device)
            if index is None:
                raise RuntimeError("cannot map the CUDA device to an NVML device")
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:  # noqa: BLE001 - ImportError, NVMLError, RuntimeError: all mean "no NVML"
            self.error = f"{type(exc).__name__}: {exc}"
            return False
        self._sample()
        self.device_baseline = self.device_peak
        self._thread = threading.Thread(target=self._loop, name="swanbench-nvml", daemon=True)
        self._thread.start()
        return True

    def _sample(self) -> None:
        import pynvml

        try:
            used = int(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used)
            self.device_peak = max(self.device_peak or 0, used)
        except Exception as exc:  # noqa: BLE001
            self.error = f"{type(exc).__name__}: {exc}"
        try:
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
                mem = getattr(proc, "usedGpuMemory", None)
                # NVML reports None (not available, e.g. under MIG or without privileges): leave it None.
                if proc.pid == self._pid and isinstance(mem, int):
                    self.process_peak = max(self.process_peak or 0, mem)
        except Exception as exc:  # noqa: BLE001
            self.error = f"{type(exc).__name__}: {exc}"
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def stop(self) -> None:
        """Stop sampling (one last sample first, so a peak at the very end is not missed)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()
        self._thread = None
        try:
            import pynvml

            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
