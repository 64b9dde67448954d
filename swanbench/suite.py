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
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from swanbench.hints import did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
# Suite kinds and the one table each kind other than "train" holds (validated by that kind's own loader,
# `swanbench.kinds`); "train" suites are validated here.
KIND_TABLES = {"train": None, "kernels": "kernels"}
KINDS = tuple(KIND_TABLES)
TOP_KEYS = {"name", "description", "kind", "baseline", "defaults", "optimizers", "data", "matrix",
            *filter(None, KIND_TABLES.values())}
DEFAULT_BASELINE = "adamw"
DTYPES = ("float32", "bfloat16", "float16")
DATA_SOURCES = ("embedded", "file", "c4")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
SIZE_UNITS = {None: 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
# Cell fields that do not change what is measured: left out of cell_id so that, e.g., raising a
# timeout does not orphan completed runs.
NOT_IDENTITY = frozenset({"timeout_s", "memory_snapshot"})
# Fields added after results existed: left out of cell_id while unset, so earlier cells keep their ids.
OMIT_WHEN_UNSET = frozenset({"parallelism"})
PARALLELISMS = ("ddp", "fsdp")
# gloo ranks on one CPU machine: each is a full process with its own model replica (or shard).
MAX_CPU_RANKS = 16


class SuiteError(ValueError):
    """A suite file that cannot run; the message is one line: file, key, problem, did-you-mean."""


@dataclass(frozen=True)
class DataSpec:
    """Where the tokens come from (see swanbench.data).

    source: "embedded" (the Wikipedia sample gensim ships, byte-level BPE trained on it), "file" (a local
    .txt or .jsonl file), or "c4" (allenai/c4 `en` streamed through `datasets`, online only).
    tokenizer: None trains a byte-level BPE of `vocab_size` tokens on the training split (embedded, file);
    otherwise a local tokenizer.json path or a hub tokenizer name (c4 default "t5-base").
    """

    source: str = "embedded"
    path: str | None = None
    tokenizer: str | None = None
    vocab_size: int | None = None
    text_field: str = "text"
    val_percent: int = 10
    shuffle_seed: int = 42


@dataclass(frozen=True)
class Cell:
    """One experiment (everything but the seed). Units: tokens, seconds, bytes."""

    optimizer: str
    model: str
    dtype: str = "float32"
    device: str = "auto"
    seq_len: int = 128
    batch_size: int = 8            # micro-batch per rank, in sequences
    grad_accum: int = 1            # micro-batches per optimizer step
    steps: int = 100               # optimizer steps
    warmup_steps: int = 3          # measurement warm-up: steps excluded from timing
    lr_warmup: float = 0.1         # fraction of steps with linear lr warm-up
    lr_min_ratio: float = 0.1      # cosine decays to this fraction of the peak lr
    eval_every_tokens: int = 0     # 0: derived (about 10 eval points per run)
    eval_tokens: int = 32768       # fixed validation token budget per eval
    timeout_s: float = 3600.0
    memory_budget: int | None = None  # bytes; exceeding it is status "oom"
    memory_snapshot: bool = False
    world_size: int = 1            # ranks (processes, one GPU each on CUDA) under torchrun when > 1
    parallelism: str | None = None  # "ddp" | "fsdp" when world_size > 1 (None on one rank)
    threads: int = 0               # torch intra-op threads per process; 0 = torch's default (all cores)
    hparams: tuple = ()            # sorted (key, value) pairs passed to optimizers.build
    data: DataSpec = field(default_factory=DataSpec)

    @property
    def tokens_per_step(self) -> int:
        """Global tokens per optimizer step: world_size x batch_size x grad_accum x seq_len."""
        return self.world_size * self.batch_size * self.grad_accum * self.seq_len

    def hparams_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.hparams}

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hparams"] = self.hparams_dict()
        return out

    @property
    def cell_id(self) -> str:
        """10 hex digits of sha256 over the cell's canonical JSON (identity fields only)."""
        ident = {k: v for k, v in self.to_dict().items()
                 if k not in NOT_IDENTITY and not (k in OMIT_WHEN_UNSET and v is None)}
        blob = json.dumps(ident, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Cell":
        raw = dict(raw)
        raw["data"] = DataSpec(**raw.get("data", {}))
        raw["hparams"] = _freeze_hparams(raw.get("hparams", {}))
        return cls(**raw)


@dataclass(frozen=True)
class Run:
    cell: Cell
    seed: int

    @property
    def run_id(self) -> str:
        return f"{self.cell.cell_id}-s{self.seed}"


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    description: str
    kind: str
    cells: tuple[Cell, ...]
    seeds: tuple[int, ...]
    kernels: dict | None = None  # the raw [kernels] table of a kind="kernels" suite
    tables: dict = field(default_factory=dict, compare=False)  # a non-train kind's raw table, by name
    optimizer_tables: dict = field(default_factory=dict, compare=False)  # the raw [optimizers.*] tables
    baseline: str = DEFAULT_BASELINE  # the optimizer verdicts, tokens-to-target and Diff % compare with

    def runs(self) -> list[Run]:
        return [Run(c, s) for c in self.cells for s in self.seeds]


# ---------------------------------------------------------------- field schema (pure Python)

CELL_FIELDS = {f.name: f for f in dataclasses.fields(Cell)}
DATA_FIELDS = {f.name: f for f in dataclasses.fields(DataSpec)}
# Keys a user may write in [defaults] / [matrix] beyond the Cell fields.
EXTRA_CELL_KEYS = {"seed", "tokens_per_step"}
SETTABLE = (set(CELL_FIELDS) - {"hparams", "data"}) | EXTRA_CELL_KEYS


def fail(path: Path | str | None, key: str, problem: str) -> SuiteError:
    """The one-line error of every suite kind: `file: key: problem`."""
    return SuiteError(f"{path}: {key}: {problem}")


_fail = fail
_did_you_mean = did_you_mean


def check_keys(path: Path | str | None, where: str, table: dict, allowed) -> None:
    """Reject the first key of `table` not in `allowed`, with a did-you-mean (`where` prefixes the key)."""
    for key in table:
        if key not in allowed:
            raise fail(path, f"{where}{key}",
                       f"unknown key{_did_you_mean(key, allowed)} (allowed: {', '.join(sorted(allowed))})")


_check_keys = check_keys


def parse_size(value: Any) -> int:
    """Bytes from an int or a string like "2GiB", "512MB" (GiB = 1024^3)."""
    if isinstance(value, bool):
        raise ValueError("expected bytes (int) or a size like '2GiB'")
    if isinstance(value, int):
        return value
    m = SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"cannot read size {value!r}; use bytes or e.g. '2GiB', '512MB'")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2)])


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_value(path: Path, key: str, value: Any) -> Any:
    """Type- and range-check one cell value; returns the normalised value."""
    name = key.rsplit(".", 1)[-1]
    ints_min = {"seq_len": 2, "batch_size": 1, "grad_accum": 1, "steps": 1, "warmup_steps": 0,
                "eval_every_tokens": 0, "eval_tokens": 1, "world_size": 1, "seed": 0, "tokens_per_step": 1,
                "threads": 0}
    if name in ints_min:
        if not _is_int(value):
            raise _fail(path, key, f"expected an integer, got {value!r}")
        if value < ints_min[name]:
            raise _fail(path, key, f"must be >= {ints_min[name]}, got {value}")
        return value
    if name in ("lr_warmup", "lr_min_ratio"):
        high = 1 if name == "lr_min_ratio" else 0.999  # a warm-up over all steps never reaches the peak lr
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= high:
            raise _fail(path, key, f"expected a number in [0, {high}], got {value!r}")
        return float(value)
    if name == "timeout_s":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise _fail(path, key, f"expected seconds > 0, got {value!r}")
        return float(value)
    if name == "dtype":
        if value not in DTYPES:
            raise _fail(path, key, f"unknown dtype {value!r}{_did_you_mean(value, DTYPES)} (known: {', '.join(DTYPES)})")
        return value
    if name == "device":
        if not isinstance(value, str) or not DEVICE_RE.match(value):
            raise _fail(path, key, f"unknown device {value!r}; use auto, cpu, cuda or cuda:N")
        return value
    if name == "memory_budget":
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise _fail(path, key, str(exc)) from None
        if size <= 0:
            raise _fail(path, key, f"must be > 0 bytes, got {value!r}")
        return size
    if name == "memory_snapshot":
        if not isinstance(value, bool):
            raise _fail(path, key, f"expected true or false, got {value!r}")
        return value
    if name == "parallelism":
        if value not in PARALLELISMS:
            raise _fail(path, key, f"unknown parallelism {value!r}{_did_you_mean(value, PARALLELISMS)}"
                        f" (known: {', '.join(PARALLELISMS)})")
        return value
    if name in ("optimizer", "model"):
        if not isinstance(value, str):
            raise _fail(path, key, f"expected a name (string), got {value!r}")
        return value
    raise _fail(path, key, "not a cell field")  # pragma: no cover - keys are checked before


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
    raise SuiteError(f"{name_or_path}: neither a file nor a shipped suite{_did_you_mean(name_or_path, shipped)}"
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
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read ({exc.strerror})") from None


def load_suite(name_or_path: str | Path | None = None, *, check_names: bool = True) -> Suite:
    """Load, validate (pure stage) and expand a suite. Raises SuiteError with one line on any mistake.

    check_names=False skips the checks that need the model presets and the optimizer registry (they import
    torch, seconds on a busy machine); call `check_names_and_models(suite)` before running anything. A resume
    with nothing left to run uses this: every cell already ran, so its names were valid.
    """
    path = resolve_suite_path(name_or_path)
    raw = read_toml(path)
    _check_keys(path, "", raw, TOP_KEYS)
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
        raise _fail(path, "name", f"expected a simple name (letters, digits, - _ .), got {name!r}")
    kind = raw.get("kind", "train")
    if kind not in KINDS:
        raise _fail(path, "kind", f"unknown kind {kind!r}{_did_you_mean(kind, KINDS)} (known: {', '.join(KINDS)})")
    description = str(raw.get("description", ""))
    if KIND_TABLES[kind] is not None:
        return _load_table_suite(path, raw, name, description, kind)
    for other in filter(None, KIND_TABLES.values()):
        if other in raw:
            raise _fail(path, other, f"only allowed in a suite with kind = \"{other}\"")
    suite = _load_train_suite(path, raw, name, description)
    if check_names:
        check_names_and_models(suite)
    return suite


def check_names_and_models(suite: Suite) -> None:
    """Optimizer and model names, and the checks that need the model preset (imports torch)."""
    _check_names(suite.path, suite.cells, suite.optimizer_tables)
    _check_cells(suite.path, suite.cells)


def _load_table_suite(path: Path, raw: dict, name: str, description: str, kind: str) -> Suite:
    """A suite of a kind that holds one table named after the kind (`[kernels]`), validated by its kind."""
    table_key = KIND_TABLES[kind]
    extra = set(raw) - {"name", "description", "kind", table_key}
    if extra:
        key = sorted(extra)[0]
        raise _fail(path, key, f"not allowed in a kind = \"{kind}\" suite (only [{table_key}])")
    table = raw.get(table_key)
    if not isinstance(table, dict):
        raise _fail(path, table_key, f"a kind = \"{kind}\" suite needs a [{table_key}] table")
    return Suite(name, path, description, kind, (), (), kernels=table if kind == "kernels" else None,
                 tables={table_key: table})


def _table(path: Path, raw: dict, key: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise _fail(path, key, f"expected a table [{key}]")
    return value


def _load_train_suite(path: Path, raw: dict, name: str, description: str) -> Suite:
    defaults = _table(path, raw, "defaults")
    matrix = _table(path, raw, "matrix")
    opt_tables = _table(path, raw, "optimizers")
    data = _load_data(path, _table(path, raw, "data"))
    _check_keys(path, "defaults.", defaults, SETTABLE)
    defaults = {k: _check_value(path, f"defaults.{k}", v) for k, v in defaults.items()}
    axes = _load_matrix(path, matrix)
    for opt, table in opt_tables.items():
        if not isinstance(table, dict):
            raise _fail(path, f"optimizers.{opt}", "expected a table of hyperparameters")
    for key in ("optimizer", "model"):
        if key not in defaults and key not in axes:
            raise _fail(path, key, "not set: give it in [defaults] or as a [matrix] axis")
    seeds = axes.pop("seed", [defaults.pop("seed", 0)])
    defaults.pop("seed", None)
    if len(set(seeds)) != len(seeds):
        raise _fail(path, "matrix.seed", "repeated seeds")
    # dict.fromkeys: the 1-rank cells of a parallelism axis coincide (one rank has no parallelism)
    cells = tuple(dict.fromkeys(_expand(path, defaults, axes, opt_tables, data)))
    baseline = _load_baseline(path, raw, cells)
    return Suite(name, path, description, "train", cells, tuple(seeds), optimizer_tables=opt_tables,
                 baseline=baseline)


def _load_baseline(path: Path, raw: dict, cells: tuple[Cell, ...]) -> str:
    """The suite's baseline optimizer: given, it must be one the suite runs; default adamw (if it runs)."""
    names = sorted({c.optimizer for c in cells})
    if "baseline" not in raw:
        return DEFAULT_BASELINE
    value = raw["baseline"]
    if not isinstance(value, str) or value not in names:
        raise _fail(path, "baseline", f"{value!r} is not an optimizer this suite runs{_did_you_mean(value, names)}"
                    f" (runs: {', '.join(names)})")
    return value


def _load_data(path: Path, table: dict) -> DataSpec:
    _check_keys(path, "data.", table, DATA_FIELDS)
    source = table.get("source", "embedded")
    if source not in DATA_SOURCES:
        raise _fail(path, "data.source", f"unknown source {source!r}{_did_you_mean(source, DATA_SOURCES)}"
                    f" (known: {', '.join(DATA_SOURCES)})")
    for key in ("path", "tokenizer", "text_field"):
        if key in table and not isinstance(table[key], str):
            raise _fail(path, f"data.{key}", f"expected a string, got {table[key]!r}")
    for key, low, high in (("vocab_size", 260, 1 << 20), ("val_percent", 1, 50), ("shuffle_seed", 0, 1 << 31)):
        if key in table and (not _is_int(table[key]) or not low <= table[key] <= high):
            raise _fail(path, f"data.{key}", f"expected an integer in [{low}, {high}], got {table[key]!r}")
    values = dict(table)
    if source == "file":
        if "path" not in table:
            raise _fail(path, "data.path", "source = \"file\" needs a path (.txt or .jsonl)")
        file = (path.parent / table["path"]).resolve()  # relative to the suite file
        if not file.is_file():
            raise _fail(path, "data.path", f"no such file {file}")
        values["path"] = str(file)
    elif "path" in table:
        raise _fail(path, "data.path", f"only used with source = \"file\" (source is {source!r})")
    tok = values.get("tokenizer")
    if tok and (tok.endswith(".json") or Path(tok).exists()):
        tok_path = (path.parent / tok).resolve()
        if not tok_path.is_file():
            raise _fail(path, "data.tokenizer", f"no such tokenizer file {tok_path}")
        values["tokenizer"] = str(tok_path)
    if source == "c4" and not tok:
        values["tokenizer"] = "t5-base"  # the GaLore protocol's tokenizer
    if values.get("tokenizer") and "vocab_size" in table:
        raise _fail(path, "data.vocab_size", "only used when a BPE is trained (no tokenizer given)")
    return DataSpec(**values)


def _load_matrix(path: Path, matrix: dict) -> dict[str, list]:
    axes: dict[str, list] = {}
    for key, values in matrix.items():
        is_hparam = key.startswith("hparams.") and len(key) > len("hparams.")
        if not is_hparam and key not in SETTABLE:
            allowed = sorted(SETTABLE) + ["hparams.<name>"]
            raise _fail(path, f"matrix.{key}", f"unknown axis{_did_you_mean(key, SETTABLE)} (allowed: {', '.join(allowed)})")
        if not isinstance(values, list) or not values:
            raise _fail(path, f"matrix.{key}", f"an axis is a non-empty list, got {values!r}")
        if not is_hparam:
            values = [_check_value(path, f"matrix.{key}", v) for v in values]
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise _fail(path, f"matrix.{key}", "repeated values")
        axes[key] = values
    return axes


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
            raise _fail(path, "tokens_per_step", f"{tokens_per_step} is not a multiple of world_size * batch_size"
                        f" * seq_len = {micro}")
        values["grad_accum"] = tokens_per_step // micro
    cell = Cell(**values, hparams=_freeze_hparams(hparams), data=data)
    if cell.eval_every_tokens == 0:  # about 10 eval points, on step boundaries
        every = max(1, cell.steps // 10) * cell.tokens_per_step
        cell = dataclasses.replace(cell, eval_every_tokens=every)
    return cell


def _freeze_hparams(hparams: dict) -> tuple:
    return tuple(sorted((k, _freeze(v)) for k, v in hparams.items()))


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return v


def _thaw(v: Any) -> Any:
    return list(_thaw(x) for x in v) if isinstance(v, tuple) else v


def _check_names(path: Path, cells: tuple[Cell, ...], opt_tables: dict) -> None:
    """Model presets and optimizer names (imports swanbench.models and optimizers: after the key checks)."""
    from swanbench.models import PRESETS

    for cell in cells:
        if cell.model not in PRESETS:
            raise _fail(path, "model", f"unknown model {cell.model!r}{_did_you_mean(cell.model, PRESETS)}"
                        f" (see `swanbench list models`)")
    known = available_optimizers()
    names = {c.optimizer for c in cells} | set(opt_tables)
    for opt in sorted(names):
        if opt not in known:
            key = f"optimizers.{opt}" if opt in opt_tables else "optimizer"
            raise _fail(path, key, f"unknown optimizer {opt!r}{_did_you_mean(opt, known)} (see `swanbench list optimizers`)")


def available_optimizers() -> list[str]:
    import optimizers

    return list(optimizers.available())


def _check_cells(path: Path, cells: tuple[Cell, ...]) -> None:
    """Impossible values that depend on several fields or on the model preset."""
    from swanbench.models import PRESETS

    for cell in cells:
        preset = PRESETS[cell.model]
        if cell.seq_len > preset.max_positions:
            raise _fail(path, "seq_len", f"{cell.seq_len} > {preset.max_positions}, the max positions of model {cell.model!r}")
        if cell.warmup_steps >= cell.steps:
            raise _fail(path, "warmup_steps", f"{cell.warmup_steps} warm-up steps leave no timed step of {cell.steps}")
        _check_ranks(path, cell)
        vocab = data_vocab_size(cell.data, preset.vocab)
        if vocab is not None and vocab > preset.vocab:
            raise _fail(path, "data.vocab_size", f"tokenizer vocab {vocab} > vocab {preset.vocab} of model {cell.model!r}")
        if cell.eval_tokens < cell.seq_len:
            raise _fail(path, "eval_tokens", f"{cell.eval_tokens} < seq_len {cell.seq_len}: not one eval sequence")


def _check_ranks(path: Path, cell: Cell) -> None:
    """world_size > 1: a parallelism, one GPU per rank (device cuda/auto, not cuda:N), few gloo ranks on CPU."""
    if cell.world_size == 1:
        return
    if cell.parallelism is None:
        raise _fail(path, "parallelism", f"world_size = {cell.world_size} needs parallelism = \"ddp\" or \"fsdp\"")
    if cell.device.startswith("cuda:"):
        raise _fail(path, "device", f"{cell.device!r} with world_size = {cell.world_size}: ranks use one GPU per rank "
                    f"(cuda:0 .. cuda:{cell.world_size - 1}); use device = \"cuda\" or \"auto\"")
    if cell.device == "cpu" and cell.world_size > MAX_CPU_RANKS:
        raise _fail(path, "world_size", f"{cell.world_size} gloo ranks on one CPU machine (at most {MAX_CPU_RANKS})")


def ranks_problem(cell: Cell) -> str | None:
    """Why a multi-rank cell cannot start here (not enough visible GPUs), or None."""
    if cell.world_size == 1 or not resolve_device(cell.device).startswith("cuda"):
        return None
    import torch

    visible = torch.cuda.device_count()
    if cell.world_size > visible:
        return f"world_size = {cell.world_size} needs {cell.world_size} GPUs (one per rank), {visible} visible"
    return None


def data_vocab_size(spec: DataSpec, model_vocab: int) -> int | None:
    """The tokenizer's vocabulary size where it is known without a network (None: checked at run time)."""
    if spec.tokenizer is None:
        return spec.vocab_size if spec.vocab_size is not None else default_bpe_vocab(model_vocab)
    if spec.tokenizer.endswith(".json") and Path(spec.tokenizer).is_file():
        blob = json.loads(Path(spec.tokenizer).read_text())
        return len(blob.get("model", {}).get("vocab", {})) + len(blob.get("added_tokens", []))
    return None


def default_bpe_vocab(model_vocab: int) -> int:
    """A trained BPE defaults to the model's vocab, capped at 8192 (enough for the small embedded corpus)."""
    return min(model_vocab, 8192)


# ---------------------------------------------------------------- runtime stage

def check_runtime(suite: Suite, *, check_devices: bool = True) -> None:
    """Build each distinct (optimizer, hparams) once on a tiny model; check devices and dtypes exist."""
    import optimizers

    seen = set()
    for cell in suite.cells:
        key = (cell.optimizer, cell.hparams)
        if key in seen:
            continue
        seen.add(key)
        model = _tiny_model()
        try:
            optimizers.build(cell.optimizer, model, **cell.hparams_dict())
        except (ValueError, TypeError) as exc:
            raise _fail(suite.path, f"optimizers.{cell.optimizer}", _one_line(exc)) from None
    if check_devices:
        for device, dtype in sorted({(c.device, c.dtype) for c in suite.cells}):
            problem = device_problem(device, dtype)
            if problem:
                raise _fail(suite.path, "device", problem)
        for cell in suite.cells:
            problem = ranks_problem(cell)
            if problem:
                raise _fail(suite.path, "world_size", problem)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _tiny_model():
    """A 1-layer LLaMA with the same parameter names as the presets, so name-based routing is exercised."""
    from transformers import LlamaForCausalLM

    from swanbench.models import ModelPreset, llama_config

    return LlamaForCausalLM(llama_config(ModelPreset("tiny", 16, 32, 2, 1, 64, 64)))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def device_problem(device: str, dtype: str) -> str | None:
    """Why (device, dtype) cannot run here, or None."""
    import torch

    resolved = resolve_device(device)
    if resolved.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"{device!r} requested but no CUDA device is visible"
        index = int(resolved.split(":")[1]) if ":" in resolved else 0
        if index >= torch.cuda.device_count():
            return f"{device!r} requested but only {torch.cuda.device_count()} CUDA device(s)"
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            return f"bfloat16 is not supported on {torch.cuda.get_device_name(index)}"
        return None
    try:  # a CPU that cannot do a dtype fails on a tiny matmul
        x = torch.ones(4, 4, dtype=getattr(torch, dtype))
        (x @ x).sum().item()
    except (RuntimeError, TypeError) as exc:
        return f"{dtype} matmul is not supported on this CPU ({_one_line(exc)})"
    return None
