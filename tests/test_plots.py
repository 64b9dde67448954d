"""Figures drawn from small synthetic tables: every figure renders, skips with a reason, and says its units."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from swanbench.analysis.results import Results, load_results
from swanbench.schema import CURVES_COLUMNS, KERNELS_COLUMNS, RUNS_COLUMNS, SCHEMA_VERSION
from swanbench.tables import write_rows_atomic

MODELS = {"nano": 1_000_000, "micro": 4_000_000}
STATE_PER_PARAM = {"adamw": 8, "swan": 0, "sinkgd": 0, "myopt": 4}  # bytes of optimizer state per parameter
FINAL_PPL = {"adamw": 60.0, "swan": 55.0, "sinkgd": 58.0, "myopt": 70.0}
MIB = 1024**2


def run_row(opt: str, model: str, seed: int, status: str = "ok", device: str = "cpu") -> dict:
    """One runs.csv row with plausible CPU measurements (peak_allocated empty: CPU has no allocator peak)."""
    params = MODELS[model]
    ok = status == "ok"
    return {
        "schema_version": SCHEMA_VERSION, "suite": "synthetic", "run_id": f"{opt}-{model}-{device}-{seed}",
        "cell_id": f"{opt}-{model}-{device}", "optimizer": opt, "model": model, "params": params,
        "device": device, "device_name": "test cpu", "world_size": 1, "dtype": "float32", "seq_len": 64,
        "batch_size": 4, "seed": seed, "status": status, "swanbench_version": "0.1.0",
        "torch_version": "2.13.0", "param_bytes": 4 * params, "grad_bytes": 4 * params,
        "optimizer_state_bytes": STATE_PER_PARAM[opt] * params, "peak_allocated_bytes": None,
        "peak_reserved_bytes": None, "nvml_peak_bytes": None,
        "peak_rss_bytes": 300 * MIB + (8 + STATE_PER_PARAM[opt]) * params + 20 * MIB * seed,
        "step_transient_bytes": 2 * params if opt in ("swan", "sinkgd") else params,
        "step_ms": 40.0 + seed if ok else None, "forward_backward_ms": 30.0 if ok else None,
        "optimizer_step_ms": 9.0 if ok else None, "whitening_ms": 6.0 if opt == "swan" and ok else None,
        "tokens_per_s": 6400.0 if ok else None, "final_eval_loss": math.log(FINAL_PPL[opt] + seed) if ok else None,
        "final_eval_ppl": FINAL_PPL[opt] + seed if ok else None,
        "tokens_to_target": 7_000 if opt == "swan" and ok else None,
        "error": None if ok else f"{status}: synthetic failure",
        "activation_peak_bytes": None, "step_iqr_ms": 1.5 if ok else None,
        "final_eval_ppl_galore": FINAL_PPL[opt] * 0.98 + seed if ok else None,
    }


def curve_rows(run: dict, points: int = 5) -> list[dict]:
    """Eval points of one run: perplexity falling towards its final value (non-finite after a divergence)."""
    final = run["final_eval_ppl"] or FINAL_PPL[run["optimizer"]]
    rows = []
    for i in range(1, points + 1):
        ppl = final * (1 + 8 * math.exp(-i)) if run["status"] != "diverged" or i < 3 else math.inf
        rows.append({**{k: run[k] for k in CURVES_COLUMNS if k in run}, "step": 10 * i, "tokens": 10 * i * 256,
                     "train_seconds": 0.5 * i + 0.1 * run["seed"], "train_loss": math.log(ppl) + 0.1,
                     "eval_loss": math.log(ppl), "eval_ppl": ppl, "lr": 1e-3})
    return rows


def synthetic_kernel_rows() -> list[dict]:
    """Two operators at four sizes in two dtypes, plus the machine's matmul rate and copy bandwidth."""
    rows = []
    for op, method in (("grad_whiten", "ns-b0.5-k6"), ("sr_sinkhorn", "L5")):
        for dtype in ("float32", "bfloat16"):
            for n in (128, 256, 512, 1024):
                flops = (4 * n**3 + 36 * n**3) if op == "grad_whiten" else 30 * n * n
                ms = (flops / 5e8 + 0.02) * (0.6 if dtype == "bfloat16" else 1.0)
                rows.append({"operator": op, "method": method, "rows": n, "cols": n, "dtype": dtype,
                             "device": "cpu", "device_name": "test cpu", "steps": 6, "ms_median": ms,
                             "ms_iqr": ms / 20, "flops": flops, "tflops": flops / ms / 1e9, "peak_bytes": 12 * n * n,
                             "rel_error": 1e-3, "compile": False, "gbps": 8 * n * n / ms / 1e6})
    for dtype, rate in (("float32", 0.9), ("bfloat16", 0.4)):
        rows.append({"operator": "matmul", "method": "torch.mm", "rows": 2048, "cols": 2048, "dtype": dtype,
                     "device": "cpu", "ms_median": 2 * 2048**3 / rate / 1e9, "tflops": rate})
    rows.append({"operator": "copy", "method": "clone", "rows": 4096, "cols": 4096, "dtype": "float32",
                 "device": "cpu", "ms_median": 5.0, "gbps": 25.0})
    return rows


