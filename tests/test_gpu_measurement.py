"""RunMeter on CUDA: the same reconciliations as tests/test_trackers.py, with the CUDA allocator and NVML.

Every test is marked `gpu` and skipped without CUDA. Tolerances are stated where the caching allocator
enters: it rounds every block up to a multiple of 512 bytes, so a figure it reports may exceed the exact
tensor bytes by up to 512 bytes per tensor.
"""

from __future__ import annotations

import pickle

import pytest
import torch

from swanbench.models import build_model
from swanbench.trackers import RunMeter, tensor_bytes

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEVICE = "cuda"
BLOCK = 512  # the CUDA caching allocator's rounding, bytes
VOCAB = 4096


def metered_run(model, optimizer, *, steps: int = 6, warmup: int = 2, profile_steps: int = 1, **kw):
    ids = torch.randint(0, VOCAB, (4, 64), device=DEVICE)
    meter = RunMeter(model, optimizer, DEVICE, warmup_steps=warmup, profile_steps=profile_steps, **kw)
    with meter:
        for step in range(steps):
            with meter.phase("forward_backward", step):
                model(input_ids=ids, labels=ids).loss.backward()
            with meter.phase("optimizer_step", step):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            meter.end_step(step, ids.numel())
    return meter, meter.results()


def _hidden(model):
    from optimizers import LLAMA_RULES, partition

    return [p for _, p in partition(model, LLAMA_RULES)["matrix"]]


