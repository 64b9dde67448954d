"""The regression gate's tolerances: how each class of measure is compared, and how much change it allows.

Which columns are in which class, and which direction is better, comes from the column catalogue
(`swanbench.schema`); the comparison kinds and the bands of each class are here (`CLASS_RULES`). Tolerances
are data: these built-in defaults, optionally overridden by a TOML file next to the baseline
(``<baseline stem>.tolerances.toml``) or given with ``--tolerances``; parsed, never executed. An unknown key,
a bad number or a metric listed in two classes is a one-line `CheckError`.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from swanbench import schema, userfiles
from swanbench.hints import did_you_mean

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
    # other processes, which differ between machines, drivers and fresh or warm environments by tens of
    # percent for every optimizer alike: compared as a ratio to the reference optimizer's run in the same
    # results set (as the times are), and the reference's own value only for a gross change (a factor 2).
    "process": {"compare": "ratio", "band": 0.15, "reference_band": 1.0},
    # Whole phases against the same phase of the reference run.
    "times": {"compare": "ratio", "band": 0.5, "iqr_factor": 2.0, "max_band": 2.0},
    # The optimizer's own work against the forward+backward of its own run: the same work for every
    # optimizer, timed in the same steps, so a host that speeds up or slows down between runs moves both
    # alike. (Against AdamW's whole step from another run, one gate run on a host that slowed between runs
    # read SWAN's whitening +90% while its own run's forward+backward was also 51% slower than AdamW's
    # identical one; docs/check.md.) Not against AdamW's optimizer step: ~1 ms, its IQR/median reached 3.8.
    "optimizer_times": {"compare": "ratio", "band": 0.5, "iqr_factor": 2.0, "max_band": 2.0,
                        "reference_metric": "forward_backward_ms", "reference_run": "own"},
    # Tokens over the summed step time: it has no IQR of its own, its spread is that of step_ms.
    "throughput": {"compare": "ratio", "band": 0.5, "iqr_factor": 2.0, "max_band": 2.0, "spread_metric": "step_ms"},
    "losses": {"compare": "absolute", "epsilon": 0.02},
    # exp(loss): a relative band of 2 % is the loss epsilon of 0.02 nats (exp(0.02) - 1).
    "perplexity": {"compare": "relative", "band": 0.02},
    "progress": {"compare": "relative", "band": 0.25},
}


def noise_band(rule: "MetricRule", *relative_spreads: float) -> float:
    """The band a ratio rule allows when the runs have these relative spreads (IQR / median): the rule's own
    limit, widened to `iqr_factor` times their root sum of squares."""
    return max(rule.limit, rule.iqr_factor * math.hypot(*relative_spreads))


def too_noisy(rule: "MetricRule", band: float) -> bool:
    """A band wider than the rule's `max_band`: the runs' spread hides any smaller change ("too noisy to judge").
    The gate, the report and the figures all ask this one question."""
    return band > rule.max_band


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
    "ratio": {"compare", "metrics", "band", "iqr_factor", "reference_metric", "max_band", "spread_metric",
              "reference_band", "reference_run"},
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
    `reference_metric` (default: the same metric) of the reference optimizer's run (`reference_run =
    "reference"`, the default) or of the run itself (`"own"`: no other run's timing enters), and a band wider than
    `max_band` means the runs were too noisy to judge a pass (a change beyond it still fails). The spread
    is the metric's own IQR / median, or that of `spread_metric` for a metric without an IQR column.
    A ratio cannot judge the reference optimizer's own value (its ratio is 1); `reference_band`, when set,
    judges it as a relative change with that band (for gross changes only: a leak, not the environment).
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
    reference_band: float | None = None
    reference_run: str = "reference"  # whose reference_metric divides: the reference optimizer's run, or "own"


REFERENCE_RUNS = ("reference", "own")


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
    (replaces it, but for its metrics, when the file changes its `compare`, whose keys differ)."""
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
            if same_kind:
                merged[key][name] = {**default, **spec}
            else:  # another kind has other keys; the class's columns stay unless the file lists its own
                kept = {"metrics": default["metrics"]} if isinstance(default, Mapping) and "metrics" in default else {}
                merged[key][name] = {**copy.deepcopy(kept), **copy.deepcopy(spec)} if isinstance(spec, Mapping) \
                    else copy.deepcopy(spec)
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
    reference_run = spec.get("reference_run", "reference")
    if reference_run not in REFERENCE_RUNS:
        raise CheckError(f"{where}: reference_run must be one of {', '.join(REFERENCE_RUNS)}, got {reference_run!r}")
    if reference_run == "own" and not spec.get("reference_metric"):
        raise CheckError(f"{where}: reference_run = \"own\" needs a reference_metric (a metric over itself is 1)")
    return [MetricRule(metric=m, klass=name, compare=compare, better=_better(m, better), limit=limit,
                       iqr_factor=_number(spec, "iqr_factor", where=where),
                       reference_metric=spec.get("reference_metric"), spread_metric=spec.get("spread_metric"),
                       max_band=_number(spec, "max_band", where=where) if "max_band" in spec else math.inf,
                       reference_band=_number(spec, "reference_band", where=where) if "reference_band" in spec
                       else None, reference_run=reference_run)
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
    doc = userfiles.read_toml(path, CheckError)
    _reject_unknown(doc, _TOP_KEYS, str(path))
    return tolerances_from_dict(_merge(DEFAULT_TOLERANCES, doc, str(path)), str(path))
