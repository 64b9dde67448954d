"""Bad input, class by class: every case is one line naming the file (or key), exit code 2, no traceback.

The classes (issue 19): suite files that are not UTF-8, nested too deeply or not TOML; --out that is a
file, under a file or not writable (checked before the seconds of validation); tokenizer files that are not
text or not a tokenizer; `check` against a damaged baseline (never a pass, never exit 1); `plot`/`report` on
a truncated or damaged table; `fit` on a device that is not there; two cells that would share a run
directory; and the safety net for whatever no command expected.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from swanbench.cli import app
from swanbench.suite import SuiteError, load_suite

ROOT = Path(__file__).resolve().parents[1]
CI_BASELINE = ROOT / "results" / "baselines" / "ci-runs.csv"
cli = CliRunner()


def invoke(*args: object):
    return cli.invoke(app, [str(a) for a in args])


def one_line_error(result, *needles: str, code: int = 2) -> str:
    """The run's only output line, an `error: ...` naming every needle; fails on a traceback or another code."""
    text = result.output.strip()
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, text
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------------ suite files

NOT_SUITES = {
    "latin1.toml": 'name = "caf\xe9"\n'.encode("latin-1"),
    "utf16.toml": 'name = "x"\n'.encode("utf-16"),
    "binary.toml": bytes(range(256)) * 4,
    "arrays.toml": ("a = " + "[" * 5000 + "]" * 5000 + "\n").encode(),
    "inline.toml": ("a = " + "{b = " * 3000 + "1" + "}" * 3000 + "\n").encode(),
    "json.toml": json.dumps({"name": "x", "defaults": {"model": "nano"}}).encode(),
    "garbage.toml": b"[[[ this is = not TOML\n",
}


