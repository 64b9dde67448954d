"""Any optimizer by import path or entry point: built like a registry entry, validated at suite load, run
end to end with exact state bytes, and "not declared" to the estimator unless it declares its memory."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest
import torch

import optimizers
from optimizers import external
from optimizers.testing import ToyLM, batch, hidden_names, loss_fn

pytestmark = pytest.mark.usefixtures("one_thread")


def _step(model, opt) -> None:
    opt.zero_grad()
    loss_fn(model, batch()).backward()
    opt.step()


# ------------------------------------------------------------------------------------------ import paths

def test_an_optimizer_subclass_by_import_path_gets_every_trainable_parameter():
    model = ToyLM()
    opt = optimizers.build("torch.optim:NAdam", model, lr=1e-3, weight_decay=0.01)
    assert type(opt) is torch.optim.NAdam and opt.defaults["weight_decay"] == 0.01
    assert sorted(id(p) for g in opt.param_groups for p in g["params"]) == sorted(id(p) for p in model.parameters())
    assert opt.implementation == "torch.optim:NAdam" and opt.registry_name == "torch.optim:NAdam"
    info = optimizers.info("torch.optim:NAdam")
    assert not info.declared and info.source == "import path"
    with pytest.raises(ValueError, match="not declared"):
        info.state_numel((4, 4))


def test_a_factory_by_import_path_is_called_with_the_model(tmp_path, monkeypatch):
    (tmp_path / "my_opts.py").write_text(textwrap.dedent("""
        import torch

        def make(model, lr=0.1, momentum=0.0):
            return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)

        def not_an_optimizer(model, **hp):
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    opt = optimizers.build("my_opts:make", ToyLM(), lr=0.5, momentum=0.9)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.5 and opt.defaults["momentum"] == 0.9
    with pytest.raises(ValueError, match=r"'my_opts:not_an_optimizer': the factory returned int"):
        optimizers.build("my_opts:not_an_optimizer", ToyLM())
    with pytest.raises(ValueError, match="hybrid = true needs a torch.optim.Optimizer subclass"):
        optimizers.build("my_opts:make", ToyLM(), hybrid=True)


def test_hybrid_true_sends_the_hidden_matrices_to_the_class_and_the_rest_to_adamw():
    model = ToyLM()
    opt = optimizers.build("torch.optim:NAdam", model, lr=2e-3, hybrid=True, adamw_lr=1e-3)
    assert isinstance(opt, optimizers.HybridOptimizer)
    matrix, rest = opt.optimizers["matrix"], opt.optimizers["adamw"]
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for g in matrix.param_groups for p in g["params"]} == set(hidden_names(model))
    assert type(matrix) is torch.optim.NAdam and matrix.defaults["lr"] == 2e-3
    assert type(rest) is torch.optim.AdamW and rest.param_groups[0]["lr"] == 1e-3
    _step(model, opt)
    assert all(len(matrix.state[p]) for g in matrix.param_groups for p in g["params"])


@pytest.mark.parametrize("name,message", [
    ("torch.optim:Nadam", r"'torch.optim' has no attribute 'Nadam'; did you mean 'NAdam'\?"),
    ("no_such_package.mod:Opt", r"cannot import 'no_such_package.mod' \(ModuleNotFoundError"),
    ("torch.nn:Linear", "is a class but not a torch.optim.Optimizer subclass"),
    ("math:pi", "float object is neither a torch.optim.Optimizer subclass nor a factory"),
    ("torch.optim:NAdam()", "not an import path of the form 'package.module:Name'"),
    ("__import__('os'):system", "not an import path"),
])
def test_a_wrong_import_path_is_one_line_naming_it(name, message):
    with pytest.raises(ValueError, match=message) as err:
        optimizers.build(name, ToyLM())
    assert "\n" not in str(err.value) and repr(name.strip()) in str(err.value)


def test_an_unknown_keyword_is_the_constructors_complaint_in_one_line():
    with pytest.raises(ValueError, match=r"'torch.optim:NAdam': TypeError: .*unexpected keyword argument 'betaz'"):
        optimizers.build("torch.optim:NAdam", ToyLM(), betaz=(0.9, 0.99))
    with pytest.raises(ValueError, match=r"adamw_lr only apply with hybrid = true"):
        optimizers.build("torch.optim:NAdam", ToyLM(), adamw_lr=1e-3)


