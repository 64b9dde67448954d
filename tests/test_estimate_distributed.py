"""The estimator per rank: FSDP shards parameters, gradients and Adam's state; DDP replicates them and adds
its buckets; SWAN's whitening workspace does not shrink; activations are per rank."""

from __future__ import annotations

import csv
import math

import pytest
from typer.testing import CliRunner

from swanbench import estimate as est
from swanbench.cli import app
from swanbench.models import PRESETS

ELEM = {"float32": 4, "bfloat16": 2}


def _one(model="60m", optimizer="adamw", world_size=1, parallelism=None, dtype="bfloat16"):
    return est.estimate(model, optimizer, dtype, 4, 256, world_size=world_size, parallelism=parallelism)


def _row_block_numel(model: str, world_size: int) -> int:
    """Elements rank 0 holds under Shard(0): ceil(rows / world_size) rows of every tensor."""
    return sum(math.ceil(s.shape[0] / world_size) * s.numel // s.shape[0]
               for s in est.parameter_specs(PRESETS[model]))


def test_one_rank_is_the_single_process_estimate():
    for name in ("adamw", "swan", "sinkgd"):
        plain = est.estimate("60m", name, "bfloat16", 4, 256)
        assert _one(optimizer=name) == plain
        assert plain.comm_bytes == 0 and plain.world_size == 1 and plain.parallelism is None


@pytest.mark.parametrize("world_size", [2, 3, 8])
def test_fsdp_shards_params_grads_and_adam_state_by_rows(world_size):
    single, sharded = _one(), _one(world_size=world_size, parallelism="fsdp")
    local = _row_block_numel("60m", world_size)
    assert sharded.param_bytes == sharded.grad_bytes == local * ELEM["bfloat16"]
    assert sharded.params == single.params  # the model is the same size; each rank holds a block
    # AdamW: two moments per local element (bf16) plus a float32 `step` per tensor (not sharded)
    n_tensors = len(est.parameter_specs(PRESETS["60m"]))
    assert sharded.optimizer_state_bytes == 2 * local * ELEM["bfloat16"] + 4 * n_tensors
    assert sharded.optimizer_state_bytes < single.optimizer_state_bytes / world_size * 1.1
    assert sharded.activations == single.activations  # batch_size is per rank


def test_fsdp_keeps_swan_whitening_whole_and_adds_the_gathered_matrix():
    single = _one(optimizer="swan")
    fsdp = _one(optimizer="swan", world_size=4, parallelism="fsdp")
    largest = max(m * n for m, n in PRESETS["60m"].hidden_matrix_shapes())
    matrix_single = next(g for g in single.groups if g.name == "matrix")
    matrix_fsdp = next(g for g in fsdp.groups if g.name == "matrix")
    assert matrix_fsdp.state_bytes == 0
    assert matrix_fsdp.workspace_bytes == matrix_single.workspace_bytes + 4 * largest
    # SinkGD needs no whole matrix: its workspace is the single-process one
    sink = [g for g in _one(optimizer="sinkgd", world_size=4, parallelism="fsdp").groups if g.name == "matrix"]
    sink_single = next(g for g in _one(optimizer="sinkgd").groups if g.name == "matrix")
    assert sink[0].workspace_bytes == sink_single.workspace_bytes


def test_fsdp_gathered_parameters_are_the_root_plus_two_layers():
    preset = PRESETS["60m"]
    fsdp = _one(world_size=4, parallelism="fsdp")
    h, i, v = preset.hidden, preset.intermediate, preset.vocab
    layer = 4 * h * h + 3 * h * i + 2 * h
    root = 2 * v * h + h
    assert fsdp.comm_bytes == (root + 2 * layer) * ELEM["bfloat16"]
    assert fsdp.backward_peak_bytes - fsdp.comm_bytes == (
        fsdp.weights_and_state_bytes + fsdp.activation_bytes + fsdp.loss_transient_bytes)
    assert fsdp.step_peak_bytes == fsdp.weights_and_state_bytes + fsdp.grad_bytes + fsdp.workspace_bytes


def test_ddp_replicates_and_adds_gradient_buckets():
    single, ddp = _one(), _one(world_size=4, parallelism="ddp")
    assert (ddp.param_bytes, ddp.grad_bytes, ddp.optimizer_state_bytes) == (
        single.param_bytes, single.grad_bytes, single.optimizer_state_bytes)
    assert ddp.comm_bytes == single.grad_bytes
    assert ddp.peak_bytes == single.peak_bytes + single.grad_bytes  # the buckets live through both moments


def test_ddp_swan_owner_keeps_its_share_of_updates_in_fp32():
    shapes = PRESETS["60m"].hidden_matrix_shapes()
    total = sum(m * n for m, n in shapes)
    single = next(g for g in _one(optimizer="swan").groups if g.name == "matrix")
    ddp = next(g for g in _one(optimizer="swan", world_size=4, parallelism="ddp").groups if g.name == "matrix")
    assert ddp.workspace_bytes == single.workspace_bytes + 4 * math.ceil(total / 4)


def test_fsdp_adam_per_rank_beats_ddp_and_stateless_beats_adam():
    """The point of the axis: Adam's state shrinks with FSDP; the stateless hybrids stay below Adam."""
    fsdp_adam = _one("1b", "adamw", 8, "fsdp")
    ddp_adam = _one("1b", "adamw", 8, "ddp")
    fsdp_swan = _one("1b", "swan", 8, "fsdp")
    assert fsdp_adam.weights_and_state_bytes < ddp_adam.weights_and_state_bytes / 7
    assert fsdp_swan.weights_and_state_bytes < fsdp_adam.weights_and_state_bytes


@pytest.mark.parametrize("world_size, parallelism, expect", [
    (2, None, "needs parallelism ddp or fsdp"),
    (2, "fsdb", "did you mean 'fsdp'"),
    (0, "ddp", "world_size must be a positive integer"),
])
def test_bad_parallelism_is_one_error_line(world_size, parallelism, expect):
    with pytest.raises(est.EstimateError, match=expect):
        _one(world_size=world_size, parallelism=parallelism)


def test_cli_takes_world_size_and_parallelism(tmp_path):
    out = tmp_path / "e.csv"
    result = CliRunner().invoke(app, ["estimate", "--model", "60m", "--optimizer", "adamw,swan", "--dtype",
                                      "bfloat16", "--world-size", "4", "--parallelism", "fsdp",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "per rank of 4 (fsdp)" in " ".join(result.output.split())
    rows = list(csv.DictReader(out.open()))
    assert [r["optimizer"] for r in rows] == ["adamw", "swan"]
    assert all(r["world_size"] == "4" and r["parallelism"] == "fsdp" for r in rows)
    assert int(rows[0]["param_bytes"]) == _row_block_numel("60m", 4) * 2
    bad = CliRunner().invoke(app, ["estimate", "--model", "60m", "--world-size", "2"])
    assert bad.exit_code == 2 and "needs parallelism" in bad.output and "Traceback" not in bad.output
