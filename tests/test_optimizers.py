"""One conformance suite over every registered optimizer, plus the stateless claims of SWAN and SinkGD."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import optimizers
from optimizers import SWAN, NonFiniteGradientError, SinkGD
from optimizers.testing import ToyLM, allocation_peak, batch, hidden_names, loss_fn, step_allocation_peak

NAMES = optimizers.available()
HYBRIDS = ["swan", "swan-fast", "sinkgd", "muon", "galore", "apollo", "apollo-mini", "adamw-split", "muon-nomomentum"]
STATELESS = ["swan", "swan-fast", "sinkgd"]
# Hyperparameters the toy model needs: it has no transformers config for Adam-mini's heads, and its 16-wide
# matrices want a rank below 16 for the low-rank peers to be low-rank at all.
TOY_HP = {"adam-mini": {"dim": 16, "n_heads": 4}, "galore": {"rank": 4}, "apollo": {"rank": 4}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# Learning rates for the "loss decreases" check on the toy task (the registry defaults are the papers'
# settings for LLaMA pre-training; plain SGD needs a larger step on a 30-step toy problem).
TOY_LR = {"sgd": 0.5, "sgd-momentum": 0.2, "lion": 3e-3, "adafactor": 3e-2}


def build(name: str, seed: int = 0, **hp):
    model = ToyLM(seed)
    return model, optimizers.build(name, model, **{**TOY_HP.get(name, {}), **hp})


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
    opt2 = optimizers.build(name, clone, **TOY_HP.get(name, {}))
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
    """state_numel / state_dtype / scalar bytes (what the estimator uses) equal what the optimizer holds, counted
    as the harness counts it: every tensor its state reaches (also inside objects, such as GaLore's projector),
    storages once (a view of a larger buffer costs the buffer)."""
    from swanbench.trackers.memory import split_state, tensor_bytes, tensors_in

    model, opt = build(name)
    for i in range(2):
        train_step(model, opt, batch(i))
    info = optimizers.info(name)
    adamw = optimizers.info("adamw")
    hidden = {id(p) for n, p in model.named_parameters() if n in hidden_names(model)}
    for pname, p in model.named_parameters():
        declared = info if (not info.hybrid or id(p) in hidden) else adamw
        ctx = optimizers.ParamContext(name=pname, hparams=TOY_HP.get(name, {}) if declared is info else {})
        state = opt.state.get(p, {}) if hasattr(opt.state, "get") else opt.state[p]
        buffers, scalars = split_state(tensors_in(state))
        assert tensor_bytes(buffers) == declared.state_numel(tuple(p.shape), ctx) * p.element_size(), (name, pname)
        assert all(t.dtype == p.dtype for t in buffers)
        assert tensor_bytes(scalars) == declared.scalar_bytes(tuple(p.shape), ctx), (name, pname)


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


# ----------------------------------------------------------------------------------------------------
# one step against the float64 reference: the wiring, not just "the loss went down"
# ----------------------------------------------------------------------------------------------------

def _randn(shape, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def swan_reference_update(grad: torch.Tensor, steps: int = 10, beta: float = 0.8,
                          whitening: str = "newton-schulz") -> torch.Tensor:
    """SWAN's update in float64 from optimizers.reference: GradNorm, the iteration, RMS 1."""
    from optimizers import reference as R

    gn = R.grad_norm_reference(grad)
    u = R.nsds_reference(gn, steps, beta) if whitening == "diag" else R.spectral_newton_schulz(gn, steps, beta)
    return u * (math.sqrt(u.numel()) / u.norm())


def sinkgd_reference_update(grad: torch.Tensor, iterations: int = 5) -> torch.Tensor:
    from optimizers import reference as R

    return R.sr_sinkhorn_reference(grad, iterations)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# (shape, constructor kwargs, tolerance): tall and wide at the defaults (measured 5-6e-6), non-default
# steps/beta, NSDS, and a square layer at b = 0.5 (at b = 0.8 square layers are ill-conditioned, ~1e-4).
SWAN_ONE_STEP = [
    ((48, 20), {}, 2e-5),
    ((20, 48), {}, 2e-5),
    ((48, 20), {"steps": 7, "beta": 0.6}, 1e-5),
    ((20, 48), {"steps": 6, "beta": 0.5}, 1e-5),
    ((32, 32), {"steps": 6, "beta": 0.5}, 1e-5),
    ((48, 20), {"whitening": "diag", "steps": 3, "beta": 0.45}, 1e-5),
    ((20, 48), {"whitening": "diag", "steps": 2, "beta": 0.4}, 1e-5),
]


@pytest.mark.parametrize("shape,kw,tol", SWAN_ONE_STEP)
def test_swan_one_step_equals_the_float64_reference(shape, kw, tol):
    """W1 = W0 - lr alpha U with U from the float64 pipeline. W0 = 0 and lr alpha = 0.05 keep W1's own
    rounding out of the comparison. A step run with another beta (0.5 for 0.8) or steps is 1e-2..3e-1 off."""
    grad = _randn(shape, seed=3) * torch.linspace(0.1, 3.0, shape[1], dtype=torch.float64)
    w = torch.nn.Parameter(torch.zeros(shape))
    w.grad = grad.float()
    SWAN([w], lr=0.1, alpha=0.5, **kw).step()
    full = {"steps": 10, "beta": 0.8, "whitening": "newton-schulz", **kw}
    assert rel(w.detach() / -0.05, swan_reference_update(grad.float().double(), **full)) < tol


@pytest.mark.parametrize("method", ["auto", "blocked", "vectors"])
@pytest.mark.parametrize("shape,iterations", [((48, 20), 5), ((20, 48), 3), ((32, 32), 1), ((48, 20), 2)])
def test_sinkgd_one_step_equals_the_float64_reference(shape, iterations, method):
    """L = 5 and L = 4 differ by 1e-4..3e-4 on these gradients (columns spread 30x): 1e-5 tells them apart."""
    grad = (_randn(shape, seed=5) * torch.linspace(0.1, 3.0, shape[1], dtype=torch.float64)).float()
    w = torch.nn.Parameter(torch.zeros(shape))
    w.grad = grad.clone()
    SinkGD([w], lr=0.1, alpha=0.5, iterations=iterations, method=method).step()
    ref = sinkgd_reference_update(grad.double(), iterations)
    assert rel(w.detach() / -0.05, ref) < 1e-5
    if iterations > 1:
        assert rel(sinkgd_reference_update(grad.double(), iterations - 1), ref) > 5e-5


def _bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of bf16 numbers at |x| (8 significant bits): 2^(e - 8) for |x| in [2^(e-1), 2^e)."""
    _, e = torch.frexp(x.double())
    return torch.ldexp(torch.ones_like(x, dtype=torch.float64), e - 8)


@pytest.mark.parametrize("cls,kw", [(SWAN, {}), (SWAN, {"whitening": "diag", "steps": 2, "beta": 0.4}),
                                    (SinkGD, {}), (SinkGD, {"method": "blocked"}), (SinkGD, {"method": "vectors"})])
def test_bf16_update_lands_with_the_right_sign_within_one_ulp(cls, kw):
    """bf16 W0 ~ 1e-2 (ulp ~6e-5) and an update of lr alpha = 1e-3 per unit RMS (~16 ulps): the bf16 step
    must equal the fp32 result W0 - lr alpha U (U in float64) within one bf16 ulp, change nearly every
    entry, and move each entry whose update exceeds two ulps in the direction of -U. (A step that skipped
    the update, or flipped the gradient's sign, passed the old atol=1e-2 check.)"""
    shape = (24, 40)
    w0 = (_randn(shape, seed=7) * 1e-2).to(torch.bfloat16)
    grad = (_randn(shape, seed=8) * torch.linspace(0.2, 2.0, 40, dtype=torch.float64)).to(torch.bfloat16)
    w = torch.nn.Parameter(w0.clone())
    w.grad = grad.clone()
    cls([w], lr=0.02, alpha=0.05, **kw).step()
    assert w.dtype == torch.bfloat16
    full = {"steps": 10, "beta": 0.8, "whitening": "newton-schulz", **kw} if cls is SWAN else {}
    u = swan_reference_update(grad.double(), **full) if cls is SWAN else sinkgd_reference_update(grad.double())
    step = 0.02 * 0.05 * u
    expected = w0.double() - step
    got = w.detach().double()
    assert ((got - expected).abs() <= _bf16_ulp(expected)).all()
    assert (got != w0.double()).float().mean() > 0.9
    big = step.abs() > 2 * _bf16_ulp(w0.double())
    assert big.float().mean() > 0.5 and torch.equal(torch.sign(got - w0.double())[big], -torch.sign(u)[big])


@pytest.mark.parametrize("name", STATELESS)
def test_one_registry_step_moves_every_parameter_as_its_optimizer_prescribes(name):
    """The hybrid's wiring, against independent formulas: each hidden matrix moves by -lr alpha U (U from
    the float64 reference of its own gradient), everything else by AdamW's first step -lr g / (|g| + eps)."""
    model = ToyLM(0)
    opt = optimizers.build(name, model, lr=0.5, alpha=0.4)
    before = {n: p.detach().clone().double() for n, p in model.named_parameters()}
    opt.zero_grad()
    loss_fn(model, batch()).backward()
    grads = {n: p.grad.detach().clone().double() for n, p in model.named_parameters()}
    opt.step()
    hidden = set(hidden_names(model))
    hp = optimizers.info(name).hparams
    for n, p in model.named_parameters():
        delta = p.detach().double() - before[n]
        if n in hidden:
            if name == "sinkgd":
                u = sinkgd_reference_update(grads[n], hp["iterations"])
            else:
                u = swan_reference_update(grads[n], hp["steps"], hp["beta"],
                                          "diag" if name == "swan-fast" else "newton-schulz")
            # 16 x 16 square layers at b = 0.8, k = 10 are the least accurate (~1e-4)
            assert rel(delta, -0.5 * 0.4 * u) < 5e-4, (n, rel(delta, -0.2 * u))
        else:
            g = grads[n]
            torch.testing.assert_close(delta, -0.5 * g / (g.abs() + 1e-8), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# extreme but finite gradients
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [3e38, 1e30, 1e17, 1e-20, 1e-40])
@pytest.mark.parametrize("cls", [SWAN, SinkGD])
def test_extreme_finite_gradients_step_like_the_reference(cls, scale):
    """Gradients of 1e17 and above used to raise NonFiniteGradientError (the finite check's 2-norm
    overflowed); every finite gradient now steps, and the update equals the float64 reference (tiny
    gradients hit the eps floors in GradNorm / SR-Sinkhorn exactly as the reference does)."""
    shape = (36, 20)
    g64 = _randn(shape, seed=11) * torch.linspace(0.5, 1.0, 20, dtype=torch.float64)
    grad = (g64 / g64.abs().max() * scale).float()
    assert torch.isfinite(grad).all()
    w = torch.nn.Parameter(torch.zeros(shape))
    w.grad = grad.clone()
    kw = {"steps": 6, "beta": 0.5} if cls is SWAN else {}
    cls([w], lr=0.1, alpha=0.5, **kw).step()
    assert torch.isfinite(w).all()
    u = swan_reference_update(grad.double(), 6, 0.5) if cls is SWAN else sinkgd_reference_update(grad.double())
    assert rel(w.detach() / -0.05, u) < 1e-5


# ----------------------------------------------------------------------------------------------------
# whitening precision
# ----------------------------------------------------------------------------------------------------

def test_swan_whiten_precision():
    shape = (40, 24)
    grad = _randn(shape, seed=12).float()

    def one_step(**kw):
        w = torch.nn.Parameter(torch.zeros(shape))
        w.grad = grad.clone()
        SWAN([w], lr=1.0, alpha=1.0, **kw).step()
        return w.detach()

    fp32 = one_step()
    assert torch.equal(one_step(whiten_precision="tf32"), fp32)  # CPU: TF32 does not exist, plain fp32
    bf16 = one_step(whiten_precision="bf16", steps=6, beta=0.5)
    ref = -swan_reference_update(grad.double(), 6, 0.5)
    assert 1e-4 < rel(bf16, ref) < 3e-2  # bf16 products (see grad_whiten's docstring)
    with pytest.raises(ValueError, match=r"unknown whitening precision 'fp8' \(known: fp32, tf32, bf16\)"):
        SWAN([torch.nn.Parameter(torch.zeros(4, 4))], whiten_precision="fp8")


def test_registry_whiten_precision():
    model, opt = build("swan", whiten_precision="bf16")
    assert "whiten_precision='bf16'" in opt.implementation
    assert opt.optimizers["matrix"].param_groups[0]["whiten_precision"] == "bf16"
    train_step(model, opt, batch())
    with pytest.raises(ValueError, match="whiten_precision must be one of 'fp32', 'tf32', 'bf16', got 'half'"):
        optimizers.build("swan-fast", ToyLM(), whiten_precision="half")
    info = optimizers.info("swan")
    assert [p.methods for p in info.step_parts()] == [("rowwise",), ("ns-b0.8-k10",)]
    assert info.step_parts(whiten_precision="bf16")[1].methods == ("ns-b0.8-k10-bf16",)
    assert info.step_parts(whiten_precision="tf32", beta=0.5, steps=6)[1].methods == ("ns-b0.5-k6-tf32",)
    assert optimizers.info("swan-fast").step_parts(whiten_precision="bf16")[1].methods == ("nsds-b0.4-k2-bf16",)
    # 24 x 72: s = 24; fp32 m n + max(4 s^2, s^2 + m n); bf16 (4 m n + max(2 m n + 6 s^2, 2 m n + 8 s^2,
    # 4 m n + 2 s^2)) // 4 bytes
    assert info.workspace_numel((24, 72)) == 1728 + 576 + 1728 == info.workspace_numel((24, 72), whiten_precision="tf32")
    assert info.workspace_numel((24, 72), whiten_precision="bf16") == (4 * 1728 + 4 * 1728 + 2 * 576) // 4
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        info.workspace_numel((24, 72), precision="bf16")


# ----------------------------------------------------------------------------------------------------
# SinkGD's device-dependent path, tested on CPU where it can be forced
# ----------------------------------------------------------------------------------------------------

def test_sinkgd_vectors_path_updates_each_matrix_with_one_kernel():
    """method="vectors" is what "auto" runs on CUDA: the scaled gradient is formed in place and added to
    the parameter in one add_ per matrix, however many rows (the CPU kernels' 1 MiB row blocks were ~10k
    tiny launches per 1b step on a GPU); the result equals the CPU kernels'."""
    shape = (1200, 700)  # 4 row blocks of the blocked kernel
    grad = _randn(shape, seed=13).float()
    results = {}
    for method in ("vectors", "blocked"):
        w = torch.nn.Parameter(torch.zeros(shape))
        w.grad = grad.clone()
        opt = SinkGD([w], lr=0.1, alpha=0.5, method=method)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            opt.step()
        adds = sum(1 for e in prof.events() if e.name in ("aten::add_", "aten::addcmul_")
                   and e.input_shapes and len(e.input_shapes[0]) == 2 and e.input_shapes[0][1] == 700)
        results[method] = (w.detach().clone(), adds)
    assert results["vectors"][1] == 1
    assert results["blocked"][1] == 4
    assert rel(results["vectors"][0], results["blocked"][0]) < 1e-6
    from optimizers.stateless import sinkgd_workspace_numel

    assert sinkgd_workspace_numel(shape, device="cuda") == 1200 * 700 + 1200 + 700
    assert optimizers.info("sinkgd").workspace_numel(shape, device="cuda:0", dtype="bfloat16") == 1200 * 700 + 1900


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_sinkgd_step_and_workspace(dtype):
    """On CUDA: "auto" is the vectors path, the step equals the CPU reference, and the allocator's peak
    inside step() is the declared device workspace (bf16 parameters add nothing: CUDA casts in registers).
    Band: declared <= measured <= 1.05 declared + 16 KiB (512-byte blocks for the O(m + n) vectors)."""
    shape = (1024, 2816)
    grad = _randn(shape, seed=14).to(dtype)
    w = torch.nn.Parameter(torch.zeros(shape, dtype=dtype, device="cuda"))
    w.grad = grad.cuda()
    opt = SinkGD([w], lr=0.1, alpha=0.5)
    opt.step()
    ref = -0.05 * sinkgd_reference_update(grad.double())
    assert rel(w.detach().cpu(), ref) < (1e-5 if dtype == torch.float32 else 1e-2)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    opt.step()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - start
    declared = 4 * optimizers.info("sinkgd").workspace_numel(shape, device="cuda", dtype=dtype)
    assert declared <= measured <= 1.05 * declared + 16 * 1024, (measured, declared)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_cuda_swan_whiten_precision(precision):
    """On CUDA TF32 is real: the step runs with TF32 matmuls and leaves the global flag as it found it;
    each precision stays within grad_whiten's documented error (b = 0.5, k = 6: fp32 1e-6, tf32 ~4e-3,
    bf16 ~2e-2), and the update is finite."""
    from optimizers import functional as F

    assert F.effective_whiten_precision(precision, "cuda") == precision
    shape = (176, 64)
    grad = _randn(shape, seed=15).float()
    w = torch.nn.Parameter(torch.zeros(shape, device="cuda"))
    w.grad = grad.cuda()
    before = torch.backends.cuda.matmul.fp32_precision
    SWAN([w], lr=1.0, alpha=1.0, steps=6, beta=0.5, whiten_precision=precision).step()
    assert torch.backends.cuda.matmul.fp32_precision == before
    err = rel(w.detach().cpu(), -swan_reference_update(grad.double(), 6, 0.5))
    assert err < {"fp32": 1e-5, "tf32": 1e-2, "bf16": 3e-2}[precision], err


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
    from optimizers import stateless

    real = stateless._whiten_batch
    monkeypatch.setattr(stateless, "_whiten_batch", lambda *a, **k: real(*a, **k).fill_(float("nan")))
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

# Declared workspace (fp32 elements) written out by hand from the declaration's formula, not by calling
# it: SWAN m n + max(B s^2, s^2 + m n) with B = 4 (k >= 3), 3 (k = 2), 2 (k = 1), 1 (NSDS); bf16 whitening
# (4 m n + max(2 m n + 6 s^2, 2 m n + 2 B s^2, 4 m n + 2 s^2)) // 4 bytes; SinkGD native m + n + threads n
# (one thread here), blocked b n + 2 m + 2 n (b = m rows for these small matrices; a bf16 parameter:
# max(that, m + n + 2 m n)), vectors on CPU 2 m n + m + n (the iterate and a scratch of its squares).
WORKSPACE_CASES = [
    # shape, optimizer, constructor kwargs, parameter dtype, declared elements
    ((40, 40), "swan", {}, torch.float32, 1600 + 4 * 1600),
    ((24, 72), "swan", {}, torch.float32, 1728 + 576 + 1728),
    ((72, 24), "swan", {}, torch.float32, 1728 + 576 + 1728),
    ((40, 40), "swan", {"steps": 2}, torch.float32, 1600 + 3 * 1600),
    ((24, 72), "swan", {"steps": 1}, torch.float32, 1728 + 576 + 1728),
    ((72, 24), "swan", {"whitening": "diag", "steps": 2, "beta": 0.4}, torch.float32, 1728 + 576 + 1728),
    ((72, 24), "swan", {}, torch.bfloat16, 1728 + 576 + 1728),  # the bf16 parameter adds nothing
    ((40, 40), "swan", {}, torch.bfloat16, 1600 + 4 * 1600),
    ((24, 72), "sinkgd", {}, torch.float32, 24 + 72 + 72),
    ((24, 72), "sinkgd", {}, torch.bfloat16, 24 + 72 + 72),
    ((24, 72), "sinkgd", {"method": "blocked"}, torch.float32, 1728 + 48 + 144),
    ((24, 72), "sinkgd", {"method": "blocked"}, torch.bfloat16, 24 + 72 + 2 * 1728),
    ((72, 24), "sinkgd", {"method": "vectors"}, torch.float32, 2 * 1728 + 72 + 24),
    ((72, 24), "sinkgd", {"method": "vectors"}, torch.bfloat16, 2 * 1728 + 72 + 24),
]


@pytest.mark.parametrize("shape,name,kw,dtype,declared", WORKSPACE_CASES)
def test_declared_workspace_equals_measured_transient(shape, name, kw, dtype, declared):
    from optimizers import native
    from optimizers.stateless import sinkgd_workspace_numel, swan_workspace_numel

    if name == "sinkgd" and kw.get("method", "auto") in ("auto", "native") and not native.available():
        pytest.skip("the default SinkGD kernel here is the native one")
    cls = SinkGD if name == "sinkgd" else SWAN
    w = torch.nn.Parameter(torch.randn(shape).to(dtype))
    w.grad = torch.randn(shape).to(dtype)
    opt = cls([w], **kw)
    group = opt.param_groups[0]
    if name == "swan":
        assert swan_workspace_numel(shape, group["steps"], group["whitening"]) == declared
        if not kw:
            assert optimizers.info("swan").workspace_numel(shape, dtype=dtype) == declared
    else:
        assert sinkgd_workspace_numel(shape, kw.get("method", "auto"), "cpu", dtype) == declared
        if not kw:
            assert optimizers.info("sinkgd").workspace_numel(shape, dtype=dtype) == declared
    opt.step()  # warm-up
    measured = step_allocation_peak(opt)
    # The declaration counts the tensors of m x n, s x s, m and n elements; the measurement adds a few 0-dim
    # scalars (norms, the finite check) and, for the torch SR-Sinkhorn kernels, the first row step's row
    # maxima and exponents (O(m + n), at most 4 (m + n) elements).
    slack = 64 if name == "swan" or kw.get("method", "auto") == "auto" else 4 * 4 * (shape[0] + shape[1])
    assert 4 * declared <= measured <= 4 * declared + slack, (measured, 4 * declared)


def test_bf16_whitening_workspace_is_the_declared_tensors_plus_cpu_matmul_scratch():
    """whiten_precision="bf16": the declaration counts the step's tensors exactly; on CPU each bf16 matmul
    also packs an operand into oneDNN scratch of its own (not a step tensor; CUDA's matmuls have none),
    which the measurement sees: declared <= measured <= declared + the scratch of one bf16 product."""
    from optimizers.stateless import swan_workspace_numel

    for shape in ((24, 72), (72, 24), (40, 40)):
        m, n = shape
        s = min(shape)
        declared = swan_workspace_numel(shape, 10, "newton-schulz", "bf16")
        assert declared == (4 * m * n + max(2 * m * n + 6 * s * s, 2 * m * n + 8 * s * s, 4 * m * n + 2 * s * s)) // 4
        assert optimizers.info("swan").workspace_numel(shape, whiten_precision="bf16") == declared
        w = torch.nn.Parameter(torch.randn(shape))
        w.grad = torch.randn(shape)
        opt = SWAN([w], whiten_precision="bf16")
        opt.step()
        measured = step_allocation_peak(opt)
        a = torch.randn(1, max(shape), s).bfloat16()
        scratch = allocation_peak(lambda: torch.bmm(a.mT, a)) - 2 * s * s  # oneDNN packing of one product
        assert 4 * declared <= measured <= 4 * declared + 2 * scratch + 64, (measured, 4 * declared, scratch)
