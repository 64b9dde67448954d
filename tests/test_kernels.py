"""The operator micro-benchmark: suite validation, inputs, the reference cache, the memory counter,
timing statistics, the model summary and an end-to-end run of suites/whitening-quick.toml (a few seconds on
2 cores). The float64 references and the benchmark-only variants are tested with the optimizers
(tests/test_functional.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from optimizers.registry import StepPart
from swanbench import costmodel as cm
from swanbench import kernels as K
from swanbench.kernels import cases as kcases
from swanbench.kernels import inputs as kinputs
from swanbench.kernels import measure as kmeasure
from swanbench.kernels import rows as krows
from swanbench.kernels import summary as ksummary
from swanbench.models import PRESETS
from swanbench.suite import SuiteError
from swanbench.schema import KERNELS_COLUMNS
from swanbench.tables import read_table

SUITES = Path(__file__).resolve().parent.parent / "suites"
QUICK = SUITES / "whitening-quick.toml"


def _suite(**kernels) -> K.KernelSuite:
    return K.load_kernel_suite({"kind": "kernels", "kernels": kernels}, Path("x.toml"))


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

def test_shipped_suites_validate():
    full = K.load_kernel_suite_file(SUITES / "whitening.toml")
    assert {m.operator for m in full.methods} == set(K.METHODS)
    assert {"60m", "130m", "350m", "1b"} <= set(full.models)
    quick = K.load_kernel_suite_file(QUICK)
    assert quick.models == ("nano",) and quick.compile == ("eager",)


@pytest.mark.parametrize("kernels, needle", [
    ({"operater": ["grad_norm"]}, "kernels.operater: unknown key; did you mean 'operators'?"),
    ({"operators": ["grad_whitten"]}, "did you mean 'grad_whiten'?"),
    ({"operators": ["grad_whiten:ns-b0.5-k7"]}, "did you mean 'grad_whiten:ns-b0.5-k6'?"),
    ({"models": ["1B"]}, "kernels.models: unknown value '1B'"),
    ({"dtypes": ["bfloat61"]}, "did you mean 'bfloat16'?"),
    ({"compile": ["compile"]}, "did you mean 'compiled'?"),
    ({"batch": [0]}, "kernels.batch: expected integers >= 1"),
    ({"repeats": "7"}, "kernels.repeats: expected an integer >= 1"),
    ({"device": "tpu"}, "kernels.device"),
    ({"skip": [{"operator": "whiten_exact"}]}, "kernels.skip[0].reason: every skip rule needs a reason"),
    ({"skip": [{"operater": "x", "reason": "r"}]}, "kernels.skip[0].operater: unknown key; did you mean 'operator'?"),
    ({"skip": [{"method": "L5", "reason": "r"}]}, "kernels.skip[0].method: unknown value 'L5'"),
])
def test_bad_suites_fail_with_one_line_naming_file_and_key(kernels, needle):
    with pytest.raises(SuiteError) as err:
        _suite(**kernels)
    message = str(err.value)
    assert message.startswith("x.toml: ") and needle in message and "\n" not in message


def test_unknown_top_level_key_is_rejected():
    with pytest.raises(SuiteError, match=r"x.toml: matrix: not allowed"):
        K.load_kernel_suite({"kind": "kernels", "kernels": {}, "matrix": {}}, Path("x.toml"))


def test_operator_entries_select_methods():
    suite = _suite(operators=["grad_whiten:nsds-b0.4-k2", "sr_sinkhorn"])
    keys = [m.key for m in suite.methods]
    assert keys[0] == "grad_whiten:nsds-b0.4-k2"
    assert set(keys[1:]) == {f"sr_sinkhorn:{m}" for m in K.METHODS["sr_sinkhorn"]}


def test_every_method_resolves_to_a_function():
    for methods in K.METHODS.values():
        for method in methods.values():
            assert callable(K.resolve_callable(method))


def test_a_stateful_method_gets_a_new_instance_per_resolve():
    """The reused output buffer belongs to one run (its RunContext.callables), never to a module."""
    from optimizers.variants import SrSinkhornReusedOut

    method = K.METHODS["sr_sinkhorn"]["native-L5-out"]
    first, second = K.resolve_callable(method), K.resolve_callable(method)
    assert method.stateful and isinstance(first, SrSinkhornReusedOut) and first is not second


# --------------------------------------------------------------------------------------------------
# Shapes, cases, skips, budget
# --------------------------------------------------------------------------------------------------

def test_shapes_are_deduplicated_and_named():
    suite = _suite(models=["60m", "1b"], square=[512, 100])
    shapes = {(s.rows, s.cols): s for s in kcases.suite_shapes(suite)}
    assert shapes[(512, 512)].role == "qkvo" and shapes[(512, 512)].models == ("60m",)  # square 512 folded in
    assert shapes[(5461, 2048)].role == "gate_up" and shapes[(2048, 5461)].role == "down"
    assert shapes[(100, 100)].role == "square"
    assert len(shapes) == 7


def test_skip_rules_and_compile_models():
    suite = _suite(models=["nano", "1b"], operators=["whiten_exact", "grad_norm"], compile=["eager", "compiled"],
                   compile_models=["nano"], dtypes=["float32", "bfloat16"],
                   skip=[{"operator": "whiten_exact", "model": "1b", "reason": "too slow"}])
    cases = kcases.expand_cases(suite, kcases.suite_shapes(suite))
    assert not [c for c in cases if c.compile == "compiled" and "1b" in c.shape.models]
    reasons = {(c.method.operator, c.shape.models): kcases.skip_reason(suite, c) for c in cases}
    assert reasons[("whiten_exact", ("1b",))] == "too slow"
    assert reasons[("grad_norm", ("1b",))] is None and reasons[("whiten_exact", ("nano",))] is None


def test_plan_repeats_fits_the_budget():
    suite = _suite(repeats=10, min_repeats=3, warmup=2, max_case_seconds=10)
    assert krows.plan_repeats(suite, 0.01, None) == (2, 10)      # cheap: everything
    assert krows.plan_repeats(suite, 2.0, None) == (2, 3)        # 5 calls fit: warm-up kept, 3 timed
    assert krows.plan_repeats(suite, 4.0, None) == (0, 2)        # 2 fit: warm-up dropped first
    assert krows.plan_repeats(suite, 30.0, None) == (0, 1)       # always at least one timed call
    assert krows.plan_repeats(suite, None, None) == (2, 10)


def test_budget_skips_cases_the_machine_cannot_finish():
    suite = _suite(models=["7b"], operators=["grad_whiten:ns-b0.8-k10"], max_case_seconds=1)
    limits = kmeasure.MachineLimits(matmul_tflops={"float32": 0.25}, copy_gbps=40.0)
    ctx = krows.RunContext(suite, "cpu", "test cpu", limits, kinputs.ReferenceCache())
    case = kcases.expand_cases(suite, kcases.suite_shapes(suite))[0]
    reason = krows.budget_reason(ctx, case)
    assert reason is not None and "max_case_seconds = 1" in reason


# --------------------------------------------------------------------------------------------------
# Inputs, references, statistics
# --------------------------------------------------------------------------------------------------

def test_inputs_share_values_across_dtypes_and_orientation():
    wide32 = kinputs.make_input(6, 10, 1, "float32", 3, "cpu")
    wide16 = kinputs.make_input(6, 10, 1, "bfloat16", 3, "cpu")
    tall32 = kinputs.make_input(10, 6, 1, "float32", 3, "cpu")
    assert wide16.dtype == torch.bfloat16 and torch.equal(wide16.float(), wide32)
    assert torch.equal(tall32, wide32.T) and tall32.is_contiguous()
    batch = kinputs.make_input(6, 10, 4, "float32", 3, "cpu")
    assert batch.shape == (4, 6, 10) and not torch.equal(batch[0], batch[1])


def test_reference_cache_serves_the_transposed_shape():
    cache = kinputs.ReferenceCache()
    wide = kinputs.make_input(4, 9, 1, "float32", 0, "cpu").double()
    key = kinputs.reference_key(4, 9, 0)
    ref = cache.polar(wide, key)
    assert torch.equal(cache.polar(wide.T, key), ref.T)  # same entry, transposed


def test_median_iqr():
    assert kmeasure.median_iqr([5.0, 1.0, 3.0, 2.0, 4.0]) == (3.0, 2.0)
    assert kmeasure.median_iqr([1.0, 3.0]) == (2.0, None)  # too few samples for quartiles
    assert kmeasure.median_iqr([]) == (None, None)


def test_live_bytes_counts_intermediates_not_inputs_or_views():
    x = torch.randn(256, 256)
    nbytes = x.numel() * 4
    with kmeasure.LiveBytes([x]) as counter:
        a = x * 2          # +1
        b = a + 1          # +1 -> peak 2
        del a              # -1
        c = b.T            # a view: no new storage
        d = c * 3          # +1 -> 2 again (a is gone)
        del b, c, d
    assert counter.peak == 2 * nbytes
    with kmeasure.LiveBytes([x]) as counter:
        x.T.contiguous()
        x.view(-1)  # a view of the input is not counted
    assert counter.peak == nbytes


# --------------------------------------------------------------------------------------------------
# End to end (the quick suite: every operator, both dtypes, nano shapes)
# --------------------------------------------------------------------------------------------------

def _without_methods_ahead_of_their_operator(frame, suite):
    """Rows of methods whose operator does not take one of their keywords yet (whitening `precision`, added
    to the method table ahead of the optimizers package) must be skipped with that reason; the rest is returned."""
    ahead = {m.method for m in suite.methods if K.missing_keywords(m)}
    rows = frame["method"].isin(ahead)
    if not rows.any():
        return frame
    assert set(frame.loc[rows, "status"]) <= {"skipped"}
    assert frame.loc[rows, "skip_reason"].str.contains("does not take").all()
    return frame[~rows]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("whitening-quick")
    suite = K.load_kernel_suite_file(QUICK)
    path = K.run_kernel_suite(suite, out, console=None)
    return out, path, suite


def test_quick_suite_writes_every_operator_with_real_values(quick_run):
    out, path, suite = quick_run
    frame = read_table(path, required=KERNELS_COLUMNS)
    assert list(frame.columns[:len(KERNELS_COLUMNS)]) == list(KERNELS_COLUMNS)
    machine = frame[frame["bound"] == "limit"]
    assert set(machine["operator"]) == {"matmul", "copy"}  # the limits travel with the table for figures
    frame = frame[frame["bound"] != "limit"]
    expected = len(kcases.suite_shapes(suite)) * len(suite.dtypes) * len(suite.methods)
    assert len(frame) == expected
    frame = _without_methods_ahead_of_their_operator(frame, suite)
    assert set(frame["status"]) == {"ok"}
    assert set(frame["operator"]) == set(K.METHODS) and not frame["compile"].any()
    assert (frame["ms_median"] > 0).all() and (frame["flops"] > 0).all() and (frame["tflops"] > 0).all()
    assert (frame["peak_bytes"] > 0).all() and set(frame["peak_bytes_method"]) == {"dispatch_live_tensors"}
    assert frame["rel_error"].notna().all()
    compute = frame[frame["bound"] == "compute"]
    memory = frame[frame["bound"] == "memory"]
    assert compute["frac_of_matmul_peak"].notna().all() and compute["frac_of_bandwidth"].isna().all()
    assert memory["frac_of_bandwidth"].notna().all() and (memory["x_copy"] > 0).all()


def test_quick_suite_errors_are_those_of_each_method(quick_run):
    frame = read_table(quick_run[1])
    frame = _without_methods_ahead_of_their_operator(frame[frame["bound"] != "limit"], quick_run[2])
    f32 = frame[frame["dtype"] == "float32"].set_index(["operator", "method", "rows", "cols"])["rel_error"]
    # exact algorithms match their float64 references to fp32/fp64 rounding
    assert (f32.loc["whiten_exact"] < 1e-10).all()
    assert (f32.loc["grad_norm"] < 1e-5).all() and (f32.loc["sr_sinkhorn"] < 1e-5).all()
    # Newton-Schulz approximates the polar factor: finite, and b = 0.5 / k = 6 is the closest variant
    ns = frame[(frame["operator"] == "grad_whiten")].groupby("method")["rel_error"].median()
    assert ns["ns-b0.5-k6"] < ns["nsds-b0.4-k2"] and (ns < 1).all()


def test_quick_suite_machine_models_and_env(quick_run):
    out, _, suite = quick_run
    machine = read_table(out / K.MACHINE_FILE, required=["measure", "dtype", "tflops", "gbps"])
    # the input dtypes, and TF32 for the methods that compute in it (fp32 tensors, TF32 matmuls)
    assert set(machine.loc[machine["measure"] == "matmul", "dtype"]) == {"float32", "bfloat16", "tf32"}
    assert (machine.loc[machine["measure"] == "copy", "gbps"] > 0).all()
    models = read_table(out / K.MODELS_FILE, required=K.MODEL_COLUMNS)
    nano = models[models["model"] == "nano"]
    assert nano["measured_step_ms"].notna().all() and (nano["flop_share"] > 0).all()
    assert set(models["config"]) == {c.label for c in ksummary.summary_configs()}  # STEP_CONFIGS + registry
    assert set(models["optimizer"]) == {c.optimizer for c in ksummary.summary_configs()}
    big = models[models["model"] == "1b"]  # 1b shapes are not in the quick suite: measured stays empty
    assert big["measured_step_ms"].isna().all() and big["missing"].notna().all()
    env = json.loads((out / K.ENV_FILE).read_text())
    assert env["torch_threads"] == torch.get_num_threads() and "load_average_before" in env


def _sinkgd_rows(model: str) -> list[dict]:
    """Two of SinkGD's kernels measured on every hidden shape of `model`: 1 ms and 3 ms (fastest calls half)."""
    part, = cm.step_config("sinkgd").parts()
    rows = []
    for (r, c) in kcases.role_shapes(model).values():
        for method, ms in ((part.methods[0], 1.0), (part.methods[-1], 3.0)):
            rows.append({"status": "ok", "compile": False, "operator": part.operator, "method": method, "rows": r,
                         "batch": 1, "cols": c, "dtype": "float32", "ms_median": ms, "ms_min": ms / 2})
    return rows