# ------------------------------------------------------------------------------------------ suites

IMPORT_SUITE = """
name = "byo"
[defaults]
model = "nano"
device = "cpu"
seq_len = 32
batch_size = 2
steps = 4
warmup_steps = 1
eval_every_tokens = 128
eval_tokens = 256
timeout_s = 300
threads = 1
[data]
source = "file"
path = "{corpus}"
vocab_size = 512
[optimizers."torch.optim:NAdam"]
lr = 1e-3
[optimizers."lion_pytorch:Lion"]
lr = 1e-4
[matrix]
optimizer = ["adamw", "torch.optim:NAdam", "lion_pytorch:Lion"]
seed = [0]
"""


def test_a_suite_with_import_paths_runs_end_to_end_with_exact_state_bytes(write_suite, tmp_path):
    from swanbench import runner
    from swanbench.suite import check_runtime, load_suite
    from swanbench.tables import read_table

    suite = load_suite(write_suite(IMPORT_SUITE))
    check_runtime(suite)
    out = tmp_path / "out"
    outcome = runner.run_suite(suite, out, progress=False, publish=False)
    assert set(outcome.statuses.values()) == {"ok"}, outcome.statuses
    runs = read_table(out / "runs.csv").set_index("optimizer")
    params = int(runs.loc["adamw", "param_bytes"])
    # NAdam keeps exp_avg and exp_avg_sq per parameter; Lion one momentum buffer: exact, by the tensor walk
    assert int(runs.loc["torch.optim:NAdam", "optimizer_state_bytes"]) == 2 * params
    assert int(runs.loc["lion_pytorch:Lion", "optimizer_state_bytes"]) == params
    assert int(runs.loc["adamw", "optimizer_state_bytes"]) == 2 * params
    for name in ("torch.optim:NAdam", "lion_pytorch:Lion"):
        assert "not declared" in runs.loc[name, "estimate_error"]
        assert runs.loc[name, "estimate_bytes"] != runs.loc[name, "estimate_bytes"]  # empty (NaN), never a guess
    assert runs["estimate_bytes"].notna()["adamw"]
    # the run folders are the run ids (hashes), whatever the optimizer is called
    folders = sorted(p.name for p in (out / "runs").iterdir())
    assert folders == sorted(runs["run_id"]) and all(":" not in f for f in folders)


@pytest.mark.parametrize("table,name,message", [
    ('[optimizers."torch.optim:Nadam"]\nlr = 1e-3', "torch.optim:Nadam",
     r"optimizers\.\"torch\.optim:Nadam\": optimizer 'torch\.optim:Nadam': 'torch\.optim' has no attribute 'Nadam'"),
    ("", "not_a_module_xyz:Opt", r": optimizer: optimizer 'not_a_module_xyz:Opt': cannot import"),
    ('[optimizers."torch.optim:NAdam"]\nbetaz = 1', "torch.optim:NAdam",
     r"optimizers\.\"torch\.optim:NAdam\": .*unexpected keyword argument 'betaz'"),
])
def test_a_wrong_import_path_in_a_suite_is_one_line_naming_the_key_and_nothing_runs(write_suite, tmp_path, table,
                                                                                   name, message):
    body = IMPORT_SUITE.split('[optimizers."torch.optim:NAdam"]')[0] + table + f'\n[matrix]\noptimizer = ["{name}"]\n'
    path = write_suite(body)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "swanbench", "run", str(path), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}:"), proc.stderr
    assert __import__("re").search(message, lines[0]), lines[0]
    assert not (out / "runs").exists()


# ------------------------------------------------------------------------------------------ entry points

PACKAGE = '''
import math
import torch


class Stateless(torch.optim.SGD):
    """Plain SGD under another name: no state."""


def make(model, lr=0.01):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


DECLARED = {
    "factory": make,
    "description": "SGD with momentum, declared",
    "hparams": {"lr": 0.01},
    "state": lambda shape: math.prod(shape),
    "workspace": lambda shape: 0,
}
BROKEN = {"factory": make, "colour": "red"}
'''

