"""The environment a run measured in: versions, device, host and git revision (recorded per run in env.json).

Everything here is read-only and cheap; a value that cannot be found is None, never a guess.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "pandas", "gensim", "datasets", "nvidia-ml-py")


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_revision(root: Path = REPO_ROOT) -> str | None:
    """HEAD's commit (with "-dirty" when tracked files changed), or None outside a git checkout.

    Committed result sets under results/ do not count: a suite writing into results/<device>/ would
    otherwise mark every run after its first (and its own env.json) dirty, though no code changed.
    """
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)results"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}-dirty" if dirty else rev or None


def cpu_name() -> str | None:
    """The CPU model (Linux /proc/cpuinfo, else platform.processor())."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def resolve_device(device: str) -> str:
    """"auto" as the device this machine has ("cuda" when a GPU is visible, else "cpu"); others as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def device_info(device: str | None = None) -> dict[str, Any]:
    """The device a run uses (imports torch): its name, memory and the CUDA/cuDNN versions."""
    import torch

    resolved = resolve_device(device or "auto")
    info: dict[str, Any] = {"device": resolved, "cuda_available": torch.cuda.is_available(),
                            "cuda_version": torch.version.cuda, **reproducibility()}
    if resolved.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(resolved).index or 0
        props = torch.cuda.get_device_properties(index)
        info.update(device_name=props.name, device_memory_bytes=props.total_memory,
                    cudnn_version=torch.backends.cudnn.version(), cuda_device_count=torch.cuda.device_count())
    else:
        info.update(device_name=cpu_name(), device_memory_bytes=_total_ram())
    return info


def precision_settings() -> dict[str, Any]:
    """Whether fp32 matmuls and convolutions may run in TF32 in this process (imports torch).

    SWAN's fp32 whitening is a chain of fp32 matmuls: on an H100/H200 it runs about 7x faster when TF32 is
    allowed, so a step time means nothing without this. `float32_matmul_precision` is torch's setting
    ("highest": true fp32, "high": TF32 allowed, "medium": bf16 allowed); the `*_fp32_precision` values
    are the newer per-backend form (torch >= 2.9; None where it does not exist).
    """
    import torch

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    return {"cuda_matmul_allow_tf32": bool(matmul.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_allow_tf32": bool(cudnn.allow_tf32),
            "cuda_matmul_fp32_precision": getattr(matmul, "fp32_precision", None),
            "cudnn_fp32_precision": getattr(cudnn, "fp32_precision", None)}


# Environment variables that change how many threads the math libraries use, and so the summation order.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_CBWR", "ATEN_CPU_CAPABILITY")


def reproducibility() -> dict[str, Any]:
    """What decides whether a rerun gives the same numbers to the last bit (imports torch): thread counts,
    torch's deterministic-algorithms switch, the CPU kernels' instruction set and the thread variables."""
    import torch

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cpu_capability": capability,
            "thread_env": " ".join(f"{k}={os.environ[k]}" for k in THREAD_VARIABLES if k in os.environ) or None}


def _total_ram() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def collect(device: str | None = None) -> dict[str, Any]:
    """The full environment record (env.json of a run, and `swanbench env`)."""
    from swanbench import __version__

    env: dict[str, Any] = {
        "swanbench_version": __version__,
        "python_version": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_name": cpu_name(),
        "cpu_count": os.cpu_count(),
        "git_rev": git_revision(),
    }
    env.update({f"{name.replace('-', '_')}_version": package_version(name) for name in PACKAGES})
    env.update(device_info(device))
    env.update(precision_settings())
    # Whether SinkGD's SR-Sinkhorn and SWAN's GradNorm run the C kernels or the torch fallback changes their
    # step time on CPU: say which (loading them here is a dlopen of the cached build, or a ~0.3 s compile).
    env["native_kernels"] = _native_kernels(env.get("device") or device)
    return env


def _native_kernels(device: str | None) -> str:
    if device is not None and not str(device).startswith("cpu"):
        return f"not used on {device} (CPU kernels)"
    try:
        from optimizers import native
    except ImportError:  # swanbench used without the optimizers package
        return "not installed"
    native.available()
    return native.describe()
