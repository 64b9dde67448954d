"""The markdown report: seeds counted, Diff % against the baseline, failures and missing cells named."""

from __future__ import annotations

import json
import math
from collections import Counter

import pandas as pd
import pytest

from swanbench.analysis.report import Summary, diff_percent, summarise, write_report
from swanbench.analysis.results import load_results, optimizer_order
from test_plots import write_synthetic  # the synthetic results directory both test files draw from


def _table(text: str, title: str) -> list[list[str]]:
    """The rows of the markdown table under the `### title` heading, as lists of cells."""
    section = text.split(f"### {title}", 1)[1].split("\n### ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]


def _row(rows: list[list[str]], model: str, optimizer: str) -> list[str]:
    return next(r for r in rows if r[0] == model and r[2] == optimizer)


def test_summary_mean_and_sample_spread():
    s = Summary(("nano", "cpu"), "swan", Counter(ok=3), [1.0, 2.0, 6.0])
    assert (s.n, s.mean) == (3, 3.0)
    assert s.spread == pytest.approx(math.sqrt(7.0))  # ddof=1: ((4 + 1 + 9) / 2) ** 0.5
    assert math.isnan(Summary((), "swan", Counter(ok=1), [5.0]).spread)


def test_diff_percent_handles_missing_and_zero_baseline():
    assert diff_percent(55.0, 50.0) == pytest.approx(10.0)
    assert math.isnan(diff_percent(1.0, 0.0))
    assert math.isnan(diff_percent(math.nan, 50.0))


def test_optimizer_order_puts_baseline_first_then_canonical_then_unknown():
    assert optimizer_order(["zeta", "swan", "sinkgd", "SGD", "adamw"], "sinkgd") == [
        "sinkgd", "adamw", "SGD", "swan", "zeta"]


def test_summarise_fills_the_grid_and_ignores_failed_seeds(tmp_path):
    runs = load_results(write_synthetic(tmp_path)).runs
    values = pd.to_numeric(runs["final_eval_ppl"])
    summaries = {(s.key, s.optimizer): s for s in summarise(runs, values, ["model", "device"],
                                                            ["adamw", "sinkgd", "myopt"])}
    diverged = summaries[(("nano", "cpu"), "sinkgd")]
    assert diverged.n == 2 and diverged.n_total == 3 and diverged.statuses["diverged"] == 1
    assert diverged.mean == pytest.approx(58.5)
    assert summaries[(("nano", "cpu"), "myopt")].n_total == 0  # never ran: present, as missing
    assert summaries[(("micro", "cpu"), "myopt")].statuses == Counter(oom=1)


def test_report_tables_count_seeds_and_diff_against_adamw(tmp_path):
    root = write_synthetic(tmp_path)
    text = write_report(root, command="swanbench run suites/quickstart.toml").read_text()
    assert "```bash\nswanbench run suites/quickstart.toml\n```" in text
    rows = _table(text, "Final eval perplexity (token-weighted)")
    assert _row(rows, "nano", "adamw")[3:] == ["2/2", "60.5", "0.707", "baseline"]
    # swan 55.5 against adamw 60.5: (55.5 - 60.5) / 60.5 = -8.26 %
    assert _row(rows, "nano", "swan")[3:] == ["2/2", "55.5", "0.707", "-8.3 %"]
    assert _row(rows, "nano", "sinkgd")[3] == "2/3 (1 diverged)"
    assert _row(rows, "nano", "myopt")[3:5] == ["0/0", "missing (no run)"]
    assert _row(rows, "micro", "myopt")[3:5] == ["0/1 (1 oom)", "oom"]
    state = _table(text, "Optimizer state [MiB]")
    assert _row(state, "micro", "swan")[-1] == "-100.0 %"
    step = _table(text, "Step time (median) [ms]")
    assert _row(step, "nano", "adamw")[6] == "1.5"  # step_iqr_ms: the within-run spread column


def test_report_lists_failed_runs_with_their_error(tmp_path):
    text = write_report(write_synthetic(tmp_path)).read_text()
    assert "14 run(s) in 7 cell(s): 12 ok, 1 oom, 1 diverged." in text
    assert "| myopt-micro-cpu-0 | myopt | micro | cpu | 0 | oom | oom: synthetic failure |" in text


def test_report_reads_environment_and_command_from_env_json(tmp_path):
    root = write_synthetic(tmp_path)
    for name, host in (("a", "box1"), ("b", "box2")):
        (root / "runs" / name).mkdir(parents=True)
        env = {"hostname": host, "torch": {"version": "2.13.0", "cuda": None},
               "argv": ["swanbench", "run", "suites/my suite.toml"]}
        (root / "runs" / name / "env.json").write_text(json.dumps(env))
    (root / "runs" / "c").mkdir()
    (root / "runs" / "c" / "env.json").write_text("{not json")  # unreadable: skipped, not fatal
    text = write_report(root).read_text()
    assert "swanbench run 'suites/my suite.toml'" in text
    assert "| `torch.version` | 2.13.0 |" in text
    assert "| `hostname` | box1 (1x); box2 (1x) |" in text
    assert "| `device_name` (tables) | test cpu |" in text


def test_report_one_seed_and_missing_columns(tmp_path):
    root = write_synthetic(tmp_path, seeds=(0,), failed=False, kernels=False,
                           drop=("status", "whitening_ms", "tokens_to_target", "final_eval_ppl_galore", "step_iqr_ms"))
    text = write_report(root).read_text()
    assert "runs.csv has no status column: every row is treated as an ok run" in text
    assert "Whitening" not in text and "GaLore" not in text and "Operator micro-benchmarks" not in text
    rows = _table(text, "Final eval perplexity (token-weighted)")
    assert _row(rows, "micro", "swan")[3:6] == ["1/1", "55", "–"]  # one seed: no spread


def test_report_without_baseline_says_so(tmp_path):
    root = write_synthetic(tmp_path, optimizers=("swan", "sinkgd"), failed=False)
    text = write_report(root).read_text()
    assert "Baseline 'adamw' is not in these results" in text
    assert _row(_table(text, "Final eval perplexity (token-weighted)"), "nano", "swan")[-1] == "n/a"
    text = write_report(root, baseline="sinkgd").read_text()
    assert _row(_table(text, "Final eval perplexity (token-weighted)"), "nano", "swan")[-1] == "-5.1 %"


def test_report_links_figures_drawn_before(tmp_path):
    from swanbench.analysis.figures import draw_figures

    root = write_synthetic(tmp_path)
    draw_figures(root, formats=("png",), only=("memory", "pareto"))
    text = write_report(root).read_text()
    assert "![memory](figures/memory.png)" in text and "![pareto](figures/pareto.png)" in text


def test_report_command_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from swanbench.cli import app

    root = write_synthetic(tmp_path / "res")
    ok = CliRunner().invoke(app, ["report", str(root), "--baseline", "swan"])
    assert ok.exit_code == 0, ok.output
    assert "Diff % vs swan" in (root / "report.md").read_text()
    bad = CliRunner().invoke(app, ["report", str(root), "--baseline", "adamm"])
    assert bad.exit_code == 2
    assert "did you mean 'adamw'?" in bad.output and "Traceback" not in bad.output
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "runs.csv").write_bytes(b"\xff\xfe\x00garbage")
    result = CliRunner().invoke(app, ["report", str(corrupt)])
    assert result.exit_code == 2 and "not a readable CSV table" in result.output


