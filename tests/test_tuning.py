"""Tuning as part of a suite: the [tune] table's validation, selection and the edge rule, trials as ordinary
runs with resume, tuning.csv, the equal-budget rule of verdicts, the report's section and the figure.

Most tests run the trials with a fake worker (a script that follows the run-directory protocol and writes
a loss that depends on the lr as a known bowl), so the orchestration is checked exactly and in seconds; one
test runs the real worker on nano.
"""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from swanbench import runner, schema, tuning
from swanbench.suite import SuiteError, load_suite
from swanbench.suite.tune import Dimension, choose, grid_trials, score, trial_cell

BASE = """
name = "tuned"
[defaults]
model = "nano"
device = "cpu"
seq_len = 32
batch_size = 2
steps = 8
warmup_steps = 1
eval_every_tokens = 128
eval_tokens = 256
timeout_s = 120
[data]
source = "file"
path = "{corpus}"
vocab_size = 512
[matrix]
optimizer = ["adamw", "swan"]
seed = [0, 1, 2]
[tune]
seeds = [100]
tokens = 256
extensions = 2
[tune.space.adamw]
lr = [1e-3, 3e-3, 1e-2]
[tune.space.swan]
lr = [0.01, 0.03, 0.1]
"""


def _load(write_suite, body: str = BASE, **replace: str):
    for old, new in replace.items():
        assert old in body, old
        body = body.replace(old, new)
    return load_suite(write_suite(body))


# ---------------------------------------------------------------------------------------------- the table

def test_a_tune_table_loads_with_its_budget_and_grid(write_suite):
    suite = _load(write_suite, BASE.replace('lr = [0.01, 0.03, 0.1]', 'lr = {min = 0.01, max = 0.1, points = 3}'))
    spec = suite.tune
    assert spec.budget == 3 and spec.seeds == (100,) and spec.tokens == 256 and spec.extensions == 2
    assert spec.spaces["swan"][0].values == (0.01, 0.03162, 0.1) and spec.spaces["swan"][0].extendable
    trials = grid_trials(suite.cells, spec)
    assert len(trials) == 6 and {t.cell.steps for t in trials} == {4}  # 256 tokens / 64 per step
    cell = trial_cell(suite.cells[0], {"lr": 0.5}, 128)
    assert cell.steps == 2 and cell.eval_every_tokens == 128 and cell.hparams_dict() == {"lr": 0.5}
    assert cell.cell_id != suite.cells[0].cell_id


@pytest.mark.parametrize("old,new,key,words", [
    ('lr = [0.01, 0.03, 0.1]', 'lr = [0.01, 0.1]', "tune.space.swan", "the budget must be the same"),
    ("seeds = [100]", "seeds = [2, 100]", "tune.seeds", "disjoint from the evaluation seeds"),
    ("seeds = [100]", "seeds = []", "tune.seeds", "non-empty list"),
    ("[tune.space.swan]\nlr = [0.01, 0.03, 0.1]\n", "", "tune.space", "no search space for 'swan'"),
    ("[tune.space.swan]", "[tune.space.swam]", "tune.space.swam", "does not run in this suite; did you mean 'swan'"),
    ("lr = [0.01, 0.03, 0.1]", "alpha = [0.01, 0.03, 0.1]", "tune.space.swan", "no lr"),
    ("tokens = 256", "tokens = 100", "tune.tokens", "not a multiple of tokens_per_step 64"),
    ("tokens = 256", "tokens = 1024", "tune.tokens", "more than the evaluation's 512 tokens"),
    ("tokens = 256", "tokens = 64", "tune.tokens", "no timed step"),
    ("extensions = 2", "extensions = -1", "tune.extensions", "integer >= 0"),
    ("extensions = 2", "select = 'final_train_loss'", "tune.select", "unknown rule"),
    ("extensions = 2", "trials = 4", "tune.space.adamw", "tune.trials = 4"),
    ("extensions = 2", "extenssions = 2", "tune.extenssions", "did you mean 'extensions'"),
    ('lr = [0.01, 0.03, 0.1]', 'lr = {min = 0.1, max = 0.01, points = 3}', "tune.space.swan.lr", "0 < min < max"),
    ('lr = [0.01, 0.03, 0.1]', 'lr = {min = 0.01, max = 0.1, points = 1}', "tune.space.swan.lr.points", ">= 2"),
    ('lr = [0.01, 0.03, 0.1]', 'lr = [0.01, 0.01, 0.1]', "tune.space.swan.lr", "repeated values"),
    ('lr = [0.01, 0.03, 0.1]', 'lr = [0.01, "fast", 0.1]', "tune.space.swan.lr", "mixed values"),
    ("[tune]", "[optimizers.swan]\nlr = 0.02\n[tune]", "optimizers.swan.lr", "chosen by tuning, not set"),
    ('seed = [0, 1, 2]', 'seed = [0, 1, 2]\n"hparams.lr" = [0.1]', "matrix.hparams.lr", "not a matrix axis"),
])
def test_a_bad_tune_table_is_one_line_naming_the_key(write_suite, old, new, key, words):
    with pytest.raises(SuiteError) as err:
        _load(write_suite, **{old: new})
    message = str(err.value)
    assert "\n" not in message and f": {key}: " in message and words in message, message


