"""The regression gate: compare a results set (`runs.csv`) against a committed baseline.

`swanbench check RESULTS --baseline FILE` matches every baseline run to the run of the same identity in
RESULTS and compares each measure with the rule of its class (`swanbench.analysis.tolerances`):

- ``exact``    byte counts by role (parameters, gradients, optimizer state) must equal the baseline.
- ``relative`` allocator peaks within a band that is a factor either way (0.05: 1.05x).
- ``ratio``    times and process memory (RSS, NVML), as a ratio to the reference optimizer's run (AdamW)
               of the same identity in the *same* results set, so a faster or slower CI machine, or
               another environment, cancels out; then as ``relative``. The band widens with the runs' own
               spread (the ``<name>_iqr_ms`` columns); the reference's own value is judged by itself
               where the class sets ``reference_band`` (RSS: only a change beyond a factor 2).
- ``absolute`` losses on a fixed seed within an absolute epsilon (nats).

Each measure has a better direction (``lower``, ``higher`` or ``none`` = any change is suspect). Both
directions are reported; only the bad one fails, and a change beyond the band in the good direction
says "update the baseline". A missing run, a changed schema, a value present in the baseline but now
empty, or a corrupt or missing baseline is an error or a failure, never a pass; a damaged baseline (a
truncated file, a `nan` or `inf` measure, an empty measure the results have, a bad status) is a
`CheckError`, exit 2, never read as "not measured".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from swanbench.analysis.tolerances import (
    DEFAULT_MATCH_ON, DEFAULT_TOLERANCES, CheckError, MetricRule, Tolerances, default_tolerances, load_tolerances,
    noise_band, sidecar_path, too_noisy, tolerances_from_dict,
)
from swanbench.schema import RUNS_COLUMNS, RUNS_FILE, STATUSES
from swanbench.tables import TableError, check_shape, read_table, write_rows_atomic

# The gate's public surface: its own names and the tolerance names it passes through.
__all__ = [
    "CheckError", "CheckReport", "DEFAULT_MATCH_ON", "DEFAULT_TOLERANCES", "Finding", "MetricRule", "Tolerances",
    "check", "default_tolerances", "judge", "load_tolerances", "render_markdown", "render_text", "runs_path",
    "sidecar_path", "tolerances_from_dict", "update_baseline", "write_summary", "SUMMARY_FILE",
]

SUMMARY_FILE = "check.md"
OK_STATUS = "ok"
# Verdicts: a FAIL* fails the gate; an improvement or a new run passes with a hint to update the baseline.
OK, FAIL = "ok", "FAIL"
IMPROVED, NEW = "improved: update the baseline", "new: update the baseline"
TOO_NOISY = "skip: too noisy to judge"
# Classes whose empty value is an outcome, not a missing measure: tokens to target is empty for a run that
# never reached it (the worst outcome), so a value now is an improvement, not a damaged baseline.
EMPTY_IS_OUTCOME = frozenset({"progress"})
# Identity columns every run has a value in (others, such as parallelism on one rank, may be empty).
NAMED_BY = ("suite", "optimizer", "model", "seed")
# A measure the baseline's column leaves empty for a finished run, though the results have it: the gate
# cannot judge it, so `check` stops with a CheckError (exit 2), never a pass.
BASELINE_EMPTY = "no value in the baseline"

# ------------------------------------------------------------------------------------------------ runs


@dataclass(frozen=True)
class Run:
    """One row of runs.csv: its matching key, a short label, its status and its numeric values."""

    key: tuple[tuple[str, str], ...]
    status: str
    values: Mapping[str, float | None]
    cell_id: str = ""


def _text(value: Any) -> str:
    """A key value as text, so 128 (int) and 128.0 (float, from a column with blanks) match."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _identity(row: Mapping[str, Any], match_on: Sequence[str]) -> tuple[tuple[str, str], ...]:
    key = []
    for col in match_on:
        value = _text(row.get(col))
        if col == "device":  # "cuda:0" and "cuda:1" are the same kind of device
            value = value.split(":")[0]
        key.append((col, value))
    return tuple(key)


def _float(text: str, path: Path, column: str, index: int, judged: bool) -> float | None:
    """A measure from its text in the file: empty is None (not measured); anything else must be a finite
    number where the run is judged (`judged`: status ok). "nan" or "inf" is damage, not a measure: a gate
    that read NaN as "not measured" would pass every comparison against a damaged baseline."""
    text = text.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        raise CheckError(f"{path}: row {index + 2}, column {column}: not a number ({text!r})") from None
    if not math.isfinite(number):
        if judged:
            raise CheckError(f"{path}: row {index + 2}, column {column}: not a finite number ({text!r}); "
                             "a measured value is finite or empty")
        return None  # a failed run's leftovers: its measures are never compared
    return number


