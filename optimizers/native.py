"""Native CPU kernels for SR-Sinkhorn and GradNorm, built on first use with the system C compiler.

`_kernels.c` holds four memory-bound kernels: SR-Sinkhorn's scale iteration, its scaled copy and the
fused SinkGD update, and GradNorm's row standardisation. They exist because the pure-torch versions spend
most of their time in per-op dispatch and OpenMP fork/join over ~1000 small ops per call (blocked
SR-Sinkhorn) or in a slow row reduction (`var_mean`); one C call walks each thread's rows directly.

The library is compiled once per (source, compiler, flags, CPU) into a cache folder
(`$SWANBENCH_NATIVE_CACHE`, else `$XDG_CACHE_HOME/swanbench/native`, else `~/.cache/swanbench/native`)
and loaded with ctypes (the calls release the GIL); each entry point is registered as a torch operator
(`torch.ops.swanbench.*`) that declares the tensors it writes. Without a working C compiler, or with
`SWANBENCH_NATIVE=0`, `available()` is False, `unavailable_reason()` says why, and
`optimizers.functional` falls back to its pure-torch kernels, so nothing depends on a compiler.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "unavailable_reason", "describe", "supports", "scales", "apply", "update", "grad_norm_into",
           "library_path",
           "ENV_DISABLE"]

SOURCE = Path(__file__).with_name("_kernels.c")
ENV_DISABLE = "SWANBENCH_NATIVE"
ABI_VERSION = 3
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
# -march=native: the library is built on, and cached for, the CPU it runs on (the CPU flags are in the
# cache key). The fallbacks cover compilers without OpenMP (Apple clang) or without -march=native.
_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-fopenmp"],
    ["-O3", "-march=native", "-fopenmp-simd"],
    ["-O3"],
)
_COMMON = ["-std=c11", "-shared", "-fPIC"]

_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib": CDLL | None, "reason": str | None, "path": Path | None


def _cache_dir() -> Path:
    if os.environ.get("SWANBENCH_NATIVE_CACHE"):
        return Path(os.environ["SWANBENCH_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "swanbench" / "native"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """The CPU's feature flags (what -march=native compiles for), so a shared cache never mixes CPUs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_key(cc: str, flags: list[str]) -> str:
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), cc.encode(), " ".join(flags).encode(), platform.machine().encode(),
                 _cpu_signature().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:20]


