"""What a suite is: its cells, runs and data spec (frozen, hashable), the field rules, the one-line errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swanbench.hints import did_you_mean

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - Python 3.10
    pass


SUITES_DIR = Path(__file__).resolve().parent.parent.parent / "suites"
# Suite kinds and the one table each kind other than "train" holds (validated by that kind's own loader,
# `swanbench.kinds`); "train" suites are validated here.
KIND_TABLES = {"train": None, "kernels": "kernels"}
KINDS = tuple(KIND_TABLES)
TOP_KEYS = {"name", "description", "kind", "baseline", "defaults", "optimizers", "data", "matrix", "tune",
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
# The largest integer a cell field may hold (int64 max): counts and sizes beyond it overflow numpy and torch.
MAX_INT = 2**63 - 1
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
    overrides: tuple[str, ...] = field(default=(), compare=False)  # `--set ...`/`--only ...` from the command line
    tune: Any = field(default=None, compare=False)  # a `swanbench.suite.tune.TuneSpec` when the suite has [tune]

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




def check_keys(path: Path | str | None, where: str, table: dict, allowed) -> None:
    """Reject the first key of `table` not in `allowed`, with a did-you-mean (`where` prefixes the key)."""
    for key in table:
        if key not in allowed:
            raise fail(path, f"{where}{key}",
                       f"unknown key{did_you_mean(key, allowed)} (allowed: {', '.join(sorted(allowed))})")




def parse_size(value: Any) -> int:
    """Bytes from an int or a string like "2GiB", "512MB" (GiB = 1024^3)."""
    if isinstance(value, bool):
        raise ValueError("expected bytes (int) or a size like '2GiB'")
    if isinstance(value, int):
        return value
    m = SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"cannot read size {value!r}; use bytes or e.g. '2GiB', '512MB'")
    size = float(m.group(1)) * SIZE_UNITS[m.group(2)]
    if not math.isfinite(size):
        raise ValueError(f"size {value!r} is too large")
    return int(size)


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
            raise fail(path, key, f"expected an integer, got {value!r}")
        if value < ints_min[name]:
            raise fail(path, key, f"must be >= {ints_min[name]}, got {value}")
        if value > MAX_INT:  # beyond what numpy and torch index with: an OverflowError deep in a run
            raise fail(path, key, f"must be <= {MAX_INT}, got {value}")
        return value
    if name in ("lr_warmup", "lr_min_ratio"):
        high = 1 if name == "lr_min_ratio" else 0.999  # a warm-up over all steps never reaches the peak lr
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= high:
            raise fail(path, key, f"expected a number in [0, {high}], got {value!r}")
        return float(value)
    if name == "timeout_s":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
            raise fail(path, key, f"expected seconds > 0, got {value!r}")
        return float(value)
    if name == "dtype":
        if value not in DTYPES:
            raise fail(path, key, f"unknown dtype {value!r}{did_you_mean(value, DTYPES)} (known: {', '.join(DTYPES)})")
        return value
    if name == "device":
        if not isinstance(value, str) or not DEVICE_RE.match(value):
            raise fail(path, key, f"unknown device {value!r}; use auto, cpu, cuda or cuda:N")
        return value
    if name == "memory_budget":
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise fail(path, key, str(exc)) from None
        if not 0 < size <= MAX_INT:
            raise fail(path, key, f"must be > 0 and <= {MAX_INT} bytes, got {value!r}")
        return size
    if name == "memory_snapshot":
        if not isinstance(value, bool):
            raise fail(path, key, f"expected true or false, got {value!r}")
        return value
    if name == "parallelism":
        if value not in PARALLELISMS:
            raise fail(path, key, f"unknown parallelism {value!r}{did_you_mean(value, PARALLELISMS)}"
                        f" (known: {', '.join(PARALLELISMS)})")
        return value
    if name in ("optimizer", "model"):
        if not isinstance(value, str):
            raise fail(path, key, f"expected a name (string), got {value!r}")
        return value
    raise fail(path, key, "not a cell field")  # pragma: no cover - keys are checked before



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
