"""The quality track: tokens-to-target, effective speedup, seed summaries and a few-seed "A beats B" rule.

Pure pandas over the result tables (runs.csv, curves.csv); nothing here trains, reads a log or imports torch.
The question it answers is the papers' central claim: does optimizer X reach the baseline's (AdamW's)
final eval loss with fewer tokens, and how sure are we with a handful of seeds?

Definitions (units in the names: tokens = training tokens seen, as counted in curves.csv `tokens`):

- **Target**: by default the baseline optimizer's `final_eval_loss` in the same suite, the same cell except
  optimizer and its hyperparameters, and the same seed (`annotate_tokens_to_target`).
- **Reaching the target** (`tokens_to_target`): walk the run's eval points in order of tokens; the first
  point with `eval_loss <= target` is the crossing. The crossing tokens (and steps, training seconds) are
  linearly interpolated between that point and the eval point before it. If the very first eval point is
  already at or below the target, its own tokens are returned (nothing is known before it). A run whose
  eval loss never gets there has no value (empty), not a large number. The first crossing counts even if
  the run later rises above the target or diverges: it did reach that loss with that many tokens.
- **Effective speedup**: the baseline run's total tokens (tokens at its final eval point, the paper's
  "Adam's total tokens") divided by the candidate's tokens_to_target. For the baseline itself this is 1
  when its eval loss decreases monotonically, and above 1 if it touched its final loss earlier.
- **Seed summaries** (`seed_summary`): n, mean, std (n-1), sem and a 95% Student-t interval for the mean
  by default. With n = 3 we use t, not the bootstrap: a percentile bootstrap of 3 values has only 10
  distinct resample means and its interval is narrower than the data's own range, so it covers far less
  than its nominal 95%; the t interval (t = 4.30 at 2 degrees of freedom) is wide but honest if the
  seed-to-seed spread is roughly normal. The bootstrap is offered for n >= 10.
- **"A beats B"** (`compare`, `BEATS_RULE`): paired by seed; A beats B only if A is better in every seed
  AND the 95% t interval of the paired differences excludes 0 on A's side (n >= 2 pairs). Either part
  alone is weak with 3 seeds (unanimity happens 1 time in 4 by chance for two equal optimizers, and a
  t-test on 3 pairs leans on normality); requiring both keeps false claims below 5% under either view.
  Otherwise the verdict is "inconclusive". A run without a value (never reached the target, failed) loses
  its pair when `missing_is_worst` and is left out of the interval.
- **"Reaches the target sooner"** (`speedup_verdict`): the same rule applied to log(effective speedup)
  against 0: sooner than the baseline only if the speedup is above 1 in every seed and the interval of
  its geometric mean lies above 1; a seed that never reached the target counts against.
- **Fair verdicts** (`analyze` with the suite's tuning.csv): every verdict states the tuning budget of both
  sides; one between optimizers with unequal budgets, or whose chosen value sits at an edge of its grid
  (`swanbench.analysis.tuning.fairness`), is "not judged" with the reason, the rule's own outcome kept
  beside it. Every candidate is also judged against each control of `CONTROL_BASELINES` that ran
  (`adamw-split`: AdamW with the hybrids' grouping and per-group lrs), with tokens-to-target against it.
"""

from __future__ import annotations

import json
import math
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from swanbench import schema
from swanbench.analysis.tuning import Tuning, budget_text, fairness, fairness_text, tuning_by_cell, tuning_of_cells

# Run statuses whose final eval loss may serve as a target (the harness writes "ok" for a finished run).
OK_STATUSES = frozenset({schema.OK})
DEFAULT_BASELINE = "adamw"
# Controls every candidate is judged against too, when the suite ran them: does the candidate beat AdamW given
# the hybrids' grouping and per-group lrs, not only plain AdamW at one lr?
CONTROL_BASELINES = ("adamw-split",)

