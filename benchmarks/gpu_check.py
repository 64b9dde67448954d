"""The GPU check: the project's GPU tests and its two GPU suites in one command of at most 8 minutes on a
bare GPU machine, packed into one archive of a results folder ready to commit (docs/gpu-check.md).

    benchmarks/gpu-check.sh [--dry-run] [--out-root DIR] [--archive-dir DIR] [--budget-s 480]

The real run, from the source tree (PYTHONPATH; nothing is installed unless `.whl/` holds wheels, which go
to a private folder with `pip install --no-index --no-deps --target`):

1. `preflight`: wheels (if any), CUDA, the environment record (`swanbench env --json`: versions, device,
   TF32 settings) and `nvidia-smi`;
2. `pytest-gpu`: `pytest -m gpu tests` (junit xml and the text summary);
3. `gpu-kernels`: `swanbench run suites/gpu-kernels.toml`;
4. `gpu-quick`: `swanbench run suites/gpu-quick.toml` (the check's folders start empty: all re-measured);
5. `finish`: a cut suite's in-flight run recorded as timeout and its tables assembled and published, the
   summary, then the archive `gpu-check-<device>.tar.gz` (members `results/<device>/...`) in the archive
   folder ($OUT where set) with `gpu-check-summary.md` beside it.

Every step runs under its own time limit (`STEPS`: SIGTERM, then SIGKILL after `GRACE_S`): a slow step is
cut and recorded as "timeout" and the next one still runs. Time a step leaves unused goes to the next.

`--dry-run` runs anywhere (CI): the plan and its budgets (total <= 8 min), both suites validated by the
real CLI with every package that the GPU machine lacks hidden from Python, a static check that every
package the run imports is preinstalled there or in `.whl/` (or optional, imported only where a feature
needs it), and a time model of the train suite on an H200 against its step's budget.

Modules: this one (plan, steps, the two modes), `gpu_check_model` (the time model), `gpu_check_packages`
(the package check and the probe), `gpu_check_results` (cut suites, summary, archive). They import only
the standard library at the top: the real run's own process needs nothing else until it finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

# A script run from the tree: its sibling modules are importable as plain modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check_model import kernel_time_problems, train_time_lines  # noqa: E402
from gpu_check_packages import PREINSTALLED, ROOT, WHEEL_DIR, package_problems, probe, wheel_distributions  # noqa: E402
from gpu_check_results import (StepResult, complete_cut_suite, pack, summary_markdown,  # noqa: E402
                               write_steps)

TOTAL_BUDGET_S = 480           # the whole command, on an H200, start to archive
GRACE_S = 5                    # between SIGTERM and SIGKILL of a step that ran out of time
TRAIN_SUITE = "suites/gpu-quick.toml"
KERNEL_SUITE = "suites/gpu-kernels.toml"


@dataclass(frozen=True)
class Step:
    name: str
    budget_s: int
    what: str


# The plan. Budgets in seconds on an H200 (docs/gpu-check.md gives their basis); they sum to <= 480.
STEPS = (
    Step("preflight", 15, "wheels (if any), CUDA, versions and TF32 settings (env.json), nvidia-smi"),
    Step("pytest-gpu", 60, "pytest -m gpu tests: the GPU measurement tests, a real CUDA OOM, the kernel suite on CUDA"),
    Step("gpu-kernels", 55, f"swanbench run {KERNEL_SUITE}: whitening fp32/TF32/bf16, SR-Sinkhorn, GradNorm"),
    Step("gpu-quick", 330, f"swanbench run {TRAIN_SUITE}: 21 runs, 7 optimizers x 1b/350m/60m, bf16"),
    Step("finish", 15, "complete a cut suite, summary, archive"),
)


def slug(name: str | None) -> str:
    """A folder name from a device name: "NVIDIA H200" -> "nvidia-h200"."""
    text = re.sub(r"[^a-z0-9]+", "-", (name or "unknown-device").lower()).strip("-")
    return text or "unknown-device"


# --------------------------------------------------------------------------------------------------
# The plan and its time
# --------------------------------------------------------------------------------------------------

def plan_lines(steps: Iterable[Step] = STEPS, total: int = TOTAL_BUDGET_S) -> list[str]:
    steps = list(steps)
    width = max(len(s.name) for s in steps)
    lines = [f"GPU check plan (budget {total} s = {total / 60:g} min; a step that runs out is cut and "
             "recorded as timeout; unused time passes to the next step):"]
    start = 0
    for s in steps:
        lines.append(f"  {s.name:<{width}}  {start:>3}-{start + s.budget_s:>3} s  ({s.budget_s:>3} s)  {s.what}")
        start += s.budget_s
    lines.append(f"  {'total':<{width}}  {start:>3} s of {total} s")
    return lines


def allotment(step_index: int, steps: list[Step], elapsed_s: float, total: int = TOTAL_BUDGET_S) -> float:
    """Seconds step `step_index` may run, `elapsed_s` into the check: everything left but what the later
    steps were promised (so a step gets its budget plus what earlier steps left unused), never below 1."""
    later = sum(s.budget_s for s in steps[step_index + 1:])
    return max(1.0, total - elapsed_s - later)


# --------------------------------------------------------------------------------------------------
# Running steps
# --------------------------------------------------------------------------------------------------

def run_command(argv: list[str], log_path: Path, limit_s: float, env: dict[str, str] | None = None,
                cwd: Path = ROOT) -> tuple[str, int | None]:
    """Run `argv` (its own process group, output to `log_path`) for at most `limit_s` seconds: SIGTERM
    GRACE_S before the limit, SIGKILL at it. Returns (status ok | failed | timeout, exit code)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=max(0.5, limit_s - GRACE_S))
            return ("ok" if code == 0 else "failed"), code
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGTERM)  # the runner turns it into Ctrl-C: finished runs stay assembled
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            log.write(f"\n[gpu-check] cut after {limit_s:.0f} s (time limit)\n")
            return "timeout", proc.returncode


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def child_env(site: Path | None, cache: Path) -> dict[str, str]:
    """The steps' environment: this tree (and the wheels' folder) on PYTHONPATH, a private token cache."""
    paths = [str(ROOT)] + ([str(site)] if site else []) + [p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "SWANBENCH_CACHE": str(cache),
            "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}


def install_wheels(python: str, site: Path, log_path: Path, limit_s: float) -> tuple[str, list[str]]:
    """pip install --no-index --no-deps --target SITE .whl/*.whl (nothing to do without wheels)."""
    wheels = sorted(WHEEL_DIR.glob("*.whl"))
    if not wheels:
        return "ok", []
    status, _ = run_command([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                             "--target", str(site), *map(str, wheels)], log_path, limit_s)
    return status, [w.name for w in wheels]


# --------------------------------------------------------------------------------------------------
# The two modes
# --------------------------------------------------------------------------------------------------

def dry_run(out_root: Path, budget: int = TOTAL_BUDGET_S, python: str = sys.executable,
            say: Callable[[str], None] = print) -> int:
    """Plan, packages, suites and time model, on any machine. Returns 0 when the check is ready, else 2."""
    steps = list(STEPS)
    for line in plan_lines(steps, budget):
        say(line)
    problems = []
    planned = sum(s.budget_s for s in steps)
    if planned > budget:
        problems.append(f"the plan takes {planned} s > the {budget} s budget")
    wheels = wheel_distributions()
    say(f"wheels in {WHEEL_DIR.relative_to(ROOT)}/: {', '.join(sorted(wheels)) or 'none'}")
    package_issues, hidden = package_problems(ROOT, wheels)
    problems += package_issues
    say(f"packages: preinstalled on the GPU machine: {', '.join(PREINSTALLED)}; optional, hidden in the probe: "
        f"{', '.join(sorted(hidden)) or 'none'}")
    budgets = {s.name: s.budget_s for s in steps}
    sys.path.insert(0, str(ROOT))
    lines, train_issues = train_time_lines(ROOT / TRAIN_SUITE, budgets["gpu-quick"])
    for line in lines:
        say(line)
    problems += train_issues + kernel_time_problems(ROOT / KERNEL_SUITE, budgets["gpu-kernels"])
    report = _run_probe(python, sorted(hidden), out_root)
    problems += report.get("problems", [])
    hidden_text = f"hidden: {', '.join(report['hidden'])}" if report.get("hidden") else "nothing hidden"
    say(f"probe ({hidden_text}): every module imported, {report.get('embedded_documents', 0)} embedded documents; "
        f"validated by swanbench run --dry-run: {', '.join(report.get('validated', [])) or 'none'}")
    if report.get("skipped_methods"):
        say(f"kernel methods whose operator lacks a keyword here (rows will be 'skipped'): "
            f"{', '.join(report['skipped_methods'])}")
    for problem in problems:
        say(f"problem: {problem}")
    say("dry run: ready" if not problems else f"dry run: {len(problems)} problem(s)")
    return 0 if not problems else 2


def _run_probe(python: str, hidden: list[str], out_root: Path) -> dict[str, Any]:
    env = child_env(None, out_root / "cache")
    argv = [python, str(Path(__file__).resolve()), "_probe", "--hide", ",".join(hidden), "--out-root", str(out_root)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = " ".join((proc.stderr or proc.stdout).split())[-600:]
    return {"problems": [f"the probe exited {proc.returncode} without a report: {tail}"]}


@dataclass
class Check:
    """One real run: where things go, and what runs (the defaults are the GPU check; tests swap in small
    CPU suites and steps to run the same orchestration on CPU)."""

    python: str
    out_root: Path            # results/<device-name>/ goes under it
    archive_dir: Path
    budget: int = TOTAL_BUDGET_S
    steps: tuple[Step, ...] = STEPS
    suites: dict[str, str] = field(default_factory=lambda: {"gpu-kernels": KERNEL_SUITE, "gpu-quick": TRAIN_SUITE})
    pytest_args: tuple[str, ...] = ("-m", "gpu", "tests")
    need_cuda: bool = True
    command_line: str = field(default_factory=lambda: shlex.join(["benchmarks/gpu-check.sh", *sys.argv[1:]]))
    started: float = field(default_factory=time.monotonic)
    results: list[StepResult] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def command(self, step: str, results_dir: Path, check_dir: Path) -> list[str]:
        if step == "pytest-gpu":
            return [self.python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    f"--junitxml={check_dir / 'pytest-gpu.xml'}", *self.pytest_args]
        return [self.python, "-m", "swanbench", "run", self.suites[step], "--out", str(results_dir / step)]


def real_run(check: Check, say: Callable[[str], None] = print) -> int:
    """The check on a GPU machine; returns 0 when every step ended ok, 1 otherwise (the archive is written
    either way), 2 when there is no GPU or no archive could be written."""
    steps = list(check.steps)
    for line in plan_lines(steps, check.budget):
        say(line)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"swanbench-gpu-check-{os.getpid()}"
    site, cache = work / "site", work / "cache"
    env = child_env(site if WHEEL_DIR.is_dir() else None, cache)
    status, wheels = install_wheels(check.python, site, work / "wheels.log",
                                    allotment(0, steps, check.elapsed(), check.budget))
    sys.path[:0] = [str(ROOT), str(site)]
    info, note = _preflight(check.python, env, work / "preflight.log",
                            allotment(0, steps, check.elapsed(), check.budget))
    if not info:
        say(f"preflight failed, nothing measured: {note}")
        return 2
    if check.need_cuda and not info.get("cuda_available"):
        say("no CUDA device here (torch sees none): run `benchmarks/gpu-check.sh --dry-run` on a machine "
            "without a GPU")
        return 2
    results_dir = check.out_root / slug(info.get("device_name"))
    check_dir = results_dir / "gpu-check"
    _fresh(results_dir, (check_dir.name, *check.suites))
    (check_dir / "logs").mkdir(parents=True, exist_ok=True)
    (check_dir / "env.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    for log in (work / "wheels.log", work / "preflight.log"):
        if log.is_file():
            (check_dir / "logs" / log.name).write_text(log.read_text())
    _nvidia_smi(check_dir / "nvidia-smi.txt")
    check.results.append(StepResult(steps[0].name, "ok" if status == "ok" and info else "failed", check.elapsed(),
                                    steps[0].budget_s, note=f"wheels: {', '.join(wheels) or 'none'}"))
    say(f"{steps[0].name}: {info.get('device_name')}, torch {info.get('torch_version')}, TF32 matmul "
        f"{info.get('cuda_matmul_allow_tf32')}; results in {results_dir}")
    for index, step in enumerate(steps[1:-1], start=1):
        limit = allotment(index, steps, check.elapsed(), check.budget)
        t0 = time.monotonic()
        status, code = run_command(check.command(step.name, results_dir, check_dir),
                                   check_dir / "logs" / f"{step.name}.log", limit, env)
        check.results.append(StepResult(step.name, status, time.monotonic() - t0, limit, code))
        say(f"{step.name}: {status} in {time.monotonic() - t0:.0f} s (allotted {limit:.0f} s, exit {code})")
    try:
        return _finish(check, steps, results_dir, check_dir, info, say)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)  # the wheels' folder and the token cache (logs were copied)


def _finish(check: Check, steps: list[Step], results_dir: Path, check_dir: Path, info: dict,
            say: Callable[[str], None]) -> int:
    """A cut train suite completed, command/plan/steps/summary written, everything packed."""
    t0 = time.monotonic()
    notes = []
    for r in check.results:
        suite = check.suites.get(r.name)
        if suite and r.status != "ok" and (results_dir / r.name / "runs").is_dir():
            try:
                marked = complete_cut_suite(ROOT / suite, results_dir / r.name)
                notes.append(f"{r.name} completed after '{r.status}': {len(marked)} run(s) marked timeout")
            except Exception as exc:  # noqa: BLE001 - the archive matters more than a tidy table
                notes.append(f"{r.name} could not be completed: {type(exc).__name__}: {exc}")
    command = check.command_line
    (check_dir / "command.txt").write_text(f"{command}\n# git {info.get('git_rev')}, budget {check.budget} s\n")
    (check_dir / "plan.txt").write_text("\n".join(plan_lines(steps, check.budget)) + "\n")
    check.results.append(StepResult(steps[-1].name, "ok", 0.0, allotment(len(steps) - 1, steps, check.elapsed(),
                                                                          check.budget), note="; ".join(notes)))
    summary = summary_markdown(info.get("device_name") or results_dir.name, check.results, results_dir,
                               check_dir, command)
    check.results[-1].seconds = time.monotonic() - t0
    write_steps(check.results, check_dir / "steps.csv")
    (check_dir / "summary.md").write_text(summary)
    archive = Path(check.archive_dir) / f"gpu-check-{results_dir.name}.tar.gz"
    try:
        archive, left = pack(results_dir, archive, f"results/{results_dir.name}",
                             include=(check_dir.name, *check.suites), listing=f"{check_dir.name}/left-out.txt")
        (Path(check.archive_dir) / "gpu-check-summary.md").write_text(summary)
    except OSError as exc:
        say(f"could not write the archive {archive}: {exc}")
        return 2
    say(summary)
    say(f"archive: {archive} ({archive.stat().st_size / 2**20:.1f} MiB; left out: {', '.join(left) or 'nothing'}); "
        f"took {check.elapsed():.0f} s of {check.budget} s")
    return 0 if all(r.status == "ok" for r in check.results) else 1


def _preflight(python: str, env: dict, log: Path, limit_s: float) -> tuple[dict, str]:
    """`swanbench env --json` in a fresh process (this tree, the wheels): the device and the versions."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.with_suffix(".json")
    code = (f"import json; from swanbench import env; "
            f"open({str(out)!r}, 'w').write(json.dumps(env.collect(), default=str))")
    status, rc = run_command([python, "-c", code], log, limit_s, env)
    try:
        return json.loads(out.read_text()), status
    except (OSError, json.JSONDecodeError):
        return {}, f"preflight {status} (exit {rc}): {' '.join(log.read_text().split())[-300:]}"


def _nvidia_smi(path: Path) -> None:
    try:
        text = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=15).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        text = f"nvidia-smi: {exc}\n"
    path.write_text(text)


def _fresh(results_dir: Path, names: Iterable[str]) -> None:
    """The check's own folders start empty (their committed versions are in git); others are left alone."""
    import shutil

    for name in names:
        shutil.rmtree(results_dir / name, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_probe"]:  # internal: the dry run's probe, in a fresh process
        inner = argparse.ArgumentParser(prog="gpu_check.py _probe")
        inner.add_argument("--hide", default="")
        inner.add_argument("--out-root", type=Path, required=True)
        args = inner.parse_args(argv[1:])
        return probe([h for h in args.hide.split(",") if h], str(args.out_root), (TRAIN_SUITE, KERNEL_SUITE))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="plan, packages, suites; run nothing on a GPU")
    parser.add_argument("--out-root", type=Path, default=ROOT / "results",
                        help="results/<device-name>/ is written under it (default: this tree's results/)")
    parser.add_argument("--archive-dir", type=Path, default=None,
                        help="where the archive goes (default: $OUT if set, else /tmp/swanbench-gpu-check)")
    parser.add_argument("--budget-s", type=int, default=TOTAL_BUDGET_S, help="the whole check's time (s)")
    parser.add_argument("--python", default=sys.executable, help="the Python the steps run with")
    args = parser.parse_args(argv)
    if args.dry_run:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="gpu-check-dry-") as tmp:
            return dry_run(Path(tmp), args.budget_s, args.python)
    archive_dir = args.archive_dir or Path(os.environ.get("OUT") or "/tmp/swanbench-gpu-check")
    return real_run(Check(args.python, args.out_root, archive_dir, args.budget_s))


if __name__ == "__main__":
    sys.exit(main())
