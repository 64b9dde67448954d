"""The GPU check's results: a cut train suite completed, the step table, the summary, and the archive that
comes back from the GPU machine (one file, at most 16 MiB).
"""

from __future__ import annotations

import csv
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARCHIVE_LIMITS = {"files": 8, "file_bytes": 16 * 2**20}  # what comes back from the GPU machine
MAX_MEMBER_BYTES = 4 * 2**20   # a bigger file (a memory snapshot, say) is left out of the archive and listed


@dataclass
class StepResult:
    name: str
    status: str            # ok | failed | timeout | skipped
    seconds: float
    allotted_s: float
    returncode: int | None = None
    note: str = ""


# --------------------------------------------------------------------------------------------------
# Finishing: a cut suite, the summary, the archive
# --------------------------------------------------------------------------------------------------

def complete_cut_suite(suite_path: Path, out_dir: Path, publish: bool = True) -> list[str]:
    """After the train step was cut: its in-flight run (config, no row) becomes a timeout row, the tables
    are assembled from every run that has a row, and published. Returns the run ids marked timeout."""
    from swanbench import rundir, runner, schema
    from swanbench.suite import load_suite

    suite = load_suite(suite_path, check_names=False)
    planned = runner.plan(suite, out_dir)
    marked = []
    for p in planned:
        if (p.run_dir / rundir.CONFIG_FILE).is_file() and rundir.run_status(p.run_dir) is None:
            rundir.record_failure(p.run_dir, schema.TIMEOUT, "cut: the GPU check's time for this suite ran out")
            marked.append(p.run.run_id)
    runner.assemble(out_dir, planned, suite.baseline)
    if publish:
        from swanbench.analysis.publish import publish_suite

        publish_suite(out_dir, baseline=suite.baseline)
    return marked


def pack(folder: Path, archive: Path, arc_root: str, include: tuple[str, ...] | None = None,
         listing: str = "left-out.txt", limit_bytes: int = ARCHIVE_LIMITS["file_bytes"],
         member_limit: int = MAX_MEMBER_BYTES) -> tuple[Path, list[str]]:
    """One .tar.gz of `folder` (its subfolders `include`, or all of it), members under `arc_root`, at most
    `limit_bytes`: files over `member_limit` are left out, then the largest ones until the archive fits.
    What was left out is listed in `folder/listing`, which goes into the archive. Returns (archive, the
    left-out paths relative to `folder`)."""
    folder = Path(folder)
    roots = [folder / name for name in include] if include is not None else [folder]
    files = sorted(p for root in roots if root.is_dir() for p in root.rglob("*")
                   if p.is_file() and p != folder / listing)
    left = [p for p in files if p.stat().st_size > member_limit]
    keep = [p for p in files if p not in left]
    while True:
        rel = [str(p.relative_to(folder)) for p in left]
        (folder / listing).parent.mkdir(parents=True, exist_ok=True)
        (folder / listing).write_text("".join(f"{r}\n" for r in rel) if rel else "nothing left out\n")
        _write_tar(archive, folder, [*keep, folder / listing], arc_root)
        if archive.stat().st_size <= limit_bytes or not keep:
            return archive, rel
        keep.sort(key=lambda p: p.stat().st_size)
        left.append(keep.pop())


def _write_tar(archive: Path, folder: Path, files: list[Path], arc_root: str) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        for p in sorted(files):
            tar.add(p, arcname=f"{arc_root}/{p.relative_to(folder)}", recursive=False)
    os.replace(tmp, archive)


def write_steps(results: list[StepResult], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["step", "status", "seconds", "allotted_s", "returncode", "note"])
        writer.writeheader()
        for r in results:
            writer.writerow({"step": r.name, "status": r.status, "seconds": round(r.seconds, 1),
                             "allotted_s": round(r.allotted_s, 1), "returncode": r.returncode, "note": r.note})


def pytest_counts(junit: Path) -> dict[str, Any]:
    """{tests, failures, errors, skipped, failed: [names]} from pytest's junit xml (empty if missing)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts: dict[str, Any] = {k: sum(int(s.get(k, 0)) for s in suites)
                              for k in ("tests", "failures", "errors", "skipped")}
    counts["failed"] = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
                        if case.find("failure") is not None or case.find("error") is not None]
    return counts


GIB = 2**30


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if number != number else format(number / scale, spec)  # NaN: not measured


def train_summary_lines(runs_csv: Path) -> list[str]:
    """The headline of the train suite: memory three ways, the estimate error, step time, per run."""
    try:
        with open(runs_csv, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return [f"no {runs_csv.name}: the suite produced no run"]
    lines = ["| model | optimizer | status | peak allocated GiB | estimate GiB | estimate error | reserved GiB | "
             "NVML GiB | optimizer state GiB | step ms | whitening ms | tokens/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    within, judged = 0, 0
    for r in rows:
        measured, unexplained = r.get("peak_allocated_bytes"), r.get("unexplained_bytes")
        error = None
        try:
            error = -float(unexplained) / float(measured)  # (estimate - measured) / measured
        except (TypeError, ValueError, ZeroDivisionError):
            pass
        if error is not None:
            judged += 1
            within += abs(error) <= 0.05
        lines.append(f"| {r.get('model')} | {r.get('optimizer')} | {r.get('status')} | "
                     f"{_fmt(measured, '.2f', GIB)} | {_fmt(r.get('estimate_bytes'), '.2f', GIB)} | "
                     f"{_fmt(error, '+.1%')} | {_fmt(r.get('peak_reserved_bytes'), '.2f', GIB)} | "
                     f"{_fmt(r.get('nvml_peak_bytes'), '.2f', GIB)} | "
                     f"{_fmt(r.get('optimizer_state_bytes'), '.2f', GIB)} | {_fmt(r.get('step_ms'), '.1f')} | "
                     f"{_fmt(r.get('whitening_ms'), '.1f')} | {_fmt(r.get('tokens_per_s'), '.0f')} |")
    lines += ["", f"Estimate within 5% of max_memory_allocated (the target) in {within} of {judged} runs "
                  f"with both numbers; {len(rows)} runs in {runs_csv.name}."]
    return lines


def summary_markdown(device_name: str, results: list[StepResult], results_dir: Path, check_dir: Path,
                     command: str) -> str:
    lines = [f"# GPU check on {device_name}", "", f"Command: `{command}`  ",
             f"Written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
             "", "| step | status | seconds | allotted s | note |", "|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.status} | {r.seconds:.1f} | {r.allotted_s:.0f} | {r.note} |" for r in results]
    counts = pytest_counts(check_dir / "pytest-gpu.xml")
    lines += ["", "## pytest -m gpu", ""]
    if counts:
        lines.append(f"{counts['tests']} tests: {counts['failures']} failed, {counts['errors']} errors, "
                     f"{counts['skipped']} skipped (deselected tests not counted)")
        lines += [f"- failed: {name}" for name in counts["failed"]]
    else:
        lines.append("no junit xml: see logs/pytest-gpu.log")
    lines += ["", "## gpu-quick (memory and time per run)", ""]
    lines += train_summary_lines(results_dir / "gpu-quick" / "runs.csv")
    headline = results_dir / "gpu-kernels" / "headline.md"
    lines += ["", "## gpu-kernels (headline.md)", ""]
    lines += headline.read_text().splitlines()[1:] if headline.is_file() else ["no headline.md"]
    return "\n".join(lines) + "\n"


