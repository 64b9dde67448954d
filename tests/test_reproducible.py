"""Reruns are bit for bit on CPU: the same cell, run twice in fresh processes (with a freshly trained
tokenizer each time), gives the same losses to the last bit, with the settings env.json records."""

from __future__ import annotations

import json

import pandas as pd

from swanbench import runner
from swanbench.suite import load_suite


def test_two_runs_in_fresh_processes_give_identical_losses(write_suite, tiny_suite_text, tmp_path, monkeypatch):
    # Two threads: the case where a reduction could be split differently from one run to the next. SWAN
    # and SinkGD: their whitening and Sinkhorn (native kernels) on top of the model's own matmuls.
    body = tiny_suite_text.replace("timeout_s = 120", "timeout_s = 300\nthreads = 2").replace(
        'optimizer = ["adamw"]', 'optimizer = ["swan", "sinkgd"]')
    suite = load_suite(write_suite(body))
    tables = []
    for attempt in ("first", "second"):
        # A cache of its own: the tokenizer is trained afresh, so its training must be deterministic too.
        monkeypatch.setenv("SWANBENCH_CACHE", str(tmp_path / f"cache-{attempt}"))
        out = tmp_path / attempt
        outcome = runner.run_suite(suite, out, progress=False, publish=False)
        assert set(outcome.statuses.values()) == {"ok"}, outcome.statuses
        for env_file in sorted((out / "runs").glob("*/env.json")):
            env = json.loads(env_file.read_text())
            assert env["torch_threads"] == 2 and "deterministic_algorithms" in env
            assert env["cpu_capability"]  # the vectorised kernels a rerun must share
        tables.append((pd.read_csv(out / "curves.csv").sort_values(["run_id", "step"], ignore_index=True),
                       pd.read_csv(out / "runs.csv").sort_values("run_id", ignore_index=True)))
    (curves_a, runs_a), (curves_b, runs_b) = tables
    assert len(curves_a) == len(curves_b) >= 2 * 3
    assert curves_a["run_id"].tolist() == curves_b["run_id"].tolist()
    for column in ("train_loss", "eval_loss", "eval_loss_galore"):  # exact equality, not approx
        assert curves_a[column].fillna(-1.0).tolist() == curves_b[column].fillna(-1.0).tolist(), column
    assert runs_a["final_eval_loss"].tolist() == runs_b["final_eval_loss"].tolist()
    assert runs_a["tokenizer_vocab"].tolist() == runs_b["tokenizer_vocab"].tolist()
