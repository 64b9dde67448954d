"""Suite files: load a TOML suite, validate it before anything runs, and expand its matrix into cells.

A suite is data, never code: it is parsed with `tomllib` and checked key by key. Every mistake raises
`SuiteError` with one line naming the file, the key and (where one exists) a did-you-mean.

Validation runs in two stages so that a typo fails in well under a second:
1. `load_suite` does the pure checks (keys, types, ranges, model and data consistency) without importing
   torch, transformers or the optimizers package (model presets come from `swanbench.models`, which only
   imports torch; it is imported after the key checks).
2. `check_runtime(suite)` builds each distinct (optimizer, hparams) once on a tiny model, so hyperparameter
   errors surface from `optimizers.build`'s ValueError, and checks that the requested devices and dtypes exist.

Layout of a suite file::

    name = "quickstart"              # default: the file stem
    description = "..."
    kind = "train"                   # or "kernels" (validated by swanbench.kernels)
    baseline = "adamw"               # the optimizer every verdict compares with (default adamw)
    [defaults]                       # any cell field
    [optimizers.<name>]              # hparams passed to optimizers.build(name, model, **hparams)
    [data]                           # source = "embedded" | "file" | "c4", ...
    [matrix]                         # list-valued axes: cell fields, "seed", or "hparams.<key>"
    [tune]                           # optional: tune every optimizer, one budget, before evaluating

The package: `spec` (cells, runs, the data spec, field rules, errors), `load` (the TOML file to a Suite),
`checks` (what needs presets, the registry or torch), `tune` (the [tune] table, selection, the edge rule).
"""

from __future__ import annotations

from swanbench.suite.spec import (
    CELL_FIELDS, Cell, DATA_FIELDS, DATA_SOURCES, DEFAULT_BASELINE, DEVICE_RE, DTYPES, DataSpec, EXTRA_CELL_KEYS,
    KINDS, KIND_TABLES, MAX_CPU_RANKS, NOT_IDENTITY, OMIT_WHEN_UNSET, PARALLELISMS, Run, SETTABLE, SIZE_RE,
    SIZE_UNITS, SUITES_DIR, Suite, SuiteError, TOP_KEYS, check_keys, fail, parse_size,
)
from swanbench.suite.load import (
    load_suite, read_toml, resolve_suite_path, shipped_suites,
)
from swanbench.suite.checks import (
    available_optimizers, check_names_and_models, check_runtime, data_vocab_size, default_bpe_vocab,
    device_problem, ranks_problem,
)
from swanbench.suite.tune import Dimension, Trial, TuneSpec, check_tune_runtime, load_tune

__all__ = [
    "CELL_FIELDS", "Cell", "DATA_FIELDS", "DATA_SOURCES", "DEFAULT_BASELINE", "DEVICE_RE", "DTYPES", "DataSpec",
    "EXTRA_CELL_KEYS", "KINDS", "KIND_TABLES", "MAX_CPU_RANKS", "NOT_IDENTITY", "OMIT_WHEN_UNSET", "PARALLELISMS",
    "Run", "SETTABLE", "SIZE_RE", "SIZE_UNITS", "SUITES_DIR", "Suite", "SuiteError", "TOP_KEYS", "check_keys",
    "fail", "parse_size", "load_suite", "read_toml", "resolve_suite_path", "shipped_suites",
    "available_optimizers", "check_names_and_models", "check_runtime", "data_vocab_size", "default_bpe_vocab",
    "device_problem", "ranks_problem", "Dimension", "Trial", "TuneSpec", "check_tune_runtime", "load_tune",
]
