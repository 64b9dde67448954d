"""optimizers.native: the C SR-Sinkhorn kernels against the pure-torch ones, and the build's fallbacks."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optimizers import functional as F
from optimizers import native
from optimizers import reference as R
from optimizers.stateless import SinkGD, sinkgd_workspace_numel

ROOT = Path(__file__).resolve().parents[1]
needs_native = pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.unavailable_reason()}")


def _randn(shape, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen) * torch.rand(shape[-1], generator=gen).add(0.1)).to(dtype)


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


# Shapes that exercise the 4-row micro-kernel's tail (m % 4 != 0), fewer rows than threads, one row or
# column, and a matrix wide enough to leave L1.
SHAPES = [(1, 7), (3, 5), (7, 1), (13, 40), (64, 48), (2, 3000), (37, 129)]


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_native_scales_match_the_float64_reference(shape, threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # the team size the kernel is given
    g = _randn(shape, seed=sum(shape))
    out = F.sr_sinkhorn(g, iters=5, method="native")
    assert out.dtype == torch.float32 and out.shape == g.shape
    assert _rel(out, R.sr_sinkhorn_reference(g.double(), 5)) < 1e-5
    r, c = F.sinkhorn_scales(g, iters=5, method="native")
    rb, cb = F.sinkhorn_scales(g, iters=5, method="blocked")
    assert _rel(r, rb) < 1e-5 and _rel(c, cb) < 1e-5


@needs_native
def test_native_bf16_input_matches_its_fp32_widening():
    """bf16 is widened on load; the fp32 and bf16 loops may vectorise their sums differently (ulp-level)."""
    g = _randn((24, 56), seed=4, dtype=torch.bfloat16)
    assert _rel(F.sr_sinkhorn(g, 5, method="native"), F.sr_sinkhorn(g.float(), 5, method="native")) < 1e-6
    assert _rel(F.sr_sinkhorn(g, 5, method="native"), R.sr_sinkhorn_reference(g.double(), 5)) < 1e-5


@needs_native
def test_native_reads_strided_rows_and_batches():
    wide = _randn((20, 64), seed=5)
    view = wide[:, 8:40]  # row stride 64, unit column stride: no copy needed
    assert native.supports(view)
    assert _rel(F.sr_sinkhorn(view, 3, method="native"), R.sr_sinkhorn_reference(view.double(), 3)) < 1e-5
    batch = _randn((3, 2, 16, 24), seed=6)
    out = F.sr_sinkhorn(batch, 5, method="native")
    looped = torch.stack([F.sr_sinkhorn(m, 5, method="blocked") for m in batch.reshape(-1, 16, 24)])
    assert _rel(out.reshape(-1, 16, 24), looped) < 1e-6
    transposed = _randn((24, 16), seed=7).T  # column stride != 1: made contiguous first
    assert _rel(F.sr_sinkhorn(transposed, 5, method="native"),
                R.sr_sinkhorn_reference(transposed.double(), 5)) < 1e-5


@needs_native
def test_native_zero_rows_and_columns_stay_zero():
    g = _randn((12, 20), seed=8)
    g[3] = 0
    g[:, 7] = 0
    out = F.sr_sinkhorn(g, 5, method="native")
    assert torch.isfinite(out).all() and not out[3].any() and not out[:, 7].any()
    assert _rel(out, F.sr_sinkhorn(g, 5, method="blocked")) < 1e-6


@needs_native
def test_native_sr_sinkhorn_writes_into_out():
    g = _randn((30, 50), seed=9)
    out = torch.full_like(g, float("nan"))
    assert F.sr_sinkhorn(g, 5, out=out) is out
    assert _rel(out, R.sr_sinkhorn_reference(g.double(), 5)) < 1e-5
    with pytest.raises(ValueError, match=r"out must be a contiguous torch.float32 \(30, 50\)"):
        F.sr_sinkhorn(g, 5, out=torch.empty(30, 49))


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_update_matches_the_torch_update(dtype):
    """SinkGD's fused update (C, one sweep) equals the blocked torch update up to one rounding of w."""
    shape = (37, 90)
    w0 = _randn(shape, seed=10).to(dtype)
    grad = _randn(shape, seed=11).to(dtype)
    result = {}
    for method in ("native", "blocked"):
        w = torch.nn.Parameter(w0.clone())
        w.grad = grad.clone()
        SinkGD([w], lr=0.5, alpha=1.0, weight_decay=0.1, method=method).step()
        result[method] = w.detach()
    tol = 1e-6 if dtype == torch.float32 else 2 ** -7  # fp32: reassociation; bf16: at most one ulp of w
    diff = (result["native"].double() - result["blocked"].double()).abs()
    assert (diff <= tol * result["blocked"].double().abs().clamp_min(1.0)).all()
    assert not torch.equal(result["native"], w0)