@pytest.fixture(scope="module")
def adamw_run():
    model = build_model("nano", device=DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    _, res = metered_run(model, opt)
    return model, res


def test_cuda_exact_bytes_and_allocator_peaks(adamw_run):
    model, res = adamw_run
    assert res["param_bytes"] == sum(p.numel() * 4 for p in model.parameters())
    assert res["optimizer_state_bytes"] == 2 * res["param_bytes"]
    assert res["grad_bytes"] == res["param_bytes"]
    # Parameters, gradients and both moments are all live inside optimizer.step().
    resident = res["param_bytes"] + res["grad_bytes"] + res["optimizer_state_bytes"]
    assert res["peak_allocated_bytes"] >= resident
    assert res["peak_reserved_bytes"] >= res["peak_allocated_bytes"]
    assert res["optimizer_step_peak_allocated_bytes"] >= resident
    assert res["alloc_retries"] == 0 and res["oom_count"] == 0
    assert res["step_transient_source"] == "cuda_allocator"


def test_cuda_profiler_roles_agree_with_exact_bytes(adamw_run):
    model, res = adamw_run
    n = len(list(model.parameters()))
    assert res["profiled_steps"] == 1
    assert res["profiler_error"] is None, res["profiler_error"]  # torch's role analysis ran on CUDA
    assert 0 <= res["parameter_peak_bytes"] - res["param_bytes"] <= BLOCK * n
    assert 0 <= res["gradient_peak_bytes"] - res["grad_bytes"] <= BLOCK * n
    assert res["activation_peak_bytes"] > 0


def test_cuda_timing_uses_events_after_warmup(adamw_run):
    _, res = adamw_run
    assert res["timed_steps"] == 4  # 6 steps, 2 warm-up (the profiled step is the last warm-up step)
    assert res["step_ms"] > 0 and res["forward_backward_ms"] > 0 and res["optimizer_step_ms"] > 0
    assert res["forward_backward_ms"] + res["optimizer_step_ms"] <= 1.05 * res["step_ms"]
    assert res["tokens_per_s"] > 0 and res["whitening_ms"] is None


def test_nvml_sees_at_least_the_allocator(adamw_run):
    _, res = adamw_run
    if res["nvml_peak_bytes"] is None:  # MIG, a PID namespace or missing privileges: must be said, not zero
        assert res["nvml_error"] and f"nvml: {res['nvml_error']}" in res["measure_errors"]
    else:
        # The process figure holds the CUDA context and every reserved segment on top of them.
        assert res["nvml_peak_bytes"] >= res["peak_reserved_bytes"]
        assert res["nvml_device_peak_bytes"] >= res["nvml_peak_bytes"]


@pytest.fixture(scope="module")
def matrix_runs():
    import optimizers

    out = {}
    makers = {"swan": optimizers.SWAN, "sinkgd": optimizers.SinkGD,
              "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-2, foreach=True)}
    for name, make in makers.items():
        model = build_model("nano", device=DEVICE)
        hidden = _hidden(model)
        _, res = metered_run(model, make(hidden), steps=5, warmup=2)
        out[name] = (hidden, res)
    return out


def test_cuda_stateless_state_is_zero(matrix_runs):
    for name in ("swan", "sinkgd"):
        assert matrix_runs[name][1]["optimizer_state_bytes"] == 0


def test_cuda_swan_transient_is_its_whitening_workspace(matrix_runs):
    """workspace <= allocator transient <= 1.05 * workspace + 16 KiB (512-byte blocks for O(m) statistics
    and scalars, which the declaration does not count)."""
    import optimizers

    hidden, res = matrix_runs["swan"]
    workspace = 4 * max(optimizers.info("swan").workspace_numel(tuple(p.shape)) for p in hidden)
    assert res["step_transient_source"] == "cuda_allocator"
    assert workspace <= res["step_transient_bytes"] <= 1.05 * workspace + 16 * 1024
    assert res["step_transient_bytes"] > matrix_runs["sgd"][1]["step_transient_bytes"]
    # The profiler's allocation events on the sampled step tell the same story as the allocator windows.
    assert abs(res["profiled_step_transient_bytes"] - res["step_transient_bytes"]) <= 0.05 * workspace + 16 * 1024
    assert 0 < res["whitening_ms"] <= res["optimizer_step_ms"]


def test_cuda_sinkgd_transient_exceeds_sgd(matrix_runs):
    # SinkGD's GPU kernel ("vectors") materialises G*G, unlike the blocked CPU kernel the registry declares,
    # so only the ordering is asserted here.
    assert matrix_runs["sinkgd"][1]["step_transient_bytes"] > matrix_runs["sgd"][1]["step_transient_bytes"]


def test_cuda_snapshot_written_and_on_oom(tmp_path):
    model = build_model("nano", device=DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    path = tmp_path / "snap.pickle"
    _, res = metered_run(model, opt, steps=3, warmup=1, profile_steps=0, snapshot_path=path)
    assert res["memory_snapshot"] == str(path)
    with path.open("rb") as fh:  # our own file, written a moment ago
        snap = pickle.load(fh)
    assert snap["segments"] and snap["device_traces"][torch.cuda.current_device()]

    oom_path = tmp_path / "oom.pickle"
    meter = RunMeter(model, opt, DEVICE, warmup_steps=0, profile_steps=0, snapshot_path=oom_path)
    with pytest.raises(torch.OutOfMemoryError):
        with meter:
            with meter.phase("forward_backward", 0):
                raise torch.OutOfMemoryError("simulated")
    assert oom_path.is_file() and meter.dump_snapshot() == oom_path


def test_cuda_per_group_state_of_the_hybrid():
    import optimizers

    model = build_model("nano", device=DEVICE)
    opt = optimizers.build("swan", model)
    _, res = metered_run(model, opt, steps=3, warmup=1, profile_steps=0)
    rest = res["param_bytes"] - tensor_bytes(_hidden(model))
    assert res["optimizer_state_bytes.matrix"] == 0
    assert res["optimizer_state_bytes.adamw"] == 2 * rest


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_meter_on_cuda_1_measures_device_1_while_0_is_current():
    torch.cuda.set_device(0)
    device = "cuda:1"
    model = build_model("nano", device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    ids = torch.randint(0, VOCAB, (4, 64), device=device)
    meter = RunMeter(model, opt, device, warmup_steps=2, profile_steps=1)
    with meter:
        for step in range(5):
            with meter.phase("forward_backward", step):
                model(input_ids=ids, labels=ids).loss.backward()
            with meter.phase("optimizer_step", step):
                opt.step()
            opt.zero_grad(set_to_none=True)
            meter.end_step(step, ids.numel())
    res = meter.results()
    assert torch.cuda.current_device() == 0
    # Device 1's allocator holds the run (device 0 holds nothing of it), and its events time it.
    assert res["peak_allocated_bytes"] >= res["param_bytes"] + res["grad_bytes"] + res["optimizer_state_bytes"]
    assert res["timed_steps"] == 3 and res["optimizer_step_ms"] > 0
    assert res["forward_backward_ms"] + res["optimizer_step_ms"] <= 1.05 * res["step_ms"]
    n = len(list(model.parameters()))
    assert 0 <= res["parameter_peak_bytes"] - res["param_bytes"] <= BLOCK * n
