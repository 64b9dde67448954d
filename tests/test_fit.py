"""`fit`: the bracketing + bisection search (with fake probes), and a real search on CPU under a budget
with one worker process per probe."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
from typer.testing import CliRunner

from swanbench import fit as fitlib
from swanbench.cli import app
from swanbench.estimate import estimate


def fake_probe(limit: int | None, calls: list[int], crash_at: int | None = None):
    """Batches up to `limit` fit, larger ones are "oom"; `crash_at` crashes; records every call."""

    def probe(batch: int) -> fitlib.Probe:
        calls.append(batch)
        if batch == crash_at:
            return fitlib.Probe(batch, "crashed", None, None, 0.0, "runs/x", "RuntimeError: boom")
        ok = limit is not None and batch <= limit
        return fitlib.Probe(batch, "ok" if ok else "oom", 100 * batch, 10 * batch, 0.0)

    return probe


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 8, 13, 100, 511, 512, 1000])
@pytest.mark.parametrize("start", [1, 4, 64, 1000])
def test_search_finds_the_largest_fitting_batch_with_each_batch_probed_once(limit, start):
    calls: list[int] = []
    result = fitlib.search(fake_probe(limit, calls), start=start, max_batch=1024)
    assert result.best == limit
    assert len(calls) == len(set(calls))
    assert limit in calls and limit + 1 in calls  # the answer is pinned between two probes
    assert [p.batch_size for p in result.probes] == calls
    assert len(calls) <= 2 * 2 * 10  # exponential bracket + bisection: logarithmic in the distance


def test_an_accurate_prediction_is_confirmed_by_two_probes():
    calls: list[int] = []
    assert fitlib.search(fake_probe(37, calls), start=37, max_batch=4096).best == 37
    assert calls == [37, 38]


def test_search_when_nothing_fits_or_everything_fits():
    calls: list[int] = []
    assert fitlib.search(fake_probe(None, calls), start=8, max_batch=64).best is None
    assert calls == [8, 7, 5, 1]
    calls.clear()
    assert fitlib.search(fake_probe(10_000, calls), start=8, max_batch=48).best == 48
    assert calls == [8, 9, 11, 15, 23, 39, 48]
    calls.clear()
    assert fitlib.search(fake_probe(10_000, calls), start=1, max_batch=20).best == 20
    assert calls == [1, 2, 4, 8, 16, 20]  # from 1, the bracket is plain doubling


def test_a_crashed_probe_stops_the_search_with_its_error_and_is_recorded():
    recorded: list[int] = []
    with pytest.raises(fitlib.FitError, match="batch 5 ended 'crashed'.*boom"):
        fitlib.search(fake_probe(10, [], crash_at=5), start=2, max_batch=64,
                      on_probe=lambda p: recorded.append(p.batch_size))
    assert recorded == [2, 3, 5]


def test_a_diverged_probe_still_counts_as_fitting():
    assert fitlib.Probe(4, "diverged", 1, 1, 0.0).fits
    assert not fitlib.Probe(4, "oom", 1, 1, 0.0).fits


def test_prediction_from_the_estimate_and_the_calibrated_overhead():
    at = lambda b: 1000 + 100 * b  # noqa: E731 - a linear estimate
    assert fitlib.predict_batch(at, budget=5000, overhead=500, max_batch=1000) == 35
    assert fitlib.predict_batch(at, budget=1000, overhead=500, max_batch=1000) is None
    first = fitlib.Probe(1, "ok", measured_bytes=1600, estimate_bytes=at(1), seconds=0.0)
    start, predicted = fitlib.calibrated_start(first, at, budget=5000, max_batch=1000)
    assert (start, predicted) == (35, 35)
    unknown = fitlib.Probe(1, "ok", measured_bytes=None, estimate_bytes=at(1), seconds=0.0)
    assert fitlib.calibrated_start(unknown, at, 5000, 1000) == (1, None)


def test_probe_cell_is_a_short_run_under_the_budget():
    target = fitlib.FitTarget("swan", "nano", seq_len=64, memory_budget=2 ** 30, steps=2,
                              hparams=(("lr", 0.01),))
    cell = target.cell(12)
    assert (cell.batch_size, cell.steps, cell.warmup_steps, cell.memory_budget) == (12, 2, 0, 2 ** 30)
    assert cell.eval_tokens == 64 and cell.hparams_dict() == {"lr": 0.01}


def test_fit_without_a_budget_on_cpu_is_refused(tmp_path):
    with pytest.raises(fitlib.FitError, match="memory budget is needed"):
        fitlib.fit(fitlib.FitTarget("swan", "nano", seq_len=64), tmp_path)


@pytest.mark.parametrize("args,message", [
    (["--optimizer", "swan", "--model", "nano", "--device", "cpu"], "memory budget is needed"),
    (["--optimizer", "swam", "--model", "nano", "--memory-budget", "1GiB"], "did you mean 'swan'"),
    (["--optimizer", "swan", "--model", "nan0", "--memory-budget", "1GiB"], "unknown model"),
    (["--optimizer", "swan", "--model", "nano", "--memory-budget", "1 lot"], "cannot read size"),
    (["--optimizer", "swan", "--model", "nano", "--memory-budget", "1GiB", "--steps", "1"], "--steps must be"),
])
def test_cli_fit_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = CliRunner().invoke(app, ["fit", *args, "--out", str(tmp_path / "fit")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


# ------------------------------------------------------------------------------------- real probes

@pytest.mark.slow
def test_fit_finds_a_batch_size_on_cpu_under_a_budget(tmp_path):
    """nano at seq_len 1024 under a budget of batch 1's measured peak RSS + 2.5 sequences' estimate
    (each sequence adds ~59 MiB of estimate, mostly the fp32 [T, vocab] loss buffers). Peak RSS grows
    about 1.0x the estimate per sequence here, so the answer is 3 (2 if RSS grew 1.25-1.6x): the test holds
    whatever the process's own footprint. Four worker processes: the calibration, then batch 1, the
    prediction and its neighbour."""
    from swanbench.data import load_data

    seq = 1024
    calibration = fitlib.FitTarget("sgd", "nano", seq_len=seq, memory_budget=64 * 2 ** 30, steps=2)
    cell = calibration.cell(1)
    # train the BPE here: a probe that trains it keeps the trainer's heap and would calibrate high
    load_data(cell.data, model_vocab=4096, val_tokens=2 * seq)
    first = fitlib.run_probe(calibration, 1, tmp_path / "calibration", lambda b: None)
    assert first.status == "ok" and first.measured_bytes, first
    per_sequence = (estimate("nano", "sgd", "float32", 2, seq).peak_bytes
                    - estimate("nano", "sgd", "float32", 1, seq).peak_bytes)
    budget = first.measured_bytes + int(2.5 * per_sequence)

    result = fitlib.fit(dataclasses.replace(calibration, memory_budget=budget), tmp_path / "fit", max_batch=64)
    seen = [(p.batch_size, p.status, p.measured_bytes) for p in result.probes]
    assert result.best in (2, 3), (seen, budget)
    by_batch = {p.batch_size: p for p in result.probes}
    assert by_batch[result.best].fits and by_batch[result.best + 1].status == "oom", (seen, budget)
    assert by_batch[result.best + 1].measured_bytes > budget
    rows = list(csv.DictReader((tmp_path / "fit" / fitlib.FIT_FILE).open()))
    assert [int(r["batch_size"]) for r in rows] == [p.batch_size for p in result.probes]
    for p in result.probes:  # each probe ran the harness's worker in its own run directory
        config = json.loads((tmp_path / "fit" / "probes" / f"b{p.batch_size}" / "config.json").read_text())
        assert config["cell"]["batch_size"] == p.batch_size and config["cell"]["memory_budget"] == budget
