"""Memory: where the memory goes, stacked by role, per optimizer, faceted by model and device, beside the
estimator's view of the papers' sizes.

The story the papers tell is about optimizer state: SWAN and SinkGD keep none for the hidden matrices (the
attention and MLP weights they precondition), while AdamW keeps two fp32-sized moments per parameter. So
the optimizer state is split in two bars' segments, **state on hidden matrices** (0 bytes for the
stateless ones) and **state on embeddings, head and norms** (which the hybrids train with AdamW), and each
panel says what share of the model the hidden matrices are. On a toy model that share is small (16% of
`nano`), so the measured saving is small; the right-hand panel is the analytic estimate
(`swanbench.estimate`, labelled as such, never measured) of the same optimizers at 60m-1b in bf16, where
the hidden matrices are most of the model and the saving is the papers' size.

What is measured and what is derived, per bar (mean over ok seeds):
- parameters, gradients, optimizer state: exact tensor bytes; the split of a hybrid's state comes from its
  per-group columns (`optimizer_state_bytes.matrix`); for a plain optimizer from the exact element counts
  of its declared state on each parameter (`optimizers.info(name).state_numel`);
- activations: the profiler's activation peak (`activation_peak_bytes`);
- logits and loss buffers (derived): what the measured peak holds beyond the stacked roles, up to the
  estimator's fp32 logits/loss buffers of the run (`estimate_loss_transient_bytes`); beyond that,
  "other (derived)";
- transient in step: the peak inside `optimizer.step()` (`step_transient_bytes`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from swanbench.analysis.figures.common import (BYTES_NOTE, PEAK_STYLES, ROLE_COLORS, Context, Series, color_tick_labels,
                                               empty_panel, facet_rows, failure_text, mean_ok, runs_or_skip,
                                               series_of, series_rows)
from swanbench.analysis.results import GIB, OK, bytes_unit, canonical_name, model_order, peak_column

HIDDEN, REST = "state on hidden matrices", "state on embeddings, head, norms"
LOSS, OTHER = "logits & loss buffers (derived)", "other (derived)"
DERIVED = (LOSS, OTHER)
# The estimator's panel: the papers' model sizes, in their dtype; shown unless the results measured them all.
ESTIMATE_MODELS = ("60m", "130m", "350m", "1b")
ESTIMATE_DTYPE = "bfloat16"
ESTIMATE_ROLES = ("parameters", "gradients", HIDDEN, REST)


# ---------------------------------------------------------------------------------------------------------
# Roles of one bar


@lru_cache(maxsize=None)
def hidden_share(model: str) -> float | None:
    """Fraction of a preset's parameters in its hidden matrices (what SWAN/SinkGD precondition), or None."""
    from swanbench.models import PRESETS

    preset = PRESETS.get(str(model))
    if preset is None:
        return None
    return sum(m * n for m, n in preset.hidden_matrix_shapes()) / preset.param_count()


@lru_cache(maxsize=None)
def hidden_state_share(model: str, optimizer: str) -> float | None:
    """Fraction of an optimizer's state bytes that sit on the hidden matrices, from its declared per-shape
    state (a hybrid: its matrix group against its AdamW group); None for an unknown model or optimizer, or
    one without state."""
    import optimizers

    from swanbench.estimate import parameter_specs
    from swanbench.models import PRESETS

    preset = PRESETS.get(str(model))
    try:
        info = optimizers.info(canonical_name(optimizer))
    except ValueError:
        return None
    if preset is None:
        return None
    if info.hybrid:  # hidden matrices to its matrix rule, the rest to AdamW: the estimator's two groups
        from swanbench.estimate import optimizer_groups

        groups = {g.name: g.state_bytes for g in optimizer_groups(preset, canonical_name(optimizer), "float32")}
        total = sum(groups.values())
        return groups.get("matrix", 0) / total if total else None
    specs = parameter_specs(preset)
    hidden = sum(int(info.state_numel(s.shape)) for s in specs if s.role == "hidden")
    total = sum(int(info.state_numel(s.shape)) for s in specs)
    return hidden / total if total else None