# Columns that make two runs "the same cell except optimizer/hparams": the same question asked of another
# optimizer: the suite, every cell axis of the schema, and the seed (hparam columns are deliberately absent).
MATCH_COLUMNS = ("suite", *schema.CELL_AXES, "seed")
# Default grouping for summaries and verdicts: one row per suite x cell x optimizer (seeds pooled); the cell
# axes are the schema's, so runs that differ in any axis (parallelism, steps, data, ...) are never pooled.
SUMMARY_BY = ("suite", *schema.CELL_AXES, "optimizer")
# The harness's JSON of an optimizer's resolved hyperparameters (runs.csv), read by `config_labels`.
CONFIG_COLUMN = "optimizer_hparams"

ANNOTATION_COLUMNS = [
    "target_eval_loss", "target_run_id", "baseline_tokens", "tokens_to_target", "steps_to_target",
    "seconds_to_target", "effective_speedup",
]

BEATS_RULE = (
    "paired by seed: A beats B iff A is better in every seed and the 95% t interval of the paired "
    "differences excludes 0 on A's side (>= 2 pairs); a missing value loses its pair; else inconclusive"
)
SOONER_RULE = (
    "sooner iff effective speedup > 1 in every seed and the 95% t interval of mean log(speedup) excludes 0 "
    "above (>= 2 seeds); a seed that never reaches the target counts as slower; else inconclusive"
)


class TargetHit(NamedTuple):
    """Where a run first reached the target: training tokens, optimizer steps, training seconds (None if unknown)."""

    tokens: float
    steps: float | None
    seconds: float | None


def t_quantile(level: float, df: int) -> float:
    """Two-sided critical value: the t with P(|T| <= t) = level (df=2, level 0.95 -> 4.303), from scipy."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df!r}")
    from scipy import stats  # imported here: scipy.stats costs about a second, and only intervals need it

    return float(stats.t.ppf(0.5 + level / 2.0, df))


def _finite(values: Iterable[object]) -> np.ndarray:
    arr = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(dtype=float)
    return arr[np.isfinite(arr)]


def mean_interval(values: Sequence[float], level: float = 0.95, method: str = "t",
                  n_boot: int = 10_000, seed: int = 0) -> tuple[float | None, float | None]:
    """Interval for the mean of `values` (finite ones): Student-t, or percentile bootstrap (seeded).

    (None, None) with fewer than 2 values: one seed says nothing about spread.
    """
    x = _finite(values)
    if len(x) < 2:
        return None, None
    if method == "t":
        half = t_quantile(level, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
        return float(x.mean() - half), float(x.mean() + half)
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = rng.choice(x, size=(n_boot, len(x)), replace=True).mean(axis=1)
        alpha = (1.0 - level) / 2.0
        return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))
    raise ValueError(f"interval method must be 't' or 'bootstrap', got {method!r}")


# --------------------------------------------------------------------------------------------------
# Tokens to target
# --------------------------------------------------------------------------------------------------

def _num(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as floats (missing column or unparsable cells -> NaN)."""
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def _eval_points(curve: pd.DataFrame, loss: str = "eval_loss") -> pd.DataFrame:
    """The curve's eval points (finite loss and tokens), in order of tokens, as float columns."""
    points = pd.DataFrame({
        "tokens": _num(curve, "tokens"), "step": _num(curve, "step"),
        "seconds": _num(curve, "train_seconds"), "loss": _num(curve, loss),
    })
    points = points[np.isfinite(points["loss"]) & np.isfinite(points["tokens"])]
    return points.sort_values("tokens", kind="stable").reset_index(drop=True)


def _lerp(a: float, b: float, frac: float) -> float | None:
    if not (math.isfinite(a) and math.isfinite(b)):
        return None
    return a + frac * (b - a)


