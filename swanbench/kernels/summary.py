"""The model-level summary (models.csv) and the headline numbers (headline.md) of a kernel suite.

Which operators one optimizer step runs, and their flops, come from the registry
(`optimizers.info(name).step_parts(...)`, through `swanbench.costmodel.StepConfig`): a registry entry with
step parts shows up here without an edit to this package. Rows are named by the registry name
(`optimizer`) and the configuration's label (`config`, e.g. "swan beta=0.5 steps=6").
"""

from __future__ import annotations

import math
from typing import Iterable

from swanbench import costmodel as cm
from swanbench.kernels.measure import MachineLimits

MODEL_COLUMNS = [
    "model", "params", "optimizer", "config", "dtype", "device", "device_name", "tokens_per_step", "matrices",
    "step_flops", "fwd_bwd_flops", "flop_share", "measured_step_ms", "measured_step_ms_best",
    "ideal_fwd_bwd_ms_fp32", "ideal_fwd_bwd_ms_bf16", "time_share_vs_fp32_model", "time_share_vs_bf16_model",
    "time_share_best_vs_bf16_model", "missing",
]

# The configurations the headline compares (labels as in models.csv's `config` column).
SWAN_HEADLINE = cm.step_config("swan", beta=0.5, steps=6).label
SINKGD_HEADLINE = cm.step_config("sinkgd").label


def summary_configs() -> list[cm.StepConfig]:
    """The cost model's configurations, then the defaults of any other registry entry with step parts.

    STEP_CONFIGS names the configurations the README reports; an optimizer registered later (with step
    parts) joins the summary at its default hyperparameters, with no edit here or in the cost model.
    """
    from optimizers.registry import display_order, info, registered

    configs = list(cm.STEP_CONFIGS)
    named = {c.optimizer for c in configs}
    for name in display_order(registered()):
        if name not in named and info(name).step_parts():
            configs.append(cm.step_config(name))
    return configs


# --------------------------------------------------------------------------------------------------
# models.csv
# --------------------------------------------------------------------------------------------------

def _per_matrix_ms(rows: list[dict], column: str = "ms_median") -> dict[tuple, float]:
    """Best eager ms per matrix (`column` / batch) for each (operator, method, rows, cols, dtype), over batch sizes."""
    best: dict[tuple, float] = {}
    for r in rows:
        if r.get("status") != "ok" or r.get("compile") or r.get(column) is None:
            continue
        key = (r["operator"], r["method"], r["rows"], r["cols"], r["dtype"])
        best[key] = min(best.get(key, math.inf), r[column] / r["batch"])
    return best


def _step_ms(measured: dict, counts: dict, parts, dtype: str) -> tuple[float | None, list[str]]:
    """Sum over every hidden matrix of its parts' per-matrix ms; None (and what is missing) if any is absent.

    A part lists the methods that compute it; the fastest one measured stands for it (the optimizer picks
    its kernel per device)."""
    total, missing = 0.0, []
    for (r, c), n in counts.items():
        for part in parts:
            found = [measured[k] for k in ((part.operator, m, r, c, dtype) for m in part.methods) if k in measured]
            if not found:
                missing.append(f"{part.operator}:{'|'.join(part.methods)}@{r}x{c}")
            else:
                total += n * min(found)
    return (None if missing else total), missing


def _share(ms: float | None, ideal: float | None) -> float | None:
    return ms / ideal if ms is not None and ideal else None


def _missing_text(missing: list[str]) -> str | None:
    if not missing:
        return None
    return " ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")


def _ideal_ms(fwd_bwd: int, limits: MachineLimits) -> dict[str, float | None]:
    """Forward+backward ms at the measured fp32 and bf16 matmul rates (a lower bound on the real time)."""
    return {d: fwd_bwd / (limits.rate(d) * 1e12) * 1e3 if limits.rate(d) else None for d in ("float32", "bfloat16")}


def _config_row(config: cm.StepConfig, dtype: str, model: dict, measured: tuple[dict, dict]) -> dict:
    """One models.csv row: `model` carries the preset's facts, `measured` the (median, fastest) ms tables."""
    parts = config.parts()
    step_ms, missing = _step_ms(measured[0], model["counts"], parts, dtype)
    best_ms, _ = _step_ms(measured[1], model["counts"], parts, dtype)
    flops = cm.step_flops(model["shapes"], config.flops)
    ideal = model["ideal"]
    return {
        "model": model["model"], "params": model["params"], "optimizer": config.optimizer, "config": config.label,
        "dtype": dtype, "tokens_per_step": model["tokens"], "matrices": len(model["shapes"]),
        "step_flops": flops, "fwd_bwd_flops": model["fwd_bwd"], "flop_share": flops / model["fwd_bwd"],
        "measured_step_ms": step_ms, "measured_step_ms_best": best_ms,
        "ideal_fwd_bwd_ms_fp32": ideal["float32"], "ideal_fwd_bwd_ms_bf16": ideal["bfloat16"],
        "time_share_vs_fp32_model": _share(step_ms, ideal["float32"]),
        "time_share_vs_bf16_model": _share(step_ms, ideal["bfloat16"]),
        "time_share_best_vs_bf16_model": _share(best_ms, ideal["bfloat16"]), "missing": _missing_text(missing),
    }