def write_synthetic(root: Path, *, optimizers=("adamw", "swan", "sinkgd"), seeds=(0, 1), failed=True,
                    kernels=True, drop: tuple[str, ...] = ()) -> Path:
    """A results directory with runs/curves(/kernels).csv; `drop` removes columns from every table."""
    runs = [run_row(o, m, s) for o in optimizers for m in MODELS for s in seeds]
    if failed:
        runs += [run_row("myopt", "micro", 0, "oom"), run_row("sinkgd", "nano", 9, "diverged")]
    curves = [c for r in runs if r["status"] != "oom" for c in curve_rows(r)]
    for rows in (runs, curves):
        for row in rows:
            for column in drop:
                row.pop(column, None)
    keep = lambda columns: [c for c in columns if c not in drop]  # noqa: E731
    write_rows_atomic(root / "runs.csv", runs, keep(RUNS_COLUMNS))
    write_rows_atomic(root / "curves.csv", curves, keep(CURVES_COLUMNS))
    if kernels:
        write_rows_atomic(root / "kernels.csv", synthetic_kernel_rows(), KERNELS_COLUMNS)
    return root


def _context(root: Path):
    from swanbench.analysis.figures.common import Context, optimizer_colors

    results = load_results(root)
    return Context(results, optimizer_colors(sorted(set(results.runs["optimizer"]))), "adamw")


# --- colours ----------------------------------------------------------------------------------------------


def test_optimizer_colours_fixed_and_fallback_distinct():
    import optimizers
    from swanbench.analysis.figures.common import optimizer_colors

    a = optimizer_colors(["swan", "adamw", "zeta", "alpha"])
    b = optimizer_colors(["SWAN", "sinkgd"])
    assert a["swan"] == b["SWAN"] == optimizers.info("swan").color  # each optimizer's registry entry
    assert a["adamw"] == optimizers.info("adamw").color
    registered = {optimizers.info(n).color for n in optimizers.registered()}
    assert len(registered) == len(optimizers.registered())  # every registered optimizer has its own colour
    # Unknown names: distinct colours, none taken from the registry, same whatever order they came in.
    assert a["alpha"] != a["zeta"]
    assert {a["alpha"], a["zeta"]}.isdisjoint(registered)
    assert optimizer_colors(["zeta", "alpha"]) == {"alpha": a["alpha"], "zeta": a["zeta"]}


def test_pareto_front_keeps_only_non_dominated_points():
    from swanbench.analysis.figures.pareto import pareto_front

    points = [(1.0, 50.0), (2.0, 40.0), (2.5, 45.0), (3.0, 39.0), (0.5, 80.0)]
    assert pareto_front(points) == [(0.5, 80.0), (1.0, 50.0), (2.0, 40.0), (3.0, 39.0)]


