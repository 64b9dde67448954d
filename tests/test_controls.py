"""The controls of a fair comparison: adamw-split, muon-nomomentum and SWAN's one-stage ablations.

Each is a registry entry (or a hyperparameter of one) and also passes the conformance suite of
tests/test_optimizers.py; here: that each does exactly what its name says, and that its declared state and
workspace are what torch allocates.
"""

from __future__ import annotations

import math

import pytest
import torch

import optimizers
from optimizers import functional as F
from optimizers.ablation import SWANAblation
from optimizers.testing import ToyLM, allocation_peak, batch, hidden_names, loss_fn

pytestmark = pytest.mark.usefixtures("one_thread")


def _steps(model, opt, n: int, seed0: int = 0) -> None:
    for i in range(n):
        opt.zero_grad()
        loss_fn(model, batch(seed0 + i)).backward()
        opt.step()


def test_adamw_split_without_adamw_lr_is_adamw_bit_for_bit():
    a, b = ToyLM(0), ToyLM(0)
    _steps(a, optimizers.build("adamw", a, lr=1e-2), 5)
    _steps(b, optimizers.build("adamw-split", b, lr=1e-2), 5)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_adamw_split_gives_each_group_its_lr_like_the_hybrids():
    model = ToyLM(0)
    opt = optimizers.build("adamw-split", model, lr=2e-3, adamw_lr=0.05, betas=(0.8, 0.99))
    hidden = {id(p) for n, p in model.named_parameters() if n in hidden_names(model)}
    for name, part in opt.optimizers.items():
        assert isinstance(part, torch.optim.AdamW)
        (group,) = part.param_groups
        assert group["lr"] == (2e-3 if name == "matrix" else 0.05) and group["betas"] == (0.8, 0.99)
        assert all((id(p) in hidden) == (name == "matrix") for p in group["params"])
    # the same grouping as swan's: the same parameters in each part
    swan = optimizers.build("swan", ToyLM(0))
    assert {k: len(v.param_groups[0]["params"]) for k, v in swan.optimizers.items()} == \
        {k: len(v.param_groups[0]["params"]) for k, v in opt.optimizers.items()}


def test_muon_nomomentum_update_is_the_orthogonalised_current_gradient():
    """No memory of earlier gradients: after different histories, the same gradient gives the same update."""
    torch.manual_seed(0)
    g = torch.randn(24, 40)
    updates = []
    for history in (0, 3):
        w = torch.nn.Parameter(torch.zeros(24, 40))
        opt = torch.optim.Muon([w], lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0)
        for _ in range(history):
            w.grad = torch.randn(24, 40)
            opt.step()
        before = w.detach().clone()
        w.grad = g.clone()
        opt.step()
        updates.append(before - w.detach())
    torch.testing.assert_close(updates[0], updates[1], rtol=0, atol=0)
    # and it is Muon's quintic Newton-Schulz of that gradient (torch runs it in bf16: loose tolerance)
    torch.testing.assert_close(updates[0], F.muon_quintic(g), rtol=0, atol=0.03)
    hybrid = optimizers.build("muon-nomomentum", ToyLM(0))
    (group,) = hybrid.optimizers["matrix"].param_groups
    assert group["momentum"] == 0.0 and group["nesterov"] is False
    assert optimizers.info("muon-nomomentum").step_parts()[0].operator == "muon_quintic"


@pytest.mark.parametrize("shape", [(40, 40), (24, 72), (72, 24)])
def test_muon_nomomentum_declared_state_and_workspace_are_what_torch_allocates(shape):
    info = optimizers.info("muon-nomomentum")
    w = torch.nn.Parameter(torch.randn(shape))
    w.grad = torch.randn(shape)
    opt = torch.optim.Muon([w], lr=0.02, momentum=0.0, nesterov=False, weight_decay=0.0)
    opt.step()  # allocates the (unused) momentum buffer: declared as state
    assert sum(t.numel() for s in opt.state.values() for t in s.values()) == info.state_numel(shape)
    measured = allocation_peak(opt.step)
    # The declaration counts the tensors of the step (bf16 copy, Gram, polynomial, next iterate); the CPU
    # bf16 matmul adds its own scratch, measured here on the Gram product alone, and 0-dim scalars
    # (a tall matrix is orthogonalised as its transposed view, as torch does)
    x = torch.randn(shape).bfloat16()
    x = x.T if shape[0] > shape[1] else x
    s = min(shape)
    scratch = max(allocation_peak(lambda: x @ x.T) - s * s * 2, 0)
    # The step's peak is its tensors (the declaration) or a matmul's inputs, output and scratch, whichever is
    # larger: at least the declaration, at most the declaration plus one matmul's scratch.
    assert 4 * info.workspace_numel(shape) <= measured <= 4 * info.workspace_numel(shape) + scratch + 64


