"""The GPU check (benchmarks/gpu-check.sh, docs/gpu-check.md), everything of it that runs without a GPU:
the dry run as CI runs it (a plan within 8 minutes, both suites valid with the GPU machine's missing
packages hidden, every import available there), the package check and the hiding it relies on, the step
time limits, a cut suite completed, the archive limits, and the real run's orchestration on CPU with small
suites in place of the GPU ones."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check as gc  # noqa: E402
import gpu_check_packages as gp  # noqa: E402
import gpu_check_results as gr  # noqa: E402

MISSING_ON_GPU = {"gensim", "submitit", "lion_pytorch", "datasets", "adam_mini", "tensorboard"}


# --------------------------------------------------------------------------------------------------
# The dry run, as CI runs it
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dry_run_output() -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu-check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def test_the_dry_run_is_ready(dry_run_output):
    out = dry_run_output.stdout
    assert dry_run_output.returncode == 0, out + dry_run_output.stderr
    assert out.splitlines()[-1] == "dry run: ready" and "problem:" not in out
    assert out.startswith("GPU check plan (budget 480 s")  # the plan comes first
    total = next(line for line in out.splitlines() if line.strip().startswith("total ") and "of 480 s" in line)
    assert int(total.split()[1]) <= 480
    assert "validated by swanbench run --dry-run: suites/gpu-quick.toml, suites/gpu-kernels.toml" in out
    hidden = out.split("probe (hidden: ")[1].split(")")[0].split(", ")
    assert set(hidden) == MISSING_ON_GPU  # the suites were validated without them


def test_the_plan_fits_eight_minutes_and_passes_unused_time_on():
    steps = list(gc.STEPS)
    assert sum(s.budget_s for s in steps) <= gc.TOTAL_BUDGET_S == 480
    assert [s.name for s in steps] == ["preflight", "pytest-gpu", "gpu-kernels", "gpu-quick", "finish"]
    # every step using all it is given ends the check at the budget, never later
    elapsed = 0.0
    for i, step in enumerate(steps):
        given = gc.allotment(i, steps, elapsed)
        assert given >= step.budget_s
        elapsed += given
    assert elapsed == gc.TOTAL_BUDGET_S
    # a quick preflight hands its unused seconds (and the plan's spare ones) to the tests
    spare = gc.TOTAL_BUDGET_S - sum(s.budget_s for s in steps)
    assert gc.allotment(1, steps, elapsed_s=5) == steps[1].budget_s + (steps[0].budget_s - 5) + spare
    # an overrun cannot take the later steps' time, and a step always gets a moment
    assert gc.allotment(2, steps, elapsed_s=10_000) == 1.0


def test_the_train_suite_time_model_fits_its_step():
    budget = next(s.budget_s for s in gc.STEPS if s.name == "gpu-quick")
    lines, problems = gc.train_time_lines(ROOT / gc.TRAIN_SUITE, budget)
    assert problems == []
    assert len(lines) == 1 + 21 + 1  # header, 7 optimizers x 3 models, total
    assert gc.kernel_time_problems(ROOT / gc.KERNEL_SUITE, 55) == []
    assert gc.kernel_time_problems(ROOT / gc.KERNEL_SUITE, 30)  # a step shorter than the suite's own limit


# --------------------------------------------------------------------------------------------------
# Packages
# --------------------------------------------------------------------------------------------------

def test_every_import_of_this_tree_is_on_the_gpu_machine_or_optional():
    problems, hidden = gp.package_problems(ROOT)
    assert problems == []
    assert hidden == MISSING_ON_GPU


def test_the_package_check_finds_what_the_gpu_machine_lacks(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["torch>=2.5", "gensim>=4.3", '
        '"tomli>=2.0; python_version < \'3.11\'"]\n')
    (tmp_path / "swanbench").mkdir()
    (tmp_path / "swanbench" / "a.py").write_text(
        "import sys\nimport gensim\nimport numpy\n"
        "if sys.version_info < (3, 11):\n    import tomli\n"
        "try:\n    import yaml\nexcept ImportError:\n    yaml = None\n"
        "def cluster():\n    import submitit\n"
        "def other():\n    from somewhere.deep import thing\n")
    problems, hidden = gp.package_problems(tmp_path)
    assert problems == [
        "pyproject.toml: dependency gensim is neither preinstalled on the GPU machine nor a wheel in .whl/",
        "swanbench/a.py:2: imports gensim at module level; gensim is neither preinstalled on the GPU machine "
        "nor a wheel in .whl/",
        "swanbench/a.py:7: imports yaml and is not a declared optional package; pyyaml is neither preinstalled "
        "on the GPU machine nor a wheel in .whl/",
        "swanbench/a.py:13: imports somewhere and is not a declared optional package; somewhere is neither "
        "preinstalled on the GPU machine nor a wheel in .whl/"]
    assert hidden == {"submitit"}  # optional, imported inside the feature: hidden in the probe
    problems, _ = gp.package_problems(tmp_path, wheels=["gensim", "PyYAML", "somewhere"])
    assert problems == []  # a wheel in .whl/ makes a package available


def test_wheels_are_named_by_their_distribution(tmp_path):
    for name in ("lion_pytorch-0.2.5-py3-none-any.whl", "submitit-1.5.4-py3-none-any.whl", "notes.txt"):
        (tmp_path / name).write_text("")
    assert sorted(gp.wheel_distributions(tmp_path)) == ["lion-pytorch", "submitit"]


def test_a_hidden_package_is_not_installed_for_the_process():
    code = ("import importlib, importlib.metadata as md, importlib.util, sys\n"
            "sys.path.insert(0, 'benchmarks')\n"
            "import gpu_check_packages as gp\n"
            "gp.hide(['numpy'])\n"
            "assert importlib.util.find_spec('numpy') is None\n"
            "try:\n    import numpy\nexcept ModuleNotFoundError:\n    pass\nelse:\n    raise SystemExit('imported')\n"
            "try:\n    md.version('numpy')\nexcept md.PackageNotFoundError:\n    pass\n"
            "else:\n    raise SystemExit('metadata')\n"
            "print(md.version('pytest'), importlib.import_module('json').__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[1] == "json"  # everything else still imports, metadata included


# --------------------------------------------------------------------------------------------------
# Steps, a cut suite, the archive
# --------------------------------------------------------------------------------------------------

def test_a_step_that_runs_out_of_time_is_cut_even_if_it_ignores_sigterm(tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "GRACE_S", 1)
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
                "time.sleep(600)")
    status, code = gc.run_command([sys.executable, "-c", stubborn], tmp_path / "slow.log", limit_s=4)
    assert (status, code) == ("timeout", -9)  # SIGKILL after the grace period
    assert "cut after 4 s" in (tmp_path / "slow.log").read_text()
    assert gc.run_command([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "f.log", 60) == ("failed", 3)
    assert gc.run_command([sys.executable, "-c", "pass"], tmp_path / "ok.log", 60) == ("ok", 0)


def test_a_cut_suite_keeps_its_finished_runs_and_records_the_cut_one(write_suite, tiny_suite_text, tmp_path):
    from swanbench import rundir, runner
    from swanbench.suite import load_suite

    path = write_suite(tiny_suite_text.replace('optimizer = ["adamw"]', 'optimizer = ["adamw", "sgd"]'))
    suite = load_suite(path)
    out = tmp_path / "cut"
    first, second = runner.plan(suite, out)
    runner.write_config(suite, first.run, first.run_dir)
    assert runner.execute(first.run_dir, 300) == "ok"
    runner.write_config(suite, second.run, second.run_dir)  # started, then the check's time ran out
    assert gr.complete_cut_suite(path, out, publish=False) == [second.run.run_id]
    rows = {r["run_id"]: r for r in csv.DictReader(open(out / "runs.csv"))}
    assert rows[first.run.run_id]["status"] == "ok"
    assert rows[second.run.run_id]["status"] == "timeout" and "time for this suite ran out" in \
        rows[second.run.run_id]["error"]
    assert rundir.run_status(second.run_dir) == "timeout"  # a rerun retries it (timeout is not final)


def test_the_archive_respects_the_limits(tmp_path):
    folder = tmp_path / "nvidia-h200"
    (folder / "gpu-quick" / "runs" / "abc-s0").mkdir(parents=True)
    (folder / "gpu-check").mkdir()
    (folder / "other").mkdir()
    (folder / "gpu-check" / "summary.md").write_text("# summary\n" * 50)
    (folder / "gpu-quick" / "runs.csv").write_text("run_id,status\nabc-s0,ok\n")
    (folder / "gpu-quick" / "runs" / "abc-s0" / "memory_snapshot.pickle").write_bytes(os.urandom(180_000))
    (folder / "gpu-quick" / "runs" / "abc-s0" / "log.txt").write_bytes(os.urandom(120_000))
    (folder / "gpu-quick" / "curves.csv").write_bytes(os.urandom(100_000))
    (folder / "other" / "not-ours.txt").write_text("committed earlier")
    archive, left = gr.pack(folder, tmp_path / "out" / "gpu-check-nvidia-h200.tar.gz", "results/nvidia-h200",
                            include=("gpu-check", "gpu-quick"), listing="gpu-check/left-out.txt",
                            limit_bytes=200_000, member_limit=150_000)
    assert archive.stat().st_size <= 200_000
    assert left == ["gpu-quick/runs/abc-s0/memory_snapshot.pickle", "gpu-quick/runs/abc-s0/log.txt"]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        listing = tar.extractfile("results/nvidia-h200/gpu-check/left-out.txt").read().decode()
    assert sorted(names) == ["results/nvidia-h200/gpu-check/left-out.txt", "results/nvidia-h200/gpu-check/summary.md",
                             "results/nvidia-h200/gpu-quick/curves.csv", "results/nvidia-h200/gpu-quick/runs.csv"]
    assert listing.splitlines() == left
    assert os.listdir(tmp_path / "out") == [archive.name]  # one file comes back
    assert gr.ARCHIVE_LIMITS == {"files": 8, "file_bytes": 16 * 2**20}


# --------------------------------------------------------------------------------------------------
# The real run's orchestration, on CPU
# --------------------------------------------------------------------------------------------------

KERNELS = """
name = "kernels-small"
kind = "kernels"
[kernels]
operators = ["grad_norm:rowwise", "grad_whiten:ns-b0.5-k6"]
models = ["nano"]
shapes = ["qkvo"]
device = "cpu"
repeats = 2
min_repeats = 1
matmul_sizes = [64]
copy_mib = 1
summary_models = ["nano"]
max_total_seconds = 60
"""


@pytest.mark.slow
def test_the_real_run_on_cpu_writes_one_archive_of_every_step(write_suite, tiny_suite_text, tmp_path):
    """The same orchestration as on the GPU (preflight, tests, two suites, finish, archive), with CPU suites
    and a small test file in place of the GPU ones."""
    suites = {"gpu-kernels": str(write_suite(KERNELS, "kernels")), "gpu-quick": str(write_suite(tiny_suite_text))}
    steps = tuple(gc.Step(name, 120, "test") for name in ("preflight", "pytest-gpu", "gpu-kernels", "gpu-quick",
                                                          "finish"))
    check = gc.Check(sys.executable, tmp_path / "results", tmp_path / "out", budget=600, steps=steps, suites=suites,
                     pytest_args=("tests/test_env.py",), need_cuda=False, command_line="gpu-check (CPU test)")
    said: list[str] = []
    assert gc.real_run(check, say=said.append) == 0, "\n".join(said)
    assert said[0].startswith("GPU check plan (budget 600 s")
    (device,) = os.listdir(tmp_path / "results")
    assert sorted(os.listdir(tmp_path / "out")) == [f"gpu-check-{device}.tar.gz", "gpu-check-summary.md"]
    with tarfile.open(tmp_path / "out" / f"gpu-check-{device}.tar.gz") as tar:
        names = set(tar.getnames())
    root = f"results/{device}"
    for member in ("gpu-check/summary.md", "gpu-check/steps.csv", "gpu-check/env.json", "gpu-check/command.txt",
                   "gpu-check/pytest-gpu.xml", "gpu-check/logs/pytest-gpu.log", "gpu-kernels/kernels.csv",
                   "gpu-kernels/headline.md", "gpu-quick/runs.csv", "gpu-quick/curves.csv"):
        assert f"{root}/{member}" in names, member
    assert {n.split("/")[2] for n in names} == {"gpu-check", "gpu-kernels", "gpu-quick"}
    steps_csv = list(csv.DictReader(open(tmp_path / "results" / device / "gpu-check" / "steps.csv")))
    assert [(r["step"], r["status"]) for r in steps_csv] == [(s.name, "ok") for s in steps]
    assert (tmp_path / "results" / device / "gpu-check" / "command.txt").read_text().startswith("gpu-check (CPU test)")
    summary = (tmp_path / "out" / "gpu-check-summary.md").read_text()
    assert "tests: 0 failed, 0 errors" in summary and "| nano | adamw | ok |" in summary


def test_the_summary_counts_the_estimate_error_and_the_tests(tmp_path):
    runs = tmp_path / "runs.csv"
    gib = 2**30
    runs.write_text("model,optimizer,status,peak_allocated_bytes,unexplained_bytes,estimate_bytes\n"
                    f"1b,adamw,ok,{100 * gib},{3 * gib},{97 * gib}\n"      # estimate 3% low: within 5%
                    f"1b,swan,ok,{100 * gib},{-8 * gib},{108 * gib}\n"     # 8% high: outside
                    "1b,sgd,oom,,,\n")                                     # no measurement: not judged
    lines = gr.train_summary_lines(runs)
    assert "| 1b | adamw | ok | 100.00 | 97.00 | -3.0% |" in lines[2]
    assert "| 1b | swan | ok | 100.00 | 108.00 | +8.0% |" in lines[3]
    assert lines[-1].startswith("Estimate within 5% of max_memory_allocated (the target) in 1 of 2 runs")
    junit = tmp_path / "pytest-gpu.xml"
    junit.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
                     '<testcase classname="tests.test_a" name="test_ok"/>'
                     '<testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase>'
                     '<testcase classname="tests.test_a" name="test_skip"><skipped/></testcase>'
                     '</testsuite></testsuites>')
    assert gr.pytest_counts(junit) == {"tests": 3, "failures": 1, "errors": 0, "skipped": 1,
                                       "failed": ["tests.test_a::test_bad"]}
    assert gr.pytest_counts(tmp_path / "missing.xml") == {}