ENTRY_POINTS = """
[swanbench.optimizers]
plugin-declared = swanbench_plugin_test:DECLARED
plugin-plain = swanbench_plugin_test:Stateless
plugin-broken = swanbench_plugin_test:BROKEN
adamw = swanbench_plugin_test:make
"""


def _uninstall(site) -> None:
    """Take the test distribution off sys.path and let the registry forget its entry points."""
    if str(site) in sys.path:
        sys.path.remove(str(site))
    sys.modules.pop("swanbench_plugin_test", None)
    importlib.invalidate_caches()
    external.refresh_entry_points()


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A small installed distribution (a module and its .dist-info with entry_points.txt) on sys.path: what
    `pip install` leaves in site-packages, found through importlib.metadata as any installed package is."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "swanbench_plugin_test.py").write_text(PACKAGE)
    info = site / "swanbench_plugin_test-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: swanbench-plugin-test\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    sys.path.insert(0, str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))  # the suite's worker processes find it too
    importlib.invalidate_caches()
    external.refresh_entry_points()
    yield site
    _uninstall(site)


def test_entry_points_register_names_with_or_without_declarations(plugin):
    assert {"plugin-declared", "plugin-plain"} <= set(optimizers.registered())
    declared, plain = optimizers.info("plugin-declared"), optimizers.info("plugin-plain")
    assert declared.declared and declared.state_numel((8, 4)) == 32 and declared.hparams == {"lr": 0.01}
    assert declared.source == "entry point (swanbench-plugin-test)"
    assert not plain.declared
    opt = optimizers.build("plugin-declared", ToyLM(), lr=0.2)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9 and opt.defaults["lr"] == 0.2
    with pytest.raises(ValueError, match="unknown hyperparameter 'lrr'.*did you mean 'lr'"):
        optimizers.build("plugin-declared", ToyLM(), lrr=0.1)
    assert type(optimizers.build("plugin-plain", ToyLM(), lr=0.1)).__name__ == "Stateless"
    missing = optimizers.missing()
    assert "unknown key(s) colour" in missing["plugin-broken"]
    assert "taken by the built-in entry" in missing["adamw"]
    assert optimizers.info("adamw").source == "built-in"  # a plugin never replaces a built-in


def test_the_estimator_uses_an_entry_points_declaration_and_says_not_declared_without(plugin):
    from swanbench.estimate import NotDeclared, estimate

    est = estimate("nano", "plugin-declared", "float32", 1, 16)
    assert est.optimizer_state_bytes == est.param_bytes  # one momentum buffer per parameter, fp32
    with pytest.raises(NotDeclared, match="'plugin-plain': not declared"):
        estimate("nano", "plugin-plain", "float32", 1, 16)


def test_an_entry_point_optimizer_runs_in_a_suite_worker(plugin, write_suite, tmp_path):
    from swanbench import runner
    from swanbench.suite import load_suite
    from swanbench.tables import read_table

    body = IMPORT_SUITE.replace('optimizer = ["adamw", "torch.optim:NAdam", "lion_pytorch:Lion"]',
                                'optimizer = ["plugin-declared"]')
    suite = load_suite(write_suite(body))
    outcome = runner.run_suite(suite, tmp_path / "out", progress=False, publish=False)
    assert set(outcome.statuses.values()) == {"ok"}, outcome.statuses
    row = read_table(tmp_path / "out" / "runs.csv").iloc[0]
    assert row["optimizer_state_bytes"] == row["param_bytes"]
    assert row["estimate_optimizer_state_bytes"] == row["param_bytes"]  # the declaration, in the estimate


def test_entry_points_are_forgotten_with_their_package(plugin):
    assert "plugin-declared" in optimizers.registered()
    _uninstall(plugin)
    assert "plugin-declared" not in optimizers.registered()
    assert "plugin-broken" not in optimizers.missing()


def test_an_import_path_builds_for_data_parallel_ranks_as_for_one():
    """build_distributed goes through the registry: an import path is built the same way (torch's optimizers
    run unchanged under DDP and FSDP2; only SWAN/SinkGD children are swapped for their distributed twins)."""
    from optimizers.distributed import build_distributed

    opt = build_distributed("torch.optim:NAdam", ToyLM(), "ddp", lr=1e-3)
    assert type(opt) is torch.optim.NAdam and opt.registry_name == "torch.optim:NAdam"