LIMITS = dict(matmul_tflops={"float32": 1.0, "bfloat16": 2.0}, copy_gbps=10.0)


def test_model_summary_sums_measured_parts():
    limits = kmeasure.MachineLimits(**LIMITS)
    summary = {s["config"]: s for s in K.model_summary(_sinkgd_rows("nano"), limits, ["nano"], 1000, "cpu", None)}
    matrices = len(PRESETS["nano"].hidden_matrix_shapes())
    sink, swan = summary["sinkgd"], summary[cm.step_config("swan", beta=0.5, steps=6).label]
    assert sink["optimizer"] == "sinkgd" and swan["optimizer"] == "swan"
    assert sink["measured_step_ms"] == pytest.approx(matrices * 1.0)  # the faster kernel of each matrix counts
    assert sink["measured_step_ms_best"] == pytest.approx(matrices * 0.5)
    assert swan["measured_step_ms"] is None and swan["missing"]
    assert sink["time_share_vs_fp32_model"] == pytest.approx(matrices / sink["ideal_fwd_bwd_ms_fp32"])


def test_model_summary_names_configurations_by_registry_and_label():
    limits = kmeasure.MachineLimits(**LIMITS)
    summary = K.model_summary(_sinkgd_rows("nano"), limits, ["nano"], 1000, "cpu", None)
    # the cost model's named configurations first, then any other registry entry with step parts
    configs = ksummary.summary_configs()
    assert configs[:len(cm.STEP_CONFIGS)] == list(cm.STEP_CONFIGS)
    assert [(s["optimizer"], s["config"]) for s in summary] == [(c.optimizer, c.label) for c in configs]
    for s, config in zip(summary, configs):
        assert s["step_flops"] == cm.step_flops(PRESETS["nano"].hidden_matrix_shapes(), config.flops)