# --- individual figures -----------------------------------------------------------------------------------


def test_memory_stack_derives_other_from_peak_when_activations_unmeasured(tmp_path):
    from swanbench.analysis.figures.memory import memory_stack

    ctx = _context(write_synthetic(tmp_path))
    runs = ctx.results.runs
    rows = runs[(runs["optimizer"] == "adamw") & (runs["model"] == "nano")]
    roles, peak = memory_stack(rows, ("peak_rss_bytes", "peak RSS"))
    assert "activations (profiler)" not in roles
    # The stack adds up to the measured peak: the derived remainder is labelled, not invented.
    assert sum(roles.values()) == pytest.approx(peak)
    # AdamW's state, split by its exact element counts: the hidden matrices hold nano's 16% of the parameters.
    hidden, rest = roles["state on hidden matrices"], roles["state on embeddings, head, norms"]
    assert hidden + rest == pytest.approx(8 * MODELS["nano"])
    assert hidden / (hidden + rest) == pytest.approx(100_352 / 624_960)


def test_memory_stack_uses_profiler_activations_when_present(tmp_path):
    from swanbench.analysis.figures.memory import memory_stack

    ctx = _context(write_synthetic(tmp_path))
    rows = ctx.results.runs.assign(activation_peak_bytes=123 * MIB)
    roles, peak = memory_stack(rows[rows["optimizer"] == "swan"], ("peak_rss_bytes", "peak RSS"))
    assert roles["activations (profiler)"] == 123 * MIB
    derived = ("other (derived)", "logits & loss buffers (derived)")
    measured = sum(v for k, v in roles.items() if k not in derived)
    if peak > measured:  # the rest of the measured peak is shown, labelled as derived
        assert sum(roles.get(k, 0.0) for k in derived) == pytest.approx(peak - measured)
    else:
        assert not set(derived) & set(roles)
    # a peak below the stacked role peaks (they peak at different times) adds nothing
    roles, _ = memory_stack(rows[rows["optimizer"] == "swan"].assign(peak_rss_bytes=1), ("peak_rss_bytes", "peak RSS"))
    assert "other (derived)" not in roles


def test_memory_figure_says_units_and_marks_failed_run(tmp_path):
    from swanbench.analysis.figures.memory import plot_memory

    fig = plot_memory(_context(write_synthetic(tmp_path)))
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels and all("MiB" in label or "GiB" in label for label in labels)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    # myopt ran out of memory on micro and never ran on nano: both written into their slots, not gaps.
    assert "oom" in texts and "missing" in texts
    assert "1024³" in fig.get_suptitle()


def test_time_figure_splits_whitening_out_of_the_step(tmp_path):
    from swanbench.analysis.figures.time import plot_time, time_split

    ctx = _context(write_synthetic(tmp_path))
    runs = ctx.results.runs
    split = time_split(runs[runs["optimizer"] == "swan"])
    assert split == {"forward + backward": 30.0, "optimizer step (excl. whitening)": 3.0,
                     "whitening / normalisation": 6.0}
    fig = plot_time(ctx)
    assert all(ax.get_ylabel() == "time per step [ms]" for ax in fig.axes)


def test_kernels_figure_one_panel_per_operator_with_the_best_method_and_limits(tmp_path):
    from swanbench.analysis.figures.kernels import plot_kernels

    fig = plot_kernels(_context(write_synthetic(tmp_path)))
    # Two operators x two input dtypes: four small log-log panels of time against size.
    assert len(fig.axes) == 4
    assert {ax.get_xscale() for ax in fig.axes} == {ax.get_yscale() for ax in fig.axes} == {"log"}
    assert sorted(ax.get_title() for ax in fig.axes) == [
        "grad_whiten · bfloat16 input", "grad_whiten · float32 input", "sr_sinkhorn · bfloat16 input",
        "sr_sinkhorn · float32 input"]
    # The machine's measured limits are stated once, not drawn over the data.
    title = " ".join(fig.get_suptitle().split())  # wrapped to the figure's width
    assert "matmul float32 0.9 TFLOP/s" in title and "copy float32 25 GB/s" in title
    notes = [t.get_text() for ax in fig.axes for t in ax.texts]
    whiten = next(n for n in notes if n.startswith("best: ns-b0.5-k6"))
    assert "% of matmul" in whiten  # its headline ratio, against the measured matmul rate