def _raw_text(path: Path, columns: Iterable[str]) -> list[dict[str, str]]:
    """The cells of `columns` exactly as written (pandas would read "nan" and an empty cell alike)."""
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=list(columns))
    return frame.to_dict("records")


def _status(row: Mapping[str, Any], path: Path, index: int) -> str:
    status = _text(row.get("status")).strip().lower()
    if status not in STATUSES:
        raise CheckError(f"{path}: row {index + 2}, column status: {status or 'empty'!r} is not a run status "
                         f"({', '.join(STATUSES)})")
    return status


@dataclass(frozen=True)
class RunTable:
    """A validated runs.csv: its columns, its runs, and its rows as read (for writing a baseline)."""

    path: Path
    columns: tuple[str, ...]
    runs: list[Run]
    records: list[dict]


def load_runs(path: Path, tolerances: Tolerances, role: str) -> RunTable:
    """Read and validate a runs.csv (`role` is 'baseline' or 'results', for the error messages)."""
    try:
        frame = read_table(path, required=list(RUNS_COLUMNS) + list(tolerances.match_on))
    except TableError as exc:
        raise CheckError(f"{role}: {exc}") from None
    if frame.empty:
        raise CheckError(f"{role}: {path} has no runs")
    tolerances = tolerances.resolve(frame.columns)
    numeric = {r.metric for r in tolerances.rules}
    numeric |= {m for r in tolerances.rules for m in (r.reference_metric, r.spread_metric) if m}
    numeric |= {c for m in numeric for c in spread_columns(m)}
    numeric &= set(frame.columns)
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    texts = _raw_text(path, sorted(numeric)) if numeric else [{} for _ in records]
    runs = []
    for i, (row, text) in enumerate(zip(records, texts)):
        status = _status(row, path, i)
        values = {c: _float(text[c], path, c, i, judged=status == OK_STATUS) for c in numeric}
        key = _identity(row, tolerances.match_on)
        empty = [c for c, v in key if c in NAMED_BY and not v] + (["schema_version"] if not _text(
            row.get("schema_version")) else [])
        if empty:  # a damaged row would turn into "missing run" (exit 1) instead of bad input (exit 2)
            raise CheckError(f"{path}: row {i + 2}, column {empty[0]}: empty; every run names its "
                             f"{', '.join(NAMED_BY)} and schema_version")
        runs.append(Run(key=key, status=status, values=values, cell_id=_text(row.get("cell_id"))))
    return RunTable(Path(path), tuple(frame.columns), runs, records)


def index_runs(runs: Sequence[Run], ambiguous: set, role: str) -> dict[tuple, Run]:
    """Runs by key; identities in `ambiguous` (a sweep inside one identity) are told apart by cell_id."""
    indexed: dict[tuple, Run] = {}
    for run in runs:
        key = run.key + ((("cell_id", run.cell_id),) if run.key in ambiguous else ())
        if key in indexed:
            raise CheckError(f"{role}: two runs with the same identity {_label(key)} (rerun appended?)")
        indexed[key] = run
    return indexed


def _ambiguous(*tables: Sequence[Run]) -> set:
    ambiguous = set()
    for runs in tables:
        seen: dict[tuple, str] = {}
        for run in runs:
            if run.key in seen and seen[run.key] != run.cell_id:
                ambiguous.add(run.key)
            seen.setdefault(run.key, run.cell_id)
    return ambiguous


def _label(key: tuple, show: Iterable[str] | None = None) -> str:
    shown = [v for c, v in key if show is None or c in show]
    return "/".join(v for v in shown if v) or "run"


# ------------------------------------------------------------------------------------------ comparison


@dataclass(frozen=True)
class Finding:
    """One line of the verdict table. `change` is a fraction for relative/ratio rules, else a difference."""

    run: str
    metric: str
    baseline: float | str | None
    now: float | str | None
    change: float | None
    limit: str
    verdict: str
    compare: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict.startswith(FAIL)

    @property
    def improved(self) -> bool:
        return self.verdict in (IMPROVED, NEW)

    @property
    def skipped(self) -> bool:
        return self.verdict.startswith("skip")