@needs_native
def test_native_bf16_rounding_is_nearest_even_and_keeps_nan():
    w = torch.tensor([[1.0, 1.0, float("nan"), -2.0]], dtype=torch.bfloat16)
    g = torch.ones_like(w)
    r, c = torch.ones(1), torch.tensor([2 ** -8, 3 * 2 ** -9, 1.0, 0.0])  # a tie, above a tie, NaN, zero
    native.update(w, g, r, c, 1.0)
    expected = (torch.tensor([[1.0, 1.0, float("nan"), -2.0]]) + torch.tensor([[2 ** -8, 3 * 2 ** -9, 1.0, 0.0]]))
    assert torch.equal(w[:, [0, 1, 3]], expected[:, [0, 1, 3]].to(torch.bfloat16)) and torch.isnan(w[0, 2])


@needs_native
def test_sinkgd_auto_uses_native_and_no_stack_or_block_buffers():
    w = torch.nn.Parameter(torch.randn(24, 72))
    assert F.resolve_sinkhorn_method(w, "auto") == "native"
    assert sinkgd_workspace_numel((24, 72)) == 24 + 72 + torch.get_num_threads() * 72
    # blocked: one 24-row block of scratch, r and the row factors (m each), c and the accumulator (n each)
    assert sinkgd_workspace_numel((24, 72), "blocked") == 24 * 72 + 2 * 24 + 2 * 72
    # vectors (CUDA's path): the m x n iterate and its factors, the same for bf16 parameters on CUDA; on CPU
    # also an m x n scratch of squares for the column sums
    assert sinkgd_workspace_numel((24, 72), "auto", device="cuda", dtype=torch.bfloat16) == 24 * 72 + 24 + 72
    assert sinkgd_workspace_numel((24, 72), "vectors") == 2 * 24 * 72 + 24 + 72
    assert sinkgd_workspace_numel((24, 72), "vectors", dtype=torch.bfloat16) == 2 * 24 * 72 + 24 + 72