def test_kernel_best_method_and_a_limit_measured_too_small(tmp_path):
    import pandas as pd

    from swanbench.analysis.kernel_summary import LIMIT_NOT_MEANINGFUL, best_method, kernel_rows, summary

    rows = []
    for method, slow in (("fast", 1.0), ("slow", 3.0)):
        for n in (256, 512, 1024, 2048):
            rows.append({"operator": "sr_sinkhorn", "method": method, "rows": n, "cols": n, "dtype": "float32",
                         "device": "cpu", "ms_median": 0.01 * slow * n * n / 1e4, "ms_iqr": 0.001,
                         "bound": "memory", "x_copy": 4.0 * slow, "status": "ok"})
    work = kernel_rows(pd.DataFrame(rows))
    label, headline = best_method(work, pd.DataFrame(columns=["measure", "dtype", "device", "tflops", "gbps"]))
    assert label == "sr_sinkhorn [fast]" and headline.startswith("4.0-4.0x one copy")
    # A copy measured at a size dominated by call overhead makes an operator look 100x faster than a copy.
    tiny = pd.DataFrame(rows).assign(x_copy=0.01)
    table = summary(tiny, pd.DataFrame(columns=["measure", "dtype", "device", "tflops", "gbps"]))
    assert table["against the machine's limit"].tolist() == [LIMIT_NOT_MEANINGFUL]


def test_kernels_figure_reads_machine_csv_and_says_why_a_panel_is_empty(tmp_path):
    import pandas as pd

    from swanbench.analysis.figures.kernels import kernel_rows, plot_kernels

    root = write_synthetic(tmp_path)
    # The layout swanbench.kernels writes: limits in machine.csv, compile as eager/compiled, skipped rows.
    kernels = pd.read_csv(root / "kernels.csv")
    kernels = kernels[~kernels["operator"].isin(["matmul", "copy"])].assign(compile="eager", status="ok")
    compiled = kernels[kernels["operator"] == "grad_whiten"].assign(compile="compiled")
    skipped = kernels[kernels["dtype"] == "bfloat16"].head(1).assign(
        status="skipped", ms_median=None, operator="whiten_exact", skip_reason="casts to float64 first")
    pd.concat([kernels, compiled, skipped]).to_csv(root / "kernels.csv", index=False)
    pd.DataFrame([{"measure": "matmul", "dtype": "float32", "size": 1024, "tflops": 1.5, "device": "cpu"},
                  {"measure": "copy", "dtype": "float32", "size": 2**20, "gbps": 12.0, "device": "cpu"}]
                 ).to_csv(root / "machine.csv", index=False)
    rows = kernel_rows(pd.read_csv(root / "kernels.csv"))
    assert "whiten_exact" not in set(rows["operator"]) and rows["_compiled"].sum() == len(compiled)
    fig = plot_kernels(_context(root))
    title = " ".join(fig.get_suptitle().split())
    assert "matmul float32 1.5 TFLOP/s" in title and "copy float32 12 GB/s" in title
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(t.startswith("not measured:") and "float64" in t for t in texts)


def test_perplexity_figure_has_band_target_and_baseline(tmp_path):
    from matplotlib.collections import PolyCollection

    from swanbench.analysis.figures.perplexity import plot_perplexity

    fig = plot_perplexity(_context(write_synthetic(tmp_path)))
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "training tokens [tokens]"
    assert fig.axes[1].get_xlabel().startswith("training time [s]")
    labels = [line.get_label() for line in ax.get_lines()]
    assert "adamw (n=2)" in labels and "adamw final: 60.5" in labels
    assert any(isinstance(c, PolyCollection) for c in ax.collections)  # the min-max band over two seeds
    assert any(line.get_marker() == "*" for line in ax.get_lines())  # swan's tokens to target
    assert "sinkgd: diverged" in labels  # the diverged seed drawn as itself