def _model_facts(model: str, tokens: int, limits: MachineLimits) -> dict:
    """A preset's hidden-matrix shapes and forward+backward cost, shared by all its rows."""
    from swanbench.models import PRESETS

    preset = PRESETS[model]
    shapes = preset.hidden_matrix_shapes()
    fwd_bwd = cm.forward_backward_flops(preset.param_count(), tokens)
    return {"model": model, "params": preset.param_count(), "tokens": tokens, "shapes": shapes,
            "counts": cm.shape_counts(shapes), "fwd_bwd": fwd_bwd, "ideal": _ideal_ms(fwd_bwd, limits)}


def model_summary(rows: list[dict], limits: MachineLimits, models: Iterable[str], tokens: int,
                  device: str, device_name: str | None) -> list[dict]:
    """Per preset x step configuration x dtype: the step's preprocessing cost from the cost model and measured.

    `flop_share` = preprocessing flops / (6 * params * tokens). `measured_step_ms` sums, over every hidden
    matrix, the measured eager per-matrix median of each part (best over batch sizes; empty if any shape
    was not measured); `measured_step_ms_best` the same from each case's fastest call, which on a shared
    machine filters out calls that waited for a core. `time_share_vs_*_model` = measured_step_ms /
    (forward+backward flops at the measured fp32 or bf16 matmul rate): that ideal is a lower bound on the
    forward+backward time, so the share is an upper bound.
    """
    measured = (_per_matrix_ms(rows, "ms_median"), _per_matrix_ms(rows, "ms_min"))
    dtypes = sorted({r["dtype"] for r in rows}) or ["float32"]
    configs = summary_configs()
    out = []
    for model in models:
        facts = _model_facts(model, tokens, limits)
        for config in configs:
            for dtype in dtypes:
                row = _config_row(config, dtype, facts, measured)
                out.append({**row, "device": device, "device_name": device_name})
    return out


# --------------------------------------------------------------------------------------------------
# headline.md (the ratios the README reports)
# --------------------------------------------------------------------------------------------------

def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _headline_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok" and not r.get("compile") and r.get("batch") == 1]


def _limit_line(limits: MachineLimits) -> str:
    return ("- measured limits: matmul " + ", ".join(f"{d} {r:.3f} TFLOP/s" for d, r in limits.matmul_tflops.items())
            + f"; copy {_fmt(limits.copy_gbps, '.1f')} GB/s")


def _newton_schulz_lines(ok: list[dict]) -> list[str]:
    """Newton-Schulz's rate vs the matmul rate on the 1b shapes, fp32."""
    shapes = {(2048, 2048), (5461, 2048), (2048, 5461)}
    return [f"- Newton-Schulz {r['method']} {r['rows']}x{r['cols']} fp32: {r['ms_median']:.0f} ms, "
            f"{r['tflops']:.3f} TFLOP/s (cost model) = {_fmt(r.get('frac_of_matmul_here'), '.0%')} of "
            f"the same-size matmul measured beside it, {_fmt(r.get('frac_of_matmul_peak'), '.0%')} of "
            f"the run's best matmul rate; executed flops: {_fmt(r.get('frac_executed_of_matmul_here'), '.0%')}"
            for r in ok if r["operator"] == "grad_whiten" and r["method"] in ("ns-b0.5-k6", "ns-b0.8-k10")
            and r["dtype"] == "float32" and (r["rows"], r["cols"]) in shapes]


def _sinkhorn_lines(ok: list[dict]) -> list[str]:
    """SR-Sinkhorn on 2048 x 5461 (the 1b down projection) as a multiple of one copy."""
    return [f"- SR-Sinkhorn {r['method']} 2048x5461 fp32: {r['ms_median']:.2f} ms = "
            f"{_fmt(r.get('x_copy'), '.1f')} x one copy ({_fmt(r.get('copy_ms'), '.2f')} ms), "
            f"{_fmt(r.get('x_clone'), '.1f')} x one allocating clone ({_fmt(r.get('clone_ms'), '.2f')} ms)"
            for r in ok if r["operator"] == "sr_sinkhorn" and r["dtype"] == "float32"
            and (r["rows"], r["cols"]) == (2048, 5461)]


