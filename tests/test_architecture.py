"""The shape of the code: imports go one way (no cycle, nothing importing a later stage), and modules stay small.

The stages follow the flow of a suite (suite -> launch -> run -> measure -> analyse); every import of a
swanbench module, at the top of a file or inside a function, must point to its own stage or an earlier one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Stages, earliest first; a module is in the stage of its longest matching prefix.
STAGES = (
    ("foundations", ("swanbench", "swanbench.hints", "swanbench.schema", "swanbench.schedule", "swanbench.models",
                     "swanbench.costmodel", "swanbench.env", "swanbench.terminal", "swanbench.userfiles")),
    ("tables and suites", ("swanbench.tables", "swanbench.suite", "swanbench.data", "swanbench.estimate")),
    ("run directory", ("swanbench.rundir",)),
    ("measure", ("swanbench.trackers",)),
    ("run", ("swanbench.run",)),
    ("launch", ("swanbench.launch",)),
    ("analyse", ("swanbench.analysis",)),
    ("suite kinds", ("swanbench.runner", "swanbench.tuning", "swanbench.kernels", "swanbench.fit")),
    ("your own code", ("swanbench.api",)),
    ("command line", ("swanbench.kinds", "swanbench.commands", "swanbench.cli", "swanbench.__main__")),
)
MAX_LINES = 600  # a longer module states why in its docstring ("longer than 600 lines because ...")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def imports(path: Path, name: str, known: set[str] = frozenset()) -> set[str]:
    """Every absolute module an import statement in the file names (top level or inside a function).

    `from package import module` names the module, not the package's __init__ (which Python runs first
    for any submodule, so it is no edge of ours); `from module import name` names the module.
    """
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(known)
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(base)
    return found


def internal_graph(package: str) -> dict[str, set[str]]:
    mods = modules(package)
    graph = {}
    for name, path in mods.items():
        targets = {t for t in imports(path, name, set(mods)) if t in mods and t != name}
        graph[name] = targets
    return graph


def stage_of(name: str) -> int:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(STAGES):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{name} is in no stage: add it to STAGES in {Path(__file__).name}"
    return best


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_in_swanbench_or_optimizers():
    for package in ("swanbench", "optimizers"):
        cycle = find_cycle(internal_graph(package))
        assert cycle is None, " -> ".join(cycle)


def test_no_import_points_to_a_later_stage():
    graph = internal_graph("swanbench")
    # the package __init__ is imported by every submodule for __version__: it must import none of them
    assert graph["swanbench"] == set(), graph["swanbench"]
    upward = [f"{a} ({STAGES[stage_of(a)][0]}) -> {b} ({STAGES[stage_of(b)][0]})"
              for a, targets in graph.items() for b in targets
              if b != "swanbench" and stage_of(b) > stage_of(a)]
    assert not upward, "\n".join(sorted(upward))


def test_optimizers_import_nothing_from_swanbench():
    for name, path in modules("optimizers").items():
        leaked = sorted(t for t in imports(path, name) if t == "swanbench" or t.startswith("swanbench."))
        assert not leaked, f"{name} imports {leaked}"


@pytest.mark.parametrize("package", ["swanbench", "optimizers"])
def test_modules_stay_small_or_say_why(package):
    for name, path in modules(package).items():
        lines = path.read_text().count("\n")
        if lines > MAX_LINES:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert f"longer than {MAX_LINES} lines because" in doc, f"{name}: {lines} lines and no reason given"


def test_every_package_is_installed():
    """pyproject lists packages explicitly: a new folder with an __init__.py must be listed, or a wheel misses it."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for package in ("swanbench", "optimizers"):
        for init in (ROOT / package).rglob("__init__.py"):
            assert module_name(init) in listed, f"{module_name(init)} is missing from pyproject's packages"
