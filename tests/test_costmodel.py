"""The cost model: the flop formulas of `swanbench.costmodel` (docs/whitening.md) and the per-model step shares."""

from __future__ import annotations

import pytest

from swanbench import costmodel as cm
from swanbench.models import PRESETS


def test_newton_schulz_flops_follow_the_formula_and_use_the_smaller_side():
    # 4 s^2 l + 6 k s^3 with s = min side: a tall matrix costs what its transpose costs.
    assert cm.newton_schulz_flops(2, 3, 1) == 4 * 4 * 3 + 6 * 8
    assert cm.newton_schulz_flops(5461, 2048, 10) == cm.newton_schulz_flops(2048, 5461, 10)
    assert cm.newton_schulz_flops(2048, 5461, 10) == 4 * 2048**2 * 5461 + 60 * 2048**3


def test_other_operators_flops():
    assert cm.sr_sinkhorn_flops(3, 7, 5) == 6 * 5 * 3 * 7
    assert cm.muon_quintic_flops(4, 6, 5) == 5 * (4 * 16 * 6 + 2 * 64)
    assert cm.grad_norm_flops(3, 7) == 5 * 21
    # NSDS keeps the two large products and drops the s^3 loop
    assert cm.newton_schulz_diag_flops(8, 16, 2) == 4 * 64 * 16 + 4 * 2 * 64
    assert cm.matmul_flops(2, 3, 4) == 48


def test_bytes_conventions():
    assert cm.ideal_bytes(3, 5, "float32") == 2 * 15 * 4
    assert cm.ideal_bytes(3, 5, "bfloat16") == 2 * 15 * 2
    assert cm.copy_bytes(10, "float32") == 80


def test_shape_counts_of_the_1b_preset():
    counts = cm.shape_counts(PRESETS["1b"].hidden_matrix_shapes())
    assert counts == {(2048, 2048): 4 * 24, (5461, 2048): 2 * 24, (2048, 5461): 24}


def test_paper_whitening_share_at_1b_is_about_nine_percent():
    """The SWAN paper's estimate: k = 10 at 1.3B costs about 9% of a 131k-token step's training flops."""
    preset = PRESETS["1b"]
    swan = cm.step_config("swan")  # the registry's defaults: b = 0.8, k = 10
    assert dict(swan.hparams) == {} and [p.methods for p in swan.parts()] == [("rowwise",), ("ns-b0.8-k10",)]
    share = cm.whitening_share(preset.hidden_matrix_shapes(), preset.param_count(), swan.flops)
    assert 0.085 < share < 0.095
    # SinkGD is memory-bound and orders of magnitude cheaper in flops
    sink = cm.whitening_share(preset.hidden_matrix_shapes(), preset.param_count(), cm.step_config("sinkgd").flops)
    assert sink < share / 1000


def test_forward_backward_flops_is_six_n_t():
    assert cm.forward_backward_flops(10, 7) == 420
    assert cm.forward_backward_flops(1) == 6 * 512 * 256


@pytest.mark.parametrize("model", ["60m", "350m", "7b"])
def test_step_flops_sums_every_matrix(model):
    shapes = PRESETS[model].hidden_matrix_shapes()
    per = lambda r, c: r * c  # noqa: E731 - a probe: the sum must equal the parameter count of the matrices
    assert cm.step_flops(shapes, per) == sum(r * c for r, c in shapes)


def test_executed_newton_schulz_flops_skip_three_products():
    s, l = 8, 20
    assert cm.newton_schulz_executed_flops(s, l, 6) == cm.newton_schulz_flops(s, l, 6) - 3 * 2 * s**3
    assert cm.newton_schulz_executed_flops(l, s, 1) == 4 * s * s * l


def test_step_configs_take_their_cost_from_the_registry():
    """A configuration's flops are the sum of its registry step parts (GradNorm + whitening for SWAN)."""
    r, c = 64, 176
    assert cm.step_config("swan", beta=0.5, steps=6).flops(r, c) == \
        cm.grad_norm_flops(r, c) + cm.newton_schulz_flops(r, c, 6)
    assert cm.step_config("sinkgd", iterations=1).flops(r, c) == cm.sr_sinkhorn_flops(r, c, 1)
    assert cm.step_config("adamw").flops(r, c) == 0  # no separable preprocessing
    assert cm.step_config("swan", beta=0.5, steps=6).label == "swan beta=0.5 steps=6"
    assert len({s.label for s in cm.STEP_CONFIGS}) == len(cm.STEP_CONFIGS)