@dataclass
class CheckReport:
    results: str
    baseline: str
    tolerances: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.failed]

    @property
    def improvements(self) -> list[Finding]:
        return [f for f in self.findings if f.improved]

    @property
    def passed(self) -> bool:
        return not self.failures


def _beyond(rule: MetricRule, base: float, now: float, band: float) -> tuple[bool, bool]:
    """(now is above the band, now is below the band). A tiny slack keeps float round-off from failing."""
    if rule.compare in ("relative", "ratio"):
        # A band is a factor either way: 0.5 means 1.5x slower fails and 1.5x faster is an improvement, so
        # both directions are judged alike. Multiplying (not dividing) keeps a zero baseline well defined.
        slack = 1e-12 * max(abs(base), abs(now))
        return now > base * (1.0 + band) + slack, now * (1.0 + band) < base - slack
    slack = 1e-12 * max(abs(base), abs(now), 1.0)
    return now - base > band + slack, base - now > band + slack


def judge(rule: MetricRule, base: float, now: float, band: float) -> tuple[float, str]:
    """(change, verdict) for one value pair; `band` is the allowed change in the bad direction."""
    if rule.compare in ("relative", "ratio"):
        change = (now / base - 1.0) if base else (0.0 if now == base else math.inf)
    else:
        change = now - base
    above, below = _beyond(rule, base, now, band)
    worse, better = {"lower": (above, below), "higher": (below, above), "none": (above or below, False)}[rule.better]
    return change, FAIL if worse else IMPROVED if better else OK


def limit_text(rule: MetricRule, band: float) -> str:
    """The allowed change in the bad direction, as the table shows it (`+50.0%`, `-33.3%`, `exact`)."""
    if rule.compare == "exact":
        return "exact"
    if rule.compare == "absolute":
        return {"lower": "+", "higher": "-", "none": "+-"}[rule.better] + f"{band:.4f}"
    up, down = f"+{band * 100:.1f}%", f"-{band / (1.0 + band) * 100:.1f}%"
    return {"lower": up, "higher": down, "none": f"{up}/{down}"}[rule.better]


def spread_columns(metric: str) -> tuple[str, ...]:
    """Where a table may keep a timed metric's IQR: `step_iqr_ms` (units last) or `step_ms_iqr`."""
    units_last = (metric[: -len("_ms")] + "_iqr_ms",) if metric.endswith("_ms") else ()
    return units_last + (f"{metric}_iqr",)


def _spread(run: Run, metric: str) -> float | None:
    """Relative spread (IQR / median) of a timed metric, when the table carries its IQR."""
    value = run.values.get(metric)
    iqr = next((run.values[c] for c in spread_columns(metric) if run.values.get(c) is not None), None)
    if value is None or iqr is None or value <= 0:
        return None
    return iqr / value


def ratio_value(rule: MetricRule, run: Run, reference: Run | None) -> tuple[float | None, float | None]:
    """(run's metric / reference's metric, relative spread of that ratio) or (None, None)."""
    ref_metric = rule.reference_metric or rule.metric
    value = run.values.get(rule.metric)
    ref = reference.values.get(ref_metric) if reference else None
    if value is None or ref is None or ref <= 0:
        return None, None
    noisy = rule.spread_metric or rule.metric  # whose IQR / median stands for this metric's spread
    spreads = [_spread(run, noisy), _spread(reference, rule.spread_metric or ref_metric)]
    noise = math.hypot(*spreads) if all(s is not None for s in spreads) else None
    return value / ref, noise


def _reference(run: Run, table: Mapping[tuple, Run], reference: str) -> Run | None:
    """The reference optimizer's run with the same identity (the sweep's cell_id ignored)."""
    want = tuple((c, reference if c == "optimizer" else v) for c, v in run.key)
    matches = [r for k, r in table.items() if k[: len(want)] == want and r.status == OK_STATUS]
    return matches[0] if len(matches) == 1 else None


