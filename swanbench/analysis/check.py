"""The regression gate: compare a results set (`runs.csv`) against a committed baseline.

`swanbench check RESULTS --baseline FILE` matches every baseline run to the run of the same identity in
RESULTS and compares each measure with the rule of its class:

- ``exact``    byte counts by role (parameters, gradients, optimizer state) must equal the baseline.
- ``relative`` allocator and process peaks within a band that is a factor either way (0.05: 1.05x).
- ``ratio``    times, as a ratio to the reference optimizer's run (AdamW) of the same identity in the
               *same* results set, so a faster or slower CI machine cancels out; then as ``relative``.
               The band widens with the runs' own spread (the ``<name>_iqr_ms`` columns).
- ``absolute`` losses on a fixed seed within an absolute epsilon (nats).

Each measure has a better direction (``lower``, ``higher`` or ``none`` = any change is suspect). Both
directions are reported; only the bad one fails, and a change beyond the band in the good direction
says "update the baseline". A missing run, a changed schema, a value present in the baseline but now
empty, or a corrupt or missing baseline is an error or a failure, never a pass.

Tolerances are data: built-in defaults (``DEFAULT_TOLERANCES``), optionally overridden by a TOML file
next to the baseline (``<baseline stem>.tolerances.toml``) or given with ``--tolerances``.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from swanbench import schema
from swanbench.hints import did_you_mean
from swanbench.schema import RUNS_COLUMNS, RUNS_FILE
from swanbench.tables import TableError, read_table, write_rows_atomic

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SUMMARY_FILE = "check.md"
OK_STATUS = "ok"
# Verdicts: a FAIL* fails the gate; an improvement or a new run passes with a hint to update the baseline.
OK, FAIL = "ok", "FAIL"
IMPROVED, NEW = "improved: update the baseline", "new: update the baseline"
TOO_NOISY = "skip: too noisy to judge"
COMPARE_KINDS = ("exact", "relative", "ratio", "absolute")
BETTER_DIRECTIONS = ("lower", "higher", "none")

# Run identity for matching: the suite, the optimizer, every cell axis of the schema and the seed (the
# columns both tables carry). cell_id is deliberately not part of it: it hashes every hyperparameter, so
# a deliberate hyperparameter change in the suite would turn into "missing run" instead of showing the
# effect on the measures. It is added back automatically when the identity alone is ambiguous (a sweep).
DEFAULT_MATCH_ON = ("suite", "optimizer", *schema.CELL_AXES, "seed")

# How each class of measure is compared; which columns are in which class (and which direction is better)
# comes from the column catalogue (`swanbench.schema`). The bands come from repeated runs of suites/ci.toml;
# docs/check.md says how they were chosen.
CLASS_RULES: dict[str, dict[str, Any]] = {
    # Tensor bytes by role are a pure function of model, dtype and optimizer: no noise at all.
    # The per-group columns (`optimizer_state_bytes.<group>`) say which group of a hybrid grew.
    "bytes": {"compare": "exact"},
    # CUDA allocator events: any new retry or OOM is a regression.
    "allocator_events": {"compare": "exact"},
    # Allocator peaks, the transient inside step() and the profiler's per-category peaks: deterministic for
    # a fixed shape on one torch version; the band absorbs allocator rounding and library-version drift.
    "peaks": {"compare": "relative", "band": 0.05},
    # Whole-process memory includes the interpreter, torch's libraries and (GPU) the CUDA context and
    # other processes, which differ between machines and drivers.
    "process": {"compare": "relative", "band": 0.15},
    # Whole phases against the same phase of the reference run.
    "times": {"compare": "ratio", "band": 0.5, "iqr_factor": 2.0, "max_band": 2.0},
    # The optimizer's own work against the reference's whole training step, not its optimizer step:
    # AdamW's fused step is ~1 ms on the CI model, so a single preemption moves its median and its
    # IQR/median reached 3.8 on a loaded box, while its whole step's stayed at 0.17 (docs/check.md).
    "optimizer_times": {"compare": "ratio", "band": 0.5, "iqr_factor": 2.0, "max_band": 2.0,
                        "reference_metric": "step_ms"},
    # Tokens over the summed step time: it has no IQR of its own, its spread is that of step_ms.
    "throughput": {"compare": "ratio", "band": 0.5, "iqr_factor": 2.0, "max_band": 2.0, "spread_metric": "step_ms"},
    "losses": {"compare": "absolute", "epsilon": 0.02},
    # exp(loss): a relative band of 2 % is the loss epsilon of 0.02 nats (exp(0.02) - 1).
    "perplexity": {"compare": "relative", "band": 0.02},
    "progress": {"compare": "relative", "band": 0.25},
}


def _default_tolerances() -> dict[str, Any]:
    classes = schema.check_classes()
    return {
        "reference_optimizer": "adamw",
        "match_on": list(DEFAULT_MATCH_ON),
        "classes": {name: {**rule, "metrics": classes[name]} for name, rule in CLASS_RULES.items()},
        # Everything not listed is better lower.
        "better": schema.directions(),
    }


# The built-in tolerances, in the same shape as a tolerances TOML file (see docs/check.md).
DEFAULT_TOLERANCES: dict[str, Any] = _default_tolerances()

_CLASS_KEYS = {
    "exact": {"compare", "metrics"},
    "relative": {"compare", "metrics", "band"},
    "ratio": {"compare", "metrics", "band", "iqr_factor", "reference_metric", "max_band", "spread_metric"},
    "absolute": {"compare", "metrics", "epsilon"},
}
_TOP_KEYS = {"reference_optimizer", "match_on", "classes", "better"}
# The key that holds each kind's allowed change, and its default when a class leaves it out.
_LIMIT_KEY = {"relative": ("band", 0.05), "ratio": ("band", 0.5), "absolute": ("epsilon", 0.05)}


class CheckError(ValueError):
    """Input the gate cannot judge: a missing or corrupt baseline, a changed schema, bad tolerances."""


# --------------------------------------------------------------------------------------------- tolerances


@dataclass(frozen=True)
class MetricRule:
    """How one measure is compared.

    `limit` is the allowed change: 0 for exact, a factor minus one for relative and ratio (0.05: at most
    1.05x worse; 1.05x better is an improvement), an absolute amount in the metric's unit for absolute.
    For ratio rules the effective band is `max(limit, iqr_factor * relative spread)`, the reference is
    `reference_metric` (default: the same metric) of the reference optimizer's run, and a band wider than
    `max_band` means the runs were too noisy to judge a pass (a change beyond it still fails). The spread
    is the metric's own IQR / median, or that of `spread_metric` for a metric without an IQR column.
    """

    metric: str
    klass: str
    compare: str
    better: str = "lower"
    limit: float = 0.0
    iqr_factor: float = 0.0
    reference_metric: str | None = None
    max_band: float = math.inf
    spread_metric: str | None = None


@dataclass(frozen=True)
class Tolerances:
    """Rules by metric; a rule's metric may be a glob (`optimizer_state_bytes.*`), see `resolve`."""

    rules: tuple[MetricRule, ...]
    reference_optimizer: str = "adamw"
    match_on: tuple[str, ...] = DEFAULT_MATCH_ON
    source: str = "built-in defaults"

    def resolve(self, columns: Iterable[str]) -> "Tolerances":
        """The rules for the metrics among `columns`, globs expanded (an exact name wins over a glob)."""
        columns = sorted(columns)
        exact = [r for r in self.rules if not _is_glob(r.metric) and r.metric in columns]
        named = {r.metric for r in self.rules}
        expanded = [dataclasses.replace(r, metric=c) for r in self.rules if _is_glob(r.metric)
                    for c in columns if fnmatch.fnmatchcase(c, r.metric) and c not in named
                    and not _is_spread(c)]
        unique = {r.metric: r for r in reversed(expanded)}  # the first glob that matches wins
        return dataclasses.replace(self, rules=tuple(exact + [unique[c] for c in sorted(unique)]))