def tokens_to_target(curve: pd.DataFrame, target: float, loss: str = "eval_loss") -> TargetHit | None:
    """Tokens, steps and training seconds at which `curve` first reaches `eval_loss <= target`.

    Linear interpolation between the first eval point at/below the target and the one before it; the
    first eval point itself if it is already there; None if the curve never reaches the target (or
    `target` is not finite). A relative slack of 1e-9 absorbs CSV round-trip error, so a run always
    reaches its own final eval loss.
    """
    if target is None or not math.isfinite(float(target)):
        return None
    points = _eval_points(curve, loss)
    reached = points.index[points["loss"] <= target + 1e-9 * abs(target)]
    if len(reached) == 0:
        return None
    i = int(reached[0])
    hit = points.iloc[i]
    if i == 0:
        seconds = float(hit["seconds"]) if math.isfinite(hit["seconds"]) else None
        step = float(hit["step"]) if math.isfinite(hit["step"]) else None
        return TargetHit(float(hit["tokens"]), step, seconds)
    prev = points.iloc[i - 1]
    # prev.loss > target >= hit.loss, so the fraction is in (0, 1]; clip guards the 1e-9 slack.
    frac = min(1.0, max(0.0, (prev["loss"] - target) / (prev["loss"] - hit["loss"])))
    return TargetHit(
        float(prev["tokens"] + frac * (hit["tokens"] - prev["tokens"])),
        _lerp(prev["step"], hit["step"], frac),
        _lerp(prev["seconds"], hit["seconds"], frac),
    )


def _key(row: pd.Series, columns: Sequence[str]) -> tuple:
    # NaN != NaN would split groups; normalise missing cells to None so they compare equal.
    return tuple(None if pd.isna(row[c]) else row[c] for c in columns)


def _baseline_targets(runs: pd.DataFrame, curves_by_run: dict, baseline: str, match: list[str],
                      loss: str) -> dict[tuple, tuple[float, str, float | None]]:
    """key -> (target loss, baseline run_id, baseline total tokens) from the best finished baseline run."""
    final = _num(runs, f"final_{loss}")
    is_ok = runs["status"].isin(OK_STATUSES) if "status" in runs.columns else True
    eligible = runs[(runs["optimizer"] == baseline) & is_ok & np.isfinite(final)]
    targets: dict[tuple, tuple[float, str, float | None]] = {}
    for idx, row in eligible.iterrows():
        key = _key(row, match)
        # Several baseline runs in one cell (an lr sweep): the best one sets the target, the harder bar.
        if key in targets and targets[key][0] <= final[idx]:
            continue
        points = _eval_points(curves_by_run.get(row["run_id"], pd.DataFrame()), loss)
        total = float(points["tokens"].iloc[-1]) if len(points) else None
        targets[key] = (float(final[idx]), row["run_id"], total)
    return targets


def annotate_tokens_to_target(runs: pd.DataFrame, curves: pd.DataFrame, baseline: str = DEFAULT_BASELINE,
                              target: float | None = None, loss: str = "eval_loss",
                              match_on: Sequence[str] = MATCH_COLUMNS) -> pd.DataFrame:
    """A copy of `runs` with tokens-to-target columns filled per run (see the module docstring).

    Adds/overwrites `target_eval_loss`, `target_run_id`, `baseline_tokens` (the baseline run's total
    tokens), `tokens_to_target`, `steps_to_target`, `seconds_to_target`, `effective_speedup`.
    `target` fixes one target loss for every run instead of the baseline's final loss; `loss="eval_loss_galore"`
    uses the GaLore-compatible numbers. Never raises on incomplete data: failed runs, a missing baseline or
    missing columns leave the values empty.
    """
    out = runs.copy()
    for column in ANNOTATION_COLUMNS:
        out[column] = pd.Series([None] * len(out), index=out.index, dtype=object)
    if out.empty or "run_id" not in out.columns or "optimizer" not in out.columns:
        return _annotation_dtypes(out)
    curves = curves if curves is not None else pd.DataFrame()
    curves_by_run = dict(tuple(curves.groupby("run_id"))) if "run_id" in curves.columns else {}
    match = [c for c in match_on if c in out.columns]  # tables of older schemas lack some axes
    targets = _baseline_targets(out, curves_by_run, baseline, match, loss)
    for idx, row in out.iterrows():
        found = targets.get(_key(row, match))
        goal = float(target) if target is not None else (found[0] if found else None)
        if goal is None:
            continue
        out.at[idx, "target_eval_loss"] = goal
        out.at[idx, "target_run_id"] = found[1] if found else None
        total = found[2] if found else None
        out.at[idx, "baseline_tokens"] = total
        hit = tokens_to_target(curves_by_run.get(row["run_id"], pd.DataFrame()), goal, loss)
        if hit is None:
            continue
        out.at[idx, "tokens_to_target"] = hit.tokens
        out.at[idx, "steps_to_target"] = hit.steps
        out.at[idx, "seconds_to_target"] = hit.seconds
        if total is not None and hit.tokens > 0:
            out.at[idx, "effective_speedup"] = total / hit.tokens
    return _annotation_dtypes(out)


