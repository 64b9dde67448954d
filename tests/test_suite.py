"""Suite validation (one clear line per mistake), matrix expansion and cell identity."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from swanbench.suite import Cell, DataSpec, SuiteError, load_suite, parse_size, resolve_suite_path


def _error(write_suite, body: str) -> str:
    with pytest.raises(SuiteError) as info:
        load_suite(write_suite(textwrap.dedent(body)))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("body, expect", [
    ("[defualts]\nmodel='nano'\n", ["defualts", "did you mean 'defaults'"]),
    ("[defaults]\nmodle='nano'\noptimizer='adamw'\n", ["defaults.modle", "did you mean 'model'"]),
    ("[defaults]\nmodel='nano'\noptimizer='adamw'\nbatch_size='8'\n", ["defaults.batch_size", "integer"]),
    ("[defaults]\nmodel='nano'\noptimizer='adamw'\nbatch_size=0\n", ["defaults.batch_size", ">= 1"]),
    ("[defaults]\nmodel='nano'\noptimizer='adamw'\ndtype='bf16'\n", ["defaults.dtype", "bf16"]),
    ("[defaults]\nmodel='nano'\noptimizer='adamw'\ndevice='gpu'\n", ["defaults.device", "gpu"]),
    ("[defaults]\nmodel='nano'\n[matrix]\noptimzer=['adamw']\n", ["matrix.optimzer", "did you mean 'optimizer'"]),
    ("[defaults]\nmodel='nano'\n[matrix]\noptimizer='adamw'\n", ["matrix.optimizer", "non-empty list"]),
    ("[defaults]\nmodel='nano'\noptimizer='adamw'\n[data]\nsource='wiki'\n", ["data.source", "unknown source"]),
    ("[defaults]\nmodel='nano'\noptimizer='adamw'\nmemory_budget='lots'\n", ["defaults.memory_budget", "size"]),
    ("[defaults]\nmodel='nano'\n", ["optimizer", "not set"]),
    ("name='bad name!'\n", ["name", "simple name"]),
    ("kind='kernel'\n", ["kind", "did you mean 'kernels'"]),
    ("[defaults\n", ["not valid TOML"]),
])
def test_pure_mistakes_give_one_line_with_file_and_key(write_suite, body, expect):
    message = _error(write_suite, body)
    assert message.startswith(str(write_suite("x", "probe").parent))
    for part in expect:
        assert part in message


def test_unknown_names_have_did_you_mean(write_suite):
    assert "did you mean 'nano'" in _error(write_suite, "[defaults]\nmodel='nanoo'\noptimizer='adamw'\n")
    assert "did you mean 'adamw'" in _error(write_suite, "[defaults]\nmodel='nano'\noptimizer='adamww'\n")


def test_impossible_combinations(write_suite):
    base = "[defaults]\nmodel='nano'\noptimizer='adamw'\n"
    assert "max positions" in _error(write_suite, base + "seq_len=4096\n")
    assert "warm-up" in _error(write_suite, base + "steps=3\nwarmup_steps=3\n")
    assert "vocab" in _error(write_suite, base + "[data]\nvocab_size=8192\n")  # nano's vocab is 4096
    assert "multiple" in _error(write_suite, base + "batch_size=3\nseq_len=32\ntokens_per_step=100\n")
    assert "no such file" in _error(write_suite, base + "[data]\nsource='file'\npath='missing.txt'\n")


def test_matrix_expands_to_cartesian_product_with_seeds_split_out(write_suite):
    suite = load_suite(write_suite("""
        [defaults]
        model = "nano"
        steps = 10
        batch_size = 2
        seq_len = 32
        tokens_per_step = 256
        [optimizers.adamw]
        lr = 1e-3
        [matrix]
        optimizer = ["adamw", "sgd"]
        dtype = ["float32", "bfloat16"]
        "hparams.weight_decay" = [0.0, 0.1]
        seed = [0, 1, 2]
    """))
    assert len(suite.cells) == 8 and suite.seeds == (0, 1, 2)
    assert len(suite.runs()) == 24
    assert len({c.cell_id for c in suite.cells}) == 8
    adamw = [c for c in suite.cells if c.optimizer == "adamw"]
    assert all(c.hparams_dict()["lr"] == 1e-3 for c in adamw)
    assert {c.hparams_dict()["weight_decay"] for c in adamw} == {0.0, 0.1}
    assert all(c.grad_accum == 4 and c.tokens_per_step == 256 for c in suite.cells)
    assert all(c.eval_every_tokens == 256 for c in suite.cells)  # derived: every steps // 10 steps
    run = suite.runs()[0]
    assert run.run_id == f"{run.cell.cell_id}-s0"


def test_cell_id_is_stable_and_ignores_non_identity_fields():
    cell = Cell("adamw", "nano", hparams=(("lr", 0.001),), data=DataSpec(vocab_size=512))
    again = Cell.from_dict(cell.to_dict())
    assert again == cell and again.cell_id == cell.cell_id
    assert len(cell.cell_id) == 10 and int(cell.cell_id, 16) >= 0
    import dataclasses

    assert dataclasses.replace(cell, timeout_s=5.0).cell_id == cell.cell_id
    assert dataclasses.replace(cell, steps=7).cell_id != cell.cell_id


def test_parse_size():
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("512MB") == 512 * 10**6
    assert parse_size(1000) == 1000
    with pytest.raises(ValueError):
        parse_size("two gigs")


def test_shipped_quickstart_is_valid():
    suite = load_suite(None)
    assert suite.name == "quickstart"
    assert {"adamw", "swan", "sinkgd"} <= {c.optimizer for c in suite.cells}
    assert resolve_suite_path("quickstart") == suite.path
    with pytest.raises(SuiteError, match="did you mean 'quickstart'"):
        resolve_suite_path("quikstart")


def test_hparam_errors_surface_at_validation(write_suite):
    from swanbench.suite import check_runtime

    suite = load_suite(write_suite("[defaults]\nmodel='nano'\noptimizer='adamw'\n[optimizers.adamw]\nlr=-1.0\n"))
    with pytest.raises(SuiteError, match="optimizers.adamw"):
        check_runtime(suite, check_devices=False)


def test_typo_fails_fast_without_importing_torch(write_suite):
    path = write_suite("[defaults]\nmodel='nano'\noptimizer='adamw'\nsteps=10\nbatchsize=4\n")
    code = ("import sys\nfrom swanbench.suite import load_suite, SuiteError\n"
            f"try:\n    load_suite({str(path)!r})\nexcept SuiteError as e:\n"
            "    print('torch' in sys.modules, 'transformers' in sys.modules)\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    lines = out.splitlines()
    assert lines[0] == "False False"
    assert "batchsize" in lines[1] and "did you mean 'batch_size'" in lines[1]


def test_missing_cuda_is_an_error_except_for_a_dry_run(write_suite):
    import torch

    from swanbench.suite import check_runtime

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    suite = load_suite(write_suite("[defaults]\nmodel='nano'\noptimizer='sgd'\ndevice='cuda'\n"))
    check_runtime(suite, check_devices=False)  # --dry-run inspects a GPU suite on a laptop
    with pytest.raises(SuiteError, match="no CUDA device"):
        check_runtime(suite)