def test_a_hyperparameter_the_optimizer_does_not_take_is_caught_before_anything_runs(write_suite):
    from swanbench.suite import check_tune_runtime

    suite = _load(write_suite, **{"[tune.space.adamw]\nlr = [1e-3, 3e-3, 1e-2]":
                                  "[tune.space.adamw]\nlr = [1e-3, 1e-2]\nalpha = [1]"},
                  **{'lr = [0.01, 0.03, 0.1]': 'lr = [0.01, 0.1]'})
    with pytest.raises(SuiteError, match=r": tune.space.adamw.alpha: unknown hyperparameter 'alpha'"):
        check_tune_runtime(suite)


def test_tune_is_only_for_train_suites(write_suite):
    body = 'kind = "kernels"\n[kernels]\noperators = ["grad_norm"]\n[tune]\nseeds = [1]\n'
    with pytest.raises(SuiteError, match=r": tune: not allowed in a kind = \"kernels\" suite"):
        load_suite(write_suite(body))


# ---------------------------------------------------------------------------------------------- the edge rule

LR = Dimension("lr", (1e-3, 1e-2, 1e-1), True)


def _scored(losses: dict[float, float], other: dict | None = None):
    return [({"lr": lr, **(other or {})}, loss) for lr, loss in losses.items()]


def test_an_interior_optimum_is_chosen_and_not_extended():
    choice = choose([LR], _scored({1e-3: 5.0, 1e-2: 4.0, 1e-1: 4.5}), used=0, allowed=2)
    assert choice.point == {"lr": 1e-2} and choice.score == 4.0 and choice.edges == [] and choice.extend == []


def test_an_optimum_at_an_edge_is_extended_one_grid_step_in_its_direction():
    up = choose([LR], _scored({1e-3: 5.0, 1e-2: 4.5, 1e-1: 4.0}), used=0, allowed=2)
    assert up.edges == ["lr"] and up.extend == [{"lr": 1.0}]
    down = choose([LR], _scored({1e-3: 3.0, 1e-2: 4.5, 1e-1: 5.0}), used=0, allowed=2)
    assert down.extend == [{"lr": 1e-4}]
    # the new point is judged with the others: a worse (or diverged) point beyond makes the optimum interior
    after = choose([LR], _scored({1e-3: 5.0, 1e-2: 4.5, 1e-1: 4.0, 1.0: math.inf}), used=1, allowed=2)
    assert after.point == {"lr": 1e-1} and after.edges == [] and after.extend == []