def compare_metric(rule: MetricRule, label: str, base: Run, now: Run, base_table: Mapping, now_table: Mapping,
                   tol: Tolerances) -> Finding | None:
    """One measure of one run, or None when neither side has it (the device cannot give it)."""
    metric, band, ref = rule.metric, rule.limit, tol.reference_optimizer
    if rule.compare == "ratio":
        own = rule.reference_run == "own"  # divided by another metric of the same run: no other run enters
        metric = f"{rule.metric} / {'own' if own else ref} {rule.reference_metric or rule.metric}"
        if not own and dict(base.key).get("optimizer") == ref and not rule.reference_metric:
            if rule.reference_band is None:
                return None  # the reference's own ratio is 1 by definition
            # What no ratio can judge, the reference's own value, is judged on its own, for gross changes
            alone = dataclasses.replace(rule, compare="relative", limit=rule.reference_band, reference_band=None)
            return compare_metric(alone, label, base, now, base_table, now_table, tol)
        base_ref, now_ref = (base, now) if own else (_reference(base, base_table, ref), _reference(now, now_table, ref))
        if base.values.get(rule.metric) is not None and (base_ref is None or now_ref is None):
            # Without the reference run a time cannot be judged: say so instead of passing silently.
            verdict = f"skip: no {ref} run" if base_ref is None else f"{FAIL}: no {ref} run now"
            return Finding(label, metric, None, None, None, "-", verdict, rule.compare)
        b, b_noise = ratio_value(rule, base, base_ref)
        n, n_noise = ratio_value(rule, now, now_ref)
        if b_noise is not None and n_noise is not None:
            band = noise_band(rule, b_noise, n_noise)
    else:
        b, n = base.values.get(rule.metric), now.values.get(rule.metric)
    limit = limit_text(rule, band)
    if b is None and n is None:
        return None
    if b is None:
        # The baseline has the column but no value for a run that finished: a damaged baseline (or one made
        # where the measure failed) must not pass as "new". Only where empty is an outcome (never reached the
        # target) is a value now an improvement.
        verdict = IMPROVED if rule.klass in EMPTY_IS_OUTCOME else BASELINE_EMPTY
        return Finding(label, metric, None, n, None, limit, verdict, rule.compare)
    if n is None:
        return Finding(label, metric, b, None, None, limit, f"{FAIL}: missing now", rule.compare)
    change, verdict = judge(rule, b, n, band)
    if verdict == OK and too_noisy(rule, band):
        verdict = TOO_NOISY  # shown as skipped, not ok: the runs' spread hides any smaller regression
    return Finding(label, metric, b, n, change, limit, verdict, rule.compare)


def _status_finding(label: str, base: Run, now: Run) -> Finding | None:
    if base.status == now.status == OK_STATUS:
        return None
    if base.status == now.status:
        return Finding(label, "status", base.status, now.status, None, "same", OK)
    if base.status == OK_STATUS:
        return Finding(label, "status", base.status, now.status, None, "same", FAIL)
    if now.status == OK_STATUS:
        return Finding(label, "status", base.status, now.status, None, "same", IMPROVED)
    return Finding(label, "status", base.status, now.status, None, "same", f"{FAIL}: status changed")


def _varying_columns(runs: Iterable[Run]) -> list[str]:
    """Identity columns whose value differs between runs: what a label needs to tell runs apart."""
    values: dict[str, set] = {}
    for run in runs:
        for col, value in run.key:
            values.setdefault(col, set()).add(value)
    return [c for c, v in values.items() if len(v) > 1] or ["optimizer"]


def compare_runs(base_runs: Sequence[Run], now_runs: Sequence[Run], tol: Tolerances) -> list[Finding]:
    """Findings for every baseline run (missing ones fail) and every new run (reported, not failed)."""
    ambiguous = _ambiguous(base_runs, now_runs)
    base_table = index_runs(base_runs, ambiguous, "baseline")
    now_table = index_runs(now_runs, ambiguous, "results")
    if not set(base_table) & set(now_table):
        raise CheckError(f"no run of the baseline is in the results (baseline {_label(next(iter(base_table)))}, "
                         f"results {_label(next(iter(now_table)))}): wrong baseline or suite?")
    show = set(_varying_columns(list(base_runs) + list(now_runs))) | {"cell_id"}
    findings: list[Finding] = []
    for key, base in base_table.items():
        label = _label(key, show)
        now = now_table.get(key)
        if now is None:
            findings.append(Finding(label, "run", "present", "missing", None, "-", f"{FAIL}: missing run"))
            continue
        status = _status_finding(label, base, now)
        if status is not None:
            findings.append(status)
            continue  # a failed run has no measures worth comparing; its status says it all
        for rule in tol.rules:
            finding = compare_metric(rule, label, base, now, base_table, now_table, tol)
            if finding is not None:
                findings.append(finding)
    for key in now_table.keys() - base_table.keys():
        findings.append(Finding(_label(key, show), "run", None, "present", None, "-", NEW))
    return findings


