"""The quality track: lr schedule, tokens-to-target, seed summaries, the few-seed decision rules."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from swanbench.analysis import quality
from swanbench.analysis.quality import (
    annotate_tokens_to_target, compare, decide, mean_interval, seed_summary, speedup_verdict,
    t_quantile, tokens_to_target,
)
from swanbench.schedule import lr_factor, lr_lambda, warmup_steps_for


# ----------------------------------------------------------------------------- schedule

def test_schedule_matches_galore_shape():
    total = 10_000  # the 60m protocol: 1000 warm-up steps, cosine to 10%
    assert warmup_steps_for(total, 0.1) == 1000
    assert lr_factor(0, total) == 0.0  # the reference's LambdaLR applies factor(0) to the first update
    assert lr_factor(500, total) == pytest.approx(0.5)
    assert lr_factor(1000, total) == pytest.approx(1.0)
    assert lr_factor(1000 + 4500, total) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert lr_factor(total, total) == pytest.approx(0.1)
    assert lr_factor(total + 50, total) == pytest.approx(0.1)  # past the plan: stays at the floor


def test_schedule_is_monotone_in_each_phase_and_bounded():
    total, warm = 300, warmup_steps_for(300, 0.1)
    values = [lr_factor(s, total) for s in range(total)]
    assert all(b > a for a, b in zip(values[:warm], values[1:warm + 1]))
    assert all(b <= a for a, b in zip(values[warm:], values[warm + 1:]))
    assert min(values[warm:]) > 0.1 and max(values) == pytest.approx(1.0)


def test_schedule_without_warmup_and_custom_floor():
    assert lr_factor(0, 100, warmup_frac=0.0) == pytest.approx(1.0)
    assert lr_factor(100, 100, warmup_frac=0.0, min_ratio=0.0) == pytest.approx(0.0)
    # A warm-up shorter than one step (0.1 * 5 = 0.5) rounds down to none.
    assert lr_factor(0, 5) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs", [
    dict(step=-1, total_steps=10), dict(step=0, total_steps=0), dict(step=0, total_steps=10, warmup_frac=1.0),
    dict(step=0, total_steps=10, min_ratio=1.5), dict(step=1.5, total_steps=10),
])
def test_schedule_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        lr_factor(**kwargs)


def test_lr_lambda_drives_torch_lambdalr():
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([param], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(20))
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.0 * lr_factor(s, 20) for s in range(20)])
    with pytest.raises(ValueError):
        lr_lambda(0)


# ----------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622),
                                         (30, 2.0423)])
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.95, df) == pytest.approx(expected, abs=1e-4)


def test_t_quantile_other_levels():
    assert t_quantile(0.90, 2) == pytest.approx(2.9200, abs=1e-4)
    assert t_quantile(0.99, 5) == pytest.approx(4.0321, abs=1e-4)


def test_mean_interval_t_and_bootstrap():
    low, high = mean_interval([1.0, 2.0, 3.0])
    assert (low, high) == pytest.approx((2 - 4.3027 / math.sqrt(3), 2 + 4.3027 / math.sqrt(3)), abs=1e-4)
    assert mean_interval([1.0]) == (None, None)
    assert mean_interval([1.0, float("nan")]) == (None, None)  # one finite value: no spread
    x = np.random.default_rng(0).normal(5.0, 1.0, size=40)
    b_low, b_high = mean_interval(x, method="bootstrap", n_boot=4000)
    t_low, t_high = mean_interval(x)
    assert b_low < x.mean() < b_high
    assert b_low == pytest.approx(t_low, abs=0.15) and b_high == pytest.approx(t_high, abs=0.15)
    with pytest.raises(ValueError):
        mean_interval(x, method="jackknife")


# ----------------------------------------------------------------------------- tokens to target

def _curve(losses, tokens_per_eval=1000, seconds_per_eval=2.0, run_id="r"):
    n = len(losses)
    return pd.DataFrame({
        "run_id": [run_id] * n, "step": [10 * (i + 1) for i in range(n)],
        "tokens": [tokens_per_eval * (i + 1) for i in range(n)],
        "train_seconds": [seconds_per_eval * (i + 1) for i in range(n)], "eval_loss": losses,
    })


def test_tokens_to_target_interpolates_first_crossing():
    curve = _curve([5.0, 4.0, 3.0, 2.0])
    hit = tokens_to_target(curve, 3.5)
    assert hit == pytest.approx((2500.0, 25.0, 5.0))
    tokens, steps, seconds = hit  # a plain tuple for callers that unpack
    assert tokens == pytest.approx(2500.0)


def test_tokens_to_target_first_crossing_not_later_ones():
    # Dips below 3.5 at 2000 tokens, rises, dips again: the first crossing counts.
    hit = tokens_to_target(_curve([5.0, 3.0, 4.0, 2.0]), 3.5)
    assert hit.tokens == pytest.approx(1000 + 1000 * (5.0 - 3.5) / (5.0 - 3.0))


# Non-linear curves (on a straight line the right pair of eval points and a wrong one give the same
# number): (losses at 1,000-token intervals, target) -> tokens, worked out by hand.
GOLDEN_CURVES = [
    ([5.0, 4.0, 3.2, 3.0], 3.1, 3500.0),              # between 3.2 (3k) and 3.0 (4k), halfway
    ([5.0, 3.0, 2.5, 2.25], 2.6, 2800.0),             # between 3.0 (2k) and 2.5 (3k): 0.4 of the 0.5 drop
    ([6.0, 3.5, 3.4, 3.0], 3.45, 2500.0),             # a plateau: between 3.5 (2k) and 3.4 (3k)
    ([8.0, 5.0, 4.5, 4.4, 4.0], 4.2, 4500.0),         # late: between 4.4 (4k) and 4.0 (5k)
    ([4.0, 3.9, 3.0, 2.9], 3.8, 2000.0 + 1000.0 / 9),  # a cliff: between 3.9 (2k) and 3.0 (3k), 0.1 of 0.9
]


@pytest.mark.parametrize("losses, target, tokens", GOLDEN_CURVES)
def test_tokens_to_target_on_non_linear_curves(losses, target, tokens):
    hit = tokens_to_target(_curve(losses), target)
    assert hit.tokens == pytest.approx(tokens, rel=1e-12)
    assert hit.steps == pytest.approx(tokens / 100, rel=1e-12)  # 10 steps per 1,000 tokens
    assert hit.seconds == pytest.approx(tokens / 500, rel=1e-12)  # 2 s per 1,000 tokens


def test_annotate_on_non_linear_curves():
    """AdamW ends at 3.1 after 4,000 tokens; SWAN crosses 3.1 between 3.2 (3k) and 3.0 (4k): 3,500 tokens,
    4,000 / 3,500 = 1.142857x; SinkGD between 3.15 (2k) and 3.05 (3k): 2,500 tokens, 1.6x."""
    runs, curves = _suite({("adamw", 0): [5.0, 4.0, 3.2, 3.1], ("swan", 0): [5.0, 3.6, 3.2, 3.0],
                           ("sinkgd", 0): [4.5, 3.15, 3.05, 2.9]})
    out = annotate_tokens_to_target(runs, curves).set_index("run_id")
    assert out.loc["swan-s0", "tokens_to_target"] == pytest.approx(3500.0, rel=1e-12)
    assert out.loc["swan-s0", "effective_speedup"] == pytest.approx(8 / 7, rel=1e-12)
    assert out.loc["sinkgd-s0", "tokens_to_target"] == pytest.approx(2500.0, rel=1e-12)
    assert out.loc["sinkgd-s0", "effective_speedup"] == pytest.approx(1.6, rel=1e-12)
    assert out.loc["adamw-s0", "tokens_to_target"] == pytest.approx(4000.0, rel=1e-12)


def test_tokens_to_target_edge_cases():
    curve = _curve([5.0, 4.0, 3.0])
    assert tokens_to_target(curve, 2.0) is None  # never reached: no value, not a big number
    assert tokens_to_target(curve, 6.0) == pytest.approx((1000.0, 10.0, 2.0))  # already there at first eval
    assert tokens_to_target(curve, 3.0).tokens == pytest.approx(3000.0)  # exact hit on an eval point
    assert tokens_to_target(curve, float("nan")) is None
    assert tokens_to_target(curve.iloc[:0], 4.0) is None


def test_tokens_to_target_ignores_non_eval_rows_and_order():
    curve = _curve([5.0, float("nan"), 3.0])  # a train-only log row between eval points
    hit = tokens_to_target(curve.iloc[::-1], 4.0)  # unsorted input
    assert hit.tokens == pytest.approx(1000 + 2000 * 0.5)
    no_seconds = curve.drop(columns=["train_seconds"])
    assert tokens_to_target(no_seconds, 4.0).seconds is None


def test_tokens_to_target_tolerates_csv_round_trip_of_the_final_loss(tmp_path):
    curve = _curve([5.0, 4.123456789012345, 3.3333333333333335])
    path = tmp_path / "c.csv"
    curve.to_csv(path, index=False)
    again = pd.read_csv(path)
    assert tokens_to_target(again, float(curve["eval_loss"].iloc[-1])).tokens == pytest.approx(3000.0)


# ----------------------------------------------------------------------------- annotation

def _suite(spec, status=None):
    """runs + curves from {(optimizer, seed): losses}; one eval every 1000 tokens."""
    runs, curves = [], []
    for (opt, seed), losses in spec.items():
        run_id = f"{opt}-s{seed}"
        runs.append({"suite": "t", "run_id": run_id, "optimizer": opt, "model": "nano", "dtype": "float32",
                     "seed": seed, "status": (status or {}).get((opt, seed), "ok"),
                     "final_eval_loss": losses[-1] if losses else None})
        if losses:
            curves.append(_curve(losses, run_id=run_id))
    return pd.DataFrame(runs), pd.concat(curves, ignore_index=True)


def test_annotate_uses_same_seed_baseline_and_speedup():
    runs, curves = _suite({
        ("adamw", 0): [5.0, 4.0, 3.0, 2.0], ("adamw", 1): [5.0, 4.0, 3.0, 2.5],
        ("swan", 0): [4.0, 2.0, 1.5, 1.0], ("swan", 1): [5.0, 4.5, 4.0, 3.0],
    })
    out = annotate_tokens_to_target(runs, curves).set_index("run_id")
    assert out.loc["swan-s0", "target_eval_loss"] == 2.0 and out.loc["swan-s1", "target_eval_loss"] == 2.5
    assert out.loc["swan-s0", "target_run_id"] == "adamw-s0"
    assert out.loc["swan-s0", "tokens_to_target"] == pytest.approx(2000.0)
    assert out.loc["swan-s0", "effective_speedup"] == pytest.approx(4000 / 2000)
    assert out.loc["swan-s0", "seconds_to_target"] == pytest.approx(4.0)
    assert out.loc["swan-s0", "steps_to_target"] == pytest.approx(20.0)
    assert math.isnan(out.loc["swan-s1", "tokens_to_target"])  # never reached 2.5
    assert math.isnan(out.loc["swan-s1", "effective_speedup"])
    assert out.loc["adamw-s0", "effective_speedup"] == pytest.approx(1.0)  # the baseline against itself
    assert out.loc["adamw-s0", "baseline_tokens"] == pytest.approx(4000.0)
    assert set(quality.ANNOTATION_COLUMNS) <= set(out.columns)
    assert "target_eval_loss" not in runs.columns  # the input is left alone


def test_annotate_is_safe_on_failed_runs_and_missing_baseline():
    runs, curves = _suite({("adamw", 0): [5.0, 4.0], ("swan", 0): [4.0, 3.0], ("swan", 1): [4.0, 3.0],
                           ("sinkgd", 0): []}, status={("adamw", 0): "diverged", ("sinkgd", 0): "oom"})
    out = annotate_tokens_to_target(runs, curves)
    assert out[["target_eval_loss", "tokens_to_target", "effective_speedup"]].isna().all().all()
    # Empty inputs and tables without the needed columns: empty values, never an exception.
    assert annotate_tokens_to_target(runs.iloc[:0], curves).empty
    assert annotate_tokens_to_target(runs, pd.DataFrame())["tokens_to_target"].isna().all()
    assert annotate_tokens_to_target(runs.drop(columns=["optimizer"]), curves)["tokens_to_target"].isna().all()
    assert annotate_tokens_to_target(runs.drop(columns=["final_eval_loss"]), curves)["tokens_to_target"].isna().all()


def test_annotate_best_baseline_sets_target_and_fixed_target():
    runs, curves = _suite({("adamw", 0): [5.0, 4.0, 3.0], ("swan", 0): [4.0, 3.0, 2.0]})
    second = runs.iloc[[0]].assign(run_id="adamw-lr2", final_eval_loss=2.5)
    curves2 = pd.concat([curves, _curve([4.5, 3.5, 2.5], run_id="adamw-lr2")], ignore_index=True)
    out = annotate_tokens_to_target(pd.concat([runs, second], ignore_index=True), curves2).set_index("run_id")
    assert out.loc["swan-s0", "target_run_id"] == "adamw-lr2"  # the better baseline is the harder bar
    assert out.loc["swan-s0", "tokens_to_target"] == pytest.approx(2500.0)
    fixed = annotate_tokens_to_target(runs, curves, target=3.5).set_index("run_id")
    assert fixed.loc["swan-s0", "tokens_to_target"] == pytest.approx(1500.0)
    assert fixed.loc["adamw-s0", "tokens_to_target"] == pytest.approx(2500.0)


def test_annotate_galore_loss_variant():
    runs, curves = _suite({("adamw", 0): [5.0, 4.0, 3.0], ("swan", 0): [4.0, 3.0, 2.0]})
    runs["final_eval_loss_galore"] = runs["final_eval_loss"] - 0.5
    curves["eval_loss_galore"] = curves["eval_loss"] - 0.5
    out = annotate_tokens_to_target(runs, curves, loss="eval_loss_galore").set_index("run_id")
    assert out.loc["swan-s0", "target_eval_loss"] == pytest.approx(2.5)
    assert out.loc["swan-s0", "tokens_to_target"] == pytest.approx(2000.0)


# ----------------------------------------------------------------------------- summaries and verdicts

def test_seed_summary_columns_and_values():
    runs = pd.DataFrame({"suite": "t", "model": "nano", "optimizer": ["a"] * 3 + ["b"] * 2,
                         "seed": [0, 1, 2, 0, 1], "final_eval_loss": [1.0, 2.0, 3.0, 4.0, None]})
    s = seed_summary(runs, "final_eval_loss").set_index("optimizer")
    assert s.loc["a", "n"] == 3 and s.loc["a", "mean"] == pytest.approx(2.0)
    assert s.loc["a", "std"] == pytest.approx(1.0) and s.loc["a", "sem"] == pytest.approx(1 / math.sqrt(3))
    assert s.loc["a", "ci_high"] - s.loc["a", "mean"] == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    assert s.loc["a", "interval"] == "t" and s.loc["a", "gmean"] == pytest.approx(6 ** (1 / 3))
    assert s.loc["b", "n"] == 1 and s.loc["b", "n_missing"] == 1 and s.loc["b", "n_runs"] == 2
    assert pd.isna(s.loc["b", "std"]) and pd.isna(s.loc["b", "ci_low"])  # one value: no spread, not zero
    both = seed_summary(runs, ["final_eval_loss", "seed"])
    assert len(both) == 4 and set(both["metric"]) == {"final_eval_loss", "seed"}


def test_decide_rule():
    assert decide([0.5, 0.6, 0.55])["verdict"] == "a"  # unanimous and tight
    assert decide([-0.5, -0.6, -0.55])["verdict"] == "b"
    assert decide([0.5, 0.6, -0.01])["verdict"] == "inconclusive"  # not unanimous
    assert decide([0.01, 1.0, 0.02])["verdict"] == "inconclusive"  # unanimous but the interval spans 0
    assert decide([0.5])["verdict"] == "inconclusive"  # one seed decides nothing
    assert decide([math.inf, math.inf, 0.3])["verdict"] == "a"  # B never got there in two seeds
    assert decide([math.inf, math.nan, 0.3])["verdict"] == "inconclusive"  # no information in one seed
    d = decide([1.0, 2.0, 3.0])
    assert d["n_pairs"] == 3 and d["a_wins"] == 3 and d["mean_advantage"] == pytest.approx(2.0)


def test_compare_paired_by_seed():
    runs = pd.DataFrame({"suite": "t", "model": "nano", "optimizer": ["swan"] * 3 + ["adamw"] * 3,
                         "seed": [0, 1, 2] * 2, "final_eval_loss": [3.0, 3.1, 2.9, 3.5, 3.62, 3.38]})
    row = compare(runs, "swan", "adamw", "final_eval_loss").iloc[0]
    assert row["verdict"] == "swan better" and row["a_wins"] == 3
    assert row["mean_diff"] == pytest.approx(-0.5) and row["ci_high"] < 0 < row["n_pairs"]
    assert compare(runs, "adamw", "swan", "final_eval_loss").iloc[0]["verdict"] == "swan better"
    # Higher-is-better metric: the larger tokens/s wins.
    higher = compare(runs, "adamw", "swan", "final_eval_loss", lower_is_better=False).iloc[0]
    assert higher["verdict"] == "adamw better" and higher["mean_diff"] == pytest.approx(0.5)


def test_compare_inconclusive_and_missing_and_duplicates():
    runs = pd.DataFrame({"suite": "t", "optimizer": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2,
                         "tokens_to_target": [1000.0, 2000.0, None, 1500.0, 1900.0, 3000.0]})
    row = compare(runs, "a", "b", "tokens_to_target").iloc[0]
    assert row["verdict"] == "inconclusive" and row["a_wins"] == 1 and row["b_wins"] == 2
    assert row["n_pairs"] == 3
    dup = pd.concat([runs, runs.iloc[[0]]], ignore_index=True)
    with pytest.raises(ValueError, match="add the column"):
        compare(dup, "a", "b", "tokens_to_target")


def test_speedup_verdict_and_analyze(tmp_path):
    spec = {}
    for seed, shift in enumerate([0.0, 0.05, -0.05]):
        spec[("adamw", seed)] = [5.0 + shift, 4.0 + shift, 3.0 + shift, 2.0 + shift]
        spec[("swan", seed)] = [4.0 + shift, 2.0 + shift, 1.8 + shift, 1.5 + shift]  # ~2x sooner
        spec[("sinkgd", seed)] = [5.0 + shift, 4.5 + shift, 4.0 + shift, 3.9 + shift]  # never gets there
    runs, curves = _suite(spec)
    annotated = annotate_tokens_to_target(runs, curves)
    swan = speedup_verdict(annotated, "swan").iloc[0]
    assert swan["verdict"] == "sooner" and swan["n_faster"] == 3
    assert swan["gmean_speedup"] == pytest.approx(2.0, rel=0.05) and swan["ci_low"] > 1
    sink = speedup_verdict(annotated, "sinkgd").iloc[0]
    assert sink["verdict"] == "later" and sink["n_reached"] == 0

    result = quality.analyze(runs, curves)
    verdicts = result["verdicts"].set_index("optimizer")
    assert verdicts.loc["swan", "final_loss_verdict"] == "swan better"
    assert verdicts.loc["sinkgd", "final_loss_verdict"] == "adamw better"
    assert verdicts.loc["swan", "sooner_verdict"] == "sooner"
    summary = result["summary"]
    assert {"final_eval_loss", "tokens_to_target", "effective_speedup"} <= set(summary["metric"])

    runs.to_csv(tmp_path / "runs.csv", index=False)
    curves.to_csv(tmp_path / "curves.csv", index=False)
    from swanbench.analysis.publish import write_analysis

    written = write_analysis(tmp_path)
    again = pd.read_csv(written["summary"])
    assert len(again) == len(summary)
    assert set(pd.read_csv(written["verdicts"])["sooner_verdict"]) == {"sooner", "later"}


def test_analyze_keeps_an_lr_sweep_apart_and_uses_the_best_baseline():
    spec = {}
    for seed, shift in enumerate([0.0, 0.05, -0.05]):
        spec[("adamw", seed)] = [5.0 + shift, 4.0 + shift, 3.0 + shift, 2.0 + shift]
        spec[("swan", seed)] = [4.0 + shift, 2.0 + shift, 1.8 + shift, 1.5 + shift]
    runs, curves = _suite(spec)
    runs["optimizer_hparams"] = '{"lr": 0.02}'
    slow = runs[runs["optimizer"] == "adamw"].assign(optimizer_hparams='{"lr": 0.001}', final_eval_loss=4.0)
    slow["run_id"] = slow["run_id"] + "-slow"
    slow_curves = pd.concat([_curve([6.0, 5.0, 4.5, 4.0], run_id=r) for r in slow["run_id"]], ignore_index=True)
    result = quality.analyze(pd.concat([runs, slow], ignore_index=True),
                             pd.concat([curves, slow_curves], ignore_index=True))
    assert set(result["runs"]["config"]) == {"adamw lr=0.02", "adamw lr=0.001", "swan"}
    assert set(result["summary"]["config"]) == {"adamw lr=0.02", "adamw lr=0.001", "swan"}
    row = result["verdicts"].set_index("optimizer").loc["swan"]
    assert row["baseline"] == "adamw lr=0.02"  # the better AdamW setting is the bar
    assert row["final_loss_verdict"] == "swan better" and row["sooner_verdict"] == "sooner"
    assert quality.config_labels(runs.drop(columns=["optimizer_hparams"])).tolist() == runs["optimizer"].tolist()


def test_a_suite_of_the_baseline_alone_publishes_without_verdicts(write_suite, tiny_suite_text, tmp_path):
    """Only the baseline ran: there is nothing to decide, so no verdicts.csv; the report is still written."""
    from swanbench import runner
    from swanbench.suite import load_suite

    out = tmp_path / "out"
    outcome = runner.run_suite(load_suite(write_suite(tiny_suite_text)), out, progress=False)
    assert set(outcome.statuses.values()) == {"ok"}
    assert not (out / "verdicts.csv").exists()
    text = (out / "report.md").read_text()
    assert "## Runs" in text and "## Verdicts" not in text
