"""Changing a suite from the command line: `--set KEY=VALUE` and `--only AXIS=V1,V2`, applied to the parsed TOML.

Both edit the suite's raw table *before* it is validated, so an override goes through exactly the checks a
value written in the file does, and its mistakes are the same one-line errors (with the override named):

- `--set defaults.steps=50`, `--set optimizers.swan.lr=0.01`, `--set matrix.seed=[0,1,2]`,
  `--set data.vocab_size=512`, `--set baseline=swan`: the dotted key names a table and a key in it
  (`matrix.hparams.lr` is the matrix axis `hparams.lr`; `optimizers.NAME.KEY` a hyperparameter). The value is
  read as a TOML value (`50`, `2e-3`, `true`, `[0, 1]`, `"text"`); anything that is not TOML is a string
  (`--set defaults.model=micro`, `--set defaults.memory_budget=2GiB`).
- `--only optimizer=swan`, `--only seed=0,1`, `--only model=nano`: keep only these values of a matrix axis;
  each must be one of the axis's values in the file (or, for a key set in [defaults], that value).

The suite as changed keeps its name, so its results go to `results/<name>/` unless `--out` says otherwise;
the command (with its overrides) is recorded in that directory's `command.txt`.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from swanbench.hints import did_you_mean
from swanbench.suite.spec import SuiteError

# Tables whose remaining dotted key is one key (a matrix axis may itself contain a dot: `hparams.lr`).
_FLAT_TABLES = ("defaults", "data", "matrix", "kernels")


def parse_value(text: str) -> Any:
    """A command-line value as TOML (`50`, `2e-3`, `true`, `[0, 1]`, `"x"`), else the text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, ValueError):
        return text.strip()


def split_assignment(flag: str, text: str) -> tuple[str, str]:
    """`defaults.steps=50` -> ("defaults.steps", "50"); a one-line error without `=`."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SuiteError(f"{flag} {text!r}: expected KEY=VALUE, e.g. {flag} "
                         f"{'defaults.steps=50' if flag == '--set' else 'optimizer=swan'}")
    return key.strip(), value.strip()


def key_path(key: str) -> list[str]:
    """The tables and key a dotted `--set` key names: `optimizers.swan.lr` -> [optimizers, swan, lr]."""
    head, _, rest = key.partition(".")
    if not rest:
        return [head]
    if head in _FLAT_TABLES:
        return [head, rest]
    if head == "optimizers":
        name, _, hparam = rest.partition(".")
        return [head, name, hparam] if hparam else [head, name]
    return key.split(".")


def apply_set(raw: dict, text: str) -> None:
    """One `--set KEY=VALUE` into the raw suite table (in place)."""
    key, value = split_assignment("--set", text)
    parts = key_path(key)
    table = raw
    for depth, part in enumerate(parts[:-1]):
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise SuiteError(f"--set {text}: {'.'.join(parts[:depth + 1])} is not a table")
    table[parts[-1]] = parse_value(value)


def apply_only(raw: dict, text: str) -> None:
    """One `--only AXIS=V1,V2`: keep only those values of a matrix axis (in place)."""
    axis, values = split_assignment("--only", text)
    wanted = [parse_value(v) for v in values.split(",") if v.strip()]
    if not wanted:
        raise SuiteError(f"--only {text}: no value given")
    matrix = raw.get("matrix") if isinstance(raw.get("matrix"), dict) else {}
    defaults = raw.get("defaults") if isinstance(raw.get("defaults"), dict) else {}
    if axis in matrix and isinstance(matrix[axis], list):
        choices = matrix[axis]
        for value in wanted:
            if not any(_same(value, c) for c in choices):
                shown = ", ".join(str(c) for c in choices)
                raise SuiteError(f"--only {text}: {value!r} is not a value of matrix.{axis}"
                                 f"{did_you_mean(value, [str(c) for c in choices])} (values: {shown})")
        matrix[axis] = [c for c in choices if any(_same(v, c) for v in wanted)]
        return
    if axis in defaults:
        if all(_same(v, defaults[axis]) for v in wanted):
            return  # every cell already has that value
        raise SuiteError(f"--only {text}: {axis} is not a matrix axis of this suite; every cell has "
                         f"{axis} = {defaults[axis]!r}")
    axes = sorted(matrix)
    raise SuiteError(f"--only {text}: {axis!r} is not a matrix axis of this suite{did_you_mean(axis, axes)}"
                     f" (axes: {', '.join(axes) or 'none'})")


def _same(a: Any, b: Any) -> bool:
    # "0" from the command line and 0 in the file are the same seed; 1 and 1.0 the same number.
    return a == b or str(a) == str(b)


def apply_overrides(raw: dict, sets: Sequence[str] = (), only: Sequence[str] = ()) -> dict:
    """A copy of `raw` with every `--set`, then every `--only`, applied in order."""
    raw = copy.deepcopy(raw)
    for text in sets:
        apply_set(raw, text)
    for text in only:
        apply_only(raw, text)
    return raw


def describe(sets: Sequence[str] = (), only: Sequence[str] = ()) -> str:
    """`--set defaults.steps=50 --only optimizer=swan`: the overrides as they would be typed."""
    return " ".join([*(f"--set {s}" for s in sets), *(f"--only {o}" for o in only)])


def with_overrides_named(exc: SuiteError, path: Path, sets: Sequence[str], only: Sequence[str]) -> SuiteError:
    """The validation error of an overridden suite, saying that the command line changed it."""
    if str(exc).startswith("--"):  # the override itself is malformed: it names itself
        return SuiteError(f"{path}: {exc}")
    return SuiteError(f"{exc} (suite {path} as changed by {describe(sets, only)})")