def test_tokens_to_target_derived_from_curves_when_runs_lack_it(tmp_path):
    root = write_synthetic(tmp_path, failed=False, kernels=False, drop=("tokens_to_target",))
    text = write_report(root).read_text()
    assert "derived from curves.csv (target: adamw's final eval loss in the same cell and seed)" in text
    rows = _table(text, "Tokens to reach the target perplexity")
    # swan's perplexity (55 + s) x (1 + 8 e^-i) at 2,560 i tokens (seed s) first falls below adamw's final
    # 60 + s between its 4th and 5th eval points, interpolated linearly in eval loss (log perplexity):
    # seed 0: 10,240 + 2,560 x (ln 63.0589 - ln 60) / (ln 63.0589 - ln 57.9647) = 11,751.19 tokens;
    # seed 1: 10,240 + 2,560 x (ln 64.2054 - ln 61) / (ln 64.2054 - ln 59.0186) = 11,796.44 tokens;
    # mean 11,773.8, sample standard deviation 45.26 / sqrt(2) = 32.0. Interpolating between any other two
    # points (or in perplexity instead of loss) gives another number.
    assert _row(rows, "nano", "swan")[3:6] == ["2/2", "11,774", "32"]
    assert _row(rows, "nano", "adamw")[3:5] == ["0/2", "n/a"]  # adamw's curve never reaches its own final
    assert "### Effective speedup over the baseline" in text


