"""The CLI through typer.testing.CliRunner: run (dry-run, end to end, resume, errors), list, env."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from swanbench.cli import app

cli = CliRunner()


def invoke(*args: str):
    return cli.invoke(app, list(args))


def test_dry_run_prints_the_runs_and_runs_nothing(write_suite, tiny_suite_text, tmp_path):
    suite = write_suite(tiny_suite_text.replace('seed = [0]', 'seed = [0, 1]'))
    result = invoke("run", str(suite), "--out", str(tmp_path / "o"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "2 runs (1 cells x 2 seeds), 2 to run" in result.output
    assert "-s0" in result.output and "-s1" in result.output
    assert not (tmp_path / "o").exists()


def test_run_writes_tables_and_a_second_run_skips(write_suite, tiny_suite_text, tmp_path):
    suite, out = write_suite(tiny_suite_text), tmp_path / "o"
    result = invoke("run", str(suite), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "1 runs executed, 0 already complete" in result.output and "took" in result.output
    assert (out / "runs.csv").is_file() and (out / "curves.csv").is_file()
    t0 = time.perf_counter()
    again = invoke("run", str(suite), "--out", str(out))
    assert again.exit_code == 0 and "0 runs executed, 1 already complete" in again.output
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("args, expect", [
    (["run", "quikstart"], "did you mean 'quickstart'"),
    (["run", "missing.toml"], "no such suite file"),
])
def test_bad_suite_arguments_fail_with_one_line(args, expect):
    result = invoke(*args)
    assert result.exit_code == 2
    assert expect in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_typo_fails_in_under_5_seconds_as_a_process(write_suite, tiny_suite_text):
    suite = write_suite(tiny_suite_text.replace("steps = 4", "stpes = 4"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "from swanbench.cli import app; app()", "run", str(suite)],
                          capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2 and elapsed < 5
    (line,) = proc.stderr.strip().splitlines()
    assert str(suite) in line and "defaults.stpes" in line and "did you mean 'steps'" in line


def test_bad_hyperparameter_fails_before_running(write_suite, tiny_suite_text, tmp_path):
    suite = write_suite(tiny_suite_text.replace("lr = 1e-3", "lr = -1.0"))
    result = invoke("run", str(suite), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "optimizers.adamw" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("what, expect", [("models", ["nano", "1b"]), ("suites", ["quickstart"]),
                                          ("optimizers", ["adamw", "swan", "sinkgd"])])
def test_list(what, expect):
    result = invoke("list", what)
    assert result.exit_code == 0, result.output
    for name in expect:
        assert name in result.output


def test_list_rejects_unknown_kind():
    assert invoke("list", "modles").exit_code != 0


def test_env_json():
    result = invoke("env", "--json")
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["torch_version"] and info["device"] in ("cpu", "cuda") and "git_rev" in info


def test_git_revision_is_dirty_for_code_not_for_results(tmp_path):
    """A suite writing into results/ must not mark its own and later runs' env.json as dirty code."""
    import subprocess

    from swanbench.env import git_revision

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "runs.csv").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    clean = git_revision(tmp_path)
    assert clean and not clean.endswith("-dirty")
    (tmp_path / "results" / "runs.csv").write_text("a\nb\n")
    assert git_revision(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_revision(tmp_path) == f"{clean}-dirty"