def _annotation_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    for column in ANNOTATION_COLUMNS:
        if column != "target_run_id":
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


def annotate_rows(runs: list[dict], curves: list[dict], baseline: str | None = None) -> list[dict]:
    """`annotate_tokens_to_target` on plain rows (the assembly of runs.csv); empty values stay None."""
    if not runs:
        return runs
    frame = annotate_tokens_to_target(pd.DataFrame(runs), pd.DataFrame(curves), baseline=baseline or DEFAULT_BASELINE)
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


# --------------------------------------------------------------------------------------------------
# Seed summaries
# --------------------------------------------------------------------------------------------------

def seed_summary(runs: pd.DataFrame, metric: str | Sequence[str], by: Sequence[str] = SUMMARY_BY,
                 level: float = 0.95, interval: str = "t", n_boot: int = 10_000,
                 seed: int = 0) -> pd.DataFrame:
    """One row per group in `by` (present columns only) and metric: the spread over seeds.

    Columns: the `by` columns, `metric`, `n_runs` (rows in the group), `n` (finite values), `n_missing`,
    `mean`, `std` (n-1), `sem`, `ci_low`, `ci_high` (the `level` interval for the mean; empty below n=2),
    `interval` ("t" or "bootstrap"), `level`, `gmean` (geometric mean, for ratios such as speedup; empty
    unless all values are positive). Values are in the metric's own unit.
    """
    metrics = [metric] if isinstance(metric, str) else list(metric)
    groups = [c for c in by if c in runs.columns]
    rows: list[dict] = []
    grouped = runs.groupby(groups, dropna=False, sort=True) if groups else [((), runs)]
    for key, group in grouped:
        key = key if isinstance(key, tuple) else (key,)
        for name in metrics:
            rows.append({**dict(zip(groups, key)), "metric": name,
                         **_describe(_num(group, name), level, interval, n_boot, seed)})
    columns = groups + ["metric", "n_runs", "n", "n_missing", "mean", "std", "sem", "ci_low", "ci_high",
                        "interval", "level", "gmean"]
    return pd.DataFrame(rows, columns=columns)


def _describe(values: pd.Series, level: float, interval: str, n_boot: int, seed: int) -> dict:
    x = _finite(values)
    n = len(x)
    std = float(x.std(ddof=1)) if n >= 2 else None
    low, high = mean_interval(x, level, interval, n_boot, seed)
    return {
        "n_runs": len(values), "n": n, "n_missing": len(values) - n,
        "mean": float(x.mean()) if n else None, "std": std,
        "sem": std / math.sqrt(n) if std is not None else None,
        "ci_low": low, "ci_high": high, "interval": interval, "level": level,
        "gmean": float(np.exp(np.log(x).mean())) if n and (x > 0).all() else None,
    }