def _step_ratio_lines(by: dict, models: Iterable[str]) -> list[str]:
    """SinkGD's measured step time over SWAN's, per model, fp32 gradients."""
    lines = []
    for model in models:
        swan, sink = by.get((model, SWAN_HEADLINE, "float32")), by.get((model, SINKGD_HEADLINE, "float32"))
        if swan and sink and swan["measured_step_ms"] and sink["measured_step_ms"]:
            median, best = (sink[k] / swan[k] for k in ("measured_step_ms", "measured_step_ms_best"))
            lines.append(f"- {model}: {SINKGD_HEADLINE} step / {SWAN_HEADLINE} step = {median:.4f} "
                         f"({sink['measured_step_ms']:.1f} ms / {swan['measured_step_ms']:.0f} ms, fp32 gradients, "
                         f"medians; fastest calls: {best:.4f})")
    return lines


def _whitening_labels() -> list[str]:
    """Configurations whose step whitens (a grad_whiten part): the ones whose share of a step is the question."""
    return [c.label for c in summary_configs() if any(p.operator == "grad_whiten" for p in c.parts())]


def _share_lines(by: dict) -> list[str]:
    """The whitening share of a 1b step: cost model and measured, against ideal fp32 and bf16 steps."""
    lines = []
    for label in _whitening_labels():
        s1 = by.get(("1b", label, "bfloat16")) or by.get(("1b", label, "float32"))
        if s1:
            lines.append(f"- 1b {label}: {s1['flop_share']:.1%} of the step's forward+backward flops (cost model); "
                         f"measured {_fmt(s1['measured_step_ms'], '.0f')} ms = "
                         f"{_fmt(s1['time_share_vs_fp32_model'], '.1%')} of an ideal fp32 / "
                         f"{_fmt(s1['time_share_vs_bf16_model'], '.1%')} of an ideal bf16 forward+backward "
                         f"at the measured matmul rate (fastest calls: "
                         f"{_fmt(s1['time_share_best_vs_bf16_model'], '.1%')} of bf16; {s1['dtype']} gradients)")
    return lines


def headline_lines(rows: list[dict], summary: list[dict], limits: MachineLimits) -> list[str]:
    """Markdown bullet lines: Newton-Schulz rate vs the matmul rate on the 1b shapes, SR-Sinkhorn L=5 on
    2048 x 5461 as a multiple of one copy, SinkGD / SWAN step time and the whitening share of a 1b step."""
    ok = _headline_rows(rows)
    by = {(s["model"], s["config"], s["dtype"]): s for s in summary}
    models = dict.fromkeys(s["model"] for s in summary)
    return [_limit_line(limits), *_newton_schulz_lines(ok), *_sinkhorn_lines(ok), *_step_ratio_lines(by, models),
            *_share_lines(by)]


def _md(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in body]


def _shape_cells(r: dict) -> list[str]:
    frac = r.get("frac_of_matmul_here") if r["bound"] == "compute" else r.get("x_copy")
    versus = (f"{_fmt(frac, '.0%')} of matmul" if r["bound"] == "compute" else
              f"{_fmt(frac, '.1f')} x copy" if frac is not None else "")
    peak_mib = r["peak_bytes"] / 2**20 if r.get("peak_bytes") is not None else None
    return [f"{r['operator']} {r['method']}", f"{r['rows']}x{r['cols']}", r["dtype"], _fmt(r["ms_median"], ".3g"),
            _fmt(r.get("tflops"), ".3g"), _fmt(r.get("gbps"), ".3g"), versus, _fmt(peak_mib, ".1f"),
            _fmt(r.get("rel_error"), ".1e")]


def shape_table(rows: list[dict], side: int) -> list[str]:
    """Markdown table of the eager, batch-1 rows whose short side is `side` (2048: the 1b shapes)."""
    body = [_shape_cells(r) for r in _headline_rows(rows)
            if r.get("bound") != "limit" and min(r["rows"], r["cols"]) == side]
    return _md(["operator", "shape", "dtype", "ms (median)", "TFLOP/s", "GB/s", "vs limit", "peak MiB",
                "rel error"], body) if body else []


def summary_table(summary: list[dict], dtype: str = "float32") -> list[str]:
    """Markdown table of models.csv for one gradient dtype."""
    body = [[s["model"], s["config"], _fmt(s["flop_share"], ".2%"), _fmt(s["measured_step_ms"], ".4g"),
             _fmt(s["measured_step_ms_best"], ".4g"), _fmt(s["time_share_vs_fp32_model"], ".1%"),
             _fmt(s["time_share_vs_bf16_model"], ".1%")]
            for s in summary if s["dtype"] == dtype]
    return _md(["model", "step", "flops / fwd+bwd flops", "measured ms (median)", "measured ms (fastest)",
                "median vs ideal fp32 fwd+bwd", "median vs ideal bf16 fwd+bwd"], body) if body else []
