"""The hybrid: name rules (first match wins, everything exactly once, no idle rule) and the one-optimizer surface."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import optimizers
from optimizers import HybridOptimizer, partition
from optimizers.testing import ToyLM, batch, hidden_names, loss_fn


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def step(model, opt, seed=0):
    opt.zero_grad()
    loss = loss_fn(model, batch(seed))
    loss.backward()
    opt.step()
    return loss


# ----------------------------------------------------------------------------------------------------
# name rules
# ----------------------------------------------------------------------------------------------------

def test_llama_rules_send_projections_to_matrix_and_the_rest_to_adamw():
    model = ToyLM()
    groups = partition(model, optimizers.LLAMA_RULES)
    assert [n for n, _ in groups["matrix"]] == hidden_names(model)
    assert {n for n, _ in groups["adamw"]} == {n for n, _ in model.named_parameters()} - set(hidden_names(model))


def test_first_match_wins():
    model = ToyLM()
    rules = [(r"layers\.0\.q_proj", "adamw"), (r"_proj\.weight$", "matrix"), (".*", "adamw")]
    groups = partition(model, rules)
    assert "layers.0.q_proj.weight" in {n for n, _ in groups["adamw"]}
    assert "layers.1.q_proj.weight" in {n for n, _ in groups["matrix"]}


def test_unmatched_parameter_is_an_error():
    with pytest.raises(ValueError, match="no rule matches .*embed_tokens.weight"):
        partition(ToyLM(), [(r"_proj\.weight$", "matrix"), (r"norm|lm_head", "adamw")])


def test_rule_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match="matched no trainable parameter: 'gate_proj'"):
        partition(ToyLM(), [("gate_proj", "matrix"), (".*", "adamw")])


def test_frozen_parameters_are_left_out():
    model = ToyLM()
    model.embed_tokens.weight.requires_grad_(False)
    opt = optimizers.build("swan", model)
    members = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.embed_tokens.weight) not in members
    assert len(members) == sum(1 for p in model.parameters() if p.requires_grad)


def test_rules_make_a_non_llama_model_work():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = optimizers.build("sinkgd", model, rules=[(r"^\d+\.weight$", "matrix"), (r"\.bias$", "adamw")])
    assert set(opt.optimizers) == {"matrix", "adamw"}
    assert [tuple(p.shape) for p in opt.optimizers["matrix"].param_groups[0]["params"]] == [(32, 8), (4, 32)]
    x, y = torch.randn(64, 8), torch.randn(64, 4)
    first = None
    for _ in range(20):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first


def test_rules_routing_a_vector_to_the_matrix_optimizer_is_an_error():
    with pytest.raises(ValueError, match="only takes 2-D"):
        optimizers.build("swan", ToyLM(), rules=[(r"norm", "matrix"), (".*", "adamw")])


def test_all_parameters_to_the_matrix_part_gives_one_child():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.Linear(16, 4, bias=False))
    opt = optimizers.build("swan", model, rules=[(".*", "matrix")])
    assert list(opt.optimizers) == ["matrix"]


# ----------------------------------------------------------------------------------------------------
# the optimizer surface
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["swan", "swan-fast", "sinkgd", "muon"])
def test_hybrid_is_an_optimizer_whose_groups_are_the_childrens(name):
    model = ToyLM()
    opt = optimizers.build(name, model)
    assert isinstance(opt, HybridOptimizer) and isinstance(opt, torch.optim.Optimizer)
    children = [g for child in opt.optimizers.values() for g in child.param_groups]
    assert len(opt.param_groups) == len(children)
    assert all(a is b for a, b in zip(opt.param_groups, children))
    assert [g["name"] for g in opt.param_groups] == ["matrix", "adamw"]


def test_defaults_follow_the_papers():
    opt = optimizers.build("swan", ToyLM())
    matrix, adamw = opt.param_groups
    assert matrix["lr"] == 0.02 and matrix["alpha"] == 0.05 and adamw["lr"] == 0.02
    assert (matrix["steps"], matrix["beta"], matrix["whitening"]) == (10, 0.8, "newton-schulz")
    fast = optimizers.build("swan-fast", ToyLM()).param_groups[0]
    assert (fast["steps"], fast["beta"], fast["whitening"]) == (2, 0.4, "diag")
    sink = optimizers.build("sinkgd", ToyLM()).param_groups[0]
    assert (sink["lr"], sink["alpha"], sink["iterations"]) == (0.02, 0.05, 5)
    custom = optimizers.build("swan", ToyLM(), lr=0.01, adamw_lr=1e-3, alpha=0.1)
    assert [g["lr"] for g in custom.param_groups] == [0.01, 1e-3]


def test_cosine_schedule_reaches_both_children():
    model = ToyLM()
    opt = optimizers.build("swan", model, adamw_lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for i in range(5):
        step(model, opt, i)
        sched.step()
    matrix, adamw = opt.optimizers["matrix"], opt.optimizers["adamw"]
    assert matrix.param_groups[0]["lr"] == pytest.approx(0.02 * 0.5)
    assert adamw.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5)
    restored = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    restored.load_state_dict(sched.state_dict())


def test_closure_runs_once_and_children_step():
    model = ToyLM()
    opt = optimizers.build("sinkgd", model)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = loss_fn(model, batch())
        loss.backward()
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    assert torch.isfinite(opt.step(closure))
    assert len(calls) == 1
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_zero_grad_clears_every_child():
    model = ToyLM()
    opt = optimizers.build("swan", model)
    loss_fn(model, batch()).backward()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_state_dict_round_trip_and_mismatch():
    model = ToyLM()
    opt = optimizers.build("swan", model)
    for i in range(3):
        step(model, opt, i)
    sd = copy.deepcopy(opt.state_dict())
    assert set(sd["optimizers"]) == {"matrix", "adamw"}
    assert sd["optimizers"]["matrix"]["state"] == {}
    other = optimizers.build("swan", copy.deepcopy(model))
    other.load_state_dict(sd)
    assert other.param_groups[1] is other.optimizers["adamw"].param_groups[0]  # re-pointed after the load
    with pytest.raises(ValueError, match="parts"):
        other.load_state_dict({"optimizers": {"matrix": sd["optimizers"]["matrix"]}})


def test_state_view_is_read_only_merge():
    model = ToyLM()
    opt = optimizers.build("muon", model)
    step(model, opt)
    n_params = sum(1 for _ in model.parameters())
    assert len(opt.state) == n_params  # Muon: a buffer per hidden matrix; AdamW: one entry per tensor
    assert all(p in opt.state for p in model.parameters())
    with pytest.raises(AttributeError):
        opt.state = {"x": 1}
    with pytest.raises(TypeError):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2, 2))]})


def test_preprocess_timer_forwards_and_counts_buckets(counting_timer):
    model = ToyLM()
    opt = optimizers.build("swan", model, batch_budget=10**9)  # one batched call per distinct shape
    timer, entered = counting_timer
    opt.preprocess_timer = timer
    assert opt.optimizers["adamw"].preprocess_timer is timer  # set, and ignored by AdamW
    step(model, opt)
    shapes = {tuple(p.shape) for n, p in model.named_parameters() if n in hidden_names(model)}
    assert len(entered) == len(shapes)
    opt.preprocess_timer = None
    step(model, opt)
    assert len(entered) == len(shapes)


def test_step_hooks_of_torch_optimizer_fire():
    model = ToyLM()
    opt = optimizers.build("sinkgd", model)
    seen = []
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append(o))
    step(model, opt)
    assert seen == [opt]