# --------------------------------------------------------------------------------------------------
# Few-seed decision rule
# --------------------------------------------------------------------------------------------------

def decide(advantages: Sequence[float], level: float = 0.95) -> dict:
    """The few-seed rule on per-seed advantages of A over B (> 0: A better; +inf/-inf: decided by a
    missing value on one side; NaN: no information, which blocks unanimity).

    Returns n_pairs, a_wins, b_wins, mean/ci over the finite advantages, and verdict "a", "b" or
    "inconclusive": "a" iff n_pairs >= 2, A wins every pair and (with >= 2 finite pairs) the t interval of
    the finite advantages lies above 0; "b" symmetrically.
    """
    adv = np.asarray(list(advantages), dtype=float)
    finite = adv[np.isfinite(adv)]
    low, high = mean_interval(finite, level, "t")
    n, a_wins, b_wins = len(adv), int((adv > 0).sum()), int((adv < 0).sum())
    verdict = "inconclusive"
    if n >= 2 and a_wins == n and (len(finite) < 2 or low > 0):
        verdict = "a"
    elif n >= 2 and b_wins == n and (len(finite) < 2 or high < 0):
        verdict = "b"
    return {"n_pairs": n, "a_wins": a_wins, "b_wins": b_wins,
            "mean_advantage": float(finite.mean()) if len(finite) else None,
            "ci_low": low, "ci_high": high, "verdict": verdict}


def _paired(runs: pd.DataFrame, column: str, a: str, b: str, metric: str, pair_on: str,
            group: Sequence[str]) -> pd.DataFrame:
    """A wide frame: group columns, `pair_on`, value_a, value_b (outer join: a missing side is NaN)."""
    keep = [c for c in group if c in runs.columns] + [pair_on]
    sides = []
    for name, label in ((a, "value_a"), (b, "value_b")):
        side = runs[runs[column] == name][keep].copy()
        side[label] = _num(runs[runs[column] == name], metric)
        if side.duplicated(keep).any():
            raise ValueError(f"compare: several {column}={name!r} runs share {keep}; add the column that "
                             f"tells them apart (e.g. an hparam) to `by`")
        sides.append(side)
    return sides[0].merge(sides[1], on=keep, how="outer")


def _advantage(value_a: float, value_b: float, lower_is_better: bool, missing_is_worst: bool) -> float:
    if math.isfinite(value_a) and math.isfinite(value_b):
        return (value_b - value_a) if lower_is_better else (value_a - value_b)
    if not missing_is_worst or (not math.isfinite(value_a) and not math.isfinite(value_b)):
        return math.nan
    return math.inf if math.isfinite(value_a) else -math.inf


def compare(runs: pd.DataFrame, a: str, b: str, metric: str, lower_is_better: bool = True,
            by: Sequence[str] = ("suite", "model", "dtype"), pair_on: str = "seed", column: str = "optimizer",
            missing_is_worst: bool = True, level: float = 0.95) -> pd.DataFrame:
    """Does `a` beat `b` on `metric`? One row per group in `by`, paired on `pair_on` (see BEATS_RULE).

    Columns: the group columns, a, b, metric, n_pairs, a_wins, b_wins, mean_diff (mean of a - b over
    pairs where both have a value, in the metric's unit), ci_low/ci_high (its t interval), verdict
    ("<a> better", "<b> better" or "inconclusive") and rule. Raises ValueError if a group holds several
    runs of one side per seed (an hparam sweep: add its column to `by`).
    """
    group = [c for c in by if c in runs.columns]
    wide = _paired(runs, column, a, b, metric, pair_on, group)
    rows = []
    grouped = wide.groupby(group, dropna=False, sort=True) if group else [((), wide)]
    sign = -1.0 if lower_is_better else 1.0  # advantages are "A better" positive; mean_diff is a - b
    for key, pairs in grouped:
        key = key if isinstance(key, tuple) else (key,)
        adv = [_advantage(va, vb, lower_is_better, missing_is_worst)
               for va, vb in zip(pairs["value_a"], pairs["value_b"])]
        d = decide(adv, level)
        ci = sorted(sign * v for v in (d["ci_low"], d["ci_high"])) if d["ci_low"] is not None else (None, None)
        verdict = {"a": f"{a} better", "b": f"{b} better"}.get(d["verdict"], "inconclusive")
        rows.append({**dict(zip(group, key)), "a": a, "b": b, "metric": metric, "n_pairs": d["n_pairs"],
                     "a_wins": d["a_wins"], "b_wins": d["b_wins"],
                     "mean_diff": sign * d["mean_advantage"] if d["mean_advantage"] is not None else None,
                     "ci_low": ci[0], "ci_high": ci[1], "verdict": verdict, "rule": BEATS_RULE})
    return pd.DataFrame(rows, columns=group + ["a", "b", "metric", "n_pairs", "a_wins", "b_wins", "mean_diff",
                                               "ci_low", "ci_high", "verdict", "rule"])


