"""Loading a suite file: parse the TOML (never execute it), check it key by key, expand the matrix into cells."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from swanbench import userfiles
from swanbench.hints import did_you_mean
from swanbench.suite.checks import check_names_and_models
from swanbench.suite.overrides import apply_overrides, with_overrides_named
from swanbench.suite.tune import load_tune
from swanbench.suite.spec import (DATA_FIELDS, DATA_SOURCES, DEFAULT_BASELINE, KIND_TABLES, KINDS, SETTABLE, SUITES_DIR,
                                  TOP_KEYS, Cell, DataSpec, Suite, SuiteError, _check_value, _freeze_hparams, _is_int,
                                  check_keys, fail)

# ---------------------------------------------------------------- loading

def resolve_suite_path(name_or_path: str | Path | None) -> Path:
    """A suite file from a path, or the name of a shipped suite (`quickstart` -> suites/quickstart.toml)."""
    if name_or_path is None:
        name_or_path = "quickstart"
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise SuiteError(f"{p}: no such suite file")
        return p
    shipped = shipped_suites()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise SuiteError(f"{name_or_path}: neither a file nor a shipped suite{did_you_mean(name_or_path, shipped)}"
                     f" (shipped: {', '.join(shipped) or 'none'})")


def shipped_suites() -> dict[str, Path]:
    """Suites shipped with the package: the checkout's suites/ or the installed swanbench.suites."""
    folders = [SUITES_DIR]
    try:
        from importlib.resources import files

        folders.append(Path(str(files("swanbench.suites"))))
    except (ImportError, ModuleNotFoundError, TypeError):
        pass
    found: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for p in sorted(folder.glob("*.toml")):
                found.setdefault(p.stem, p)
    return found


def read_toml(path: Path) -> dict:
    """The suite file's TOML document; a SuiteError naming the file for anything it cannot be (not UTF-8,
    not TOML, nested too deeply, unreadable)."""
    return userfiles.read_toml(path, SuiteError)


def load_suite(name_or_path: str | Path | None = None, *, check_names: bool = True, sets: Sequence[str] = (),
               only: Sequence[str] = ()) -> Suite:
    """Load, validate (pure stage) and expand a suite. Raises SuiteError with one line on any mistake.

    check_names=False skips the checks that need the model presets and the optimizer registry (they import
    torch, seconds on a busy machine); call `check_names_and_models(suite)` before running anything. A resume
    with nothing left to run uses this: every cell already ran, so its names were valid.
    sets, only: command-line overrides (`--set KEY=VALUE`, `--only AXIS=V1,V2`, `swanbench.suite.overrides`),
    applied to the parsed file before it is validated, so they pass the same checks as the file itself.
    """
    path = resolve_suite_path(name_or_path)
    raw = read_toml(path)
    if not (sets or only):
        return _load_raw(path, raw, check_names)
    try:
        suite = _load_raw(path, apply_overrides(raw, sets, only), check_names)
    except SuiteError as exc:
        raise with_overrides_named(exc, path, sets, only) from None
    return dataclasses.replace(suite, overrides=(*(f"--set {s}" for s in sets), *(f"--only {o}" for o in only)))


def _load_raw(path: Path, raw: dict, check_names: bool) -> Suite:
    check_keys(path, "", raw, TOP_KEYS)
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
        raise fail(path, "name", f"expected a simple name (letters, digits, - _ .), got {name!r}")
    kind = raw.get("kind", "train")
    if kind not in KINDS:
        raise fail(path, "kind", f"unknown kind {kind!r}{did_you_mean(kind, KINDS)} (known: {', '.join(KINDS)})")
    description = str(raw.get("description", ""))
    if KIND_TABLES[kind] is not None:
        return _load_table_suite(path, raw, name, description, kind)
    for other in filter(None, KIND_TABLES.values()):
        if other in raw:
            raise fail(path, other, f"only allowed in a suite with kind = \"{other}\"")
    suite = _load_train_suite(path, raw, name, description)
    if check_names:
        check_names_and_models(suite)
    return suite


