"""One conformance suite over every registered optimizer, plus the stateless claims of SWAN and SinkGD."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import optimizers
from optimizers import SWAN, NonFiniteGradientError, SinkGD
from optimizers.testing import ToyLM, batch, hidden_names, loss_fn

NAMES = optimizers.available()
HYBRIDS = ["swan", "swan-fast", "sinkgd", "muon", "adamw-split", "muon-nomomentum"]
STATELESS = ["swan", "swan-fast", "sinkgd"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# Learning rates for the "loss decreases" check on the toy task (the registry defaults are the papers'
# settings for LLaMA pre-training; plain SGD needs a larger step on a 30-step toy problem).
TOY_LR = {"sgd": 0.5, "sgd-momentum": 0.2, "lion": 3e-3, "adafactor": 3e-2}


def build(name: str, seed: int = 0, **hp):
    model = ToyLM(seed)
    return model, optimizers.build(name, model, **hp)


def train_step(model, opt, data) -> torch.Tensor:
    opt.zero_grad()
    loss = loss_fn(model, data)
    loss.backward()
    opt.step()
    return loss.detach()


def params_of(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# ----------------------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------------------

def test_registry_lists_the_required_names():
    required = {"adamw", "adam", "sgd", "sgd-momentum", "adafactor", "muon", "swan", "swan-fast", "sinkgd"}
    assert required <= set(optimizers.registered())
    assert required <= set(NAMES)
    assert NAMES == sorted(NAMES)


def test_unknown_name_gets_did_you_mean():
    with pytest.raises(ValueError, match=r"unknown optimizer 'swam'; did you mean 'swan'\?"):
        optimizers.build("swam", ToyLM())
    with pytest.raises(ValueError, match="did you mean 'sinkgd'"):
        optimizers.info("sinkdg")


@pytest.mark.parametrize("name", NAMES)
def test_info_is_complete(name):
    info = optimizers.info(name)
    assert info.name == name and info.description and info.implementation
    assert info.hybrid == (name in HYBRIDS)
    assert info.state_dtype == "param"
    assert "lr" in info.hparams and "weight_decay" in info.hparams
    assert info.workspace_numel((64, 48)) >= 0


def test_info_state_numel_examples():
    m, n = 64, 48
    expected = {"adamw": 2 * m * n, "adam": 2 * m * n, "sgd": 0, "sgd-momentum": m * n, "adafactor": m + n,
                "lion": m * n, "muon": m * n, "swan": 0, "swan-fast": 0, "sinkgd": 0,
                "adamw-split": 2 * m * n, "muon-nomomentum": m * n}
    for name, numel in expected.items():
        assert optimizers.info(name).state_numel((m, n)) == numel, name
    assert optimizers.info("adafactor").state_numel((n,)) == n
    assert optimizers.info("adamw").scalar_state_bytes == 4


# ----------------------------------------------------------------------------------------------------
# the conformance suite
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_build_surface(name):
    model, opt = build(name)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.preprocess_timer is None
    assert isinstance(opt.implementation, str) and opt.implementation
    members = [p for g in opt.param_groups for p in g["params"]]
    assert sorted(map(id, members)) == sorted(id(p) for p in model.parameters())  # every parameter once


@pytest.mark.parametrize("name", NAMES)
def test_step_with_closure_returns_loss_and_moves_parameters(name):
    model, opt = build(name)
    data = batch()
    before = params_of(model)

    def closure():
        opt.zero_grad()
        loss = loss_fn(model, data)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and torch.isfinite(loss)
    moved = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
    assert all(moved)
    assert opt.step() is None  # without a closure (gradients still there)


@pytest.mark.parametrize("name", NAMES)
def test_loss_decreases_on_toy_problem(name):
    model, opt = build(name, **({"lr": TOY_LR[name]} if name in TOY_LR else {}))
    data = batch()
    losses = [float(train_step(model, opt, data)) for _ in range(30)]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    model, opt = build(name)
    for i in range(3):
        train_step(model, opt, batch(i))
    clone = copy.deepcopy(model)
    opt2 = optimizers.build(name, clone)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    train_step(model, opt, batch(7))
    train_step(clone, opt2, batch(7))
    for a, b in zip(model.parameters(), clone.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert type(opt2.state_dict()) is dict


@pytest.mark.parametrize("name", NAMES)
def test_lr_change_through_scheduler_is_respected(name):
    """A scheduler halving lr halves the first update of every parameter (all first updates are linear in lr)."""
    model_a, opt_a = build(name)
    model_b, opt_b = build(name)
    sched = torch.optim.lr_scheduler.LambdaLR(opt_b, lambda step: 0.5)
    assert all(g["lr"] == 0.5 * g["initial_lr"] for g in opt_b.param_groups)
    start = params_of(model_a)
    train_step(model_a, opt_a, batch())
    train_step(model_b, opt_b, batch())
    sched.step()
    for p0, pa, pb in zip(start, model_a.parameters(), model_b.parameters()):
        # atol: fp32 rounding of p0 + delta (|p| <~ 2, ulp ~ 2.4e-7); a wrong lr factor errs by ~|delta| >> 1e-6
        torch.testing.assert_close(pb - p0, 0.5 * (pa - p0), rtol=1e-4, atol=5e-7)


@pytest.mark.parametrize("name", NAMES)
def test_zero_lr_leaves_parameters_unchanged(name):
    model, opt = build(name)
    for group in opt.param_groups:
        group["lr"] = 0.0
    before = params_of(model)
    train_step(model, opt, batch())
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [{"lr": -1.0}, {"lr": "fast"}, {"lr": float("nan")}, {"weight_decay": -0.1},
                                 {"no_such_knob": 1}])
def test_invalid_hyperparameters_raise(name, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        optimizers.build(name, ToyLM(), **bad)


@pytest.mark.parametrize("name,bad", [
    ("adamw", {"betas": (1.0, 0.9)}), ("adamw", {"eps": 0.0}), ("adam", {"betas": (0.9,)}),
    ("swan", {"steps": 0}), ("swan", {"beta": 1.5}), ("swan", {"alpha": 0.0}), ("swan", {"nonfinite": "ignore"}),
    ("swan-fast", {"steps": 1.5}), ("sinkgd", {"iterations": 0}), ("sinkgd", {"eps": -1.0}),
    ("muon", {"ns_steps": 0}), ("muon", {"momentum": 1.0}), ("adafactor", {"beta2_decay": 0.5}),
    ("lion", {"lr": 0.0}), ("swan", {"rules": [("(", "matrix")]}), ("swan", {"rules": [(".*", "sgd")]}),
])
def test_invalid_specific_hyperparameters_raise(name, bad):
    if name not in NAMES:
        pytest.skip(f"{name} not installed")
    with pytest.raises(ValueError):
        optimizers.build(name, ToyLM(), **bad)


def test_unknown_hyperparameter_names_it_with_did_you_mean():
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'stepz' for optimizer 'swan'; did you mean 'steps'"):
        optimizers.build("swan", ToyLM(), stepz=3)


@pytest.mark.parametrize("name", NAMES)
def test_declared_state_matches_allocated_state(name):
    """state_numel / state_dtype / scalar_state_bytes (what the estimator uses) equal what torch allocates."""
    model, opt = build(name)
    for i in range(2):
        train_step(model, opt, batch(i))
    info = optimizers.info(name)
    adamw = optimizers.info("adamw")
    hidden = {id(p) for n, p in model.named_parameters() if n in hidden_names(model)}
    for p in model.parameters():
        declared = info if (not info.hybrid or id(p) in hidden) else adamw
        state = opt.state.get(p, {}) if hasattr(opt.state, "get") else opt.state[p]
        tensors = [t for t in state.values() if isinstance(t, torch.Tensor)]
        buffers = [t for t in tensors if t.dim() > 0]
        scalars = [t for t in tensors if t.dim() == 0]
        assert sum(t.numel() for t in buffers) == declared.state_numel(tuple(p.shape)), (name, p.shape)
        assert all(t.dtype == p.dtype for t in buffers)
        assert sum(t.numel() * t.element_size() for t in scalars) == declared.scalar_state_bytes


@pytest.mark.parametrize("name", NAMES)
def test_preprocess_timer_hook(name, counting_timer):
    model, opt = build(name)
    timer, entries = counting_timer
    opt.preprocess_timer = timer
    train_step(model, opt, batch())
    if name in STATELESS:
        assert entries, "SWAN/SinkGD must time their preprocessing"
        assert all(child.preprocess_timer is timer for child in opt.optimizers.values())
    else:
        assert not entries  # nothing separable: the harness reports whitening_ms empty


# ----------------------------------------------------------------------------------------------------
# stateless means zero
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", STATELESS)
def test_stateless_state_stays_empty_and_hybrid_state_is_two_adamw_copies(name):
    model, opt = build(name)
    for i in range(20):
        train_step(model, opt, batch(i % 3))
    matrix = opt.optimizers["matrix"]
    assert len(matrix.state) == 0
    assert not any(isinstance(t, torch.Tensor) for s in matrix.state.values() for t in s.values())
    adamw_params = [p for g in opt.optimizers["adamw"].param_groups for p in g["params"]]
    param_bytes = sum(p.numel() * p.element_size() for p in adamw_params)
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    buffers = sum(t.numel() * t.element_size() for t in state if t.dim() > 0)
    scalars = sum(t.numel() * t.element_size() for t in state if t.dim() == 0)
    assert buffers == 2 * param_bytes  # exp_avg + exp_avg_sq of the AdamW group, nothing else
    assert scalars == 4 * len(adamw_params)  # torch's fp32 `step` counter per AdamW tensor
    assert matrix.state_dict()["state"] == {}


@pytest.mark.parametrize("cls,kw", [(SWAN, {}), (SWAN, {"whitening": "diag", "steps": 2, "beta": 0.4}),
                                    (SinkGD, {})])
def test_standalone_stateless_optimizer(cls, kw):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(24, 40))
    opt = cls([w], **kw)
    target = torch.randn(24, 40)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((w - target) ** 2).sum()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert len(opt.state) == 0 and losses[-1] < losses[0]
    with pytest.raises(ValueError, match="2-D"):
        cls([torch.nn.Parameter(torch.randn(5))])
    with pytest.raises(ValueError, match="2-D"):
        cls([torch.nn.Parameter(torch.randn(2, 3, 4))])


@pytest.mark.parametrize("cls", [SWAN, SinkGD])
def test_update_has_rms_one_and_lr_alpha_scale(cls):
    w = torch.nn.Parameter(torch.zeros(30, 50))
    w.grad = torch.randn(30, 50)
    cls([w], lr=0.1, alpha=0.5).step()
    rms = float(w.detach().pow(2).mean().sqrt())
    assert abs(rms - 0.05) < 0.05 * 1e-3  # lr * alpha * RMS(update) with RMS 1


def test_bf16_parameters_are_updated_in_fp32_and_cast_back():
    for cls in (SWAN, SinkGD):
        torch.manual_seed(0)
        w32 = torch.randn(24, 40)
        g = torch.randn(24, 40)
        w16 = torch.nn.Parameter(w32.bfloat16())
        w16.grad = g.bfloat16()
        ref = torch.nn.Parameter(w32.bfloat16().float())
        ref.grad = g.bfloat16().float()
        cls([w16]).step()
        cls([ref]).step()
        assert w16.dtype == torch.bfloat16
        torch.testing.assert_close(w16.float(), ref.detach().bfloat16().float(), rtol=0, atol=1e-2)


def test_same_shape_matrices_are_batched_and_match_one_at_a_time():
    torch.manual_seed(0)
    ws = [torch.nn.Parameter(torch.randn(16, 24)) for _ in range(5)]
    singles = [torch.nn.Parameter(w.detach().clone()) for w in ws]
    for w, s in zip(ws, singles):
        w.grad = torch.randn(16, 24)
        s.grad = w.grad.clone()
    SWAN(ws, batch_budget=10**9).step()  # one batch of 5
    for s in singles:
        SWAN([s]).step()
    for w, s in zip(ws, singles):
        torch.testing.assert_close(w, s, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# non-finite gradients
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", STATELESS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_raises_and_changes_nothing(name, bad):
    model, opt = build(name)
    loss_fn(model, batch()).backward()
    model.layers[0].up_proj.weight.grad[3, 4] = bad
    before = params_of(model)
    with pytest.raises(NonFiniteGradientError, match="no parameter was changed"):
        opt.step()
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)  # the AdamW part too: the matrix part steps (and checks) first


@pytest.mark.parametrize("name", STATELESS)
def test_nonfinite_gradient_skip_policy(name):
    model, opt = build(name, nonfinite="skip")
    loss_fn(model, batch()).backward()
    model.layers[1].q_proj.weight.grad[0, 0] = float("nan")
    hidden_before = [p.detach().clone() for n, p in model.named_parameters() if n in hidden_names(model)]
    with pytest.warns(RuntimeWarning, match="step skipped"):
        opt.step()
    assert opt.optimizers["matrix"].skipped_steps == 1
    hidden_after = [p for n, p in model.named_parameters() if n in hidden_names(model)]
    assert all(torch.equal(a, b) for a, b in zip(hidden_before, hidden_after))


def test_diverging_whitening_raises_instead_of_writing_nan(monkeypatch):
    """A whitening that returns inf/NaN from finite gradients (the coupled fp32 iteration can diverge on a
    singular Gram with (3b)^k huge, e.g. b=0.5, k=30 on a square layer) is caught before any write."""
    from optimizers import functional as F

    real = F._whiten_batch
    monkeypatch.setattr(F, "_whiten_batch", lambda *a, **k: real(*a, **k).fill_(float("nan")))
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 16))
    w.grad = torch.randn(16, 16)
    before = w.detach().clone()
    with pytest.raises(FloatingPointError, match="diverged"):
        SWAN([w]).step()
    assert torch.equal(before, w)


# ----------------------------------------------------------------------------------------------------
# the declared workspace is what step() allocates
# ----------------------------------------------------------------------------------------------------

def _step_allocation_peak(opt) -> int:
    """Peak of (bytes allocated - bytes freed) during one step, from the profiler's CPU allocation events."""
    from torch._C._profiler import _EventType

    def walk(nodes):
        for node in nodes:
            yield node
            yield from walk(node.children)

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
    events = sorted((e.start_time_ns, int(e.typed[1].alloc_size))
                    for e in walk(prof.profiler.kineto_results.experimental_event_tree())
                    if e.typed[0] == _EventType.Allocation)
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("shape,name,kw", [
    ((40, 40), "swan", {}), ((24, 72), "swan", {}), ((72, 24), "swan", {}), ((40, 40), "swan", {"steps": 2}),
    ((24, 72), "swan", {"steps": 1}), ((72, 24), "swan-fast", {}), ((24, 72), "sinkgd", {}),
])
def test_declared_workspace_equals_measured_transient(shape, name, kw):
    from optimizers.stateless import sinkgd_workspace_numel, swan_workspace_numel

    hp = {**optimizers.info(name).hparams, **kw}
    declared = (sinkgd_workspace_numel(shape) if name == "sinkgd" else
                swan_workspace_numel(shape, hp["steps"], "diag" if name == "swan-fast" else "newton-schulz"))
    if not kw:
        assert declared == optimizers.info(name).workspace_numel(shape)
    w = torch.nn.Parameter(torch.randn(shape))
    w.grad = torch.randn(shape)
    cls_kw = {"iterations": 5} if name == "sinkgd" else {"steps": hp["steps"], "beta": hp["beta"],
                                                         "whitening": "diag" if name == "swan-fast" else "newton-schulz"}
    opt = (SinkGD if name == "sinkgd" else SWAN)([w], **cls_kw)
    opt.step()  # warm-up
    measured = _step_allocation_peak(opt)
    # the declaration counts fp32 buffers; the measurement adds a few 0-dim scalars (norms, the finite check)
    assert 4 * declared <= measured <= 4 * declared + 64, (measured, 4 * declared)
