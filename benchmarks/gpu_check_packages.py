"""The GPU check's package check: every package the real run imports must be on the GPU machine (its
preinstalled list), a wheel in `.whl/`, or optional and imported only inside the feature that needs it;
and the probe, which runs the real code paths with every missing package hidden from Python.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
WHEEL_DIR = ROOT / ".whl"      # optional wheels (CPython 3.12, manylinux x86-64) for packages the machine lacks
# What the GPU machine has (Python 3.12, torch 2.11 CUDA, no network), as distribution names.
GPU_PYTHON = (3, 12)
PREINSTALLED = ("torch", "transformers", "tokenizers", "pandas", "matplotlib", "rich", "typer", "nvidia-ml-py",
                "pytest", "scipy", "numpy")
# Import names whose distribution is named otherwise.
DISTRIBUTION_OF = {"pynvml": "nvidia-ml-py", "lion_pytorch": "lion-pytorch", "yaml": "pyyaml", "PIL": "pillow",
                   "sklearn": "scikit-learn", "galore_torch": "galore-torch", "apollo_torch": "apollo-torch",
                   "adam_mini": "adam-mini"}
# Optional packages: imported only inside the feature that needs them (never at module level).
OPTIONAL = {"gensim": "rebuilding the embedded corpus", "submitit": "--executor local | slurm",
            "lion-pytorch": "optimizer lion", "datasets": "data source c4", "sentencepiece": "c4's T5 tokenizer",
            "galore-torch": "optimizer galore", "apollo-torch": "optimizers apollo, apollo-mini",
            "adam-mini": "optimizer adam-mini", "tensorboard": "swanbench export --to tensorboard",
            "accelerate": "the Hugging Face Trainer callback"}
FIRST_PARTY = {"swanbench", "optimizers", "suites", "benchmarks", "conftest"}
SCANNED = ("swanbench", "optimizers", "tests", "benchmarks/gpu_check.py", "benchmarks/gpu_check_model.py",
           "benchmarks/gpu_check_packages.py", "benchmarks/gpu_check_results.py")

# --------------------------------------------------------------------------------------------------
# Packages
# --------------------------------------------------------------------------------------------------

def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_distributions(folder: Path = WHEEL_DIR) -> dict[str, Path]:
    """{distribution: wheel} of the wheels the run would install ("name-version-...whl")."""
    return {normalize(p.name.split("-")[0]): p for p in sorted(Path(folder).glob("*.whl"))}


@dataclass(frozen=True)
class ImportSite:
    module: str      # top-level module name
    path: str
    line: int
    deferred: bool   # inside a function, or guarded by `except ImportError`, or by a Python version test


class _ImportFinder(ast.NodeVisitor):
    def __init__(self, path: str):
        self.path, self.depth, self.sites = path, 0, []

    def _deferred(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _deferred

    def visit_Try(self, node: ast.Try) -> None:
        guarded = any(_names_import_error(h.type) for h in node.handlers)
        self.depth += guarded
        for child in node.body:
            self.visit(child)
        self.depth -= guarded
        for child in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(child)

    def visit_If(self, node: ast.If) -> None:
        gated = "version_info" in ast.unparse(node.test)
        self.depth += gated
        self.generic_visit(node)
        self.depth -= gated

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.sites.append(ImportSite(alias.name.split(".")[0], self.path, node.lineno, self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.sites.append(ImportSite(node.module.split(".")[0], self.path, node.lineno, self.depth > 0))


def _names_import_error(node: ast.AST | None) -> bool:
    return node is not None and any(n in ast.unparse(node) for n in ("ImportError", "ModuleNotFoundError"))


def third_party_imports(root: Path = ROOT, scanned: Iterable[str] = SCANNED) -> list[ImportSite]:
    """Every import of a module outside the standard library and this repository, in the files the run uses."""
    files: list[Path] = []
    for entry in scanned:
        path = root / entry
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else [])
    local = FIRST_PARTY | {p.stem for p in files}
    sites = []
    for path in files:
        finder = _ImportFinder(str(path.relative_to(root)))
        finder.visit(ast.parse(path.read_text(), str(path)))
        sites.extend(s for s in finder.sites if s.module not in sys.stdlib_module_names and s.module not in local)
    return sites


def declared_dependencies(root: Path = ROOT) -> list[str]:
    """pyproject's hard dependencies the GPU machine's Python needs (markers on other versions dropped)."""
    import tomllib

    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    return [normalize(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in deps if _marker_holds(d)]


def _marker_holds(requirement: str, python: tuple[int, int] = GPU_PYTHON) -> bool:
    """Evaluate a `python_version <op> 'X.Y'` marker for the GPU machine's Python (other markers: True)."""
    m = re.search(r";\s*python_version\s*(<=|>=|<|>|==|!=)\s*['\"](\d+)\.(\d+)['\"]", requirement)
    if not m:
        return True
    ops: dict[str, Callable[[Any, Any], bool]] = {
        "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
        "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
    return ops[m.group(1)](python, (int(m.group(2)), int(m.group(3))))


def distribution_of(module: str) -> str:
    return normalize(DISTRIBUTION_OF.get(module, module))


def package_problems(root: Path = ROOT, wheels: Iterable[str] = ()) -> tuple[list[str], set[str]]:
    """(problems, modules to hide in the probe): every package the real run imports must be preinstalled on
    the GPU machine or a wheel in .whl/, or optional and imported only inside the feature that needs it."""
    available = {normalize(n) for n in PREINSTALLED} | {normalize(w) for w in wheels}
    optional = {normalize(n) for n in OPTIONAL}
    version_gated = {normalize(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in _all_dependencies(root)
                     if not _marker_holds(d)}
    problems = [f"pyproject.toml: dependency {d} is neither preinstalled on the GPU machine nor a wheel in .whl/"
                for d in declared_dependencies(root) if d not in available]
    hidden: set[str] = set()
    for site in third_party_imports(root):
        dist = distribution_of(site.module)
        if dist in available:
            continue
        if dist in version_gated and site.deferred:
            continue  # e.g. tomli, imported only on Python < 3.11
        if dist in optional and site.deferred:
            hidden.add(site.module)
            continue
        where = "at module level" if not site.deferred else "and is not a declared optional package"
        problems.append(f"{site.path}:{site.line}: imports {site.module} {where}; {dist} is neither "
                        f"preinstalled on the GPU machine nor a wheel in .whl/")
    return problems, hidden


def _all_dependencies(root: Path) -> list[str]:
    import tomllib

    return tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]


# --------------------------------------------------------------------------------------------------
# The probe: the real code paths with the missing packages hidden (a subprocess of the dry run)
# --------------------------------------------------------------------------------------------------

class _Hidden:
    """The import system's finders, minus `names`: importing one fails and `importlib.util.find_spec` gives
    None, exactly as if the package were not installed (`hide` puts it in place of sys.meta_path)."""

    def __init__(self, names: Iterable[str], finders: list):
        self.names, self.finders = set(names), finders
        self.distributions = {distribution_of(n) for n in self.names}

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            return None
        for finder in self.finders:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                return spec
        return None

    def find_distributions(self, *args, **kwargs):
        """Package metadata (importlib.metadata) of everything but the hidden packages."""
        for finder in self.finders:
            if hasattr(finder, "find_distributions"):
                for dist in finder.find_distributions(*args, **kwargs):
                    if normalize(dist.metadata["Name"] or "") not in self.distributions:
                        yield dist

    def invalidate_caches(self) -> None:
        for finder in self.finders:
            if hasattr(finder, "invalidate_caches"):
                finder.invalidate_caches()


def hide(names: Iterable[str]) -> None:
    """Make `names` (top-level modules) uninstalled for this process."""
    names = set(names)
    sys.meta_path[:] = [_Hidden(names, list(sys.meta_path))]
    for name in [m for m in sys.modules if m.split(".")[0] in names]:
        del sys.modules[name]


def probe(hidden: list[str], out_root: str, suites: Iterable[str]) -> int:
    """Import every module of swanbench and optimizers, read the embedded corpus and validate both suites
    through the CLI (`swanbench run SUITE --dry-run`) with `hidden` packages missing; print one JSON line."""
    import importlib
    import pkgutil

    hide(hidden)
    report: dict[str, Any] = {"hidden": sorted(hidden), "problems": [], "validated": [], "skipped_methods": []}
    for package in ("optimizers", "swanbench"):
        pkg = importlib.import_module(package)
        for info in pkgutil.walk_packages(pkg.__path__, package + "."):
            if info.name.endswith("__main__"):
                continue
            try:
                importlib.import_module(info.name)
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                report["problems"].append(f"import {info.name}: {type(exc).__name__}: {exc}")
    from swanbench.data import embedded_documents

    report["embedded_documents"] = len(embedded_documents())
    from typer.testing import CliRunner

    from swanbench.cli import app

    for suite in suites:
        result = CliRunner().invoke(app, ["run", str(ROOT / suite), "--dry-run", "--out",
                                          str(Path(out_root) / Path(suite).stem)])
        if result.exit_code == 0:
            report["validated"].append(suite)
            report["skipped_methods"] += _kernel_methods_skipped(ROOT / suite, report["problems"])
        else:
            error = f"{type(result.exception).__name__}: {result.exception}" if result.exception else ""
            report["problems"].append(f"swanbench run {suite} --dry-run: exit {result.exit_code}: "
                                      f"{' '.join(str(result.output).split())[-300:]} {error}".strip())
    print(json.dumps(report))
    return 0


def _kernel_methods_skipped(path: Path, problems: list[str]) -> list[str]:
    """A kernels suite's methods whose operator lacks one of their keywords (their rows will be skipped);
    a method whose operator is missing altogether is a problem (the suite would stop before timing)."""
    from swanbench.kernels import load_kernel_suite_file, missing_keywords, resolve_callable
    from swanbench.suite import load_suite

    if load_suite(path, check_names=False).kind != "kernels":
        return []
    skipped = []
    for method in load_kernel_suite_file(path).methods:
        try:
            reason = missing_keywords(method)
            if reason is None:
                resolve_callable(method)
        except Exception as exc:  # noqa: BLE001 - SuiteError for a missing operator, or anything else
            problems.append(f"{path.name}: {method.key}: {exc}")
            continue
        if reason:
            skipped.append(method.key)
    return skipped


