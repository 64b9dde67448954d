"""Time one `optimizer.step()` of every registered optimizer on the parameters of a LLaMA preset (CPU).

Not a test: a measurement to run by hand, e.g.

    .venv/bin/python benchmarks/optimizer_step.py --models 60m 130m --repeats 3

For each model the real `LlamaForCausalLM` parameters are built (random init) and given fixed random
gradients, so only `step()` is timed (no forward/backward). Every optimizer is built by
`optimizers.build(name, model)` with its registry defaults and warmed up; then each repetition times
AdamW(fused=True), AdamW(foreach=True) and the candidate back to back, so the ratios are medians of
paired ratios taken under the same load (the machine may be shared). Reported per optimizer: the median
step time (ms), the median time inside `preprocess_timer` (whitening / SR-Sinkhorn; empty for optimizers
without it), and the ratios to the two AdamW references.

Output: a markdown table on stdout; `--csv PATH` also writes one row per (model, optimizer).
`--targets` instead measures the whitening-cost issue's CPU targets: coupled Newton-Schulz on the 1b
shapes as a percentage of the fp32 matmul rate, and SR-Sinkhorn (L=5, 2048 x 5461) in copies of the matrix.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import optimizers  # noqa: E402
from swanbench.models import build_model  # noqa: E402

REFERENCES = ("adamw-fused", "adamw-foreach")


class PreprocessClock:
    """A `preprocess_timer`: sums the wall time of every `with` block of one step (perf_counter, ms)."""

    def __init__(self) -> None:
        self.ms = 0.0
        self.entered = False

    @contextlib.contextmanager
    def __call__(self):
        self.entered = True
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms += (time.perf_counter() - t0) * 1e3


def make_model(name: str) -> torch.nn.Module:
    """The preset's parameters with fixed gradients of a realistic scale (entries ~1e-3)."""
    model = build_model(name)
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    return model


def build_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if name == "adamw-fused":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
    elif name == "adamw-foreach":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, foreach=True)
    else:
        return optimizers.build(name, model)
    opt.preprocess_timer = None
    return opt


def time_step(opt: torch.optim.Optimizer) -> tuple[float, float | None]:
    """(step ms, preprocessing ms or None) for one step."""
    clock = PreprocessClock()
    opt.preprocess_timer = clock
    t0 = time.perf_counter()
    opt.step()
    step_ms = (time.perf_counter() - t0) * 1e3
    opt.preprocess_timer = None
    return step_ms, (clock.ms if clock.entered else None)


def bench_model(model_name: str, names: list[str], warmup: int, repeats: int) -> list[dict]:
    """Time every optimizer on one model; the two AdamW references are timed beside each candidate.

    One candidate lives at a time (memory: weights + grads + the two references' state + one candidate's
    state), and every repetition times reference, reference, candidate back to back, so each ratio is a
    median of paired ratios taken under the same machine load.
    """
    model = make_model(model_name)
    refs = {name: build_optimizer(name, model) for name in REFERENCES}
    for opt in refs.values():
        for _ in range(warmup):
            opt.step()
    rows = []
    for name in names:
        opt = refs[name] if name in refs else build_optimizer(name, model)
        for _ in range(warmup if name not in refs else 0):
            opt.step()
        steps, pre, ratios = [], [], {ref: [] for ref in REFERENCES}
        for _ in range(repeats):
            ref_ms = {ref: time_step(refs[ref])[0] for ref in REFERENCES}
            step_ms, pre_ms = time_step(opt)
            steps.append(step_ms)
            if pre_ms is not None:
                pre.append(pre_ms)
            for ref in REFERENCES:
                ratios[ref].append(step_ms / ref_ms[ref])
        rows.append({"model": model_name, "optimizer": name,
                     "implementation": getattr(opt, "implementation", type(opt).__name__),
                     "step_ms_median": statistics.median(steps),
                     "step_ms_min": min(steps), "step_ms_max": max(steps),
                     "preprocess_ms_median": statistics.median(pre) if pre else None,
                     "x_adamw_fused": statistics.median(ratios["adamw-fused"]),
                     "x_adamw_foreach": statistics.median(ratios["adamw-foreach"]),
                     "repeats": repeats})
        print(f"  {model_name} {name}: {rows[-1]['step_ms_median']:.1f} ms", file=sys.stderr, flush=True)
        del opt
    return rows