def test_a_version_1_table_with_per_rank_rows_reads_as_one_row_per_run(tmp_path):
    """Schema 1 kept per-rank rows in runs.csv (schema 2 puts them in ranks.csv): reading upgrades it."""
    root = write_synthetic(tmp_path, optimizers=("adamw",), failed=False, kernels=False)
    runs = pd.read_csv(root / "runs.csv").assign(schema_version=1)
    ranks = pd.concat([runs.assign(rank=0), runs.assign(rank=1, peak_rss_bytes=runs["peak_rss_bytes"] + 2**30)])
    ranks.to_csv(root / "runs.csv", index=False)
    results = load_results(root)
    assert len(results.runs) == len(runs)  # seeds are counted once, not once per rank
    assert (results.runs["peak_rss_bytes"].to_numpy() == runs["peak_rss_bytes"].to_numpy() + 2**30).all()
    assert "rank" not in results.runs.columns
    # The combined row (rank = "max") is taken as it is when present.
    combined = runs.assign(rank="max", peak_rss_bytes=123)
    pd.concat([combined, ranks]).to_csv(root / "runs.csv", index=False)
    assert (load_results(root).runs["peak_rss_bytes"] == 123).all()


def test_glance_peak_memory_per_device_with_own_units(tmp_path):
    from swanbench.analysis.report import fmt_bytes

    assert [fmt_bytes(v) for v in (0, 1536, 85.3 * 2**20, 3.91 * 2**30)] == ["0 B", "1.5 KiB", "85.3 MiB", "3.91 GiB"]
    root = write_synthetic(tmp_path, failed=False, kernels=False)
    runs = pd.read_csv(root / "runs.csv")
    gpu = runs.assign(device="cuda", run_id=runs["run_id"] + "-gpu", peak_allocated_bytes=2 * 2**30)
    pd.concat([runs, gpu]).to_csv(root / "runs.csv", index=False)
    text = write_report(root).read_text()
    assert "Peak memory is, per device, cpu: peak RSS (process); cuda: peak allocated (allocator)." in text
    rows = _table(text, "At a glance")
    assert _row(rows, "nano", "adamw")[5] == "325 MiB" and rows[-3][5].startswith("2 GiB")


def test_report_shows_quality_verdicts_when_present(tmp_path):
    root = write_synthetic(tmp_path, failed=False, kernels=False)
    pd.DataFrame([{"optimizer": "swan", "suite": "synthetic", "model": "nano", "dtype": "float32",
                   "config": "swan", "baseline": "adamw", "n_pairs": 2, "final_loss_diff": -0.08,
                   "final_loss_diff_ci_low": -0.1, "final_loss_diff_ci_high": -0.06,
                   "final_loss_verdict": "swan better", "final_loss_rule": "paired by seed", "n_seeds": 2,
                   "n_reached": 2, "n_faster": 2, "gmean_speedup": 1.5, "speedup_ci_low": 1.2,
                   "speedup_ci_high": 1.9, "sooner_verdict": "sooner", "sooner_rule": "speedup > 1 in every seed"}]
                 ).to_csv(root / "verdicts.csv", index=False)
    text = write_report(root).read_text()
    row = "| nano | float32 | swan | adamw | -0.08 [-0.1, -0.06] | swan better | 2/2 | 1.5 [1.2, 1.9] | sooner |"
    assert row in text
    assert "- paired by seed" in text


def test_number_formats_never_use_positive_exponents():
    from swanbench.analysis.report import fmt_diff, fmt_number

    assert [fmt_number(v) for v in (999.7, 53588.1, 12.345, 0.000114, math.nan)] == [
        "1,000", "53,588", "12.3", "0.000114", "n/a"]
    assert [fmt_diff(v) for v in (-8.26, 921633.3, math.nan)] == ["-8.3 %", "+921,633 %", "n/a"]


def test_report_of_a_kernels_only_directory(tmp_path):
    from test_plots import synthetic_kernel_rows

    kernels = pd.DataFrame(synthetic_kernel_rows()).drop(columns=["dtype", "method"])
    kernels.to_csv(tmp_path / "kernels.csv", index=False)
    text = write_report(tmp_path).read_text()
    assert "## Operator micro-benchmarks (kernels.csv)" in text and "## Runs" not in text
    assert "| copy | cpu | n/a | 4096 | 4096 | 5 |" in text  # machine rows first; no dtype, method columns