def test_when_the_allowance_is_spent_the_choice_stays_marked_at_its_edge():
    choice = choose([LR], _scored({1e-3: 5.0, 1e-2: 4.5, 1e-1: 4.0, 1.0: 3.9, 10.0: 3.8}), used=2, allowed=2)
    assert choice.point == {"lr": 10.0} and choice.edges == ["lr"] and choice.extend == []


def test_the_edge_rule_extends_only_the_hyperparameter_at_an_edge_holding_the_others():
    other = Dimension("adamw_lr", (0.01, 0.03, 0.09), True)
    scored = [({"lr": lr, "adamw_lr": a}, (math.log10(lr) + 1) ** 2 + (a - 0.03) ** 2 - (lr > 0.05) * 0.1)
              for lr in LR.values for a in other.values]
    choice = choose([LR, other], scored, used=0, allowed=2)
    assert choice.point == {"lr": 0.1, "adamw_lr": 0.03} and choice.edges == ["lr"]
    assert choice.extend == [{"lr": 1.0, "adamw_lr": 0.03}]


def test_fixed_choices_and_failed_settings():
    betas = Dimension("betas", ((0.9, 0.95), (0.9, 0.999)), False)
    choice = choose([LR, betas], [({"lr": 1e-2, "betas": b}, s) for b, s in zip(betas.values, (4.0, 3.0))]
                    + [({"lr": 1e-3, "betas": betas.values[0]}, 5.0)], used=0, allowed=2)
    assert choice.point["betas"] == (0.9, 0.999) and "betas" not in choice.edges  # no edge among choices
    assert choose([LR], _scored({1e-3: math.inf, 1e-2: math.inf}), 0, 2).point is None
    assert score([4.0, 5.0], ["ok", "ok"]) == 4.5
    assert score([4.0, None], ["ok", "diverged"]) == math.inf and score([4.0, math.nan], ["ok", "ok"]) == math.inf


# ---------------------------------------------------------------------------------------------- trials as runs

# The fake worker's loss: a bowl in log10(lr) around each optimizer's best lr; lr >= 1 diverges; an lr listed
# in CRASH makes the worker exit without a row (a crash).
FAKE_WORKER = """
import json, math, sys
from pathlib import Path
from swanbench import rundir
BEST = {best!r}
CRASH = {crash!r}
run_dir = Path(sys.argv[-1])
config = json.loads((run_dir / "config.json").read_text())
cell = config["cell"]
lr = cell["hparams"]["lr"]
if lr in CRASH:
    sys.exit(3)
identity = rundir.identity_row(config, None)
final = 3.0 + (math.log10(lr) - math.log10(BEST[cell["optimizer"]])) ** 2 + 0.01 * config["seed"] % 7
total = cell["steps"] * cell["batch_size"] * cell["seq_len"]
points = list(range(0, total + 1, cell["eval_every_tokens"]))
curve = [{{"step": t // (cell["batch_size"] * cell["seq_len"]), "tokens": t, "train_seconds": t / 1000,
          "eval_loss": final + (9.0 - final) * (1 - t / total) ** 2}} for t in points]
status = "diverged" if lr >= 1 else "ok"
rundir.write_curve(run_dir, identity, curve if status == "ok" else curve[:1])
rundir.write_row(run_dir, {{**identity, "status": status, "final_eval_loss": final if status == "ok" else None,
                            "optimizer_hparams": json.dumps(cell["hparams"])}})
"""


def _fake(tmp_path: Path, best: dict, crash: tuple = ()) -> list[str]:
    script = tmp_path / "fake_worker.py"
    script.write_text(textwrap.dedent(FAKE_WORKER.format(best=best, crash=list(crash))))
    return [sys.executable, str(script)]


def _tuning(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / schema.TUNING_FILE)