# --------------------------------------------------------------------------------------------------
# --targets: the whitening-cost issue's two CPU targets, measured against this machine's own limits
# --------------------------------------------------------------------------------------------------

def _ms(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def whitening_targets(repeats: int) -> list[str]:
    """Newton-Schulz on the 1b shapes as % of the fp32 matmul rate; SR-Sinkhorn (L=5) in copies.

    Each measurement is paired with its yardstick measured right before it (an s x s fp32 matmul for
    whitening, a copy of the same matrix for SR-Sinkhorn), so a drifting machine load cancels in the ratio.
    Flops are the nominal cost model of `swanbench.costmodel` (4 s^2 l + 6 k s^3).
    """
    from optimizers import functional as F

    lines = ["| operator | shape | ms (median) | yardstick | ratio |", "|---|---|---:|---:|---:|"]
    gen = torch.Generator().manual_seed(0)
    for steps, beta in ((6, 0.5), (10, 0.8)):
        for shape in ((2048, 2048), (5461, 2048), (2048, 5461)):
            g = torch.randn(shape, generator=gen)
            s, l = min(shape), max(shape)
            a, b = torch.randn(s, s, generator=gen), torch.randn(s, s, generator=gen)
            F.grad_whiten(g, steps, beta)  # warm-up (first touch, BLAS init)
            rates, times = [], []
            for _ in range(repeats):
                mm_ms = min(_ms(lambda: torch.mm(a, b), 2))
                ns_ms = _ms(lambda: F.grad_whiten(g, steps, beta), 1)[0]
                times.append(ns_ms)
                rates.append(((4 * s * s * l + 6 * steps * s ** 3) / ns_ms) / (2 * s ** 3 / mm_ms))
            mm_gfs = 2 * s ** 3 / mm_ms / 1e6
            lines.append(f"| grad_whiten b={beta} k={steps} | {shape[0]}x{shape[1]} | {statistics.median(times):.0f} | "
                         f"fp32 matmul {mm_gfs:.0f} GFLOP/s | {100 * statistics.median(rates):.0f}% of matmul rate |")
    g = torch.randn((2048, 5461), generator=gen)
    buf, out = torch.empty_like(g), torch.empty_like(g)
    # Each method allocating its result, and (the yardstick's own terms: a preallocated destination)
    # writing into a reused `out`, as SinkGD's fused update effectively does.
    variants = [(m, None) for m in F.SINKHORN_METHODS] + [(m, out) for m in ("native", "blocked")]
    for method, dest in variants:
        if method == "native" and F.resolve_sinkhorn_method(g, "auto") != "native":
            continue  # no C compiler here: the auto method is the torch one, already listed
        F.sr_sinkhorn(g, 5, method=method, out=dest)
        ratios, times = [], []
        for _ in range(repeats):
            copy_ms = min(_ms(lambda: buf.copy_(g), 3))
            ms = _ms(lambda: F.sr_sinkhorn(g, 5, method=method, out=dest), 1)[0]
            times.append(ms)
            ratios.append(ms / copy_ms)
        label = method + (" (out reused)" if dest is not None else "")
        lines.append(f"| sr_sinkhorn L=5 {label} | 2048x5461 | {statistics.median(times):.1f} | "
                     f"copy {copy_ms:.1f} ms | {statistics.median(ratios):.1f}x copy |")
    return lines


def render(rows: list[dict]) -> str:
    lines = ["| model | optimizer | step ms (median) | preprocess ms | x AdamW fused | x AdamW foreach | implementation |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        pre = f"{r['preprocess_ms_median']:.1f}" if r["preprocess_ms_median"] is not None else ""
        lines.append(f"| {r['model']} | {r['optimizer']} | {r['step_ms_median']:.1f} | {pre} | "
                     f"{r['x_adamw_fused']:.2f} | {r['x_adamw_foreach']:.2f} | {r['implementation']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["60m", "130m"])
    parser.add_argument("--optimizers", nargs="+", default=None, help="registry names (default: all available)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--targets", action="store_true",
                        help="instead: Newton-Schulz %% of matmul rate on the 1b shapes, SR-Sinkhorn in copies")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.targets:
        print("\n".join(whitening_targets(args.repeats)))
        return 0
    names = list(REFERENCES) + [n for n in (args.optimizers or optimizers.available()) if n not in REFERENCES]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}", file=sys.stderr)
    rows = [row for m in args.models for row in bench_model(m, names, args.warmup, args.repeats)]
    print(render(rows))
    if args.csv:
        with args.csv.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
