"""The GPU check's time model: how long the train suite takes on an H200, run by run, from the H200's
measured rates and the harness's per-run costs (`benchmarks/gpu_check.py --dry-run` prints it and checks it
against the suite's step budget). Planning numbers, not measurements: the first real check replaces them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Planning constants of the H200 (measured on this project's machines: KINDS notes and issue 16) and of a
# run of the harness there; the dry run prints the per-run model built from them.
H200 = {"bf16_tflops": 790.0, "fp32_tflops": 60.0, "copy_gbps": 4300.0}
RUN_START_S = 6.0        # a fresh worker: python, torch + transformers imports, CUDA context, data from cache
BUILD_S_PER_GPARAM = 6.0  # random init of the fp32 model on the CPU, then cast and copy to the GPU
FIRST_RUN_S = 10.0       # the first run trains the BPE on the embedded corpus (cached for the others)
MFU = 0.35               # eager bf16 forward+backward of the HF LLaMA, fraction of the bf16 matmul rate
LAUNCH_S_PER_LAYER = 0.6e-3  # per layer per step: a small model's step is kernel launches, not flops
KERNEL_SUITE_OVERHEAD_S = 18.0  # imports, the matmul/copy limits, float64 reference eighs, tables, figures


def run_seconds(cell: Any) -> float:
    """Planned wall time of one train run of `cell` on an H200 (seconds; see the constants above)."""
    from swanbench import costmodel as cm
    from swanbench.models import get_preset

    preset = get_preset(cell.model)
    params = preset.param_count()
    tokens = cell.tokens_per_step
    fwd_bwd = max(cm.forward_backward_flops(params, tokens) / (H200["bf16_tflops"] * 1e12 * MFU),
                  preset.layers * LAUNCH_S_PER_LAYER)
    evals = 2 * 2 * params * cell.eval_tokens / (H200["bf16_tflops"] * 1e12 * MFU)
    return (RUN_START_S + BUILD_S_PER_GPARAM * params / 1e9 + evals
            + cell.steps * (fwd_bwd + optimizer_seconds(cell.optimizer, preset, params)))


def optimizer_seconds(optimizer: str, preset: Any, params: int) -> float:
    """One optimizer step: its preprocessing parts (whitening at the fp32 rate, Muon's quintic at the bf16
    rate, memory-bound parts at half the copy bandwidth) plus one pass over 16 bytes a parameter."""
    import optimizers

    seconds = 16 * params / (H200["copy_gbps"] * 1e9 * 0.5)
    for part in optimizers.info(optimizer).step_parts():
        shapes = preset.hidden_matrix_shapes()
        if part.operator == "grad_whiten":
            seconds += sum(part.flops(r, c) for r, c in shapes) / (H200["fp32_tflops"] * 1e12 * 0.8)
        elif part.operator == "muon_quintic":
            seconds += sum(part.flops(r, c) for r, c in shapes) / (H200["bf16_tflops"] * 1e12 * 0.3)
        else:  # GradNorm, SR-Sinkhorn: a few fp32 passes over each matrix
            seconds += sum(12 * 4 * r * c for r, c in shapes) / (H200["copy_gbps"] * 1e9 * 0.5)
    return seconds


def train_time_lines(suite_path: Path, budget_s: float) -> tuple[list[str], list[str]]:
    """(the per-run time model of the train suite, problems): its sum must fit the step's budget, and no
    run's planned time may exceed the suite's own per-run timeout."""
    from swanbench.suite import load_suite

    suite = load_suite(suite_path)
    label = _label(suite_path)
    lines, problems, total = [f"time model of {label} on an H200 (s per run):"], [], FIRST_RUN_S
    for run in suite.runs():
        seconds = run_seconds(run.cell)
        total += seconds
        lines.append(f"  {run.cell.model:>5} {run.cell.optimizer:<10} {seconds:6.1f}")
        if seconds > run.cell.timeout_s:
            problems.append(f"{label}: {run.cell.optimizer} at {run.cell.model}: planned {seconds:.0f} s "
                            f"> timeout_s {run.cell.timeout_s:g}")
    lines.append(f"  total {total:.0f} s (first run's BPE {FIRST_RUN_S:g} s included) of the step's {budget_s:g} s")
    if total > budget_s:
        problems.append(f"{label}: planned {total:.0f} s > the {budget_s:g} s its step has")
    return lines, problems


def kernel_time_problems(suite_path: Path, budget_s: float) -> list[str]:
    from swanbench.kernels import load_kernel_suite_file

    suite = load_kernel_suite_file(suite_path)
    if suite.max_total_seconds is None:
        return [f"{_label(suite_path)}: kernels.max_total_seconds is needed (the check's step has {budget_s:g} s)"]
    if suite.max_total_seconds + KERNEL_SUITE_OVERHEAD_S > budget_s:
        return [f"{_label(suite_path)}: max_total_seconds {suite.max_total_seconds:g} + "
                f"{KERNEL_SUITE_OVERHEAD_S:g} s of overhead > the {budget_s:g} s its step has"]
    return []




def _label(path: Path) -> str:
    """The path relative to the working directory where it is inside it (shorter lines), else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