def _check_columns(base: RunTable, now: RunTable, tol: Tolerances) -> None:
    """A measure the baseline has must still exist as a column: its disappearance is a schema change."""
    lost = sorted({r.metric for r in tol.rules} - set(now.columns))
    if lost:
        raise CheckError(f"results: {now.path} lacks column(s) {', '.join(lost)} that the baseline "
                         f"{base.path} has (schema changed?)")


def runs_path(results: Path) -> Path:
    """RESULTS may be an output directory (holding runs.csv) or a runs.csv file itself."""
    results = Path(results)
    return results if results.suffix == ".csv" else results / RUNS_FILE


def check(results: Path, baseline: Path, tolerances: Tolerances | None = None) -> CheckReport:
    """Compare RESULTS (directory or runs.csv) against the baseline runs.csv; raises CheckError on bad input."""
    baseline = Path(baseline)
    if not baseline.is_file():
        raise CheckError(f"baseline: {baseline}: no such file (write one deliberately with --update)")
    for role, path in (("baseline", baseline), ("results", runs_path(results))):
        if path.is_file():  # a damaged file is named as such, before its header is read for the identity
            try:
                check_shape(path)
            except TableError as exc:
                raise CheckError(f"{role}: {exc}") from None
    tol = tolerances or baseline_tolerances(baseline)
    tol = _shared_identity(tol, baseline, runs_path(results))
    base = load_runs(baseline, tol, "baseline")
    now = load_runs(runs_path(results), tol, "results")
    # Only the measures the baseline has a column for; glob rules (per-group bytes) expand to its columns.
    tol = tol.resolve(base.columns)
    _check_columns(base, now, tol)
    report = CheckReport(str(results), str(baseline), tol.source)
    report.findings = compare_runs(base.runs, now.runs, tol)
    _refuse_empty_baseline(report.findings, baseline)
    return report


def _refuse_empty_baseline(findings: Sequence[Finding], baseline: Path) -> None:
    """A baseline that lacks values the results have is damaged (or was made where the measure failed):
    a CheckError, so that it can never pass the gate; a deliberate `--update` replaces it."""
    empty = [f for f in findings if f.verdict == BASELINE_EMPTY]
    if empty:
        first = empty[0]
        raise CheckError(f"baseline: {baseline}: {len(empty)} measure(s) empty for runs that finished, though "
                         f"the results have them (first: {first.run} {first.metric}); a damaged baseline? "
                         "write a new one deliberately with --update")


def _header(path: Path) -> set[str] | None:
    """The column names of a CSV file, or None when it cannot be read (load_runs then says why)."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return set(next(csv.reader(fh), []))
    except (OSError, csv.Error, UnicodeDecodeError):
        return None


def _shared_identity(tol: Tolerances, baseline: Path, results: Path) -> Tolerances:
    """Match on the identity columns both tables carry: a baseline written before a cell axis was added
    (steps, data, ...) still matches, on the axes it has. `suite`, `optimizer` and `seed` stay required."""
    headers = [_header(baseline), _header(results)]
    if None in headers:
        return tol
    keep = [c for c in tol.match_on if c in ("suite", "optimizer", "seed") or all(c in h for h in headers)]
    return dataclasses.replace(tol, match_on=tuple(keep))


def baseline_tolerances(baseline: Path) -> Tolerances:
    """The baseline's own tolerances file when it has one, else the built-in defaults."""
    sidecar = sidecar_path(baseline)
    return load_tolerances(sidecar if sidecar.is_file() else None)


def update_baseline(results: Path, baseline: Path, tolerances: Tolerances | None = None) -> int:
    """Write RESULTS' runs as the new baseline (atomically, all columns kept); returns the number of runs."""
    path = runs_path(results)
    table = load_runs(path, _shared_identity(tolerances or baseline_tolerances(baseline), path, path), "results")
    index_runs(table.runs, _ambiguous(table.runs), "results")  # two runs of one identity: ambiguous baseline
    write_rows_atomic(Path(baseline), table.records, RUNS_COLUMNS)
    return len(table.runs)


# ------------------------------------------------------------------------------------------- rendering


def _format_value(value: float | str | None, finding: Finding) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if finding.compare == "ratio":
        return f"{value:.4g}x"
    if finding.metric.endswith("_bytes") or (finding.compare == "exact" and float(value).is_integer()):
        return f"{int(value):,}"
    if finding.compare == "absolute":
        return f"{value:.4f}"
    return f"{value:.4g}"