@pytest.fixture
def throwaway_optimizer():
    """A registry entry with one step part (SinkGD's L=5 kernels, at twice the flops), removed afterwards."""
    from optimizers import registry

    base = registry._ENTRIES["sinkgd"]
    part = StepPart("sr_sinkhorn", ("native-L5", "vectors-L5"), lambda r, c: 2 * r * c)
    info = dataclasses.replace(base.info, name="throwaway-sink", _parts=lambda hp: (part,))
    registry._register(info, base.build, base.validate)
    try:
        yield info.name
    finally:
        del registry._ENTRIES[info.name]


def test_a_new_registry_entry_joins_the_model_summary(throwaway_optimizer):
    limits = kmeasure.MachineLimits(**LIMITS)
    summary = K.model_summary(_sinkgd_rows("nano"), limits, ["nano"], 1000, "cpu", None)
    row, = [s for s in summary if s["optimizer"] == throwaway_optimizer]
    shapes = PRESETS["nano"].hidden_matrix_shapes()
    assert row["config"] == throwaway_optimizer
    assert row["step_flops"] == sum(2 * r * c for r, c in shapes)
    assert row["measured_step_ms"] == pytest.approx(len(shapes) * 3.0)  # only vectors-L5 of its methods measured


def test_headline_reads_the_summary_by_label():
    limits = kmeasure.MachineLimits(**LIMITS)
    rows = _sinkgd_rows("nano")
    part, = cm.step_config("swan", beta=0.5, steps=6).parts()[1:]
    for (r, c) in kcases.role_shapes("nano").values():
        for op, method in (("grad_norm", "rowwise"), (part.operator, part.methods[0])):
            rows.append({**rows[0], "operator": op, "method": method, "rows": r, "cols": c, "ms_median": 10.0,
                         "ms_min": 5.0})
    summary = K.model_summary(rows, limits, ["nano"], 1000, "cpu", None)
    lines = ksummary.headline_lines(rows, summary, limits)
    ratio, = [line for line in lines if line.startswith("- nano: sinkgd step / swan beta=0.5 steps=6 step")]
    assert "= 0.0500 " in ratio  # 1 ms vs 2 x 10 ms per matrix
    table = "\n".join(ksummary.summary_table(summary))
    assert "| nano | sinkgd |" in table and "| nano | swan beta=0.5 steps=6 |" in table


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_quick_suite_on_gpu_measures_allocator_peaks(tmp_path):
    suite = K.load_kernel_suite({"kind": "kernels", "kernels": {"models": ["nano"], "device": "cuda",
                                                                 "dtypes": ["float32", "bfloat16"],
                                                                 "repeats": 3, "matmul_sizes": [1024]}}, QUICK)
    frame = read_table(K.run_kernel_suite(suite, tmp_path))
    native = frame["method"].str.startswith("native")
    assert set(frame.loc[native, "status"]) == {"skipped"}
    assert frame.loc[native, "skip_reason"].str.contains("CPU-only").all()
    ran = _without_methods_ahead_of_their_operator(frame[~native], suite)
    assert set(ran["status"]) == {"ok"} and set(ran["peak_bytes_method"]) == {"cuda_max_allocated"}
    assert (ran["peak_bytes"] > 0).all()


