"""Multi-process cells end to end on CPU (gloo): 2-rank DDP and FSDP2 cells of the nano model under torchrun,
for SWAN and SinkGD, equal to the 1-rank run; one row per run in runs.csv, the ranks' rows in ranks.csv.

Comparable by construction (docs/distributed.md, data sharding): the 1-rank run trains on batches of
4 sequences; a 2-rank run draws the same global batch of 2 x 2 from the same seeded stream and each rank
keeps its 2 rows, so the two see the same data in the same order and differ only by float reduction order.
"""

from __future__ import annotations

import pandas as pd
import pytest

from swanbench import estimate as est
from swanbench import rundir, runner
from swanbench.launch import worker_command
from swanbench.suite import SuiteError, load_suite

SUITE = """
name = "{name}"
[defaults]
model = "nano"
device = "cpu"
seq_len = 32
steps = 4
warmup_steps = 1
lr_warmup = 0.0
eval_every_tokens = 256      # evals at step 0, 2 and 4
eval_tokens = 256
timeout_s = 600
{defaults}
[data]
source = "file"
path = "{corpus}"
vocab_size = 512
[optimizers.swan]
lr = 0.02
[optimizers.sinkgd]
lr = 0.02
[matrix]
optimizer = ["swan", "sinkgd"]
{axes}
"""
# Equal up to float reduction order (measured: ~1e-7 relative after 4 steps); a data or gradient
# mix-up moves the eval loss by > 1e-3.
REL = 1e-5
# SWAN's default whitening (b = 0.8, k = 10) amplifies fp32 rounding: the same normalised gradient whitened
# as a batch of one (a rank's share) or of six (one process) differs by up to 9e-5 relative on nano's square
# layers (the batched matmul rounds differently with the batch size), which moves the eval loss by ~2e-5
# relative after 4 steps. A data or gradient mix-up still moves it by > 1e-3.
REL_SWAN = 1e-4


@pytest.fixture(scope="module")
def results(tmp_path_factory, text_corpus):
    """Run the 1-rank reference and the 2-rank DDP + FSDP cells once; return both runs tables and curves."""
    root = tmp_path_factory.mktemp("dist")
    out = {}
    for name, defaults, axes in [
        ("single", "batch_size = 4", ""),
        ("multi", "batch_size = 2\nworld_size = 2", 'parallelism = ["ddp", "fsdp"]'),
    ]:
        path = root / f"{name}.toml"
        path.write_text(SUITE.format(name=name, defaults=defaults, axes=axes, corpus=text_corpus))
        outcome = runner.run_suite(load_suite(path), root / name, progress=False)
        assert set(outcome.statuses.values()) == {"ok"}, (root / name)
        out[name] = (pd.read_csv(root / name / "runs.csv"), pd.read_csv(root / name / "curves.csv"))
        out[f"{name}_ranks"] = root / name / "ranks.csv"
    out["dirs"] = {"single": root / "single", "multi": root / "multi"}
    return out


@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
@pytest.mark.parametrize("optimizer", ["swan", "sinkgd"])
def test_two_ranks_equal_one_rank(results, optimizer, parallelism):
    single_runs, single_curves = results["single"]
    multi_runs, multi_curves = results["multi"]
    ref = single_runs.set_index("optimizer").loc[optimizer]
    multi = multi_runs
    row = multi[(multi["optimizer"] == optimizer) & (multi["parallelism"] == parallelism)].iloc[0]
    rel = REL_SWAN if optimizer == "swan" else REL
    assert row["final_eval_loss"] == pytest.approx(ref["final_eval_loss"], rel=rel)
    assert row["final_eval_loss_galore"] == pytest.approx(ref["final_eval_loss_galore"], rel=rel)
    want = single_curves[single_curves["run_id"] == ref["run_id"]]
    got = multi_curves[multi_curves["run_id"] == row["run_id"]]
    assert list(got["tokens"]) == list(want["tokens"]) == [0, 256, 512]  # global tokens: 2 ranks x 2 x 32
    for column in ("eval_loss", "train_loss"):
        assert got[column].tolist() == pytest.approx(want[column].tolist(), rel=rel, nan_ok=True)
    assert row["final_eval_loss"] < want["eval_loss"].iloc[0]  # it trained
    assert row["tokens_per_step"] == ref["tokens_per_step"] == 128 and row["tokens_seen"] == ref["tokens_seen"]
    variant = {"ddp": "DDP", "fsdp": "FSDP"}[parallelism] + {"swan": "SWAN", "sinkgd": "SinkGD"}[optimizer]
    assert f"optimizers.distributed.{variant}(" in row["optimizer_impl"]


def test_runs_table_has_one_row_per_run_and_ranks_table_one_per_rank(results):
    multi_runs, _ = results["multi"]
    assert not results["single_ranks"].exists()  # one rank: no per-rank table
    assert "rank" not in multi_runs.columns and not multi_runs["run_id"].duplicated().any()
    ranks = pd.read_csv(results["multi_ranks"])
    for run_id, rows in ranks.groupby("run_id"):
        rows = rows.assign(rank=rows["rank"].astype(str)).set_index("rank")
        assert sorted(rows.index) == ["0", "1"]
        top = multi_runs.set_index("run_id").loc[run_id]
        assert top["ranks_reported"] == 2 and (rows["world_size"] == 2).all()
        for column in ("peak_rss_bytes", "param_bytes", "step_ms", "forward_backward_ms", "comm_ms"):
            assert top[column] == rows[column].max(), column
        assert top["tokens_per_s"] == rows["tokens_per_s"].min()
        # the optimizers' collectives were timed on every rank (and are part of the optimizer step)
        assert (rows["comm_ms"] > 0).all() and (rows["comm_ms"] <= rows["optimizer_step_ms"]).all()
        assert (rows["peak_rss_bytes"] > 0).all()