def test_one_seed_draws_no_band(tmp_path):
    from matplotlib.collections import PolyCollection

    from swanbench.analysis.figures.perplexity import plot_perplexity

    fig = plot_perplexity(_context(write_synthetic(tmp_path, seeds=(0,), failed=False)))
    assert not any(isinstance(c, PolyCollection) for ax in fig.axes for c in ax.collections)
    assert "swan (n=1)" in [line.get_label() for line in fig.axes[0].get_lines()]


def test_pareto_figure_lists_what_it_cannot_place(tmp_path):
    from swanbench.analysis.figures.pareto import plot_pareto

    fig = plot_pareto(_context(write_synthetic(tmp_path, optimizers=("adamw", "swan"))))
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("myopt: oom" in t for t in texts)
    assert all("peak RSS" in ax.get_xlabel() for ax in fig.axes)


# --- plot_results end to end ------------------------------------------------------------------------------


def test_plot_results_writes_every_figure_in_each_format(tmp_path):
    from matplotlib.image import imread

    from swanbench.analysis.figures import plot_results

    paths = plot_results(write_synthetic(tmp_path / "res"))
    names = sorted(p.name for p in paths)
    expected = sorted(f"{n}.{f}" for n in ("memory", "time", "kernels", "perplexity", "pareto") for f in ("png", "svg"))
    assert names == expected
    assert all(p.parent == tmp_path / "res" / "figures" for p in paths)
    image = imread(tmp_path / "res" / "figures" / "memory.png")
    assert image.shape[0] > 300 and image.shape[1] > 300
    assert (tmp_path / "res" / "figures" / "memory.svg").read_text().lstrip().startswith("<?xml")
    assert not list((tmp_path / "res" / "figures").glob(".*tmp"))


def test_missing_columns_and_tables_skip_with_reason(tmp_path, caplog):
    from swanbench.analysis.figures import draw_figures

    root = write_synthetic(tmp_path, kernels=False,
                           drop=("status", "whitening_ms", "forward_backward_ms", "optimizer_step_ms",
                                 "final_eval_ppl", "tokens_to_target", "train_seconds", "eval_ppl", "params"))
    with caplog.at_level(logging.INFO, logger="swanbench.analysis.figures"):
        done = draw_figures(root, formats=("png",))
    assert sorted(p.stem for p in done.paths) == ["memory", "perplexity", "time"]
    assert done.skipped["kernels"] == "no kernels.csv"
    assert "final_eval_ppl" in done.skipped["pareto"]
    assert "figure kernels skipped: no kernels.csv" in caplog.text


def test_only_curves_table(tmp_path):
    from swanbench.analysis.figures import draw_figures

    write_synthetic(tmp_path, kernels=False)
    draw_figures(tmp_path, formats=("pdf",), only=("memory",))
    (tmp_path / "runs.csv").unlink()
    done = draw_figures(tmp_path, formats=("pdf",))
    assert [p.name for p in done.paths] == ["perplexity.pdf"]
    assert set(done.skipped) == {"memory", "time", "kernels", "pareto", "tuning"}
    assert not (tmp_path / "figures" / "memory.pdf").exists()  # drawn from runs.csv before: now stale


def test_bad_format_and_empty_directory_are_clear_errors(tmp_path):
    from swanbench.analysis.figures import plot_results
    from swanbench.tables import TableError

    with pytest.raises(TableError, match="no runs.csv, curves.csv or kernels.csv"):
        plot_results(tmp_path)
    with pytest.raises(ValueError, match="unknown figure format"):
        plot_results(write_synthetic(tmp_path), formats=("gif",))


