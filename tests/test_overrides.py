"""`--set KEY=VALUE` and `--only AXIS=V1,V2`: a suite changed from the command line, validated like the file."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from swanbench.cli import app
from swanbench.suite import SuiteError, load_suite
from swanbench.suite.overrides import apply_overrides, key_path, parse_value

SUITE = """
name = "over"
[defaults]
model = "nano"
device = "cpu"
steps = 10
[optimizers.swan]
lr = 0.02
[matrix]
optimizer = ["adamw", "swan", "sinkgd"]
"hparams.lr" = [0.01, 0.02]
seed = [0, 1]
"""


@pytest.mark.parametrize("text, value", [("50", 50), ("2e-3", 2e-3), ("true", True), ("[0, 1]", [0, 1]),
                                         ('"x y"', "x y"), ("micro", "micro"), ("2GiB", "2GiB")])
def test_values_are_toml_else_strings(text, value):
    assert parse_value(text) == value


@pytest.mark.parametrize("key, path", [("defaults.steps", ["defaults", "steps"]),
                                       ("optimizers.swan.lr", ["optimizers", "swan", "lr"]),
                                       ("matrix.hparams.lr", ["matrix", "hparams.lr"]), ("baseline", ["baseline"])])
def test_key_paths(key, path):
    assert key_path(key) == path


def test_set_and_only_change_the_cells(write_suite):
    path = write_suite(SUITE)
    suite = load_suite(path, sets=["defaults.steps=50", "optimizers.swan.lr=0.05", "matrix.hparams.lr=[0.03]"],
                       only=["optimizer=swan,sinkgd", "seed=1"])
    assert {c.optimizer for c in suite.cells} == {"swan", "sinkgd"} and suite.seeds == (1,)
    assert {c.steps for c in suite.cells} == {50}
    assert {c.hparams_dict()["lr"] for c in suite.cells} == {0.03}  # the matrix axis wins, as in the file
    assert suite.overrides == ("--set defaults.steps=50", "--set optimizers.swan.lr=0.05",
                               "--set matrix.hparams.lr=[0.03]", "--only optimizer=swan,sinkgd", "--only seed=1")
    assert load_suite(path).cells != suite.cells  # the file itself is untouched
    raw = {"matrix": {"optimizer": ["a", "b"]}}
    assert apply_overrides(raw, only=["optimizer=b"]) == {"matrix": {"optimizer": ["b"]}} and raw["matrix"][
        "optimizer"] == ["a", "b"]


@pytest.mark.parametrize("sets, only, expect", [
    (["defaults.stpes=5"], [], "defaults.stpes: unknown key; did you mean 'steps'?"),
    (["defaults.steps=-1"], [], "defaults.steps: must be >= 1"),
    (["data.source=c5"], [], "data.source: unknown source 'c5'"),
    (["defaults.model=nanoo"], [], "did you mean 'nano'"),
    (["steps"], [], "--set 'steps': expected KEY=VALUE"),
    ([], ["optimizer=swna"], "'swna' is not a value of matrix.optimizer; did you mean 'swan'?"),
    ([], ["model=micro"], "model is not a matrix axis of this suite; every cell has model = 'nano'"),
    ([], ["optimzer=swan"], "did you mean 'optimizer'?"),
])
def test_bad_overrides_are_one_line_errors_naming_the_file(write_suite, sets, only, expect):
    path = write_suite(SUITE)
    with pytest.raises(SuiteError) as info:
        load_suite(path, sets=sets, only=only)
    message = str(info.value)
    assert expect in message and str(path) in message and "\n" not in message


def test_cli_overrides_in_dry_run_and_errors(write_suite, tmp_path):
    path = write_suite(SUITE)
    cli = CliRunner()
    result = cli.invoke(app, ["run", str(path), "--dry-run", "--out", str(tmp_path / "o"), "--set",
                              "defaults.steps=7", "--only", "optimizer=swan", "--only", "seed=0"])
    assert result.exit_code == 0, result.output
    assert "2 runs (2 cells x 1 seeds)" in result.output  # swan x two lrs, one seed
    assert "as changed by --set defaults.steps=7 --only optimizer=swan --only seed=0" in result.output
    bad = cli.invoke(app, ["run", str(path), "--dry-run", "--set", "defaults.stpes=7"])
    assert bad.exit_code == 2 and "did you mean 'steps'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_one_did_you_mean_wording_in_both_packages():
    from optimizers.registry import _did_you_mean
    from swanbench.hints import did_you_mean

    for word, choices in (("swna", ["swan", "sinkgd"]), ("xyz", ["swan"]), ("lr", ["lr", "alpha"])):
        assert _did_you_mean(word, choices) == did_you_mean(word, choices)
