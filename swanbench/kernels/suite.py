"""A kind = "kernels" suite: the validated [kernels] table (`KernelSuite`) and its skip rules.

Every mistake is one `SuiteError` line in the harness's vocabulary (`swanbench.suite.fail`):
`file: kernels.key: problem`, with a did-you-mean where a close name exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from swanbench import costmodel as cm
from swanbench.hints import did_you_mean
from swanbench.kernels.operators import METHODS, Method, method_keys, method_names
from swanbench.suite import SuiteError, check_keys, fail, read_toml

DTYPES = ("float32", "bfloat16", "float16")
COMPILE_MODES = ("eager", "compiled")
SHAPE_ROLES = ("qkvo", "gate_up", "down")
SKIP_FIELDS = ("operator", "method", "model", "shape", "dtype", "compile", "batch")
KERNEL_KEYS = {
    "operators", "models", "shapes", "square", "dtypes", "compile", "compile_models", "batch", "repeats",
    "min_repeats", "warmup", "max_case_seconds", "device", "seed", "reference", "matmul_sizes", "copy_mib",
    "summary_models", "summary_tokens", "skip", "max_total_seconds",
}
TOP_KEYS = {"name", "description", "kind", "kernels"}


@dataclass(frozen=True)
class SkipRule:
    """Combinations not run, with the reason written into their rows. An absent field matches anything."""

    reason: str
    match: tuple[tuple[str, tuple], ...]

    def matches(self, case: dict) -> bool:
        return all(str(case[k]) in values for k, values in self.match)


@dataclass(frozen=True)
class KernelSuite:
    name: str
    path: Path | None
    description: str
    methods: tuple[Method, ...]
    models: tuple[str, ...]
    roles: tuple[str, ...]
    square: tuple[int, ...]
    dtypes: tuple[str, ...]
    compile: tuple[str, ...]
    compile_models: tuple[str, ...]
    batch: tuple[int, ...]
    repeats: int = 7
    min_repeats: int = 3
    warmup: int = 1
    max_case_seconds: float = 20.0
    device: str = "auto"
    seed: int = 0
    reference: bool = True
    matmul_sizes: tuple[int, ...] = (1024, 2048)
    copy_mib: int = 256
    summary_models: tuple[str, ...] = ()
    summary_tokens: int = cm.PAPER_TOKENS_PER_STEP
    skip: tuple[SkipRule, ...] = ()
    max_total_seconds: float | None = None


def _hint(word: object, choices: Iterable[str]) -> str:
    return did_you_mean(word, choices, cutoff=0.5)  # operator and method names are short: a looser match


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Table:
    """The [kernels] table of one file: typed reads whose mistakes name `kernels.<key>`."""

    path: Path | None
    table: dict

    def fail(self, key: str, problem: str) -> SuiteError:
        return fail(self.path, f"kernels.{key}", problem)

    def strings(self, key: str, default, choices: Iterable[str] | None = None) -> tuple[str, ...]:
        value = self.table.get(key, default)
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"expected a list of strings, got {value!r}")
        if choices is not None:
            self._check_choices(key, value, list(choices))
        return tuple(dict.fromkeys(value))

    def _check_choices(self, key: str, values: list[str], choices: list[str]) -> None:
        for v in values:
            if v not in choices:
                raise self.fail(key, f"unknown value {v!r}{_hint(v, choices)} (known: {', '.join(choices)})")

    def ints(self, key: str, default, low: int = 1) -> tuple[int, ...]:
        value = self.table.get(key, default)
        value = [value] if _is_int(value) else value
        if not isinstance(value, list) or not all(_is_int(v) for v in value):
            raise self.fail(key, f"expected a list of integers, got {value!r}")
        for v in value:
            if v < low:
                raise self.fail(key, f"expected integers >= {low}, got {v}")
        return tuple(dict.fromkeys(value))

    def integer(self, key: str, default: int, low: int) -> int:
        value = self.table.get(key, default)
        if not _is_int(value) or value < low:
            raise self.fail(key, f"expected an integer >= {low}, got {value!r}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.table.get(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise self.fail(key, f"expected a positive number, got {value!r}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value

    def device(self) -> str:
        value = self.table.get("device", "auto")
        if not isinstance(value, str) or not (value in ("auto", "cpu", "cuda") or value.startswith("cuda:")):
            raise self.fail("device", f"expected auto, cpu, cuda or cuda:N, got {value!r}")
        return value


def _select_methods(t: _Table) -> tuple[Method, ...]:
    """"operator" selects all its methods, "operator:method" one of them."""
    selected: list[Method] = []
    for entry in t.strings("operators", list(METHODS)):
        op, _, method = entry.partition(":")
        if op not in METHODS:
            raise t.fail("operators", f"unknown operator {op!r}{_hint(op, METHODS)} (known: {', '.join(METHODS)})")
        if method and method not in METHODS[op]:
            raise t.fail("operators", f"unknown method {entry!r}{_hint(entry, method_keys())} "
                                      f"(known for {op}: {', '.join(METHODS[op])})")
        selected.extend(METHODS[op].values() if not method else [METHODS[op][method]])
    if not selected:
        raise t.fail("operators", "needs at least one operator")
    return tuple(dict.fromkeys(selected))


def _skip_choices(models: Iterable[str]) -> dict[str, list[str] | None]:
    """The values each skip field accepts (None: any; batch sizes are not enumerable)."""
    return {
        "operator": list(METHODS), "method": method_names(), "model": list(models) + ["square"],
        "shape": list(SHAPE_ROLES) + ["square"], "dtype": list(DTYPES), "compile": list(COMPILE_MODES),
        "batch": None,
    }


def _skip_rule(t: _Table, i: int, rule: dict, choices: dict) -> SkipRule:
    key = f"skip[{i}]"
    check_keys(t.path, f"kernels.{key}.", rule, (*SKIP_FIELDS, "reason"))
    reason = rule.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise t.fail(f"{key}.reason", "every skip rule needs a reason (it is written into the skipped rows)")
    match = []
    for k in (k for k in SKIP_FIELDS if k in rule):
        values = rule[k] if isinstance(rule[k], list) else [rule[k]]
        for val in values:
            if choices[k] is not None and str(val) not in choices[k]:
                raise t.fail(f"{key}.{k}", f"unknown value {val!r}{_hint(val, choices[k])}")
        match.append((k, tuple(str(x) for x in values)))
    return SkipRule(reason.strip(), tuple(match))


def _skip_rules(t: _Table, models: Iterable[str]) -> tuple[SkipRule, ...]:
    raw = t.table.get("skip", [])
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise t.fail("skip", "expected an array of tables [[kernels.skip]]")
    choices = _skip_choices(models)
    return tuple(_skip_rule(t, i, rule, choices) for i, rule in enumerate(raw))


def _kernels_table(table: dict, path: Path | None) -> tuple[dict, dict]:
    """(the whole document, its [kernels] table); `table` may be either (the CLI passes the table alone)."""
    outer = table if "kernels" in table or "kind" in table else {"kernels": table}
    for key in outer:
        if key not in TOP_KEYS:
            raise fail(path, key, f"not allowed in a kind = \"kernels\" suite{_hint(key, TOP_KEYS)} "
                                  f"(allowed: name, description, kind, [kernels])")
    kernels = outer.get("kernels")
    if not isinstance(kernels, dict):
        raise fail(path, "kernels", "a kind = \"kernels\" suite needs a [kernels] table")
    check_keys(path, "kernels.", kernels, KERNEL_KEYS)
    return outer, kernels


def load_kernel_suite(table: dict, path: Path | None) -> KernelSuite:
    """Validate a kind = "kernels" suite (the whole TOML document, or just its [kernels] table).

    Raises SuiteError (a ValueError) with one line naming the file, the key and a did-you-mean.
    """
    from swanbench.models import PRESETS

    outer, kernels = _kernels_table(table, path)
    t = _Table(path, kernels)
    models = t.strings("models", ["60m", "130m", "350m", "1b"], PRESETS)
    return KernelSuite(
        name=str(outer.get("name", path.stem if path else "kernels")), path=path,
        description=str(outer.get("description", "")), methods=_select_methods(t), models=models,
        roles=t.strings("shapes", list(SHAPE_ROLES), SHAPE_ROLES), square=t.ints("square", [], low=1),
        dtypes=t.strings("dtypes", ["float32"], DTYPES), compile=t.strings("compile", ["eager"], COMPILE_MODES),
        compile_models=t.strings("compile_models", list(models) + ["square"], list(PRESETS) + ["square"]),
        batch=t.ints("batch", [1]), repeats=t.integer("repeats", 7, 1), min_repeats=t.integer("min_repeats", 3, 1),
        warmup=t.integer("warmup", 1, 0), max_case_seconds=t.number("max_case_seconds", 20.0), device=t.device(),
        seed=t.integer("seed", 0, 0), reference=t.flag("reference", True),
        matmul_sizes=t.ints("matmul_sizes", [1024, 2048]), copy_mib=t.integer("copy_mib", 256, 1),
        summary_models=t.strings("summary_models", list(models), PRESETS),
        summary_tokens=t.integer("summary_tokens", cm.PAPER_TOKENS_PER_STEP, 1), skip=_skip_rules(t, PRESETS),
        max_total_seconds=t.number("max_total_seconds", 1.0) if "max_total_seconds" in kernels else None,
    )


def load_kernel_suite_file(path: Path) -> KernelSuite:
    """Read and validate a kernels TOML file directly (the suite loader does the same via load_kernel_suite)."""
    path = Path(path)
    raw = read_toml(path)
    if raw.get("kind") != "kernels":
        raise fail(path, "kind", "expected \"kernels\" for an operator benchmark suite")
    return load_kernel_suite(raw, path)