def test_report_keeps_ddp_and_fsdp_apart(results):
    """A DDP run and an FSDP run of the same model are two cells, never one cell with "n 2/2" seed spread."""
    from swanbench.analysis.report import write_report

    text = write_report(results["dirs"]["multi"]).read_text()
    glance = text.split("### At a glance", 1)[1].split("###", 1)[0]
    rows = [line for line in glance.splitlines() if line.startswith("| nano")]
    assert len(rows) == 4  # (ddp, fsdp) x (swan, sinkgd)
    assert all("| 1/1 |" in line for line in rows) and {"ddp" in line for line in rows} == {True, False}


def test_per_rank_parameter_bytes_follow_the_sharding(results):
    """FSDP: each rank holds half the rows of every tensor (the estimator's per-rank number); DDP: all."""
    single = results["single"][0].set_index("optimizer")
    ranks = pd.read_csv(results["multi_ranks"])
    for (optimizer, parallelism), rows in ranks.groupby(["optimizer", "parallelism"]):
        full = single.loc[optimizer, "param_bytes"]
        if parallelism == "ddp":
            assert (rows["param_bytes"] == full).all()
            assert (rows["grad_bytes"] == full).all()
        else:
            expected = est.estimate("nano", optimizer, "float32", 2, 32, world_size=2, parallelism="fsdp")
            assert (rows["param_bytes"] == expected.param_bytes).all()
            assert rows["param_bytes"].sum() == full  # nano's row counts are even: no padding
            # AdamW's state on the rest (embeddings, head, norms) is sharded too
            assert (rows["optimizer_state_bytes"] < single.loc[optimizer, "optimizer_state_bytes"] * 0.6).all()


def test_check_judges_one_row_per_run(results):
    """`swanbench check` on a multi-rank results set compares one row per run (no duplicate-identity error)."""
    from typer.testing import CliRunner

    from swanbench.cli import app

    multi = results["dirs"]["multi"]
    result = CliRunner().invoke(app, ["check", str(multi), "--baseline", str(multi / "runs.csv")])
    assert result.exit_code == 0, result.output
    assert "same identity" not in result.output


def test_world_size_validation(write_suite, tiny_suite_text):
    for extra, expect in [
        ("world_size = 2", "parallelism"),
        ("world_size = 2\nparallelism = 'fsd'", "did you mean 'fsdp'"),
        ("world_size = 2\nparallelism = 'ddp'\ndevice = 'cuda:1'", "one GPU per rank"),
    ]:
        body = tiny_suite_text.replace("timeout_s = 120", f"timeout_s = 120\n{extra}").replace(
            'device = "cpu"\n', "" if "device" in extra else 'device = "cpu"\n')
        with pytest.raises(SuiteError, match=expect):
            load_suite(write_suite(body))
    # one rank ignores parallelism: world_size = [1, 2] x parallelism = [ddp, fsdp] is 3 cells, not 4
    body = tiny_suite_text.replace('optimizer = ["adamw"]',
                                   'optimizer = ["adamw"]\nworld_size = [1, 2]\nparallelism = ["ddp", "fsdp"]')
    suite = load_suite(write_suite(body))
    assert sorted((c.world_size, c.parallelism or "") for c in suite.cells) == [(1, ""), (2, "ddp"), (2, "fsdp")]
    assert {c.tokens_per_step for c in suite.cells} == {2 * 32, 2 * 2 * 32}


def test_combined_row_takes_the_worst_status_and_names_missing_ranks():
    rows = [{"rank": "0", "status": "ok", "step_ms": 5.0, "peak_rss_bytes": 10, "tokens_per_s": 100.0,
             "final_eval_loss": 3.0},
            {"rank": "1", "status": "oom", "step_ms": 7.0, "peak_rss_bytes": 30, "tokens_per_s": 80.0,
             "final_eval_loss": None, "error": "MemoryBudgetExceeded: ..."}]
    top = rundir.combined_row(rows, 3)
    assert top["status"] == "oom" and "rank" not in top and top["ranks_reported"] == 2
    assert (top["step_ms"], top["peak_rss_bytes"], top["tokens_per_s"]) == (7.0, 30, 80.0)
    assert top["final_eval_loss"] == 3.0  # rank 0's
    assert "rank 1: MemoryBudgetExceeded" in top["error"] and "1 of 3 ranks wrote no row" in top["error"]
    assert rundir.worst_status(["ok", "ok"]) == "ok" and rundir.worst_status(["ok", None]) == "crashed"


def test_worker_command_uses_torchrun_for_more_than_one_rank():
    assert worker_command(1)[-2:] == ["-m", "swanbench.run.worker"]
    cmd = worker_command(4)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert cmd[cmd.index("--nproc-per-node") + 1] == "4" and cmd[-2:] == ["-m", "swanbench.run.worker"]