def _compile(cc: str, flags: list[str], target: Path) -> str | None:
    """Build into a temporary file beside `target`, then rename (atomic: concurrent workers never see a
    half-written library). Returns the compiler's complaint, or None on success."""
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # an unwritable cache is a reason, not a crash
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        proc = subprocess.run([cc, *flags, *_COMMON, str(SOURCE), "-o", tmp, "-lm"],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            return (proc.stderr.strip().splitlines() or ["no output"])[-1]
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, f32, f64, ptr, i32 = ctypes.c_int64, ctypes.c_float, ctypes.c_double, ctypes.c_void_p, ctypes.c_int
    lib.sk_scales.argtypes = [ptr, i32, i64, i64, i64, i32, f64, ptr, ptr, ptr, i32]
    lib.sk_apply.argtypes = [ptr, i32, i64, i64, i64, ptr, ptr, ptr, i64, i32]
    lib.sk_update.argtypes = [ptr, i64, ptr, i64, i32, i64, i64, ptr, ptr, f32, i32]
    lib.gn_rows.argtypes = [ptr, i32, i64, i64, i64, f64, ptr, i64, i32]
    for fn in (lib.sk_scales, lib.sk_apply, lib.sk_update, lib.gn_rows):
        fn.restype = None
    lib.sk_abi_version.restype = ctypes.c_int
    return lib


def _load() -> None:
    if os.environ.get(ENV_DISABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        _state.update(lib=None, reason=f"disabled by {ENV_DISABLE}={os.environ[ENV_DISABLE]}", path=None)
        return
    cc = _compiler()
    if cc is None:
        _state.update(lib=None, reason="no C compiler found (set CC, or install gcc/clang)", path=None)
        return
    errors = []
    for flags in _FLAG_SETS:
        target = _cache_dir() / f"kernels-{_cache_key(cc, flags)}.so"
        if not target.exists():
            err = _compile(cc, flags, target)
            if err is not None:
                errors.append(f"{' '.join(flags)}: {err}")
                continue
        try:
            lib = _declare(ctypes.CDLL(str(target)))
        except OSError as exc:
            errors.append(f"{target.name}: {exc}")
            continue
        if lib.sk_abi_version() == ABI_VERSION:
            _state.update(lib=lib, reason=None, path=target)
            return
        errors.append(f"{target.name}: ABI {lib.sk_abi_version()} != {ABI_VERSION}")
    _state.update(lib=None, reason="could not build the native kernels: " + "; ".join(errors), path=None)


def _lib() -> ctypes.CDLL | None:
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                _load()
    return _state["lib"]  # type: ignore[return-value]


def available() -> bool:
    """True when the native kernels are built (or buildable now) and not disabled."""
    return _lib() is not None


def unavailable_reason() -> str | None:
    """Why `available()` is False (one line), or None."""
    _lib()
    return _state["reason"]  # type: ignore[return-value]


def library_path() -> Path | None:
    _lib()
    return _state["path"]  # type: ignore[return-value]


def describe() -> str:
    """One line for environment records, without building anything: the loaded library, why there is none,
    or "not used" when nothing in this process has asked for the kernels yet."""
    if "lib" not in _state:
        return "not used"
    if _state["lib"] is None:
        return f"unavailable: {_state['reason']}"
    return f"loaded: {_state['path']}"


def supports(g: Tensor) -> bool:
    """Whether `g` (a matrix) can go through the native kernels: CPU, fp32/bf16, unit column stride."""
    return g.device.type == "cpu" and g.dtype in _DTYPES and _rows_disjoint(g) and available()


def _require(g: Tensor, what: str) -> ctypes.CDLL:
    lib = _lib()
    if lib is None:
        raise RuntimeError(f"{what}: native kernels unavailable ({unavailable_reason()})")
    if not (g.device.type == "cpu" and g.dim() == 2 and g.dtype in _DTYPES and g.stride(-1) == 1):
        raise ValueError(f"{what}: needs a CPU float32/bfloat16 matrix with unit column stride, got "
                         f"{g.dtype} {tuple(g.shape)} on {g.device} with strides {g.stride()}")
    return lib


def _rows_disjoint(x: Tensor) -> bool:
    """Unit column stride and rows that do not overlap: what a kernel writing x row by row needs."""
    return x.dim() == 2 and x.stride(-1) == 1 and (x.shape[0] <= 1 or x.stride(0) >= x.shape[1])


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _fp32_vector(x: Tensor, size: int, what: str) -> Tensor:
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.shape != (size,) or not x.is_contiguous():
        raise ValueError(f"{what}: expected a contiguous CPU float32 vector of {size}, got {x.dtype} "
                         f"{tuple(x.shape)}")
    return x


# --------------------------------------------------------------------------------------------------
# The kernels as torch operators
# --------------------------------------------------------------------------------------------------
# Each C call is registered as a torch operator whose schema says what it reads and what it writes
# (`Tensor(a!)`). Without that, a write through a raw pointer is invisible to torch: the profiler's
# memory-role inference (swanbench's breakdown by role) saw SWAN's GradNorm buffer as never written from
# the gradient and filed it as model "input" instead of an optimizer temporary. Registered, the calls also
# appear by name in profiler traces, and torch.compile traces them as opaque ops (the fake kernels below).
# The low-level `torch.library.Library` costs ~5 us per call; `torch.library.custom_op` cost ~19 us, which
# adds up over the ~500 calls of a 1b SinkGD step.

_LIBRARY = torch.library.Library("swanbench", "DEF")
_SCHEMAS = {
    "sinkhorn_scales": "sinkhorn_scales(Tensor g, int iters, float eps, Tensor(a!) r, Tensor(b!) c, Tensor(c!) acc) -> ()",
    "sinkhorn_apply": "sinkhorn_apply(Tensor g, Tensor r, Tensor c, Tensor(a!) result) -> ()",
    "sinkhorn_update": "sinkhorn_update(Tensor(a!) w, Tensor g, Tensor r, Tensor c, float step) -> ()",
    "grad_norm_rows": "grad_norm_rows(Tensor g, float eps, Tensor(a!) result) -> ()",
}


def _impl_scales(g: Tensor, iters: int, eps: float, r: Tensor, c: Tensor, acc: Tensor) -> None:
    m, n = g.shape
    _lib().sk_scales(g.data_ptr(), _DTYPES[g.dtype], m, n, g.stride(0), iters, eps, r.data_ptr(),
                     c.data_ptr(), acc.data_ptr(), acc.shape[0])


def _impl_apply(g: Tensor, r: Tensor, c: Tensor, result: Tensor) -> None:
    m, n = g.shape
    _lib().sk_apply(g.data_ptr(), _DTYPES[g.dtype], m, n, g.stride(0), r.data_ptr(), c.data_ptr(),
                    result.data_ptr(), result.stride(0), _threads())


def _impl_update(w: Tensor, g: Tensor, r: Tensor, c: Tensor, step: float) -> None:
    m, n = g.shape
    _lib().sk_update(w.data_ptr(), w.stride(0), g.data_ptr(), g.stride(0), _DTYPES[g.dtype], m, n,
                     r.data_ptr(), c.data_ptr(), step, _threads())


def _impl_grad_norm(g: Tensor, eps: float, result: Tensor) -> None:
    m, n = g.shape
    _lib().gn_rows(g.data_ptr(), _DTYPES[g.dtype], m, n, g.stride(0), eps, result.data_ptr(),
                   result.stride(0), _threads())


def _fake(*args) -> None:
    """Shape propagation under torch.compile: the ops only write into tensors they were given."""
    return None


for _name, _impl in (("sinkhorn_scales", _impl_scales), ("sinkhorn_apply", _impl_apply),
                     ("sinkhorn_update", _impl_update), ("grad_norm_rows", _impl_grad_norm)):
    _LIBRARY.define(_SCHEMAS[_name])
    _LIBRARY.impl(_name, _impl, "CPU")
    torch.library.register_fake(f"swanbench::{_name}", _fake, lib=_LIBRARY)

_op_scales = torch.ops.swanbench.sinkhorn_scales.default
_op_apply = torch.ops.swanbench.sinkhorn_apply.default
_op_update = torch.ops.swanbench.sinkhorn_update.default
_op_grad_norm = torch.ops.swanbench.grad_norm_rows.default


def scales(g: Tensor, iters: int, eps: float) -> tuple[Tensor, Tensor]:
    """SR-Sinkhorn scales (r [m], c [n]) of one matrix: SR-Sinkhorn(g) = diag(r) g diag(c).

    The iteration works on the literal iterate diag(r) g diag(c), with the eps floor on its row and column
    norms (see `_kernels.c`); any finite g (fp32 maximum down to denormals) is in range. Workspace: r, c
    and one n-vector of column sums per thread (all fp32 torch tensors).
    """
    _require(g, "native.scales")
    m, n = g.shape
    threads = _threads()
    # One allocation for r, c and the accumulators (per-call overhead matters for small matrices); the
    # accumulators are freed with it once the caller drops r and c.
    buf = torch.empty(m + n + threads * n, dtype=torch.float32)
    r, c, acc = buf[:m], buf[m:m + n], buf[m + n:].view(threads, n)
    _op_scales(g, int(iters), float(eps), r, c, acc)
    return r, c


def apply(g: Tensor, r: Tensor, c: Tensor, out: Tensor) -> Tensor:
    """out = diag(r) g diag(c) (fp32 `out` of g's shape, unit column stride)."""
    _require(g, "native.apply")
    m, n = g.shape
    _fp32_vector(r, m, "native.apply r")
    _fp32_vector(c, n, "native.apply c")
    if (out.dtype != torch.float32 or out.shape != g.shape or out.device.type != "cpu"
            or not _rows_disjoint(out)):
        raise ValueError(f"native.apply: out must be a CPU float32 {tuple(g.shape)} matrix with unit column "
                         f"stride, got {out.dtype} {tuple(out.shape)}")
    _op_apply(g, r, c, out)
    return out


def update(w: Tensor, g: Tensor, r: Tensor, c: Tensor, step: float) -> Tensor:
    """w += step * diag(r) g diag(c) in place (w and g of one dtype and shape); bf16 rounded to nearest."""
    _require(g, "native.update")
    m, n = g.shape
    _fp32_vector(r, m, "native.update r")
    _fp32_vector(c, n, "native.update c")
    if w.dtype != g.dtype or w.shape != g.shape or w.device.type != "cpu" or not _rows_disjoint(w):
        raise ValueError(f"native.update: w must be a CPU {g.dtype} {tuple(g.shape)} matrix with unit "
                         f"column stride, got {w.dtype} {tuple(w.shape)}")
    _op_update(w, g, r, c, float(step))
    return w


def grad_norm_into(g: Tensor, out: Tensor, eps: float) -> Tensor:
    """out = (g - mean_row) / max(std_row, eps) (population std), fp32 `out` of g's shape; rows of any
    number of leading dimensions are independent, so g and out may be [..., m, n] if both view as 2-D."""
    n = g.shape[-1]
    g2, out2 = g.reshape(-1, n) if g.dim() > 2 else g, out.view(-1, n) if out.dim() > 2 else out
    _require(g2, "native.grad_norm_into")
    if out2.dtype != torch.float32 or out2.shape != g2.shape or out2.device.type != "cpu" or not _rows_disjoint(out2):
        raise ValueError(f"native.grad_norm_into: out must be a CPU float32 {tuple(g.shape)} tensor with unit "
                         f"column stride, got {out.dtype} {tuple(out.shape)}")
    _op_grad_norm(g2, float(eps), out2)
    return out