def state_split(rows: pd.DataFrame, model: str, optimizer: str) -> dict[str, float]:
    """Mean optimizer state of `rows` split into hidden matrices and the rest (bytes); one segment,
    "optimizer state", when no split is known."""
    total = mean_ok(rows, "optimizer_state_bytes")
    if not math.isfinite(total):
        return {}
    matrix = mean_ok(rows, "optimizer_state_bytes.matrix")
    if math.isfinite(matrix):
        return {HIDDEN: matrix, REST: max(total - matrix, 0.0)}
    share = hidden_state_share(model, optimizer)
    if share is None:
        return {"optimizer state": total}
    return {HIDDEN: total * share, REST: total * (1.0 - share)}


def memory_stack(rows: pd.DataFrame, peak: tuple[str, str] | None, model: str = "", optimizer: str = ""
                 ) -> tuple[dict[str, float], float]:
    """(role -> mean bytes over ok seeds, mean measured peak) for one bar, bottom to top.

    Whatever the measured peak holds beyond the stacked roles is derived (peak - the roles, >= 0): named
    "logits & loss buffers" up to the estimator's loss buffers of the run, "other" beyond them.
    """
    roles = {"parameters": mean_ok(rows, "param_bytes"), "gradients": mean_ok(rows, "grad_bytes"),
             **state_split(rows, model or _first(rows, "model"), optimizer or _first(rows, "optimizer"))}
    transient = mean_ok(rows, "step_transient_bytes")
    peak_bytes = mean_ok(rows, peak[0]) if peak else math.nan
    activations = mean_ok(rows, "activation_peak_bytes")
    if math.isfinite(activations):
        roles["activations (profiler)"] = activations
    if math.isfinite(peak_bytes):
        known = sum(v for v in (*roles.values(), transient) if math.isfinite(v))
        if peak_bytes > known or "activations (profiler)" not in roles:
            rest = max(peak_bytes - known, 0.0)
            loss = mean_ok(rows, "estimate_loss_transient_bytes")
            named = min(rest, loss) if math.isfinite(loss) else 0.0
            roles[LOSS], roles[OTHER] = named, rest - named
    roles["transient in step"] = transient
    return {k: v for k, v in roles.items() if math.isfinite(v) and not (k in DERIVED and v <= 0)}, peak_bytes


def _first(rows: pd.DataFrame, column: str) -> str:
    return str(rows[column].iloc[0]) if column in rows.columns and len(rows) else ""


# ---------------------------------------------------------------------------------------------------------
# The figure


def plot_memory(ctx: Context) -> Figure:
    """Stacked bars of memory by role per optimizer, one panel per (model, device), measured peak marked,
    and the estimator's view at 60m-1b beside them."""
    runs = runs_or_skip(ctx, ["param_bytes", "optimizer_state_bytes", "peak_allocated_bytes", "peak_rss_bytes",
                              "nvml_peak_bytes"])
    models = model_order(runs)
    devices = sorted(str(d) for d in runs["device"].unique())
    series = series_of(runs, ctx.baseline)
    estimate = estimate_bars([s.optimizer for s in series], models)
    width = max(3.4 * len(models), 5.0)
    fig = Figure(figsize=(width + (5.2 if estimate else 0.0), 3.6 * len(devices) + 1.6), layout="constrained")
    if estimate:
        measured_fig, estimate_fig = fig.subfigures(1, 2, width_ratios=[width, 5.2], wspace=0.02)
    else:
        measured_fig, estimate_fig = fig, None
    axes = measured_fig.subplots(len(devices), len(models), squeeze=False)
    used_roles: set[str] = set()
    peak_labels: set[tuple[str, str]] = set()
    for r, device in enumerate(devices):
        for c, model in enumerate(models):
            frame = facet_rows(runs, model, device)
            peak = peak_column(frame[frame["status"] == OK])
            used = _memory_panel(axes[r, c], frame, series, peak, ctx, model)
            used_roles |= used
            if peak and used:
                peak_labels.add(peak)
            axes[r, c].set_title(_panel_title(model, device), fontsize=9)
    if estimate_fig is not None:
        used_roles |= _estimate_panel(estimate_fig.subplots(1, 1), estimate, ctx)
    handles = [Patch(facecolor=ROLE_COLORS[k], edgecolor="#555555", hatch="//" if k in DERIVED else "", label=k)
               for k in ROLE_COLORS if k in used_roles]
    handles += [Line2D([], [], color="black", linewidth=2, linestyle=PEAK_STYLES[column], label=f"measured {label}")
                for column, label in sorted(peak_labels)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8)
    derived = ("hatched = derived: measured peak − the roles below it (up to the estimated fp32 logits/loss buffers "
               "of the run, then \"other\")\n" if used_roles & set(DERIVED) else "")
    right = " and estimated at the papers' sizes (right)" if estimate else ""
    fig.suptitle(f"Memory by role: measured (left, mean over ok seeds){right}\n{derived}{BYTES_NOTE}", fontsize=9)
    return fig


