"""The runner end to end on nano: tables, resume, force, and every status (ok, oom, diverged, timeout, crashed)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from swanbench import rundir, runner
from swanbench.suite import load_suite


def _runs(out):
    return pd.read_csv(out / "runs.csv")


def test_suite_runs_end_to_end_then_resumes_then_forces(write_suite, tiny_suite_text, tmp_path):
    suite = load_suite(write_suite(tiny_suite_text))
    out = tmp_path / "out"
    first = runner.run_suite(suite, out, progress=False)
    (run_id,) = first.executed
    assert first.statuses == {run_id: "ok"}
    runs = _runs(out)
    row = runs.iloc[0]
    assert row["status"] == "ok" and row["run_id"] == run_id and row["suite"] == "tiny"
    assert row["params"] > 0 and row["param_bytes"] == 4 * row["params"]
    assert row["optimizer_state_bytes"] == 2 * row["param_bytes"]  # AdamW: two moments
    assert row["step_ms"] > 0 and row["tokens_per_s"] > 0 and row["peak_rss_bytes"] > 0
    assert pd.isna(row["peak_allocated_bytes"])  # CPU: the CUDA allocator has nothing to say: empty, not 0
    curves = pd.read_csv(out / "curves.csv")
    assert 0 < row["final_eval_loss"] < curves["eval_loss"].iloc[0]  # it learned something in 4 steps
    assert row["final_eval_ppl"] == pytest.approx(math.exp(row["final_eval_loss"]))
    assert row["final_eval_loss_galore"] < row["final_eval_loss"]  # the (batches + 1) quirk biases it low
    assert list(curves["step"]) == [0, 2, 4] and list(curves["tokens"]) == [0, 128, 256]
    assert curves["train_seconds"].is_monotonic_increasing and (curves["optimizer"] == "adamw").all()
    run_dir = out / "runs" / run_id
    assert {"config.json", "env.json", "log.txt", "run.csv", "curves.csv"} <= {p.name for p in run_dir.iterdir()}

    stamp = (run_dir / "run.csv").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = runner.run_suite(suite, out, progress=False)
    assert again.executed == [] and again.skipped == [run_id]
    assert time.perf_counter() - t0 < 5
    assert (run_dir / "run.csv").stat().st_mtime_ns == stamp
    assert len(_runs(out)) == 1

    # --force plans every run again (executing it is the path above); a re-run starts from a clean directory
    assert [p.skip for p in runner.plan(suite, out, force=True)] == [False]
    runner.write_config(suite, suite.runs()[0], run_dir)
    assert not (run_dir / "run.csv").exists() and rundir.run_status(run_dir) is None


def test_oom_and_divergence_are_statuses_and_the_suite_goes_on(write_suite, tiny_suite_text, tmp_path):
    # SGD at lr 1e6 blows the loss up to NaN (status from the loss check); SinkGD at 1e6 meets a non-finite
    # gradient first and its NonFiniteGradientError is the same status.
    body = tiny_suite_text.replace('optimizer = ["adamw"]', 'optimizer = ["sgd", "sinkgd"]\n"hparams.lr" = [1e6]')
    suite = load_suite(write_suite(body.replace("[data]", "lr_warmup = 0.0\n[data]")))
    outcome = runner.run_suite(suite, tmp_path / "div", progress=False)
    assert len(outcome.executed) == 2 and set(outcome.statuses.values()) == {"diverged"}
    runs = _runs(tmp_path / "div").set_index("optimizer")
    assert "training loss nan" in runs.loc["sgd", "error"]
    assert "NonFiniteGradientError" in runs.loc["sinkgd", "error"]
    assert runs["final_eval_loss"].isna().all()  # no final eval of a diverged model
    curve = pd.read_csv(tmp_path / "div" / "runs" / runs.loc["sgd", "run_id"] / "curves.csv")
    assert curve["step"].iloc[0] == 0 and not math.isfinite(float(curve["train_loss"].iloc[-1]))  # curve kept

    oom = load_suite(write_suite(tiny_suite_text.replace("timeout_s = 120", "timeout_s = 120\nmemory_budget = '1MiB'"),
                                 "oom"))
    outcome = runner.run_suite(oom, tmp_path / "oom", progress=False)
    row = _runs(tmp_path / "oom").iloc[0]
    assert list(outcome.statuses.values()) == ["oom"]
    assert row["status"] == "oom" and "memory_budget" in row["error"] and row["peak_rss_bytes"] > 2**20
    # oom and diverged are deterministic outcomes: resume does not retry them
    assert runner.run_suite(oom, tmp_path / "oom", progress=False).executed == []


def _fake_worker(tmp_path, body: str) -> list[str]:
    script = tmp_path / "fake_worker.py"
    script.write_text(textwrap.dedent(body))
    return [sys.executable, str(script)]


def test_timeout_and_crash_keep_identity_and_error_and_are_retried(write_suite, tiny_suite_text, tmp_path):
    suite = load_suite(write_suite(tiny_suite_text.replace("timeout_s = 120", "timeout_s = 1")))
    sleeper = _fake_worker(tmp_path, "import time\ntime.sleep(60)\n")
    out = tmp_path / "t"
    t0 = time.perf_counter()
    outcome = runner.run_suite(suite, out, worker_cmd=sleeper, progress=False)
    assert time.perf_counter() - t0 < 30
    row = _runs(out).iloc[0]
    assert list(outcome.statuses.values()) == ["timeout"]
    assert row["status"] == "timeout" and "timeout_s = 1" in row["error"] and row["optimizer"] == "adamw"

    crasher = _fake_worker(tmp_path, "import sys\nprint('boom: CUDA driver went away', file=sys.stderr)\nsys.exit(3)\n")
    outcome = runner.run_suite(suite, out, worker_cmd=crasher, progress=False)  # timeout is retried
    row = _runs(out).iloc[0]
    assert outcome.executed and row["status"] == "crashed"
    assert "exit code 3" in row["error"] and "boom: CUDA driver went away" in row["error"]
    assert runner.run_suite(suite, out, worker_cmd=crasher, progress=False).executed  # crashed is retried


def test_ctrl_c_kills_the_worker_and_leaves_no_row(write_suite, tiny_suite_text, tmp_path, monkeypatch):
    suite = load_suite(write_suite(tiny_suite_text))
    pid_file = tmp_path / "pid"
    sleeper = _fake_worker(tmp_path, f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
                                     "time.sleep(60)\n")
    real_wait = subprocess.Popen.wait

    def interrupted_wait(self, timeout=None):
        if timeout is not None:  # the runner's wait for the worker: simulate Ctrl-C once it started
            while not pid_file.exists():
                time.sleep(0.05)
            raise KeyboardInterrupt
        return real_wait(self)

    monkeypatch.setattr(subprocess.Popen, "wait", interrupted_wait)
    out = tmp_path / "k"
    with pytest.raises(KeyboardInterrupt):
        runner.run_suite(suite, out, worker_cmd=sleeper, progress=False)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    (run_dir,) = (out / "runs").iterdir()
    assert not (run_dir / "run.csv").exists() and rundir.run_status(run_dir) is None


@pytest.mark.gpu
def test_cuda_run_and_a_real_cuda_oom(write_suite, tiny_suite_text, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    body = tiny_suite_text.replace('device = "cpu"', 'device = "cuda"\ndtype = "bfloat16"')
    outcome = runner.run_suite(load_suite(write_suite(body)), tmp_path / "gpu", progress=False)
    row = _runs(tmp_path / "gpu").iloc[0]
    assert list(outcome.statuses.values()) == ["ok"], row.get("error")
    assert row["peak_allocated_bytes"] > row["param_bytes"] > 0 and row["device"] == "cuda"
    # A budget below the model's own bytes: the capped CUDA allocator raises a real OutOfMemoryError.
    oom = body.replace("timeout_s = 120", "timeout_s = 120\nmemory_budget = '1MiB'")
    outcome = runner.run_suite(load_suite(write_suite(oom, "oom")), tmp_path / "gpu-oom", progress=False)
    row = _runs(tmp_path / "gpu-oom").iloc[0]
    assert list(outcome.statuses.values()) == ["oom"] and "OutOfMemoryError" in row["error"]


def test_the_token_cache_is_filled_before_the_first_run(write_suite, tiny_suite_text, tmp_path, monkeypatch):
    """The first run must not train the tokenizer in its own process (its peak RSS would carry it): the
    cache holds the tokenizer and both token streams before any worker starts, so the worker sees them."""
    from rich.console import Console

    cache = tmp_path / "cache"
    monkeypatch.setenv("SWANBENCH_CACHE", str(cache))
    suite = load_suite(write_suite(tiny_suite_text))
    seen = tmp_path / "seen.txt"
    # A worker that only reports what the cache held when it started, then exits (its run is "crashed").
    probe = [sys.executable, "-c", textwrap.dedent(f"""
        import pathlib, os
        cache = pathlib.Path(os.environ["SWANBENCH_CACHE"])
        pathlib.Path({str(seen)!r}).write_text(" ".join(sorted(p.parent.name for p in cache.rglob("*.*"))))
    """)]
    runner.run_suite(suite, tmp_path / "o", worker_cmd=probe, progress=False, publish=False,
                     console=Console(file=open(os.devnull, "w")))
    assert seen.read_text().split() == ["tokenizers", "tokens", "tokens"]  # one tokenizer, train and val ids


def test_a_data_source_without_tokens_fails_before_any_run(write_suite, tiny_suite_text, tmp_path):
    from rich.console import Console

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n\n")
    suite = load_suite(write_suite(tiny_suite_text.replace('path = "{corpus}"', f'path = "{empty}"')))
    with pytest.raises(runner.SuiteError, match="no text found") as err:
        runner.run_suite(suite, tmp_path / "o", progress=False, console=Console(file=open(os.devnull, "w")))
    assert str(suite.path) in str(err.value)
    assert not (tmp_path / "o" / "runs").exists()