def speedup_verdict(annotated: pd.DataFrame, optimizer: str, by: Sequence[str] = ("suite", "model", "dtype"),
                    level: float = 0.95, column: str = "optimizer") -> pd.DataFrame:
    """Does `optimizer` reach the baseline's final eval loss with fewer tokens? (SOONER_RULE)

    `annotated` is the output of `annotate_tokens_to_target`; `column` names what `optimizer` selects
    (e.g. "config" from `config_labels`). One row per group: n_seeds, n_reached,
    n_faster (speedup > 1), gmean_speedup and its interval (exp of the t interval of mean log speedup,
    over seeds that reached the target), verdict "sooner" / "later" / "inconclusive", rule.
    Seeds whose baseline is missing (no target) are left out.
    """
    group = [c for c in by if c in annotated.columns]
    mine = annotated[(annotated[column] == optimizer) & np.isfinite(_num(annotated, "target_eval_loss"))]
    rows = []
    grouped = mine.groupby(group, dropna=False, sort=True) if group else [((), mine)]
    for key, runs in grouped:
        key = key if isinstance(key, tuple) else (key,)
        speedup = _num(runs, "effective_speedup").to_numpy()
        reached = np.isfinite(_num(runs, "tokens_to_target").to_numpy())
        # A seed that reached the target but whose baseline total is unknown carries no information (NaN).
        adv = [math.log(s) if np.isfinite(s) and s > 0 else (-math.inf if not r else math.nan)
               for s, r in zip(speedup, reached)]
        d = decide(adv, level)
        finite = [v for v in adv if math.isfinite(v)]
        rows.append({**dict(zip(group, key)), column: optimizer, "n_seeds": d["n_pairs"],
                     "n_reached": int(reached.sum()), "n_faster": d["a_wins"],
                     "gmean_speedup": math.exp(sum(finite) / len(finite)) if finite else None,
                     "ci_low": math.exp(d["ci_low"]) if d["ci_low"] is not None else None,
                     "ci_high": math.exp(d["ci_high"]) if d["ci_high"] is not None else None,
                     "verdict": {"a": "sooner", "b": "later"}.get(d["verdict"], "inconclusive"),
                     "rule": SOONER_RULE})
    return pd.DataFrame(rows, columns=group + [column, "n_seeds", "n_reached", "n_faster", "gmean_speedup",
                                               "ci_low", "ci_high", "verdict", "rule"])


# --------------------------------------------------------------------------------------------------
# Suite-level analysis: the files written beside runs.csv / curves.csv
# --------------------------------------------------------------------------------------------------

SUMMARY_METRICS = (
    "final_eval_loss", "final_eval_ppl", "final_eval_loss_galore", "final_eval_ppl_galore",
    "tokens_to_target", "steps_to_target", "seconds_to_target", "effective_speedup", "tokens_per_s",
)