def _panel_title(model: str, device: str) -> str:
    share = hidden_share(model)
    what = f"\nhidden matrices: {share:.0%} of the parameters" if share is not None else ""
    return f"measured: {model} · {device}{what}\n(% above a bar: its peak against the baseline's)"


def _memory_panel(ax, frame: pd.DataFrame, series: list[Series], peak: tuple[str, str] | None, ctx: Context,
                  model: str) -> set[str]:
    if frame.empty:
        empty_panel(ax, "no runs")
        return set()
    stacks = [memory_stack(series_rows(frame, s), peak, model, s.optimizer) for s in series]
    top = max([sum(s.values()) for s, _ in stacks] + [p for _, p in stacks if math.isfinite(p)] + [1.0])
    scale, unit = bytes_unit(top)
    used: set[str] = set()
    base = next((p for s, (_, p) in zip(series, stacks) if canonical_name(s.optimizer) == ctx.baseline and not s.axes),
                math.nan)
    for x, (s, (roles, peak_bytes)) in enumerate(zip(series, stacks)):
        rows = series_rows(frame, s)
        if not (rows["status"] == OK).any() or not roles:
            _bar_note(ax, x, failure_text(rows) if not (rows["status"] == OK).any() else "n/a", top / scale)
            continue
        used |= _stack(ax, x, roles, scale)
        if math.isfinite(peak_bytes):
            ax.plot([x - 0.4, x + 0.4], [peak_bytes / scale] * 2, color="black", linewidth=2,
                    linestyle=PEAK_STYLES[peak[0]])
            if math.isfinite(base) and base > 0 and canonical_name(s.optimizer) != ctx.baseline:
                # Vertical (as in the estimate panel): side by side, eight bars' labels overlapped
                above = max(peak_bytes, sum(roles.values()))  # over the peak line and the stack, whichever is higher
                ax.text(x, above / scale + top / scale * 0.01, f"{(peak_bytes - base) / base:+.1%}",
                        ha="center", va="bottom", fontsize=7, rotation=90, color=ctx.colors.get(s.optimizer, "black"),
                        fontweight="bold")
    color_tick_labels(ax, [s.label for s in series], [s.optimizer for s in series], ctx.colors)
    ax.set_ylabel(f"memory [{unit}]")
    ax.set_ylim(0, top / scale * 1.2)  # room for the vertical peak changes
    return used


def _stack(ax, x: float, roles: dict[str, float], scale: float, width: float = 0.7, alpha: float = 1.0,
           hatch_all: str | None = None) -> set[str]:
    bottom = 0.0
    for role, value in roles.items():
        hatch = hatch_all or ("//" if role in DERIVED else None)
        ax.bar(x, value / scale, bottom=bottom, color=ROLE_COLORS[role], edgecolor="#555555", linewidth=0.5,
               hatch=hatch, width=width, alpha=alpha)
        bottom += value / scale
    return set(roles)