def test_tuning_runs_the_grid_extends_an_edge_chooses_and_resumes(write_suite, tmp_path):
    suite = _load(write_suite)
    out = tmp_path / "out"
    worker = _fake(tmp_path, {"adamw": 3e-3, "swan": 0.3})  # adamw's best inside its grid, swan's beyond
    tuned = tuning.tune(suite, out, worker_cmd=worker, progress=False)
    table = _tuning(out)
    grid = table[table["extension"] == 0]
    assert grid.groupby("optimizer").size().to_dict() == {"adamw": 3, "swan": 3}  # the same budget
    assert set(table["trial_seed"]) == {100} and (table["tokens"] == 256).all()
    adamw, swan = table[table["optimizer"] == "adamw"], table[table["optimizer"] == "swan"]
    assert len(adamw) == 3 and adamw.loc[adamw["chosen"], "lr"].tolist() == [3e-3]
    assert not adamw["at_edge"].any()
    # swan: 0.1 at the top edge -> 0.3333 (one step of the outermost ratio, 0.1 / 0.03) is best and at the edge
    # again -> 1.111, which diverges: 0.3333 is now inside what was tried
    assert swan["lr"].tolist() == [0.01, 0.03, 0.1, 0.3333, 1.111]
    assert swan["extension"].tolist() == [0, 0, 0, 1, 2]
    assert swan["status"].tolist()[-1] == "diverged"  # a diverged trial is data
    chosen = swan[swan["chosen"]]
    assert len(chosen) == 1 and chosen["extension"].iloc[0] == 1 and not chosen["at_edge"].iloc[0]
    assert (table["budget"] == 3).all() and (table["extensions_allowed"] == 2).all()
    assert {c.optimizer: c.hparams_dict()["lr"] for c in tuned.suite.cells} == \
        {"adamw": 3e-3, "swan": chosen["lr"].iloc[0]}
    assert tuned.suite.seeds == (0, 1, 2) and tuned.suite.tune is suite.tune and not tuned.left_out
    assert set(table["eval_cell_id"]) == {c.cell_id for c in tuned.suite.cells}
    assert len(tuned.executed) == 8 and (out / "tuning" / "runs.csv").is_file()
    assert len(pd.read_csv(out / "tuning" / "runs.csv")) == 8

    again = tuning.tune(suite, out, worker_cmd=worker, progress=False)  # resume: nothing to run
    assert again.executed == [] and [c.cell_id for c in again.suite.cells] == [c.cell_id for c in tuned.suite.cells]
    forced = tuning.tune(suite, out, worker_cmd=worker, progress=False, force=True)
    assert len(forced.executed) == 8 and len(_tuning(out)) == 8  # --force re-runs every trial, once


def test_a_choice_stuck_at_an_edge_is_marked_and_a_crashed_trial_leaves_its_optimizer_out(write_suite, tmp_path):
    suite = _load(write_suite, **{"extensions = 2": "extensions = 1"})
    out = tmp_path / "out"
    tuned = tuning.tune(suite, out, worker_cmd=_fake(tmp_path, {"adamw": 3e-3, "swan": 0.9}, crash=(1e-3,)),
                        progress=False)
    table = _tuning(out)
    swan = table[table["optimizer"] == "swan"]
    chosen = swan[swan["chosen"]]
    assert chosen["lr"].tolist() == [0.3333] and chosen["at_edge"].tolist() == [True]
    assert chosen["edges"].tolist() == ["lr"]
    assert "crashed" in set(table["status"])  # adamw's lr 1e-3 crashed: no choice, no evaluation
    assert [c.optimizer for c in tuned.suite.cells] == ["swan"]
    assert len(tuned.left_out) == 1 and "adamw" in tuned.left_out[0] and "run again" in tuned.left_out[0]
    assert not table[table["optimizer"] == "adamw"]["chosen"].any()