def _parse_hparams(value: object) -> dict:
    """The harness's `optimizer_hparams` JSON cell as a dict ({} if missing or unreadable; data, never code)."""
    if not isinstance(value, str) or not value.strip():
        return {}
    try:
        parsed = json.loads(value)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def config_labels(runs: pd.DataFrame) -> pd.Series:
    """A label per run: the optimizer name, plus the hparams that vary where one optimizer ran several
    settings in the suite (e.g. "adamw lr=0.005"), so an lr sweep is never pooled into one summary."""
    labels = runs["optimizer"].astype(str)
    if CONFIG_COLUMN not in runs.columns:
        return labels
    parsed = runs[CONFIG_COLUMN].map(_parse_hparams)
    labels = labels.copy()
    for name, index in runs.groupby("optimizer").groups.items():
        dicts = list(parsed.loc[index])
        varying = sorted({k for d in dicts for k in d
                          if len({json.dumps(x.get(k), sort_keys=True) for x in dicts}) > 1})
        if varying:
            for i in index:
                labels.at[i] = f"{name} " + ",".join(f"{k}={json.dumps(parsed.at[i].get(k))}" for k in varying)
    return labels


def _best_config(annotated: pd.DataFrame, optimizer: str) -> str | None:
    """The optimizer's config with the lowest mean final eval loss (the baseline the others must beat)."""
    mine = annotated[annotated["optimizer"] == optimizer]
    means = _num(mine, "final_eval_loss").groupby(mine["config"]).mean().dropna()
    return str(means.idxmin()) if len(means) else None