def _bar_note(ax, x: float, text: str, top: float) -> None:
    # A failed or missing run keeps its slot with its status written in, so it never reads as a gap.
    ax.text(x, top * 0.02, text, rotation=90, ha="center", va="bottom", fontsize=8, color="#b22222",
            fontweight="bold")


# ---------------------------------------------------------------------------------------------------------
# The estimator's view at the papers' sizes


def estimate_bars(optimizers: list[str], measured_models: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """model -> optimizer -> role -> bytes from `swanbench.estimate` (bf16 weights, gradients, state split),
    for the papers' sizes; {} when every one of them was measured, or the estimator knows no optimizer here."""
    if set(ESTIMATE_MODELS) <= set(measured_models):
        return {}
    from swanbench.estimate import EstimateError, estimate

    bars: dict[str, dict[str, dict[str, float]]] = {}
    for model in ESTIMATE_MODELS:
        for opt in dict.fromkeys(optimizers):
            try:
                est = estimate(model, canonical_name(opt), ESTIMATE_DTYPE, 1, 256)
            except (EstimateError, KeyError, ValueError):
                continue
            groups = {g.name: g.state_bytes for g in est.groups}
            if "matrix" in groups:
                hidden, rest = groups["matrix"], est.optimizer_state_bytes - groups["matrix"]
            else:
                share = hidden_state_share(model, opt) or 0.0
                hidden, rest = est.optimizer_state_bytes * share, est.optimizer_state_bytes * (1 - share)
            bars.setdefault(model, {})[opt] = {"parameters": est.param_bytes, "gradients": est.grad_bytes,
                                               HIDDEN: hidden, REST: rest}
    return bars


def _estimate_panel(ax, bars: dict[str, dict[str, dict[str, float]]], ctx: Context) -> set[str]:
    """Grouped stacked bars (one group per model, one bar per optimizer), each labelled with its saving
    against the baseline's bar: the estimate, drawn lighter and dotted so it never reads as measured."""
    positions, labels, owners, used = [], [], [], set()
    x = 0.0
    top = max(sum(r.values()) for per in bars.values() for r in per.values())
    for model, per in bars.items():
        base = next((sum(r.values()) for o, r in per.items() if canonical_name(o) == ctx.baseline), math.nan)
        start = x
        for opt, roles in per.items():
            used |= _stack(ax, x, roles, GIB, width=0.8, alpha=0.75, hatch_all="..")
            total = sum(roles.values())
            if math.isfinite(base) and canonical_name(opt) != ctx.baseline and base > 0:
                # Vertical, so that five neighbours' labels never run into each other over small bars
                ax.text(x, total / GIB + top / GIB * 0.01, f"{(total - base) / base:+.0%}", ha="center",
                        va="bottom", fontsize=7, rotation=90, color=ctx.colors.get(opt, "black"), fontweight="bold")
            positions.append(x)
            labels.append(opt)
            owners.append(opt)
            x += 1.0
        hidden = hidden_share(model)
        # Above the bars, not under the rotated optimizer names (long names ran into it there)
        ax.text((start + x - 1.0) / 2, 0.98, f"{model}\nhidden {hidden:.0%}" if hidden else model,
                transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8)
        x += 0.8
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    for tick, opt in zip(ax.get_xticklabels(), owners):
        tick.set_color(ctx.colors.get(opt, "black"))
    ax.set_ylabel("memory [GiB]")
    ax.set_ylim(0, top / GIB * 1.35)  # room for the vertical savings and the model labels above the bars
    ax.set_title("ESTIMATE, not measured (swanbench estimate)\nbf16 weights, gradients and optimizer state;\n"
                 "activations excluded (they grow with the batch)", fontsize=8)
    return used