@needs_native
def test_native_argument_errors_are_one_line():
    g = torch.randn(8, 6)
    with pytest.raises(ValueError, match="runs fp32/bf16/fp16 CPU tensors, got torch.float64"):
        F.sr_sinkhorn(g.double(), 5, method="native")
    with pytest.raises(ValueError, match="native.apply: out must be a CPU float32"):
        native.apply(g, torch.ones(8), torch.ones(6), torch.empty(8, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="native.update r: expected a contiguous CPU float32 vector of 8"):
        native.update(g.clone(), g, torch.ones(7), torch.ones(6), 1.0)
    with pytest.raises(ValueError, match="needs a CPU float32/bfloat16 matrix"):
        native.scales(g.half(), 5, 1e-8)
    assert F.sr_sinkhorn(g.half(), 5, method="native").dtype == torch.float32  # functional widens fp16


def test_auto_falls_back_to_torch_kernels_without_native(monkeypatch):
    monkeypatch.setattr(native, "_state", {"lib": None, "reason": "test: no compiler", "path": None})
    g = torch.randn(16, 24)
    assert not native.available() and F.resolve_sinkhorn_method(g, "auto") == "blocked"
    assert _rel(F.sr_sinkhorn(g, 5), R.sr_sinkhorn_reference(g.double(), 5)) < 1e-5
    with pytest.raises(RuntimeError, match="'native' is unavailable: test: no compiler"):
        F.sr_sinkhorn(g, 5, method="native")
    w = torch.nn.Parameter(torch.randn(16, 24))
    w.grad = torch.randn(16, 24)
    SinkGD([w]).step()
    assert torch.isfinite(w).all()
    assert sinkgd_workspace_numel((16, 24)) == sinkgd_workspace_numel((16, 24), "blocked")


def _probe(env: dict, cache: Path) -> list[str]:
    """available / reason / library path in a fresh interpreter (the build state is per process)."""
    code = ("from optimizers import native; print(native.available()); print(native.unavailable_reason()); "
            "print(native.library_path())")
    full = {**os.environ, "SWANBENCH_NATIVE_CACHE": str(cache), **env}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


def test_disabled_by_environment(tmp_path):
    available, reason, _ = _probe({"SWANBENCH_NATIVE": "0"}, tmp_path)
    assert available == "False" and reason == "disabled by SWANBENCH_NATIVE=0"
    assert not any(tmp_path.iterdir())  # nothing was built


def test_a_broken_compiler_is_a_reason_not_a_crash(tmp_path):
    available, reason, path = _probe({"CC": "false"}, tmp_path)
    assert available == "False" and reason.startswith("could not build the native kernels") and path == "None"
    assert not list(tmp_path.glob("*.so"))  # no half-written library left behind


def test_an_unwritable_cache_is_a_reason_not_a_crash(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    available, reason, _ = _probe({}, blocker / "cache")
    assert available == "False" and reason.startswith("could not build the native kernels")


@needs_native
def test_concurrent_builds_share_one_cache(tmp_path):
    """Two processes building into one empty cache (parallel suite workers) both load a whole library."""
    code = "from optimizers import native; assert native.available(), native.unavailable_reason()"
    env = {**os.environ, "SWANBENCH_NATIVE_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert len(list(tmp_path.glob("kernels-*.so"))) == 1
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith("kernels-")]


@needs_native
def test_cached_library_is_reused(tmp_path):
    first = _probe({}, tmp_path)[2]
    stamp = Path(first).stat().st_mtime_ns
    assert _probe({}, tmp_path)[2] == first and Path(first).stat().st_mtime_ns == stamp


def test_describe_never_builds(monkeypatch):
    monkeypatch.setattr(native, "_state", {})
    assert native.describe() == "not used" and native._state == {}
    monkeypatch.setattr(native, "_state", {"lib": None, "reason": "no C compiler found", "path": None})
    assert native.describe() == "unavailable: no C compiler found"


# ------------------------------------------------------------------------------------------- GradNorm


@needs_native
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES + [(3, 2, 16, 24)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_grad_norm_matches_the_float64_reference(shape, dtype, threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    g = (_randn(shape, seed=len(shape) + shape[-1]) * 3 + 1.5).to(dtype)  # an offset: the mean matters
    out = F.grad_norm(g, method="native")
    assert out.dtype == torch.float32 and out.shape == g.shape
    if shape[-1] == 1:  # one column: every entry is its row's mean, so the result is exactly 0
        assert not out.any() and not F.grad_norm(g, method="torch").any()
        return
    ref = R.grad_norm_reference(g.double().reshape(-1, shape[-2], shape[-1])).reshape(shape)
    assert _rel(out, ref) < 1e-5
    assert _rel(out, F.grad_norm(g, method="torch")) < 1e-5


@needs_native
def test_native_grad_norm_zero_and_constant_rows_are_zero():
    g = _randn((10, 33), seed=12)
    g[2] = 0
    g[6] = -4.25
    out = F.grad_norm(g)
    assert not out[2].any() and not out[6].any() and torch.isfinite(out).all()
    rest = out[[0, 1, 3, 4, 5, 7, 8, 9]]
    assert rest.mean(dim=1).abs().max() < 1e-6 and (rest.var(dim=1, correction=0) - 1).abs().max() < 1e-5


@pytest.mark.parametrize("method", ["native", "torch"])
@pytest.mark.parametrize("value,n", [(0.1, 40), (0.1, 5461), (7.77, 11008), (-3.3e-5, 2048), (0.3, 1)])
def test_constant_rows_are_exact_zeros_in_both_paths(method, value, n):
    """A constant row has std 0 < eps: (x - mean) must be exactly 0, which needs the mean to round back to
    the value itself (torch: Welford; C: corrected two-pass) and subtract-then-scale. The fused form
    x * inv + (-mean * inv) with inv = 1/eps gave 0.15 on rows of 0.1 and 3.8 on one-column matrices."""
    if method == "native" and not native.available():
        pytest.skip(f"native kernels: {native.unavailable_reason()}")
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.full((3, n), value).to(dtype)
        assert not F.grad_norm(g, method=method).any(), (dtype, F.grad_norm(g, method=method).abs().max())


@needs_native
def test_native_grad_norm_method_errors():
    with pytest.raises(ValueError, match="grad_norm method 'native' needs CPU float32/bfloat16 input"):
        F.grad_norm(torch.randn(4, 5, dtype=torch.float64), method="native")
    with pytest.raises(ValueError, match="unknown grad_norm method 'fast'"):
        F.grad_norm(torch.randn(4, 5), method="fast")


@needs_native
def test_swan_step_is_the_same_with_native_or_torch_grad_norm(monkeypatch):
    from optimizers.stateless import SWAN

    w0, grad = _randn((24, 40), seed=13), _randn((24, 40), seed=14)

    def one_step():
        w = torch.nn.Parameter(w0.clone())
        w.grad = grad.clone()
        SWAN([w], lr=0.1).step()
        return w.detach()

    with_native = one_step()
    monkeypatch.setattr(native, "_state", {"lib": None, "reason": "test", "path": None})
    assert _rel(with_native, one_step()) < 1e-5 and not torch.equal(with_native, w0)


@needs_native
def test_kernels_are_torch_ops_that_declare_their_writes():
    """Registered ops with `Tensor(a!)` outputs: the profiler attributes the written buffers to the gradient
    they are computed from (not to model input), and traces show the calls by name."""
    writes = {name: [a.name for a in getattr(torch.ops.swanbench, name).default._schema.arguments
                     if a.alias_info is not None and a.alias_info.is_write]
              for name in ("sinkhorn_scales", "sinkhorn_apply", "sinkhorn_update", "grad_norm_rows")}
    assert writes == {"sinkhorn_scales": ["r", "c", "acc"], "sinkhorn_apply": ["result"],
                      "sinkhorn_update": ["w"], "grad_norm_rows": ["result"]}
    g = torch.randn(8, 12)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        F.grad_norm(g)
        F.sr_sinkhorn(g, 2)
    names = {e.name for e in prof.events()}
    assert {"swanbench::grad_norm_rows", "swanbench::sinkhorn_scales", "swanbench::sinkhorn_apply"} <= names


@needs_native
def test_compiled_callers_trace_the_ops():
    g = _randn((16, 24), seed=15)
    compiled = torch.compile(lambda x: F.sr_sinkhorn(x, 5) + F.grad_norm(x), dynamic=False)
    assert _rel(compiled(g), F.sr_sinkhorn(g, 5) + F.grad_norm(g)) < 1e-6


def test_env_records_which_kernels_ran(monkeypatch):
    from swanbench import env

    if native.available():
        assert env.collect("cpu")["native_kernels"] == f"loaded: {native.library_path()}"
    monkeypatch.setattr(native, "_state", {"lib": None, "reason": "no C compiler found", "path": None})
    assert env.collect("cpu")["native_kernels"] == "unavailable: no C compiler found"
    assert env.collect("cuda:0")["native_kernels"] == "not used on cuda:0 (CPU kernels)"


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("scale", [1e-10, 1e-40, 3e37])
def test_native_floors_the_iterate_and_stays_in_range(scale, threads, monkeypatch):
    """The C iteration floors the current iterate's norms (rows spread 100x at 1e-10 are normalised a step
    after the floor, as in the float64 reference) and falls back to double for rows whose fp32 sums leave
    [2^-100, 2^100] (the raw rows of a 3e37 gradient, tiny and zero rows), whatever the team size; the
    fused update uses the same (g r) c."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    gen = torch.Generator().manual_seed(17)
    g64 = torch.randn(37, 129, generator=gen, dtype=torch.float64) * torch.logspace(0, -2, 37, dtype=torch.float64)[:, None]
    g64[5] = 0
    for dtype in (torch.float32, torch.bfloat16):
        g = (g64 * scale).to(dtype)
        for iters in (1, 2, 5):
            assert _rel(F.sr_sinkhorn(g, iters, method="native"), R.sr_sinkhorn_reference(g.double(), iters)) < 1e-5
        w = torch.nn.Parameter(torch.zeros(37, 129))
        w.grad = g.float()
        SinkGD([w], lr=1.0, alpha=1.0, method="native").step()
        assert _rel(w.detach(), -R.sr_sinkhorn_reference(g.double(), 5)) < 1e-5