def _format_change(finding: Finding) -> str:
    c = finding.change
    if c is None:
        return "-"
    if finding.compare in ("relative", "ratio"):
        return f"{c * 100:+.1f}%" if math.isfinite(c) else f"{'+' if c > 0 else '-'}inf"
    if finding.compare == "exact":
        return "0" if c == 0 else f"{int(c):+,}" if float(c).is_integer() else f"{c:+.4g}"
    return f"{c:+.4f}"


HEADERS = ("run", "metric", "baseline", "now", "change", "limit", "verdict")


def table_rows(findings: Sequence[Finding]) -> list[tuple[str, ...]]:
    return [(f.run, f.metric, _format_value(f.baseline, f), _format_value(f.now, f), _format_change(f),
             f.limit, f.verdict) for f in findings]


def headline(report: CheckReport) -> str:
    ok = sum(f.verdict == OK for f in report.findings)
    skipped = sum(f.skipped for f in report.findings)
    word = "PASS" if report.passed else "FAIL"
    return (f"swanbench check: {word} ({len(report.failures)} failed, {len(report.improvements)} improved "
            f"or new, {ok} ok" + (f", {skipped} skipped" if skipped else "") + ")")


def render_text(report: CheckReport) -> str:
    """A fixed-width table for a terminal or CI log, failures first."""
    rows = table_rows(sorted(report.findings, key=lambda f: (not f.failed, not f.improved, not f.skipped)))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(HEADERS)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(HEADERS), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out += ["", headline(report), f"results {report.results} vs baseline {report.baseline} "
            f"(tolerances: {report.tolerances})"]
    if report.improvements and report.passed:
        out.append(_update_hint(report))
    return "\n".join(out)


def _update_hint(report: CheckReport) -> str:
    return ("Better than the baseline beyond its band: if intended, update the baseline with "
            f"`swanbench check {report.results} --baseline {report.baseline} --update`.")


def _md_table(rows: Sequence[Sequence[str]]) -> list[str]:
    escape = lambda s: s.replace("|", "\\|")  # noqa: E731
    return (["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
            + ["| " + " | ".join(escape(c) for c in r) + " |" for r in rows])


def render_markdown(report: CheckReport) -> str:
    """A summary fit for a pull-request comment: verdict, what changed, then every comparison folded."""
    icon = ":white_check_mark:" if report.passed else ":x:"
    out = [f"## {icon} {headline(report)}", "",
           f"Results `{report.results}` against baseline `{report.baseline}` (tolerances: {report.tolerances}). "
           "Times are ratios to the reference optimizer's run in the same results set; "
           "limits are the allowed change in the bad direction.", ""]
    # Failures, then improvements, then what could not be judged (a reviewer should see all three).
    notable = [f for f in report.findings if f.failed or f.improved or f.skipped]
    if notable:
        out += _md_table(table_rows(sorted(notable, key=lambda f: (not f.failed, not f.improved)))) + [""]
    if report.improvements:
        out += [_update_hint(report), ""]
    out += [f"<details><summary>All {len(report.findings)} comparisons</summary>", ""]
    out += _md_table(table_rows(report.findings)) + ["", "</details>", ""]
    return "\n".join(out)


def write_summary(report: CheckReport, path: Path) -> Path:
    """Write the markdown summary atomically-enough (whole file in one write) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_markdown(report))
    tmp.replace(path)
    return path


def report_dict(report: CheckReport) -> dict[str, Any]:
    """The report as plain data for scripts (`swanbench check --json`): the verdict, the counts and every
    finding with its flags; values in the columns' own units (bytes, ms, ratios), None where unknown."""
    def number(value: Any) -> Any:
        return None if isinstance(value, float) and math.isnan(value) else value

    return {
        "passed": report.passed, "headline": headline(report), "results": report.results,
        "baseline": report.baseline, "tolerances": report.tolerances,
        "counts": {"failed": len(report.failures), "improved_or_new": len(report.improvements),
                   "ok": sum(f.verdict == OK for f in report.findings),
                   "skipped": sum(f.skipped for f in report.findings), "total": len(report.findings)},
        "findings": [{"run": f.run, "metric": f.metric, "baseline": number(f.baseline), "now": number(f.now),
                      "change": number(f.change), "limit": f.limit, "verdict": f.verdict, "compare": f.compare,
                      "failed": f.failed, "improved": f.improved, "skipped": f.skipped} for f in report.findings],
    }
