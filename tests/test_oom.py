"""Out-of-memory detection: every allocation failure torch can raise on CUDA or CPU is status "oom" (so `fit`
bisects down on it), and nothing else is. The exceptions are built here with the messages torch and the
CUDA libraries really give; the loop around them is the real one, on CPU."""

from __future__ import annotations

import errno

import pytest
import torch

from swanbench import fit as fitlib
from swanbench.run import train as trainlib
from swanbench.suite import DataSpec


def _caused_by(cause: BaseException) -> RuntimeError:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise RuntimeError("optimizer step failed") from inner
    except RuntimeError as outer:
        return outer


OOMS = {
    "caching allocator": torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.81 GiB"),
    "cuda runtime": RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    "cuda runtime (AcceleratorError)": getattr(torch, "AcceleratorError", RuntimeError)("CUDA error: out of memory"),
    "cublas handle": RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    "cublaslt workspace": RuntimeError(
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasLtMatmul( ltHandle, computeDesc.descriptor()`"),
    "cudnn": RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    "cusolver": RuntimeError("cusolver error: CUSOLVER_STATUS_ALLOC_FAILED, when calling `cusolverDnCreate(handle)`"),
    "cpu allocator": RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate "
                                  "memory: you tried to allocate 1099511627776 bytes. Error code 12"),
    "python": MemoryError(),
    "mmap": OSError(errno.ENOMEM, "Cannot allocate memory"),
    "budget": trainlib.MemoryBudgetExceeded("peak RSS 3 bytes > memory_budget 2 bytes"),
    "chained cublas": _caused_by(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate`")),
}
NOT_OOMS = {
    "cublas execution": RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm`"),
    "cudnn bad param": RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM"),
    "illegal access": RuntimeError("CUDA error: an illegal memory access was encountered"),
    "shape": RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 16x4)"),
    "not a runtime error": ValueError("out of memory is what the user typed"),
    "other os error": OSError(errno.ENOENT, "No such file or directory"),
}


@pytest.mark.parametrize("name", sorted(OOMS))
def test_allocation_failures_are_oom(name):
    assert trainlib.is_oom(OOMS[name])


@pytest.mark.parametrize("name", sorted(NOT_OOMS))
def test_other_failures_are_not_oom(name):
    assert not trainlib.is_oom(NOT_OOMS[name])


def test_fit_bisects_down_on_a_cublas_allocation_failure(monkeypatch, tmp_path, text_corpus, one_thread):
    """Batches above 5 fail the way cuBLAS does when its workspace cannot be allocated: each such run ends
    "oom" (not "crashed"), so the search narrows down to 5 instead of stopping."""
    real = trainlib.forward_backward
    limit = 5

    def failing_above_limit(model, micro_batches):
        if micro_batches[0].shape[0] > limit:
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
        return real(model, micro_batches)

    monkeypatch.setattr(trainlib, "forward_backward", failing_above_limit)
    target = fitlib.FitTarget(optimizer="sgd", model="nano", seq_len=16, steps=1,
                              data=DataSpec(source="file", path=str(text_corpus), vocab_size=300))
    statuses: dict[int, str] = {}

    def probe(batch: int) -> fitlib.Probe:
        outcome = trainlib.train(target.cell(batch), 0, tmp_path / f"b{batch}")
        statuses[batch] = outcome.status
        return fitlib.Probe(batch, outcome.status, None, None, 0.0, error=outcome.error)

    result = fitlib.search(probe, start=2, max_batch=16)
    assert result.best == limit
    assert statuses[limit] == "ok" and statuses[limit + 1] == "oom"
    assert {s for b, s in statuses.items() if b > limit} == {"oom"}