def _tuned_suite_results(write_suite, tmp_path, best: dict, body: str = BASE) -> Path:
    """Tune and evaluate with the fake worker, then publish: a complete result set."""
    from swanbench.analysis.publish import publish_suite

    suite = load_suite(write_suite(body))
    out = tmp_path / "out"
    worker = _fake(tmp_path, best)
    tuned = tuning.tune(suite, out, worker_cmd=worker, progress=False)
    runner.run_suite(tuned.suite, out, worker_cmd=worker, progress=False, publish=False)
    publish_suite(out, formats=("png",))
    return out


def test_verdicts_state_both_budgets_and_withhold_a_claim_at_an_edge(write_suite, tmp_path):
    body = BASE.replace("extensions = 2", "extensions = 0")
    out = _tuned_suite_results(write_suite, tmp_path, {"adamw": 3e-3, "swan": 0.3}, body)
    verdicts = pd.read_csv(out / schema.VERDICTS_FILE).set_index("optimizer")
    row = verdicts.loc["swan"]
    assert row["tuning_budget"] == row["baseline_tuning_budget"] == "3 grid trials + 0 of 0 extension(s), 256 tokens each"
    assert bool(row["tuning_at_edge"]) and not bool(row["baseline_tuning_at_edge"])
    assert row["fairness"] == "swan's chosen lr at the edge of its grid" and not bool(row["fair_protocol"])
    assert row["sooner_verdict"].startswith("not judged: swan's chosen lr at the edge of its grid (the rule alone: ")
    assert row["final_loss_verdict"].startswith("not judged")
    report = (out / "report.md").read_text()
    assert "## How each optimizer was tuned (tuning.csv)" in report
    assert "| swan | nano | lr in [0.01, 0.03, 0.1] | 3 (3 ok) | 0 of 0 | lr = 0.1 |" in report
    assert "yes: lr" in report and (out / "figures" / "tuning.png").is_file()


def test_a_fair_verdict_stands_and_says_so(write_suite, tmp_path):
    out = _tuned_suite_results(write_suite, tmp_path, {"adamw": 3e-3, "swan": 0.03})
    row = pd.read_csv(out / schema.VERDICTS_FILE).set_index("optimizer").loc["swan"]
    assert bool(row["fair_protocol"]) and row["fairness"].startswith("equal budgets (3 grid trials")
    assert row["sooner_verdict"] == row["sooner_rule_outcome"] and not row["sooner_verdict"].startswith("not judged")


def test_unequal_budgets_are_not_judged(tmp_path):
    """One side tuned, the other set by hand: the verdict names both budgets and claims nothing."""
    from swanbench.analysis.quality import analyze

    runs, curves = [], []
    for opt, final, cell in (("adamw", 4.0, "c-adamw"), ("swan", 3.0, "c-swan")):
        for seed in (0, 1, 2):
            run_id = f"{cell}-s{seed}"
            runs.append({"suite": "s", "run_id": run_id, "cell_id": cell, "optimizer": opt, "model": "nano",
                         "device": "cpu", "dtype": "float32", "seed": seed, "status": "ok",
                         "final_eval_loss": final + 0.01 * seed})
            curves += [{"run_id": run_id, "tokens": t, "step": t, "train_seconds": t,
                        "eval_loss": final + 0.01 * seed + (6 - final) * (1 - t / 100)} for t in (0, 50, 100)]
    tuning_rows = [{"optimizer": "swan", "trial_seed": 100, "tokens": 50, "final_eval_loss": 3.0 + lr, "status": "ok",
                    "chosen": lr == 0.02, "at_edge": False, "edges": None, "model": "nano", "group_id": "g",
                    "run_id": f"t{lr}", "extension": 0, "budget": 3, "extensions_allowed": 2,
                    "eval_cell_id": "c-swan", "tuned": "lr", "lr": lr} for lr in (0.01, 0.02, 0.04)]
    result = analyze(pd.DataFrame(runs), pd.DataFrame(curves), "adamw", tuning=pd.DataFrame(tuning_rows))
    row = result["verdicts"].set_index("optimizer").loc["swan"]
    assert row["sooner_rule_outcome"] == "sooner" and row["final_loss_rule_outcome"] == "swan better"
    assert row["tuning_budget"] == "3 grid trials + 0 of 2 extension(s), 50 tokens each"
    assert row["baseline_tuning_budget"] == "untuned (hyperparameters set by hand)"
    assert row["sooner_verdict"].startswith("not judged: unequal tuning budgets (swan: 3 grid trials")
    untuned = analyze(pd.DataFrame(runs), pd.DataFrame(curves), "adamw")["verdicts"].set_index("optimizer")
    assert untuned.loc["swan", "sooner_verdict"] == "sooner"  # no tuning on either side: the rule's verdict
    assert untuned.loc["swan", "fairness"] == "no tuning on either side: hyperparameters set by hand"