def test_plot_command(tmp_path):
    from typer.testing import CliRunner

    from swanbench.cli import app

    root = write_synthetic(tmp_path / "res", kernels=False)
    result = CliRunner().invoke(app, ["plot", str(root), "--format", "png"])
    assert result.exit_code == 0, result.output
    assert "kernels: skipped (no kernels.csv)" in result.output
    assert (root / "figures" / "pareto.png").is_file()
    missing = CliRunner().invoke(app, ["plot", str(tmp_path / "nope")])
    assert missing.exit_code != 0
    assert "no such results directory" in missing.output and "Traceback" not in missing.output


def test_publish_writes_figures_report_and_command(tmp_path):
    import pandas as pd

    from swanbench.analysis.publish import publish_suite

    root = write_synthetic(tmp_path, kernels=False)
    # The harness writes curve rows during a run, without a status: it comes from runs.csv by run_id.
    curves = pd.read_csv(root / "curves.csv").drop(columns=["status"])
    curves.to_csv(root / "curves.csv", index=False)
    import io

    from rich.console import Console

    out = io.StringIO()
    done = publish_suite(root, Console(file=out, width=400), command="swanbench run suites/quickstart.toml",
                         formats=("png",))
    done, report = done["figures"], done["report"]
    assert (root / "command.txt").read_text() == "swanbench run suites/quickstart.toml\n"
    assert len(done.paths) == 4 and done.skipped == {"kernels": "no kernels.csv",
                                                      "tuning": "no tuning.csv (the suite has no [tune] table)"}
    text = report.read_text()
    assert "swanbench run suites/quickstart.toml" in text and "![time](figures/time.png)" in text
    assert "no status column" not in text  # curves took their status from runs.csv
    printed = out.getvalue()
    assert printed.rstrip().endswith(f"report: {report}") and "kernels skipped (no kernels.csv)" in printed
    # Data printed through rich is not markup: the reason keeps its "[tune]"
    assert "tuning skipped (no tuning.csv (the suite has no [tune] table))" in printed


def test_machine_limits_prefer_the_per_row_peaks(tmp_path):
    import pandas as pd

    from swanbench.analysis.figures.kernels import machine_limits

    root = write_synthetic(tmp_path)
    kernels = pd.read_csv(root / "kernels.csv").assign(matmul_tflops_peak=2.0, copy_gbps_peak=30.0,
                                                       compute_dtype="float32")
    kernels.to_csv(root / "kernels.csv", index=False)
    limits = machine_limits(load_results(root))
    best = limits.groupby("measure")[["tflops", "gbps"]].max()
    # The limits each row's frac_of_* was computed against, not the kernels.csv matmul rows (0.9 TFLOP/s).
    assert best.loc["matmul", "tflops"] == 2.0 and best.loc["copy", "gbps"] == 30.0


def test_pareto_labels_of_clustered_points_never_overprint():
    """Five optimizers within 5% of each other on both axes (a fair showcase's cluster): every two labels that
    sit side by side end at least a line apart, and the highest point's label keeps its place above it."""
    from swanbench.analysis.figures.pareto import label_offsets

    points = [(345.0, 1017.0), (345.0, 281.0), (337.0, 273.0), (329.0, 269.0), (329.0, 293.0)]
    offsets = label_offsets(points, (466.0, 1170.0), 190.0, line_pt=9.0)
    ys = [y / 1170.0 * 190.0 + dy for (_, y), dy in zip(points, offsets)]
    assert offsets[0] == 4.0
    for i in range(len(points)):
        for j in range(i):
            side_by_side = abs(points[i][0] - points[j][0]) / 466.0 < 0.45
            assert not side_by_side or abs(ys[i] - ys[j]) >= 9.0 - 1e-9, (i, j, ys)
    # Points far apart keep their labels next to them
    assert label_offsets([(1.0, 1.0), (100.0, 1.0)], (100.0, 2.0), 190.0) == [4.0, 4.0]