def test_total_budget_skips_the_tail_with_a_reason(tmp_path):
    suite = K.load_kernel_suite({"models": ["nano"], "operators": ["grad_norm"], "matmul_sizes": [64],
                                 "copy_mib": 1, "max_total_seconds": 1e-9, "summary_models": ["nano"]}, QUICK)
    frame = read_table(K.run_kernel_suite(suite, tmp_path))
    ops = frame[frame["bound"] != "limit"]
    assert set(ops["status"]) == {"skipped"} and ops["ms_median"].isna().all()
    assert ops["skip_reason"].str.contains("max_total_seconds").all()


def test_primary_cases_run_first():
    suite = _suite(models=["nano"], operators=["grad_norm:rowwise"], dtypes=["float32", "bfloat16"], batch=[1, 4])
    order = [c for _, cases in kcases.ordered_work(suite) for c in cases]
    primary = [kcases.is_primary(suite, c) for c in order]
    assert primary == sorted(primary, reverse=True)  # all primary cases before any variant
    assert sum(primary) == len(kcases.suite_shapes(suite)) and len(order) == 4 * len(kcases.suite_shapes(suite))


def test_a_method_whose_operator_lacks_its_keyword_names_it():
    rowwise = K.METHODS["grad_norm"]["rowwise"]
    ahead = dataclasses.replace(rowwise, kwargs=(("precision", "tf32"),))
    assert K.missing_keywords(rowwise) is None
    assert K.missing_keywords(ahead) == ("optimizers.functional.grad_norm does not take precision= in this "
                                         "optimizers package (method grad_norm:rowwise needs it)")