@pytest.mark.parametrize("ablation", ["gradnorm-only", "whitening-only"])
def test_swan_ablation_runs_one_stage(ablation):
    torch.manual_seed(0)
    g = torch.randn(24, 40) * torch.linspace(0.1, 3.0, 24).unsqueeze(1) + 0.5  # uneven, off-centre rows
    w = torch.nn.Parameter(torch.zeros(24, 40))
    w.grad = g.clone()
    SWANAblation([w], ablation=ablation, lr=1.0, alpha=1.0).step()
    stage = F.grad_norm(g) if ablation == "gradnorm-only" else F.grad_whiten(g)
    expected = -stage * math.sqrt(g.numel()) / stage.norm()
    torch.testing.assert_close(w.detach(), expected, rtol=1e-4, atol=1e-5)
    full = torch.nn.Parameter(torch.zeros(24, 40))
    full.grad = g.clone()
    optimizers.SWAN([full], lr=1.0, alpha=1.0).step()
    assert (full.detach() - w.detach()).abs().max() > 0.05  # the ablation differs from SWAN itself


def test_swan_ablation_is_a_hyperparameter_of_the_swan_entry():
    info = optimizers.info("swan")
    assert info.hparams["ablation"] == "none"
    assert [p.operator for p in info.step_parts()] == ["grad_norm", "grad_whiten"]
    assert [p.operator for p in info.step_parts(ablation="gradnorm-only")] == ["grad_norm"]
    assert [p.operator for p in info.step_parts(ablation="whitening-only")] == ["grad_whiten"]
    a, b = ToyLM(0), ToyLM(0)
    _steps(a, optimizers.build("swan", a), 3)
    _steps(b, optimizers.build("swan", b, ablation="none"), 3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    model = ToyLM(0)
    opt = optimizers.build("swan", model, ablation="whitening-only")
    assert isinstance(opt.optimizers["matrix"], SWANAblation) and "whitening-only" in opt.implementation
    _steps(model, opt, 2)
    assert len(opt.optimizers["matrix"].state) == 0  # still stateless
    with pytest.raises(ValueError, match="ablation must be one of"):
        optimizers.build("swan", ToyLM(0), ablation="gradnorm")


@pytest.mark.parametrize("ablation,stage", [("gradnorm-only", "x"), ("whitening-only", "swan")])
def test_swan_ablation_workspace_is_within_the_declared_one(ablation, stage):
    from optimizers.stateless import swan_workspace_numel

    shape = (24, 72)
    w = torch.nn.Parameter(torch.randn(shape))
    w.grad = torch.randn(shape)
    opt = SWANAblation([w], ablation=ablation)
    opt.step()
    measured = allocation_peak(opt.step)
    declared = optimizers.info("swan").workspace_numel(shape)
    assert declared == swan_workspace_numel(shape)
    own = shape[0] * shape[1] if stage == "x" else declared  # gradnorm-only holds only the fp32 copy
    assert 4 * own <= measured <= 4 * own + 64 and measured <= 4 * declared + 64


def test_the_controls_under_fsdp_adamw_split_runs_and_an_orthogonalisation_is_refused():
    """adamw-split's matrix part is elementwise (fine on row shards); Muon needs whole matrices."""
    from optimizers.distributed import build_distributed

    opt = build_distributed("adamw-split", ToyLM(0), "fsdp", adamw_lr=0.01)
    assert isinstance(opt.optimizers["matrix"], torch.optim.AdamW)
    with pytest.raises(ValueError, match="Muon has no FSDP variant"):
        build_distributed("muon-nomomentum", ToyLM(0), "fsdp")
    with pytest.raises(ValueError, match="SWANAblation has no FSDP variant"):
        build_distributed("swan", ToyLM(0), "fsdp", ablation="gradnorm-only")