def test_every_candidate_is_also_judged_against_adamw_split(write_suite, tmp_path):
    body = BASE.replace('optimizer = ["adamw", "swan"]', 'optimizer = ["adamw", "adamw-split", "swan"]').replace(
        "[tune.space.swan]", "[tune.space.adamw-split]\nlr = [1e-3, 3e-3, 1e-2]\n[tune.space.swan]")
    out = _tuned_suite_results(write_suite, tmp_path, {"adamw": 3e-3, "adamw-split": 3e-3, "swan": 0.03}, body)
    verdicts = pd.read_csv(out / schema.VERDICTS_FILE)
    pairs = set(zip(verdicts["optimizer"], verdicts["baseline"]))
    assert pairs == {("adamw-split", "adamw"), ("swan", "adamw"), ("swan", "adamw-split")}
    against_split = verdicts[(verdicts["optimizer"] == "swan") & (verdicts["baseline"] == "adamw-split")].iloc[0]
    assert math.isfinite(against_split["gmean_speedup"]) and math.isfinite(against_split["speedup_ci_low"])
    assert bool(against_split["fair_protocol"])


def test_the_dry_run_lists_trials_and_evaluation_runs_with_their_tokens(write_suite, tmp_path):
    from rich.console import Console

    suite = _load(write_suite)
    trials, runs, summary = tuning.plan_tables(suite, tmp_path / "never")
    console = Console(record=True, width=400)
    for part in (trials, runs, summary):
        console.print(part)
    text = console.export_text()
    assert text.count("to run") >= 6 + 6 and "(after tuning)" in text and "tuned: lr" in text
    assert "6 tuning trials so far (2 group(s) x 3 grid trials; up to 2 more setting(s) per group" in text
    assert "256 training tokens each; then 6 evaluation runs (2 cells x 3 seeds), 512 training tokens each" in text


def test_real_workers_tune_then_evaluate(write_suite, tmp_path):
    """The real worker runs trial cells (their own steps and evals) and the chosen cell, on nano."""
    body = (BASE.replace('optimizer = ["adamw", "swan"]', 'optimizer = ["adamw"]').replace("seed = [0, 1, 2]", "seed = [0]")
            .replace("[tune.space.swan]\nlr = [0.01, 0.03, 0.1]\n", "").replace("lr = [1e-3, 3e-3, 1e-2]", "lr = [1e-3, 1e-2]")
            .replace("extensions = 2", "extensions = 0").replace("tokens = 256", "tokens = 128"))
    suite = load_suite(write_suite(body))
    out = tmp_path / "out"
    tuned = tuning.tune(suite, out, progress=False)
    table = _tuning(out)
    assert list(table["status"]) == ["ok", "ok"] and table["final_eval_loss"].notna().all()
    trial_curve = pd.read_csv(out / "tuning" / "runs" / table["run_id"].iloc[0] / "curves.csv")
    assert list(trial_curve["tokens"]) == [0, 128]  # evals at 0 and at the end of the 2-step trial
    best = table.loc[table["final_eval_loss"].idxmin(), "lr"]
    assert table.loc[table["chosen"], "lr"].tolist() == [best]
    outcome = runner.run_suite(tuned.suite, out, progress=False, publish=False)
    assert list(outcome.statuses.values()) == ["ok"]
    row = pd.read_csv(out / "runs.csv").iloc[0]
    assert abs(float(row["lr"]) - best) < 1e-12 and row["cell_id"] == table["eval_cell_id"].iloc[0]