def test_precision_methods_run_in_their_compute_precision_when_the_operator_takes_it(monkeypatch, tmp_path):
    """Whitening in TF32 / bf16: rows compared with the TF32 / bf16 matmul rate measured in the same run."""
    import optimizers.functional as F

    real, seen = F.grad_whiten, []

    def grad_whiten(g, steps=10, beta=0.8, method="newton-schulz", precision="fp32"):
        seen.append(precision)  # stands in for the precision option of SWAN's whitening
        return real(g, steps, beta, method)

    monkeypatch.setattr(F, "grad_whiten", grad_whiten)
    suite = K.load_kernel_suite({"models": ["nano"], "operators": ["grad_whiten:ns-b0.8-k10-tf32",
                                                                   "grad_whiten:ns-b0.8-k10-bf16"],
                                 "matmul_sizes": [64], "copy_mib": 1, "repeats": 1, "min_repeats": 1,
                                 "summary_models": ["nano"]}, QUICK)
    frame = read_table(K.run_kernel_suite(suite, tmp_path))
    limits, ops = frame[frame["bound"] == "limit"], frame[frame["bound"] != "limit"]
    assert set(ops["status"]) == {"ok"} and set(seen) == {"tf32", "bf16"}
    assert set(ops["compute_dtype"]) == {"tf32", "bfloat16"}
    rates = limits[limits["method"] == "matmul"].groupby("dtype")["tflops"].max()
    assert {"float32", "tf32", "bfloat16"} <= set(rates.index)
    for compute, rows in ops.groupby("compute_dtype"):
        assert (rows["matmul_tflops_peak"] >= rates[compute]).all()  # the run's best rate of that precision


def test_a_skip_reason_with_brackets_is_printed_as_written():
    """Reasons are data: a user's `reason = "... [tune] ..."` must not be read as rich markup and vanish."""
    import io

    from rich.console import Console

    from swanbench.kernels.run import _summary_text

    out = io.StringIO()
    Console(file=out, width=200).print(_summary_text({"status": "skipped", "skip_reason": "see the [tune] table"}))
    assert out.getvalue().strip() == "skipped: see the [tune] table"
