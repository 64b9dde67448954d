"""Your own training and your own tools: the documented loop example (run as written), its row against the
harness's own numbers, the Trainer callback on a real tiny Trainer run, load(), the profiler's reason in the
row, the TensorBoard export read back offline, --json for check, and the documented CI workflow."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "own-training.md"
WORKFLOW = ROOT / "docs" / "examples" / "github-actions.yml"
BASELINE = ROOT / "results" / "baselines" / "ci-runs.csv"

pytestmark = pytest.mark.usefixtures("one_thread")


def _doc_block(heading: str) -> str:
    """The first ```python block after `heading` in docs/own-training.md."""
    text = DOC.read_text()
    after = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def _baseline_row(optimizer: str) -> pd.Series:
    runs = pd.read_csv(BASELINE)
    return runs[runs["optimizer"] == optimizer].iloc[0]


def test_import_swanbench_is_light_and_names_the_api():
    code = ("import sys, swanbench; assert 'torch' not in sys.modules and 'pandas' not in sys.modules; "
            "print(sorted(swanbench.PUBLIC)); swanbench.load; assert 'pandas' in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "RunRecorder" in proc.stdout and "SwanbenchCallback" in proc.stdout


def test_the_documented_loop_runs_as_written_and_gives_the_suite_runs_row(tmp_path, monkeypatch, capsys):
    """The docs' example on nano, SWAN, 8 x 64 tokens, one thread: the configuration of the CI suite's SWAN run,
    so its exact bytes, its step transient and its estimate are the committed baseline's (a worker's row)."""
    monkeypatch.chdir(tmp_path)
    exec(compile(_doc_block("### Your own loop"), str(DOC), "exec"), {"__name__": "__doc_example__"})
    import swanbench

    tables = swanbench.load(tmp_path / "results" / "mine")
    assert len(tables.runs) == 1
    row, base = tables.runs.iloc[0], _baseline_row("swan")
    assert (row["optimizer"], row["model"], row["status"], row["dtype"]) == ("swan", "nano", "ok", "float32")
    for column in ("param_bytes", "grad_bytes", "optimizer_state_bytes", "optimizer_state_bytes.matrix",
                   "optimizer_state_bytes.adamw", "step_transient_bytes", "estimate_bytes", "params"):
        assert row[column] == base[column], column
    assert abs(row["unexplained_bytes"]) < 0.01 * row["estimate_bytes"]
    assert row["whitening_ms"] > 0 and row["steps"] == 12 and row["tokens_seen"] == 12 * 8 * 64
    from swanbench import schema

    assert set(schema.RUNS_COLUMNS) <= set(tables.runs.columns)
    assert list(tables.curves["step"]) == [4, 8, 12] and list(tables.curves["tokens"]) == [2048, 4096, 6144]
    assert tables.curves["eval_ppl"].tolist() == pytest.approx([math.exp(v) for v in tables.curves["eval_loss"]])
    assert (tmp_path / "results" / "mine" / "runs" / row["run_id"] / "env.json").is_file()
    assert "swan" in capsys.readouterr().out


def _record(out: Path, optimizer_name: str = "adamw", steps: int = 4, loss: float | None = None):
    import torch

    import optimizers
    import swanbench

    model = swanbench.build_model("nano")
    opt = optimizers.build(optimizer_name, model)
    ids = torch.randint(0, 4096, (2, 16), generator=torch.Generator().manual_seed(0))
    with swanbench.RunRecorder(model, opt, out=out, seq_len=16, batch_size=2, warmup_steps=1) as run:
        for step in range(steps):
            with run.phase("forward_backward", step):
                model(input_ids=ids, labels=ids).loss.backward()
            with run.phase("optimizer_step", step):
                opt.step()
            opt.zero_grad(set_to_none=True)
            run.end_step(step, ids.numel(), loss=loss)
    return run


def test_when_the_profiler_fails_the_row_says_why(tmp_path, monkeypatch):
    from swanbench.trackers import profiler

    def broken(*args, **kwargs):
        raise AssertionError("version mismatch")

    monkeypatch.setattr(profiler, "add_role_peaks", broken)
    with pytest.warns(UserWarning, match="version mismatch"):
        run = _record(tmp_path / "out")
    assert run.row["profiler_error"] == "AssertionError: version mismatch"
    assert "profiler: AssertionError: version mismatch" in run.row["measure_errors"]
    assert run.row["step_transient_bytes"] is not None  # from the raw allocation events
    assert run.row["optimizer_state_bytes"] == 2 * run.row["param_bytes"]  # the tensor walk is unaffected


def test_a_non_finite_loss_is_diverged_and_a_crash_is_recorded_then_raised(tmp_path):
    import torch

    import swanbench

    assert _record(tmp_path / "a", loss=float("nan")).row["status"] == "diverged"
    model = swanbench.build_model("nano")
    with pytest.raises(RuntimeError, match="boom"):
        with swanbench.RunRecorder(model, torch.optim.SGD(model.parameters(), lr=0.1), out=tmp_path / "b"):
            raise RuntimeError("boom")
    row = swanbench.load(tmp_path / "b").runs.iloc[0]
    assert row["status"] == "crashed" and row["error"] == "RuntimeError: boom"
    assert row["optimizer"] == "torch.optim.sgd:SGD" and row["model"] == "nano"  # build_model's preset


def test_load_gives_one_row_per_run_and_one_line_errors(tmp_path):
    import swanbench
    from swanbench.tables import TableError

    _record(tmp_path / "out", "adamw")
    _record(tmp_path / "out", "sgd")
    tables = swanbench.load(tmp_path / "out")
    assert sorted(tables.runs["optimizer"]) == ["adamw", "sgd"] and tables.runs["run_id"].is_unique
    assert tables.ranks is None and tables.kernels is None and tables.curves is not None
    runs = tmp_path / "out" / "runs.csv"
    pd.concat([pd.read_csv(runs)] * 2).to_csv(runs, index=False)  # a table appended to by hand
    assert len(swanbench.load(runs).runs) == 2
    with pytest.raises(TableError, match="no such results directory"):
        swanbench.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TableError, match="no runs.csv"):
        swanbench.load(tmp_path / "empty")


def test_a_real_tiny_trainer_run_is_recorded_into_the_same_tables(tmp_path, monkeypatch):
    pytest.importorskip("accelerate", reason="the Trainer needs accelerate (pip install -e '.[hf]')")
    import torch
    from transformers import Trainer, TrainingArguments

    import optimizers
    import swanbench

    monkeypatch.chdir(tmp_path)
    model = swanbench.build_model("nano")
    ids = torch.randint(0, 4096, (16, 32), generator=torch.Generator().manual_seed(0))
    rows = [{"input_ids": r, "labels": r} for r in ids]
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=2, max_steps=6,
                             eval_strategy="steps", eval_steps=3, logging_steps=1, report_to=[], use_cpu=True,
                             save_strategy="no", disable_tqdm=True, seed=0)
    callback = swanbench.SwanbenchCallback(tmp_path / "results", seq_len=32, warmup_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=rows[:12], eval_dataset=rows[12:], callbacks=[callback],
                      optimizers=(optimizers.build("swan", model, lr=0.02), None))
    trainer.train()
    tables = swanbench.load(tmp_path / "results")
    row, base = tables.runs.iloc[0], _baseline_row("swan")
    assert (row["optimizer"], row["model"], row["status"], row["suite"]) == ("swan", "nano", "ok", "trainer")
    for column in ("param_bytes", "grad_bytes", "optimizer_state_bytes", "optimizer_state_bytes.adamw"):
        assert row[column] == base[column], column  # shape facts: the same as the harness's own SWAN run
    assert row["whitening_ms"] > 0  # the timer reached SWAN through accelerate's wrapper
    assert row["steps"] == 6 and row["tokens_seen"] == 6 * 2 * 32 and row["batch_size"] == 2
    assert row["forward_backward_ms"] > 0 and row["optimizer_step_ms"] > 0
    assert "profiler_error" in tables.runs.columns and pd.isna(row["profiler_error"])
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert tables.curves["step"].tolist() == [3, 6]
    assert tables.curves["eval_loss"].tolist() == pytest.approx(evals)
    assert row["final_eval_loss"] == pytest.approx(evals[-1])


# ------------------------------------------------------------------------------------------ your tools

def test_the_tensorboard_export_reads_back_as_the_tables_say(tmp_path):
    pytest.importorskip("tensorboard", reason="the export needs tensorboard (pip install -e '.[tracking]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import swanbench

    run = _record(tmp_path / "out", "adamw")
    run_dir = tmp_path / "out" / "runs" / run.run_id
    from swanbench import rundir
    from swanbench.api.record import assemble_dir

    curve = [{"step": 2, "tokens": 64, "train_seconds": 0.5, "train_loss": 8.3, "eval_loss": 8.1, "eval_ppl": 3294.5,
              "lr": 1e-3}, {"step": 4, "tokens": 128, "train_seconds": 1.0, "train_loss": 7.9, "eval_loss": 7.7,
                            "eval_ppl": 2208.3, "lr": 5e-4}]
    rundir.write_curve(run_dir, {k: v for k, v in run.row.items() if k in ("run_id", "optimizer", "model")}, curve)
    assemble_dir(tmp_path / "out")
    for _ in range(2):  # exporting again replaces the event files
        proc = subprocess.run([sys.executable, "-m", "swanbench", "export", str(tmp_path / "out"), "--out",
                               str(tmp_path / "tb")], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "tb" / run.run_id
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = lambda tag: [(e.step, e.value) for e in events.Scalars(tag)]  # noqa: E731
    assert scalars("curve/eval_loss") == [(2, pytest.approx(8.1)), (4, pytest.approx(7.7))]
    assert scalars("by_tokens/train_loss") == [(64, pytest.approx(8.3)), (128, pytest.approx(7.9))]
    assert scalars("curve/lr") == [(2, pytest.approx(1e-3)), (4, pytest.approx(5e-4))]
    row = swanbench.load(tmp_path / "out").runs.iloc[0]
    assert scalars("run/optimizer_state_bytes") == [(4, pytest.approx(row["optimizer_state_bytes"], rel=1e-7))]
    assert scalars("run/step_transient_bytes")[0][1] == pytest.approx(row["step_transient_bytes"], rel=1e-7)
    assert "run/identity/text_summary" in events.Tags()["tensors"]
    bad = subprocess.run([sys.executable, "-m", "swanbench", "export", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


def test_check_json_is_the_verdict_for_scripts(tmp_path):
    results = tmp_path / "r"
    results.mkdir()
    runs = pd.read_csv(BASELINE)
    runs.to_csv(results / "runs.csv", index=False)
    cmd = [sys.executable, "-m", "swanbench", "check", str(results), "--baseline", str(BASELINE), "--json"]
    same = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert same.returncode == 0, same.stderr
    doc = json.loads(same.stdout)
    assert doc["passed"] and doc["counts"]["failed"] == 0 and doc["counts"]["total"] == len(doc["findings"]) > 0
    runs.loc[runs["optimizer"] == "swan", "optimizer_state_bytes"] += 1024  # SWAN suddenly keeps state
    runs.to_csv(results / "runs.csv", index=False)
    worse = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert worse.returncode == 1
    doc = json.loads(worse.stdout)
    failed = [f for f in doc["findings"] if f["failed"]]
    assert not doc["passed"] and [(f["run"], f["metric"]) for f in failed] == [("swan", "optimizer_state_bytes")]
    assert failed[0]["now"] - failed[0]["baseline"] == 1024
    assert (results / "check.md").is_file()


def test_the_documented_ci_workflow_runs_a_suite_gates_it_and_posts_check_md():
    yaml = pytest.importorskip("yaml", reason="PyYAML (a transformers dependency) parses the workflow")
    flow = yaml.safe_load(WORKFLOW.read_text())
    triggers = flow.get("on", flow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers
    assert flow["permissions"]["pull-requests"] == "write"
    job = next(iter(flow["jobs"].values()))
    env, steps = job["env"], job["steps"]
    text = [json.dumps(step) for step in steps]

    def index(pattern: str) -> int:
        return next(i for i, t in enumerate(text) if re.search(pattern, t))

    cache, run, check = index(r"actions/cache"), index(r"swanbench run "), index(r"swanbench check ")
    comment, fail = index(r"gh pr comment"), index(r"steps\.gate\.outcome")
    assert cache < run < check < comment < fail
    assert steps[cache]["with"]["path"] == ".swanbench-cache" and env["SWANBENCH_CACHE"].endswith("/.swanbench-cache")
    assert steps[check]["continue-on-error"] is True and steps[check]["id"] == "gate"
    assert "always()" in steps[comment]["if"] and "$OUT/check.md" in steps[comment]["run"]
    assert "results/pr/check.md" in steps[comment]["if"] and env["OUT"] == "results/pr"
    assert steps[fail]["if"] == "steps.gate.outcome == 'failure'"
    # what it names exists here, and the suite it runs is valid
    assert (ROOT / env["SUITE"]).is_file() and (ROOT / env["BASELINE"]).is_file()
    assert env["SUITE"] in steps[cache]["with"]["key"]
    proc = subprocess.run([sys.executable, "-m", "swanbench", "run", env["SUITE"], "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