def _is_glob(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def _is_spread(column: str) -> bool:
    return column.endswith(("_iqr", "_iqr_ms"))


def _better(metric: str, better: Mapping[str, str]) -> str:
    """The better direction of a metric: its own entry, else the first glob entry that matches it."""
    if metric in better:
        return better[metric]
    return next((d for pattern, d in better.items() if fnmatch.fnmatchcase(metric, pattern)), "lower")


_did_you_mean = did_you_mean


def _reject_unknown(keys: Iterable[str], allowed: set[str], where: str) -> None:
    for key in keys:
        if key not in allowed:
            raise CheckError(f"{where}: unknown key {key!r}{_did_you_mean(key, allowed)}")


def _merge(defaults: dict, override: Mapping, where: str) -> dict:
    """Defaults overridden key by key; a class given in the file updates the default class of that name
    (replaces it when the file changes its `compare`, whose keys differ)."""
    merged = copy.deepcopy(defaults)
    for key, value in override.items():
        if key not in ("classes", "better"):
            merged[key] = value
            continue
        if not isinstance(value, Mapping):
            raise CheckError(f"{where}: {key} must be a table")
        for name, spec in value.items():
            default = merged[key].get(name)
            same_kind = isinstance(spec, Mapping) and isinstance(default, Mapping) and \
                spec.get("compare", default["compare"]) == default["compare"]
            merged[key][name] = {**default, **spec} if same_kind else copy.deepcopy(spec)
    return merged


def _number(spec: Mapping, key: str, default: float = 0.0, *, where: str) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise CheckError(f"{where}: {key} must be a non-negative number, got {value!r}")
    return float(value)


def _class_rules(name: str, spec: Any, better: Mapping[str, str], where: str) -> list[MetricRule]:
    where = f"{where}: classes.{name}"
    if not isinstance(spec, Mapping):
        raise CheckError(f"{where}: must be a table")
    compare = spec.get("compare")
    if compare not in COMPARE_KINDS:
        raise CheckError(f"{where}: compare must be one of {', '.join(COMPARE_KINDS)}, got {compare!r}")
    _reject_unknown(spec, _CLASS_KEYS[compare], where)
    metrics = spec.get("metrics")
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise CheckError(f"{where}: metrics must be a non-empty list of column names")
    limit = _number(spec, *_LIMIT_KEY[compare], where=where) if compare in _LIMIT_KEY else 0.0
    for key in ("reference_metric", "spread_metric"):
        if not isinstance(spec.get(key, ""), str):
            raise CheckError(f"{where}: {key} must be a column name")
    return [MetricRule(metric=m, klass=name, compare=compare, better=_better(m, better), limit=limit,
                       iqr_factor=_number(spec, "iqr_factor", where=where),
                       reference_metric=spec.get("reference_metric"), spread_metric=spec.get("spread_metric"),
                       max_band=_number(spec, "max_band", where=where) if "max_band" in spec else math.inf)
            for m in metrics]


def tolerances_from_dict(doc: Mapping[str, Any], source: str = "built-in defaults") -> Tolerances:
    """Validate a tolerances document (defaults already merged in) into rules; errors name the key."""
    _reject_unknown(doc, _TOP_KEYS, source)
    better = doc.get("better", {})
    for metric, direction in better.items():
        if direction not in BETTER_DIRECTIONS:
            raise CheckError(f"{source}: better.{metric} must be one of {', '.join(BETTER_DIRECTIONS)}, "
                             f"got {direction!r}")
    rules: list[MetricRule] = []
    for name, spec in doc.get("classes", {}).items():
        rules.extend(_class_rules(name, spec, better, source))
    seen: dict[str, str] = {}
    for rule in rules:
        if rule.metric in seen:
            raise CheckError(f"{source}: metric {rule.metric!r} is in two classes "
                             f"({seen[rule.metric]} and {rule.klass}); list each metric once")
        seen[rule.metric] = rule.klass
    match_on = doc.get("match_on", list(DEFAULT_MATCH_ON))
    if not isinstance(match_on, list) or not all(isinstance(c, str) for c in match_on) \
            or "optimizer" not in match_on:
        raise CheckError(f"{source}: match_on must be a list of columns that includes 'optimizer'")
    reference = doc.get("reference_optimizer", "adamw")
    if not isinstance(reference, str) or not reference:
        raise CheckError(f"{source}: reference_optimizer must be an optimizer name")
    return Tolerances(tuple(rules), reference, tuple(match_on), source)


def default_tolerances() -> Tolerances:
    return tolerances_from_dict(DEFAULT_TOLERANCES)


def sidecar_path(baseline: Path) -> Path:
    """Where a baseline's own tolerances live: `ci-runs.csv` -> `ci-runs.tolerances.toml`."""
    baseline = Path(baseline)
    return baseline.with_name(f"{baseline.stem}.tolerances.toml")


def load_tolerances(path: Path | None) -> Tolerances:
    """The built-in defaults, overridden by the TOML file at `path` if given (parsed, never executed)."""
    if path is None:
        return default_tolerances()
    path = Path(path)
    if not path.is_file():
        raise CheckError(f"{path}: no such tolerances file")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CheckError(f"{path}: not valid TOML ({exc})") from None
    _reject_unknown(doc, _TOP_KEYS, str(path))
    return tolerances_from_dict(_merge(DEFAULT_TOLERANCES, doc, str(path)), str(path))


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


def _float(value: Any, path: Path, column: str, index: int) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CheckError(f"{path}: row {index + 2}, column {column}: not a number ({value!r})") from None
    return number


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
    runs = [Run(key=_identity(row, tolerances.match_on), status=_text(row.get("status")),
                values={c: _float(row.get(c), path, c, i) for c in numeric}, cell_id=_text(row.get("cell_id")))
            for i, row in enumerate(records)]
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
        metric = f"{rule.metric} / {ref} {rule.reference_metric or rule.metric}"
        if dict(base.key).get("optimizer") == ref and not rule.reference_metric:
            return None  # the reference's own ratio is 1 by definition
        base_ref, now_ref = _reference(base, base_table, ref), _reference(now, now_table, ref)
        if base.values.get(rule.metric) is not None and (base_ref is None or now_ref is None):
            # Without the reference run a time cannot be judged: say so instead of passing silently.
            verdict = f"skip: no {ref} run" if base_ref is None else f"{FAIL}: no {ref} run now"
            return Finding(label, metric, None, None, None, "-", verdict, rule.compare)
        b, b_noise = ratio_value(rule, base, base_ref)
        n, n_noise = ratio_value(rule, now, now_ref)
        if b_noise is not None and n_noise is not None:
            band = max(band, rule.iqr_factor * math.hypot(b_noise, n_noise))
    else:
        b, n = base.values.get(rule.metric), now.values.get(rule.metric)
    limit = limit_text(rule, band)
    if b is None and n is None:
        return None
    if b is None:
        return Finding(label, metric, None, n, None, limit, NEW, rule.compare)
    if n is None:
        return Finding(label, metric, b, None, None, limit, f"{FAIL}: missing now", rule.compare)
    change, verdict = judge(rule, b, n, band)
    if verdict == OK and band > rule.max_band:
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
    tol = tolerances or baseline_tolerances(baseline)
    tol = _shared_identity(tol, baseline, runs_path(results))
    base = load_runs(baseline, tol, "baseline")
    now = load_runs(runs_path(results), tol, "results")
    # Only the measures the baseline has a column for; glob rules (per-group bytes) expand to its columns.
    tol = tol.resolve(base.columns)
    _check_columns(base, now, tol)
    report = CheckReport(str(results), str(baseline), tol.source)
    report.findings = compare_runs(base.runs, now.runs, tol)
    return report


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
