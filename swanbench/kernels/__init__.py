"""Operator micro-benchmarks: "is whitening affordable?" answered with numbers (suite kind = "kernels").

A kernel suite times each gradient preprocessing operator of `optimizers.functional` (GradNorm,
Newton-Schulz whitening and its diagonal-substitution fast variant, exact eigh whitening, SR-Sinkhorn,
Muon's quintic) and the benchmark-only variants of `optimizers.variants`, over the hidden-matrix shapes of
the LLaMA presets and a square sweep, per dtype, eager and `torch.compile`d, and in the same run measures
the device's own limits (square matmul TFLOP/s per dtype, copy GB/s), so every row can say how close it
is to the machine.

Files written into the output directory:

- `kernels.csv`   one row per (shape, dtype, operator, method, compile, batch): `KERNELS_COLUMNS` first
                  (median/IQR ms, cost-model flops, achieved TFLOP/s, peak extra bytes, relative error
                  against a float64 reference of `optimizers.reference`) then extras (GB/s, fractions of the
                  measured limits, ...). Skipped combinations are rows with status "skipped" and a reason,
                  their measures empty.
- `machine.csv`   the measured limits: one row per matmul size and dtype, one row for the copy, and the
                  s x s matmul measured next to each shape (the same rows head kernels.csv as
                  operator "matmul" / "copy", so figures drawn from kernels.csv alone have them).
- `models.csv`    per preset and step configuration (`optimizer` = registry name, `config` = its label in
                  `swanbench.costmodel`): preprocessing cost of one full step as a share of the step's
                  forward+backward flops (cost model) and as measured time vs the ideal forward+backward
                  time at the measured matmul rate.
- `headline.md`   the README's headline ratios, computed from the tables above.
- `env.json`      versions, device, torch threads, machine load before and after.

Modules: `suite` (the [kernels] table), `operators` (the method table), `cases` (shapes and cases),
`inputs` (test gradients, float64 references), `measure` (time, memory, machine limits), `rows` (one case,
one row), `run` (the whole suite, the files), `summary` (models.csv, headline.md).

Suite layout (see suites/whitening.toml)::

    kind = "kernels"
    [kernels]
    operators = ["grad_norm", "grad_whiten:ns-b0.5-k6", ...]  # "operator" (all its methods) or "operator:method"
    models = ["60m", "1b"]        shapes = ["qkvo", "gate_up", "down"]     square = [256, 1024]
    dtypes = ["float32", "bfloat16"]   compile = ["eager", "compiled"]    compile_models = ["1b", "square"]
    batch = [1, 8]   repeats = 7   min_repeats = 3   warmup = 1   max_case_seconds = 20   max_total_seconds = 1200
    [[kernels.skip]]  operator = "whiten_exact"  model = ["3b", "7b"]  reason = "..."
"""

from swanbench.kernels.operators import METHODS, Method, missing_keywords, resolve_callable
from swanbench.kernels.run import ENV_FILE, HEADLINE_FILE, MACHINE_FILE, MODELS_FILE, run_kernel_suite
from swanbench.kernels.suite import KernelSuite, SkipRule, load_kernel_suite, load_kernel_suite_file
from swanbench.kernels.summary import MODEL_COLUMNS, model_summary

__all__ = [
    "load_kernel_suite", "load_kernel_suite_file", "run_kernel_suite", "KernelSuite", "SkipRule", "METHODS",
    "Method", "resolve_callable", "missing_keywords", "model_summary", "MODEL_COLUMNS", "MACHINE_FILE",
    "MODELS_FILE", "ENV_FILE",
    "HEADLINE_FILE",
]