# ---------------------------------------------------------------------------------------------- shipped suites

def test_the_fair_showcase_is_fair_by_construction():
    from swanbench.models import PRESETS

    suite = load_suite("fair-token-efficiency")
    spec = suite.tune
    assert {c.optimizer for c in suite.cells} == {"adamw", "adamw-split", "swan", "sinkgd", "muon-nomomentum"}
    assert suite.seeds == (0, 1, 2) and not set(spec.seeds) & set(suite.seeds)
    assert spec.budget == 9 and spec.extensions == 4
    cell = suite.cells[0]
    assert spec.tokens == 81_920 and cell.steps * cell.tokens_per_step == 204_800
    rest = {name: next(d.values for d in dims if d.name == "adamw_lr") for name, dims in spec.spaces.items()
            if name != "adamw"}
    assert len(set(rest.values())) == 1  # the four hybrid-like optimizers search the same rest-lr grid
    preset = PRESETS[cell.model]
    hidden = sum(m * n for m, n in preset.hidden_matrix_shapes())
    assert preset.param_count() == 3_058_304 and round(hidden / preset.param_count(), 3) == 0.656
    smoke = load_suite("fair-smoke")
    assert {c.optimizer for c in smoke.cells} == {c.optimizer for c in suite.cells} and smoke.tune.budget == 2


def test_paper_60m_dry_run_lists_trials_and_runs_without_gpu_or_network(tmp_path):
    from typer.testing import CliRunner

    from swanbench.cli import app

    result = CliRunner().invoke(app, ["run", "paper-60m", "--out", str(tmp_path / "p"), "--dry-run"],
                                env={"COLUMNS": "400", "HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 0, result.output
    assert "45 tuning trials so far (5 group(s) x 9 grid trials; up to 2 more setting(s) per group" in result.output
    assert "262,144,000 training tokens each; then 15 evaluation runs (5 cells x 3 seeds), 1,310,720,000" in result.output
    assert not (tmp_path / "p").exists()


def test_the_report_section_shows_fixed_choices_and_extensions(tmp_path):
    from swanbench.analysis.tuning import tuning_by_cell, tuning_section

    rows = [{"optimizer": "adamw", "trial_seed": 100, "tokens": 64, "final_eval_loss": loss, "status": status,
             "chosen": chosen, "at_edge": False, "edges": None, "model": "nano", "group_id": "g", "run_id": f"r{i}",
             "extension": ext, "budget": 2, "extensions_allowed": 1, "eval_cell_id": "e", "tuned": "lr,betas",
             "lr": lr, "betas": betas}
            for i, (lr, betas, loss, status, chosen, ext) in enumerate([
                (1e-3, "[0.9, 0.95]", 5.0, "ok", False, 0), (1e-3, "[0.9, 0.999]", 4.0, "ok", True, 0),
                (1e-2, "[0.9, 0.95]", None, "diverged", False, 0), (1e-4, "[0.9, 0.999]", 4.5, "ok", False, 1)])]
    pd.DataFrame(rows).to_csv(tmp_path / "tuning.csv", index=False)
    text = "\n".join(tuning_section(tmp_path))
    assert "lr in [0.001, 0.01], extended to 0.0001; betas in [[0.9, 0.95], [0.9, 0.999]]" in text
    assert "| 4 (3 ok, 1 diverged) | 1 of 1 | lr = 0.001, betas = [0.9, 0.999] | 4.0000 | no |" in text
    info = tuning_by_cell(pd.read_csv(tmp_path / "tuning.csv"))["e"]
    assert info.chosen == (("lr", 1e-3), ("betas", (0.9, 0.999))) and info.used == 1 and info.trials == 4
