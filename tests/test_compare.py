"""`swanbench compare`: result sets of one suite from several devices, here two CPU sets made with 1 and 2
torch threads standing in for two devices."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from swanbench.analysis.compare import CompareError, combined, comparability, load_sets
from swanbench.cli import app
from conftest import TINY_SUITE


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory, text_corpus):
    """The tiny suite (adamw and sgd, 3 steps) run twice: threads = 1 and threads = 2."""
    root = tmp_path_factory.mktemp("devices")
    suite = root / "tiny.toml"
    suite.write_text(TINY_SUITE.replace("{corpus}", str(text_corpus)).replace(
        'optimizer = ["adamw"]', 'optimizer = ["adamw", "sgd"]'))
    cli = CliRunner()
    sets = []
    for threads in (1, 2):
        out = root / f"threads{threads}"
        result = cli.invoke(app, ["run", str(suite), "--out", str(out), "--set", "defaults.steps=3",
                                  "--set", f"defaults.threads={threads}"])
        assert result.exit_code == 0, result.output
        sets.append(out)
    return sets


def test_two_thread_counts_compare_as_two_devices(two_devices, tmp_path):
    sets = load_sets(two_devices)
    assert [s.label.split(" · ")[-1] for s in sets] == ["1 thread", "2 threads"]
    comparison = comparability(sets)
    assert any(d.startswith("torch_threads differs") for d in comparison.differences)
    frame = combined(comparison)
    # Every cell both sets ran, once per device: the same losses (same seed, same data), two machines.
    assert sorted(frame["machine"].unique()) == sorted(s.label for s in sets)
    assert len(frame) == 4 and frame.groupby("optimizer")["machine"].nunique().eq(2).all()
    result = CliRunner().invoke(app, ["compare", *map(str, two_devices), "--out", str(tmp_path / "cmp"),
                                      "--format", "png"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "1 torch thread" in text and "2 torch threads" in text  # each device's own limits
    table = text.split("## Measures per device")[1]
    assert "step time (median) [ms]" in table and "final eval perplexity" in table and "÷ first" in table
    assert (tmp_path / "cmp" / "figures" / "compare.png").is_file()


def test_sets_of_different_suites_or_cells_are_refused(two_devices, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(two_devices[1], other)
    runs = pd.read_csv(other / "runs.csv")
    runs.assign(suite="another").to_csv(other / "runs.csv", index=False)
    with pytest.raises(CompareError, match="different suites"):
        comparability(load_sets([two_devices[0], other]))
    runs.assign(seq_len=999).to_csv(other / "runs.csv", index=False)
    with pytest.raises(CompareError, match="no cell"):
        comparability(load_sets([two_devices[0], other]))
    bad = CliRunner().invoke(app, ["compare", str(two_devices[0])])
    assert bad.exit_code == 2 and "at least two" in bad.stderr


def test_the_same_device_twice_is_said(two_devices, tmp_path):
    copy = tmp_path / "again"
    shutil.copytree(two_devices[0], copy)
    comparison = comparability(load_sets([two_devices[0], copy]))
    assert any("compares repeats, not devices" in d for d in comparison.differences)
