"""A new optimizer is one registry entry: with nothing else edited, it runs in a suite, is estimated,
ordered and coloured in the report and figures, and costed by the cost model."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import pandas as pd
import pytest

# The registration a user would add to optimizers/registry.py, as a module the test and the worker import.
REGISTRATION = textwrap.dedent('''
    import torch

    from optimizers import registry
    from optimizers.costs import grad_norm_flops

    NAME = "nadam-entry"
    COLOR = "#123456"


    def build(model, hp):
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.NAdam(params, lr=hp["lr"], weight_decay=hp["weight_decay"]), "torch.optim.NAdam"


    def validate(hp):
        hp["lr"] = float(hp["lr"])


    def parts(hp):
        return (registry.StepPart("grad_norm", ("rowwise",), grad_norm_flops),)


    if NAME not in registry.registered():
        registry._register(registry._info(
            NAME, "NAdam (a test entry)", "torch.optim.NAdam", lambda s: 2 * registry._numel(s), lambda s: 0,
            dict(lr=1e-3, weight_decay=0.0), scalar=8, parts=parts, color=COLOR, order=5), build, validate)
''')


@pytest.fixture
def entry(tmp_path):
    """Register the entry in this process (and remove it afterwards); returns the folder of its module."""
    from optimizers import registry

    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "nadam_entry.py").write_text(REGISTRATION)
    spec = importlib.util.spec_from_file_location("nadam_entry", folder / "nadam_entry.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield folder
    registry._ENTRIES.pop(module.NAME, None)


def _worker_cmd(folder) -> list[str]:
    # The worker process imports the same registration before it runs: the registry is all it changes.
    code = (f"import sys; sys.path.insert(0, {str(folder)!r}); import nadam_entry; "
            "from swanbench.run import worker; sys.exit(worker.main(sys.argv[1:]))")
    return [sys.executable, "-c", code]


def test_a_registry_entry_alone_works_in_run_estimate_report_and_figures(entry, write_suite, tiny_suite_text,
                                                                         tmp_path):
    from swanbench import costmodel, runner
    from swanbench.analysis.figures.common import optimizer_colors
    from swanbench.analysis.report import write_report
    from swanbench.estimate import estimate
    from swanbench.suite import check_runtime, load_suite

    body = tiny_suite_text.replace('optimizer = ["adamw"]', 'optimizer = ["sgd", "nadam-entry", "adamw"]')
    suite = load_suite(write_suite(body))  # the name is known: validation passes
    check_runtime(suite)
    out = tmp_path / "out"
    outcome = runner.run_suite(suite, out, worker_cmd=_worker_cmd(entry), progress=False)
    assert set(outcome.statuses.values()) == {"ok"}, outcome.statuses

    runs = pd.read_csv(out / "runs.csv").set_index("optimizer")
    row = runs.loc["nadam-entry"]
    assert row["optimizer_state_bytes"] == 2 * row["param_bytes"]  # two moments, as declared
    assert row["optimizer_impl"] == "torch.optim.NAdam"
    # the estimator reads the declaration: the measured moments plus the declared 8 bytes of 0-dim
    # counters per tensor (NAdam's step and mu_product, which the tensor walk reports apart)
    est = estimate("nano", "nadam-entry", "float32", 2, 32)
    tensors = len(_param_tensors())
    assert est.optimizer_state_bytes == row["optimizer_state_bytes"] + 8 * tensors
    assert row["optimizer_state_scalar_bytes"] == 8 * tensors

    # report: listed right after the baseline (its declared order 5 sits between adamw's 0 and sgd's 20)
    text = write_report(out).read_text()
    glance = text.split("### At a glance", 1)[1].split("###", 1)[0]
    order = [line.split("|")[3].strip() for line in glance.splitlines() if line.startswith("| nano")]
    assert order == ["adamw", "nadam-entry", "sgd"]
    # figures: its own colour
    assert optimizer_colors(["adamw", "nadam-entry"])["nadam-entry"] == "#123456"
    assert (out / "figures" / "memory.png").is_file()
    # cost model: its step parts
    assert costmodel.step_config("nadam-entry").flops(64, 176) == costmodel.grad_norm_flops(64, 176)


def _param_tensors():
    from swanbench.estimate import parameter_specs
    from swanbench.models import get_preset

    return parameter_specs(get_preset("nano"))