def _load_table_suite(path: Path, raw: dict, name: str, description: str, kind: str) -> Suite:
    """A suite of a kind that holds one table named after the kind (`[kernels]`), validated by its kind."""
    table_key = KIND_TABLES[kind]
    extra = set(raw) - {"name", "description", "kind", table_key}
    if extra:
        key = sorted(extra)[0]
        raise fail(path, key, f"not allowed in a kind = \"{kind}\" suite (only [{table_key}])")
    table = raw.get(table_key)
    if not isinstance(table, dict):
        raise fail(path, table_key, f"a kind = \"{kind}\" suite needs a [{table_key}] table")
    return Suite(name, path, description, kind, (), (), kernels=table if kind == "kernels" else None,
                 tables={table_key: table})


def _table(path: Path, raw: dict, key: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise fail(path, key, f"expected a table [{key}]")
    return value


def _load_train_suite(path: Path, raw: dict, name: str, description: str) -> Suite:
    defaults = _table(path, raw, "defaults")
    matrix = _table(path, raw, "matrix")
    opt_tables = _table(path, raw, "optimizers")
    data = _load_data(path, _table(path, raw, "data"))
    check_keys(path, "defaults.", defaults, SETTABLE)
    defaults = {k: _check_value(path, f"defaults.{k}", v) for k, v in defaults.items()}
    axes = _load_matrix(path, matrix)
    for opt, table in opt_tables.items():
        if not isinstance(table, dict):
            raise fail(path, f"optimizers.{opt}", "expected a table of hyperparameters")
    for key in ("optimizer", "model"):
        if key not in defaults and key not in axes:
            raise fail(path, key, "not set: give it in [defaults] or as a [matrix] axis")
    seeds = axes.pop("seed", [defaults.pop("seed", 0)])
    defaults.pop("seed", None)
    if len(set(seeds)) != len(seeds):
        raise fail(path, "matrix.seed", "repeated seeds")
    # dict.fromkeys: the 1-rank cells of a parallelism axis coincide (one rank has no parallelism)
    cells = tuple(dict.fromkeys(_expand(path, defaults, axes, opt_tables, data)))
    _check_one_directory_per_cell(path, cells, axes)
    baseline = _load_baseline(path, raw, cells)
    tune = load_tune(path, raw["tune"], cells, seeds, opt_tables, matrix) if "tune" in raw else None
    return Suite(name, path, description, "train", cells, tuple(seeds), optimizer_tables=opt_tables,
                 baseline=baseline, tune=tune)


def _check_one_directory_per_cell(path: Path, cells: tuple[Cell, ...], axes: dict[str, list]) -> None:
    """Two different cells with one cell_id would share a run directory (one overwriting the other, two
    identical rows in runs.csv): whatever a suite varies must be part of the identity. The fields left out
    of it on purpose (`NOT_IDENTITY`: a timeout, a snapshot switch) may be set, but not varied."""
    seen: dict[str, Cell] = {}
    for cell in cells:
        other = seen.setdefault(cell.cell_id, cell)
        if other is cell:
            continue
        differ = [f.name for f in dataclasses.fields(Cell) if getattr(cell, f.name) != getattr(other, f.name)]
        key = next((f"matrix.{name}" for name in differ if name in axes), f"matrix.{differ[0]}" if differ else "matrix")
        raise fail(path, key, f"varies ({getattr(other, differ[0])!r} vs {getattr(cell, differ[0])!r}) but is not "
                   f"part of a run's identity, so two cells would share run directory runs/{cell.cell_id}-s<seed>; "
                   "give it one value in [defaults]")


def _load_baseline(path: Path, raw: dict, cells: tuple[Cell, ...]) -> str:
    """The suite's baseline optimizer: given, it must be one the suite runs; default adamw (if it runs)."""
    names = sorted({c.optimizer for c in cells})
    if "baseline" not in raw:
        return DEFAULT_BASELINE
    value = raw["baseline"]
    if not isinstance(value, str) or value not in names:
        raise fail(path, "baseline", f"{value!r} is not an optimizer this suite runs{did_you_mean(value, names)}"
                    f" (runs: {', '.join(names)})")
    return value


def _load_data(path: Path, table: dict) -> DataSpec:
    check_keys(path, "data.", table, DATA_FIELDS)
    source = table.get("source", "embedded")
    if source not in DATA_SOURCES:
        raise fail(path, "data.source", f"unknown source {source!r}{did_you_mean(source, DATA_SOURCES)}"
                    f" (known: {', '.join(DATA_SOURCES)})")
    for key in ("path", "tokenizer", "text_field"):
        if key in table and not isinstance(table[key], str):
            raise fail(path, f"data.{key}", f"expected a string, got {table[key]!r}")
    for key, low, high in (("vocab_size", 260, 1 << 20), ("val_percent", 1, 50), ("shuffle_seed", 0, 1 << 31)):
        if key in table and (not _is_int(table[key]) or not low <= table[key] <= high):
            raise fail(path, f"data.{key}", f"expected an integer in [{low}, {high}], got {table[key]!r}")
    values = dict(table)
    if source == "file":
        if "path" not in table:
            raise fail(path, "data.path", "source = \"file\" needs a path (.txt or .jsonl)")
        file = (path.parent / table["path"]).resolve()  # relative to the suite file
        if not userfiles.is_file(file):
            raise fail(path, "data.path", f"no such file {file}")
        values["path"] = str(file)
    elif "path" in table:
        raise fail(path, "data.path", f"only used with source = \"file\" (source is {source!r})")
    tok = values.get("tokenizer")
    if tok and (tok.endswith(".json") or userfiles.exists(Path(tok))):
        tok_path = (path.parent / tok).resolve()
        if not userfiles.is_file(tok_path):
            raise fail(path, "data.tokenizer", f"no such tokenizer file {tok_path}")
        values["tokenizer"] = str(tok_path)
    if source == "c4" and not tok:
        values["tokenizer"] = "t5-base"  # the GaLore protocol's tokenizer
    if values.get("tokenizer") and "vocab_size" in table:
        raise fail(path, "data.vocab_size", "only used when a BPE is trained (no tokenizer given)")
    return DataSpec(**values)


def _load_matrix(path: Path, matrix: dict) -> dict[str, list]:
    axes: dict[str, list] = {}
    for key, values in matrix.items():
        is_hparam = key.startswith("hparams.") and len(key) > len("hparams.")
        if not is_hparam and key not in SETTABLE:
            allowed = sorted(SETTABLE) + ["hparams.<name>"]
            raise fail(path, f"matrix.{key}", f"unknown axis{did_you_mean(key, SETTABLE)} (allowed: {', '.join(allowed)})")
        if not isinstance(values, list) or not values:
            raise fail(path, f"matrix.{key}", f"an axis is a non-empty list, got {values!r}")
        if not is_hparam:
            values = [_check_value(path, f"matrix.{key}", v) for v in values]
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise fail(path, f"matrix.{key}", "repeated values")
        if _equal_pair(values):  # one cell, not two
            raise fail(path, f"matrix.{key}", "repeated values (1 and 1.0, or 1 and true, are the same value)")
        axes[key] = values
    return axes


def _equal_pair(values: list) -> bool:
    """Two values of an axis that Python holds equal (1 and 1.0, 1 and true): one cell, not two."""
    return any(a == b for i, a in enumerate(values) for b in values[i + 1:])


def _expand(path: Path, defaults: dict, axes: dict[str, list], opt_tables: dict, data: DataSpec) -> Iterator[Cell]:
    """The cartesian product of the axes (in file order) over the defaults: one Cell per combination."""
    keys = list(axes)
    for combo in itertools.product(*(axes[k] for k in keys)):
        values = dict(defaults)
        overrides: dict[str, Any] = {}
        for k, v in zip(keys, combo):
            if k.startswith("hparams."):
                overrides[k[len("hparams."):]] = v
            else:
                values[k] = v
        hparams = {**opt_tables.get(values["optimizer"], {}), **overrides}
        yield _make_cell(path, values, hparams, data)


def _make_cell(path: Path, values: dict, hparams: dict, data: DataSpec) -> Cell:
    tokens_per_step = values.pop("tokens_per_step", None)
    if values.get("world_size", 1) == 1:
        values.pop("parallelism", None)  # one rank has no data parallelism: the same cell whatever it says
    if tokens_per_step is not None:
        micro = values.get("world_size", 1) * values.get("batch_size", 8) * values.get("seq_len", 128)
        if tokens_per_step % micro:
            raise fail(path, "tokens_per_step", f"{tokens_per_step} is not a multiple of world_size * batch_size"
                        f" * seq_len = {micro}")
        values["grad_accum"] = tokens_per_step // micro
    cell = Cell(**values, hparams=_freeze_hparams(hparams), data=data)
    if cell.eval_every_tokens == 0:  # about 10 eval points, on step boundaries
        every = max(1, cell.steps // 10) * cell.tokens_per_step
        cell = dataclasses.replace(cell, eval_every_tokens=every)
    return cell