@pytest.mark.parametrize("name", sorted(NOT_SUITES))
def test_a_suite_file_that_cannot_be_read_is_one_line(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(NOT_SUITES[name])
    with pytest.raises(SuiteError, match=str(path)):
        load_suite(path)
    one_line_error(invoke("run", path, "--dry-run"), str(path))


def test_a_folder_named_like_a_suite_is_one_line(tmp_path):
    folder = tmp_path / "dir.toml"
    folder.mkdir()
    one_line_error(invoke("run", folder, "--dry-run"), str(folder))


def test_a_tolerances_file_that_cannot_be_read_is_one_line(tmp_path):
    results = tmp_path / "res"
    results.mkdir()
    (results / "runs.csv").write_bytes(CI_BASELINE.read_bytes())
    for name, body in (("deep.toml", NOT_SUITES["arrays.toml"]), ("latin1.toml", NOT_SUITES["latin1.toml"])):
        tol = tmp_path / name
        tol.write_bytes(body)
        one_line_error(invoke("check", results, "--baseline", CI_BASELINE, "--tolerances", tol), str(tol))


# ------------------------------------------------------------------------------------ --out

def _unwritable_places(tmp_path: Path) -> list[Path]:
    places = [Path("/proc/swanbench-out")]  # a virtual file system: nobody, root included, can create there
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        places.append(locked / "out")
    return places


def _bad_outs(tmp_path: Path) -> list[tuple[Path, str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    outs = [(a_file, "is not a directory"), (a_file / "under" / "it", "is a file")]
    outs += [(p, "not writable") for p in _unwritable_places(tmp_path) if Path("/proc").is_dir()]
    return outs


def test_run_out_is_checked_before_validation(write_suite, tiny_suite_text, tmp_path):
    """The suite also has a hyperparameter only the runtime check rejects: the error is the --out one, so
    the folder was checked before the seconds that check takes."""
    suite = write_suite(tiny_suite_text.replace("lr = 1e-3", "lr = 1e-3\nnot_a_hyperparameter = 1"))
    for out, problem in _bad_outs(tmp_path):
        one_line_error(invoke("run", suite, "--out", out), "--out", str(out), problem)
        one_line_error(invoke("run", suite, "--out", out, "--dry-run"), "--out", problem)


@pytest.mark.parametrize("occupied, kind", [("runs", "file"), ("runs.csv", "folder"), ("curves.csv", "folder"),
                                            ("report.md", "folder")])
def test_run_out_with_the_wrong_kind_of_entry_where_the_run_writes(write_suite, tiny_suite_text, tmp_path,
                                                                    occupied, kind):
    out = tmp_path / "o"
    out.mkdir()
    (out / occupied).mkdir() if kind == "folder" else (out / occupied).write_text("")
    one_line_error(invoke("run", write_suite(tiny_suite_text), "--out", out), "--out", occupied)


def test_other_commands_check_their_outputs(tmp_path):
    results = tmp_path / "res"
    results.mkdir()
    (results / "runs.csv").write_bytes(CI_BASELINE.read_bytes())
    for out, problem in _bad_outs(tmp_path):
        one_line_error(invoke("plot", results, "--out", out), "--out", problem)
        one_line_error(invoke("fit", "--optimizer", "adamw", "-m", "nano", "--device", "cpu", "--memory-budget", "1GiB",
                              "--out", out), "--out", problem)
        one_line_error(invoke("estimate", "-m", "nano", "--out", Path(out) / "e.csv"), "--out")
        one_line_error(invoke("check", results, "--baseline", CI_BASELINE, "--summary", Path(out) / "s.md"),
                       "--summary")
        one_line_error(invoke("check", results, "--baseline", Path(out) / "b.csv", "--update"), "--baseline")
    one_line_error(invoke("estimate", "-m", "nano", "--out", tmp_path), "--out", "is a directory")


# ------------------------------------------------------------------------------------ tokenizer files

NOT_TOKENIZERS = {
    "binary.json": b"\xff\xfe\x00\x01garbage",
    "list.json": b"[1, 2, 3]\n",
    "config.json": b'{"model": "llama", "vocab_size": 4096}\n',
    "vocab-list.json": b'{"model": {"vocab": [1, 2]}}\n',
    "no-type.json": b'{"model": {"vocab": {"a": 0}}}\n',
    "truncated.json": b'{"model": {"type": "BPE", "vocab": {"a": 0',
    "deep.json": b"[" * 100000 + b"]" * 100000,
}
TOKENIZER_SUITE = """
name = "tok"
[defaults]
model = "nano"
optimizer = "adamw"
steps = 2
warmup_steps = 1
[data]
source = "file"
path = "{corpus}"
tokenizer = "TOKENIZER"
"""


@pytest.mark.parametrize("name", sorted(NOT_TOKENIZERS))
def test_a_tokenizer_file_that_is_not_one_is_one_line(write_suite, tmp_path, name):
    tok = tmp_path / name
    tok.write_bytes(NOT_TOKENIZERS[name])
    suite = write_suite(TOKENIZER_SUITE.replace("TOKENIZER", str(tok)))
    one_line_error(invoke("run", suite, "--dry-run"), str(suite), "data.tokenizer", str(tok))


def test_a_run_given_a_bad_tokenizer_says_so_in_one_line(tmp_path):
    """The run side (swanbench.data) reads it through the same reader: a DataError naming the file."""
    from swanbench.data import DataError, load_encoder
    from swanbench.suite import DataSpec

    for name in ("binary.json", "list.json", "no-type.json"):
        tok = tmp_path / name
        tok.write_bytes(NOT_TOKENIZERS[name])
        with pytest.raises(DataError, match=str(tok)):
            load_encoder(DataSpec(source="file", tokenizer=str(tok)), None, "k", 4096)


# ------------------------------------------------------------------------------------ the gate

def _rows() -> tuple[list[str], list[dict]]:
    with CI_BASELINE.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), [dict(r) for r in reader]


def _write(path: Path, header: list[str], rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _damaged(column: str, value: str, which: str = "all"):
    def damage(rows: list[dict]) -> None:
        for row in rows:
            if which in ("all", row["optimizer"]):
                row[column] = value
    return damage


MEASURES = ("param_bytes", "grad_bytes", "optimizer_state_bytes", "peak_rss_bytes", "step_ms", "final_eval_loss",
            "final_eval_ppl", "tokens_per_s", "profiled_step_peak_bytes", "forward_backward_ms")


def _blank_measures(text: str):
    def damage(rows: list[dict]) -> None:
        for row in rows:
            for column in MEASURES:
                row[column] = text
    return damage


DAMAGED_BASELINES = {
    "inf-rss": _damaged("peak_rss_bytes", "inf"),
    "minus-inf-step": _damaged("step_ms", "-inf", "swan"),
    "nan-loss": _damaged("final_eval_loss", "nan", "sinkgd"),
    "NaN-state": _damaged("optimizer_state_bytes", "NaN"),
    "all-measures-nan": _blank_measures("nan"),
    "all-measures-empty": _blank_measures(""),  # what pandas writes for NaN
    "one-measure-empty": _damaged("param_bytes", "", "sgd"),
    "text-measure": _damaged("peak_rss_bytes", "lots", "swan"),
    "version-text": _damaged("schema_version", "two"),
    "version-empty": _damaged("schema_version", "", "adamw"),
    "version-nan": _damaged("schema_version", "nan"),
    "version-inf": _damaged("schema_version", "inf"),
    "version-fraction": _damaged("schema_version", "2.5"),
    "status-empty": _damaged("status", "", "adamw"),
    "status-unknown": _damaged("status", "fine", "swan"),
    "optimizer-empty": _damaged("optimizer", "", "sgd"),
    "seed-empty": _damaged("seed", "", "swan"),
    "seed-text": _damaged("seed", "zero", "swan"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_BASELINES))
def test_a_damaged_baseline_is_exit_two_never_a_pass(tmp_path, case):
    header, rows = _rows()
    results = _write(tmp_path / "res" / "runs.csv", header, rows).parent
    DAMAGED_BASELINES[case](rows)
    baseline = _write(tmp_path / "baseline.csv", header, rows)
    one_line_error(invoke("check", results, "--baseline", baseline), str(baseline))


@pytest.mark.parametrize("cut", ["in-header", "mid-row", "short-row", "garbage", "empty"])
def test_a_truncated_baseline_or_results_table_is_exit_two(tmp_path, cut):
    good = tmp_path / "good" / "runs.csv"
    good.parent.mkdir()
    good.write_bytes(CI_BASELINE.read_bytes())
    bad = _truncated(tmp_path / "bad" / "runs.csv", cut)
    one_line_error(invoke("check", good.parent, "--baseline", bad), str(bad))
    one_line_error(invoke("check", bad.parent, "--baseline", good), str(bad))


def test_non_finite_results_are_exit_two(tmp_path):
    header, rows = _rows()
    _damaged("step_ms", "inf", "swan")(rows)
    results = _write(tmp_path / "res" / "runs.csv", header, rows)
    one_line_error(invoke("check", results.parent, "--baseline", CI_BASELINE), str(results), "step_ms")


def test_a_failed_runs_leftover_nan_is_not_judged(tmp_path):
    """A diverged run may leave NaN behind; its measures are never compared, so that is no error."""
    header, rows = _rows()
    for row in rows:
        if row["optimizer"] == "sgd":
            row.update(status="diverged", final_eval_loss="nan", peak_rss_bytes="inf")
    base = _write(tmp_path / "b.csv", header, rows)
    results = _write(tmp_path / "res" / "runs.csv", header, rows).parent
    result = invoke("check", results, "--baseline", base)
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------------------ plot and report

def _truncated(path: Path, cut: str) -> Path:
    text = CI_BASELINE.read_text()
    header_end = text.index("\n")
    second = text.index("\n", header_end + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    if cut == "in-header":
        path.write_text(text[: header_end // 2])
    elif cut == "mid-row":
        path.write_text(text[: (header_end + second) // 2])
    elif cut == "short-row":  # cut mid-row, then a newline: the row has too few fields
        path.write_text(text[: (header_end + second) // 2] + "\n")
    elif cut == "garbage":
        path.write_bytes(b"\x00\xff" * 100)
    elif cut == "empty":
        path.write_text("")
    return path


@pytest.mark.parametrize("cut", ["in-header", "mid-row", "short-row", "garbage", "empty"])
@pytest.mark.parametrize("command", ["plot", "report"])
def test_plot_and_report_refuse_a_truncated_runs_table(tmp_path, cut, command):
    bad = _truncated(tmp_path / "res" / "runs.csv", cut)
    one_line_error(invoke(command, bad.parent), str(bad))
    assert not (bad.parent / "report.md").exists()


@pytest.mark.parametrize("command", ["plot", "report"])
def test_plot_and_report_refuse_text_in_a_numeric_column(tmp_path, command):
    header, rows = _rows()
    _damaged("peak_rss_bytes", "lots", "swan")(rows)
    results = _write(tmp_path / "res" / "runs.csv", header, rows)
    one_line_error(invoke(command, results.parent), str(results), "peak_rss_bytes", "row 4")


def test_a_truncated_curves_table_is_named(tmp_path):
    results = tmp_path / "res"
    results.mkdir()
    (results / "runs.csv").write_bytes(CI_BASELINE.read_bytes())
    (results / "curves.csv").write_text("run_id,step,tokens,eval_loss\nabc,0,0,8.3\nabc,10,2")
    for command in ("plot", "report"):
        one_line_error(invoke(command, results), str(results / "curves.csv"))


# ------------------------------------------------------------------------------------ fit

@pytest.mark.parametrize("device", ["tpu", "", "cuda:x", "gpu0"])
def test_fit_rejects_an_unknown_device_before_any_probe(tmp_path, device):
    out = tmp_path / "fit"
    one_line_error(invoke("fit", "--optimizer", "adamw", "-m", "nano", "--seq-len", 16, "--device", device,
                          "--memory-budget", "1GiB", "--out", out), "--device")
    assert not out.exists()


def test_fit_rejects_a_cuda_device_this_machine_lacks(tmp_path):
    import torch

    index = torch.cuda.device_count()  # one past the last visible GPU (cuda:0 on a CPU-only machine)
    out = tmp_path / "fit"
    one_line_error(invoke("fit", "--optimizer", "adamw", "-m", "nano", "--device", f"cuda:{index}",
                          "--memory-budget", "1GiB", "--out", out), "--device", f"cuda:{index}")
    assert not out.exists()


# ------------------------------------------------------------------------------------ one directory per cell

@pytest.mark.parametrize("axis, key", [
    ("timeout_s = [100, 200]", "matrix.timeout_s"),
    ("memory_snapshot = [true, false]", "matrix.memory_snapshot"),
    ("timeout_s = [100, 200]\nmemory_snapshot = [true, false]", "matrix."),
    ('timeout_s = [100, 200]\noptimizer = ["adamw", "sgd"]', "matrix.timeout_s"),
])
def test_a_field_outside_the_run_identity_cannot_vary(write_suite, tiny_suite_text, axis, key):
    text = tiny_suite_text.replace('optimizer = ["adamw"]\n', "") if "optimizer" in axis else tiny_suite_text
    suite = write_suite(text.replace("[matrix]\n", f"[matrix]\n{axis}\n"))
    with pytest.raises(SuiteError, match=key) as err:
        load_suite(suite)
    assert "share run directory" in str(err.value) and "\n" not in str(err.value)
    one_line_error(invoke("run", suite, "--dry-run"), key)


@pytest.mark.parametrize("old, new", [("[matrix]\n", "[matrix]\ntimeout_s = [200]\n"),
                                      ("timeout_s = 120", "timeout_s = 200")])
def test_a_field_outside_the_identity_may_be_set_once(write_suite, tiny_suite_text, old, new):
    suite = load_suite(write_suite(tiny_suite_text.replace(old, new)))
    runs = suite.runs()
    assert len(runs) == len({r.run_id for r in runs}) == 1 and runs[0].cell.timeout_s == 200


@pytest.mark.parametrize("axis", ['"hparams.lr" = [1, 1.0]', '"hparams.nesterov" = [true, 1]', "seed = [0, 0]",
                                  'dtype = ["float32", "float32"]'])
def test_an_axis_with_one_value_twice_is_one_line(write_suite, tiny_suite_text, axis):
    suite = write_suite(tiny_suite_text.replace("seed = [0]\n", "").replace("[matrix]\n", f"[matrix]\n{axis}\n"))
    one_line_error(invoke("run", suite, "--dry-run"), str(suite), "repeated values")


def test_every_planned_run_of_the_shipped_suites_has_its_own_directory():
    from swanbench.suite import shipped_suites

    for name, path in shipped_suites().items():
        suite = load_suite(path, check_names=False)
        ids = [r.run_id for r in suite.runs()]
        assert len(ids) == len(set(ids)), name


# ------------------------------------------------------------------------------------ the safety net

BROKEN_ENV = ("import swanbench.env as e\n"
              "def broken(*a, **k):\n"
              "    raise ZeroDivisionError('a bug nobody expected')\n"
              "e.collect = broken\n"
              "from swanbench.cli import app\n"
              "app()\n")


def _cli_process(*args: str, debug: bool = False, code: str = BROKEN_ENV) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SWANBENCH_DEBUG"}
    if debug:
        env["SWANBENCH_DEBUG"] = "1"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)


def test_an_unexpected_error_is_one_line_and_exit_two_in_a_process():
    proc = _cli_process("env")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unexpected ZeroDivisionError: a bug nobody expected" in lines[0]
    assert "SWANBENCH_DEBUG=1" in lines[0]


def test_swanbench_debug_shows_the_traceback():
    proc = _cli_process("env", debug=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr


def test_a_bad_input_error_from_deep_inside_is_one_line(monkeypatch, tmp_path):
    """The guard around every command: an OSError or ValueError no command caught is still one line."""
    import swanbench.env as envmod

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "secret"))

    monkeypatch.setattr(envmod, "collect", unreadable)
    one_line_error(invoke("env"), str(tmp_path / "secret"), "Permission denied")
