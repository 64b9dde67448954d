"""What a kernel suite runs: its distinct matrix shapes, the cases over them, and their order.

A case is one (shape, dtype, method, compile mode, batch size); it becomes one row of kernels.csv.
"""

from __future__ import annotations

from dataclasses import dataclass

from swanbench.kernels.operators import Method
from swanbench.kernels.suite import KernelSuite


@dataclass(frozen=True)
class Shape:
    """A distinct matrix shape; `role` and `models` say where it occurs (first role wins on duplicates)."""

    rows: int
    cols: int
    role: str
    models: tuple[str, ...]


@dataclass(frozen=True)
class Case:
    shape: Shape
    dtype: str
    method: Method
    compile: str
    batch: int

    def fields(self) -> dict:
        """The fields skip rules match on (a shape used by several models matches any of them)."""
        return {"operator": self.method.operator, "method": self.method.method, "shape": self.shape.role,
                "dtype": self.dtype, "compile": self.compile, "batch": self.batch}

    def model_names(self) -> tuple[str, ...]:
        return self.shape.models or ("square",)

    @property
    def compute_dtype(self) -> str:
        """The precision the method computes in: its own, or the input's ("input")."""
        return self.method.compute if self.method.compute != "input" else self.dtype

    @property
    def side(self) -> int:
        """The short side s: the size of the s x s products a whitening loop runs."""
        return min(self.shape.rows, self.shape.cols)


def role_shapes(model: str) -> dict[str, tuple[int, int]]:
    """{role: [out, in] shape} of a preset's hidden matrices: q/k/v/o, gate/up and down."""
    from swanbench.models import PRESETS

    p = PRESETS[model]
    return {"qkvo": (p.hidden, p.hidden), "gate_up": (p.intermediate, p.hidden), "down": (p.hidden, p.intermediate)}


def suite_shapes(suite: KernelSuite) -> list[Shape]:
    """Every distinct (rows, cols) of the suite, in model order then the square sweep."""
    found: dict[tuple[int, int], Shape] = {}
    for model in suite.models:
        for role, (r, c) in role_shapes(model).items():
            if role not in suite.roles:
                continue
            old = found.get((r, c))
            found[(r, c)] = Shape(r, c, old.role if old else role, (old.models if old else ()) + (model,))
    for n in suite.square:
        found.setdefault((n, n), Shape(n, n, "square", ()))
    return list(found.values())


def expand_cases(suite: KernelSuite, shapes: list[Shape]) -> list[Case]:
    """Every case over `shapes`; compiled cases only for the shapes of `compile_models`."""
    cases = []
    for shape in shapes:
        compiled_here = bool(set(shape.models or ("square",)) & set(suite.compile_models))
        for dtype in suite.dtypes:
            for method in suite.methods:
                for mode in suite.compile:
                    if mode == "compiled" and not compiled_here:
                        continue
                    cases.extend(Case(shape, dtype, method, mode, b) for b in suite.batch)
    return cases


def skip_reason(suite: KernelSuite, case: Case) -> str | None:
    """The first matching skip rule's reason (rules with a model match any model of a shared shape)."""
    for rule in suite.skip:
        if any(rule.matches({**case.fields(), "model": m}) for m in case.model_names()):
            return rule.reason
    return None


def is_primary(suite: KernelSuite, case: Case) -> bool:
    """A case on the suite's first dtype, first compile mode and first batch size (the core table)."""
    return (case.dtype, case.compile, case.batch) == (suite.dtypes[0], suite.compile[0], suite.batch[0])


def ordered_work(suite: KernelSuite) -> list[tuple[Shape, list[Case]]]:
    """(shape, cases) in run order: the primary cases of every shape first, then the other dtypes, compile
    modes and batch sizes. If max_total_seconds runs out on a loaded machine, the variants are lost first."""
    primary, secondary = [], []
    for shape in suite_shapes(suite):
        cases = expand_cases(suite, [shape])
        primary.append((shape, [c for c in cases if is_primary(suite, c)]))
        secondary.append((shape, [c for c in cases if not is_primary(suite, c)]))
    return [(shape, cases) for shape, cases in primary + secondary if cases]