def analyze(runs: pd.DataFrame, curves: pd.DataFrame, baseline: str = DEFAULT_BASELINE,
            by: Sequence[str] = SUMMARY_BY, annotated: bool = False,
            tuning: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """The quality analysis of one suite: annotated runs, seed summaries, and verdicts vs the baseline.

    Returns {"runs": annotated runs with a `config` label, "summary": seed_summary over the
    SUMMARY_METRICS present, per `by` + config, "verdicts": per non-baseline config, the final-eval-loss
    comparison with the baseline's best config (BEATS_RULE) and the tokens-to-target verdict (SOONER_RULE),
    each with both sides' tuning and its fairness; then the same against each control of CONTROL_BASELINES
    that ran}. annotated: `runs` already carries tokens-to-target against `baseline` (runs.csv as assembled).
    tuning: the suite's tuning.csv (None: no tuning on either side of any verdict).
    """
    annotated = runs.copy() if annotated else annotate_tokens_to_target(runs, curves, baseline)
    if annotated.empty or "optimizer" not in annotated.columns:
        return {"runs": annotated, "summary": pd.DataFrame(), "verdicts": pd.DataFrame()}
    annotated["config"] = config_labels(annotated)
    metrics = [m for m in SUMMARY_METRICS if m in annotated.columns and _num(annotated, m).notna().any()]
    summary = seed_summary(annotated, metrics, [*by, "config"])
    group = [c for c in by if c != "optimizer" and c in annotated.columns]
    base = _best_config(annotated, baseline)
    by_cell = tuning_by_cell(tuning)
    verdicts = []
    candidates = annotated.loc[annotated["optimizer"] != baseline, ["optimizer", "config"]].drop_duplicates()
    for optimizer, config in candidates.itertuples(index=False) if base else []:
        verdicts.append(_verdict_row(annotated, optimizer, config, base, group, by_cell))
    for control in CONTROL_BASELINES:
        if control == baseline or not (annotated["optimizer"] == control).any():
            continue
        against = annotate_tokens_to_target(runs, curves, control)
        against["config"] = config_labels(against)
        control_base = _best_config(against, control)
        for optimizer, config in candidates.itertuples(index=False) if control_base else []:
            if optimizer != control:
                verdicts.append(_verdict_row(against, optimizer, config, control_base, group, by_cell))
    verdict_frame = pd.concat(verdicts, ignore_index=True) if verdicts else pd.DataFrame()
    return {"runs": annotated, "summary": summary, "verdicts": verdict_frame}


def _verdict_row(annotated: pd.DataFrame, optimizer: str, config: str, base: str,
                 group: list[str], by_cell: dict[str, Tuning] | None = None) -> pd.DataFrame:
    """Both verdicts of one candidate config against the baseline config, one row per group, with the
    tuning of both sides; a verdict whose comparison was not fair is withheld (see `_judge_fairly`)."""
    loss = compare(annotated, config, base, "final_eval_loss", by=group, column="config")
    loss = loss.rename(columns={"a": "config", "b": "baseline", "verdict": "final_loss_verdict",
                                "mean_diff": "final_loss_diff", "ci_low": "final_loss_diff_ci_low",
                                "ci_high": "final_loss_diff_ci_high", "rule": "final_loss_rule"})
    loss = loss.drop(columns=["metric", "a_wins", "b_wins"])
    sooner = speedup_verdict(annotated, config, by=group, column="config")
    sooner = sooner.rename(columns={"ci_low": "speedup_ci_low", "ci_high": "speedup_ci_high",
                                    "verdict": "sooner_verdict", "rule": "sooner_rule"})
    keys = [c for c in group if c in loss.columns] + ["config"]
    merged = loss.merge(sooner, on=keys, how="outer")
    merged.insert(0, "optimizer", optimizer)
    return _judge_fairly(merged, annotated, [c for c in group if c in merged.columns], config, base, by_cell or {})


def _tuning_in(annotated: pd.DataFrame, row: pd.Series, group: list[str], config: str,
               by_cell: dict[str, Tuning]) -> Tuning | None:
    """The tuning of `config`'s evaluation cell in the verdict row's group (None: set by hand)."""
    if "cell_id" not in annotated.columns:
        return None
    mask = annotated["config"] == config
    for column in group:
        mask &= annotated[column].isna() if pd.isna(row[column]) else annotated[column] == row[column]
    return tuning_of_cells(by_cell, annotated.loc[mask, "cell_id"])


def _judge_fairly(merged: pd.DataFrame, annotated: pd.DataFrame, group: list[str], config: str, base: str,
                  by_cell: dict[str, Tuning]) -> pd.DataFrame:
    """Each verdict row with both sides' tuning budgets; unequal budgets or a chosen value at an edge turn
    "better"/"sooner" into "not judged (...)", the rule's own outcome kept in `*_rule_outcome`."""
    columns: dict[str, list] = {k: [] for k in ("tuning_budget", "baseline_tuning_budget", "tuning_at_edge",
                                                "baseline_tuning_at_edge", "fairness", "fair_protocol")}
    merged["final_loss_rule_outcome"] = merged["final_loss_verdict"]
    merged["sooner_rule_outcome"] = merged["sooner_verdict"]
    for index, row in merged.iterrows():
        mine, theirs = (_tuning_in(annotated, row, group, c, by_cell) for c in (config, base))
        problems = fairness(config, mine, base, theirs)
        for key, value in (("tuning_budget", budget_text(mine)), ("baseline_tuning_budget", budget_text(theirs)),
                           ("tuning_at_edge", bool(mine and mine.edges)),
                           ("baseline_tuning_at_edge", bool(theirs and theirs.edges)),
                           ("fairness", fairness_text(config, mine, base, theirs)),
                           ("fair_protocol", not problems and mine is not None and theirs is not None)):
            columns[key].append(value)
        if problems:
            for column in ("final_loss_verdict", "sooner_verdict"):
                merged.at[index, column] = f"not judged: {'; '.join(problems)} (the rule alone: {row[column]})"
    for key, values in columns.items():
        merged[key] = values
    return merged
