"""Optimizers from outside this package: by import path, by entry point, and from packages with optional parts.

Three ways in, all ending in the registry (`optimizers.registry`), which turns each into an ordinary entry:

- **An import path** `"package.module:Name"` (a suite's `optimizer = ["torch.optim:NAdam"]`): `Name` is a
  `torch.optim.Optimizer` subclass, built as `Name(trainable parameters, **hparams)`, or a factory
  `Name(model, **hparams) -> Optimizer`. The path is only imported (`importlib.import_module`, then
  attribute look-ups), never evaluated. With `hybrid = true` in its hyperparameters a subclass gets the
  hidden matrices and AdamW the rest, as the built-in hybrids do (`HYBRID_KEYS` are swanbench's, the other
  keys go to the class).
- **An entry point** in the group `swanbench.optimizers` of an installed distribution: its name is the
  registry name and it loads to a subclass or factory as above, or to a mapping (`SPEC_KEYS`) that adds
  declarations: `{"factory": ..., "description": "...", "hparams": {defaults}, "hybrid": bool,
  "state": state(shape) -> elements, "workspace": workspace(shape) -> fp32 elements,
  "scalar_state_bytes": int}`. Without `state` and `workspace` the optimizer is "not declared": runs still
  measure its exact state bytes, the estimator says "not declared" instead of a number.
- **A package whose `__init__` imports an optional dependency** the part used here does not need
  (galore-torch and apollo-torch import bitsandbytes for their 8-bit variants): `load_attribute` imports
  the one submodule without running the package's `__init__` when that import fails.

Importing this module installs the registry's hooks (`optimizers/__init__.py` does): names with a colon
resolve here, and the entry points are read on the registry's first look-up (`refresh_entry_points()` looks
again, e.g. after a package was installed in the running process).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import difflib

import torch

from optimizers import registry

__all__ = ["ENTRY_POINT_GROUP", "HYBRID_KEYS", "SPEC_KEYS", "ExternalSpec", "is_import_path", "import_spec",
           "discover", "load_attribute", "build_target", "refresh_entry_points"]

ENTRY_POINT_GROUP = "swanbench.optimizers"
# Hyperparameters swanbench itself reads for an external optimizer (the rest go to its constructor).
HYBRID_KEYS = ("hybrid", "rules", "adamw_lr", "adamw_betas", "adamw_eps")
HYBRID_DEFAULTS = {"rules": None, "adamw_lr": None, "adamw_betas": (0.9, 0.999), "adamw_eps": 1e-8}
SPEC_KEYS = ("factory", "description", "hparams", "hybrid", "state", "workspace", "scalar_state_bytes")
# "package.module:Name" or "package:Outer.Inner": dotted identifiers, one colon. Nothing else is accepted,
# so a suite can never smuggle an expression in.
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class ExternalSpec:
    """An optimizer from outside the package, resolved: what to call and what it declares.

    kind: "class" (a torch.optim.Optimizer subclass, called with parameters) or "factory" (called with the
    model). hparams: accepted hyperparameters with defaults, or None to pass any through unchecked.
    state / workspace: declarations `f(shape)` or `f(shape, context)` (None: not declared).
    """

    name: str
    target: Any = field(repr=False)
    kind: str
    source: str                      # "import path" or "entry point <distribution>"
    description: str
    hparams: Mapping[str, Any] | None = None
    hybrid: bool = False             # the default of the `hybrid` hyperparameter
    state: Callable | None = field(default=None, repr=False)
    workspace: Callable | None = field(default=None, repr=False)
    scalar_state_bytes: int = 0

    @property
    def declared(self) -> bool:
        return self.state is not None and self.workspace is not None


def is_import_path(name: Any) -> bool:
    """True for a name that means an import path (it has a colon); `import_spec` then checks its form."""
    return isinstance(name, str) and ":" in name


def _kind(name: str, target: Any) -> str:
    if inspect.isclass(target):
        if issubclass(target, torch.optim.Optimizer):
            return "class"
        raise ValueError(f"optimizer {name!r}: {target.__module__}.{target.__qualname__} is a class but not a "
                         "torch.optim.Optimizer subclass")
    if callable(target):
        return "factory"
    raise ValueError(f"optimizer {name!r}: {type(target).__name__} object is neither a torch.optim.Optimizer "
                     "subclass nor a factory (model, **hparams) -> Optimizer")


def _import_error_text(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def import_spec(name: str) -> ExternalSpec:
    """Import `"package.module:Name"` and classify it; ValueError (one line, naming the path) otherwise."""
    text = name.strip()
    if not _IMPORT_PATH.match(text):
        raise ValueError(f"optimizer {name!r}: not an import path of the form 'package.module:Name' "
                         "(dotted identifiers, one colon)")
    module_name, _, attr_path = text.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure to import is the user's path, said in one line
        raise ValueError(f"optimizer {name!r}: cannot import {module_name!r} ({_import_error_text(exc)})") from None
    for part in attr_path.split("."):
        if not hasattr(target, part):
            close = difflib.get_close_matches(part, [a for a in dir(target) if not a.startswith("_")], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"optimizer {name!r}: {module_name!r} has no attribute {attr_path!r}{hint}")
        target = getattr(target, part)
    kind = _kind(name, target)
    return ExternalSpec(name=text, target=target, kind=kind, source="import path",
                        description=f"{text} ({'Optimizer subclass' if kind == 'class' else 'factory'}, by import path)")


# --------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------

def _spec_from_mapping(name: str, loaded: Mapping[str, Any], source: str) -> ExternalSpec:
    unknown = sorted(set(loaded) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(SPEC_KEYS)})")
    if "factory" not in loaded:
        raise ValueError("the mapping has no 'factory'")
    target = loaded["factory"]
    hparams = loaded.get("hparams")
    if hparams is not None and not isinstance(hparams, Mapping):
        raise ValueError("'hparams' must be a mapping of defaults")
    for key in ("state", "workspace"):
        if loaded.get(key) is not None and not callable(loaded[key]):
            raise ValueError(f"'{key}' must be a function of the parameter shape")
    if (loaded.get("state") is None) != (loaded.get("workspace") is None):
        raise ValueError("declare both 'state' and 'workspace', or neither")
    kind = _kind(name, target)
    return ExternalSpec(name=name, target=target, kind=kind, source=source,
                        description=str(loaded.get("description") or f"{name} (entry point)"),
                        hparams=dict(hparams) if hparams is not None else None,
                        hybrid=bool(loaded.get("hybrid", False)), state=loaded.get("state"),
                        workspace=loaded.get("workspace"),
                        scalar_state_bytes=int(loaded.get("scalar_state_bytes", 0) or 0))


def _entry_points(group: str) -> list:
    eps = importlib.metadata.entry_points()
    if hasattr(eps, "select"):
        return list(eps.select(group=group))
    return list(eps.get(group, []))  # pragma: no cover - Python < 3.10 API


def discover(group: str = ENTRY_POINT_GROUP) -> tuple[list[ExternalSpec], dict[str, str]]:
    """(specs, broken): every entry point of `group`, loaded; broken maps a name to why it failed (one line).

    A broken entry point never stops the others: it shows in `swanbench list optimizers` with its reason.
    """
    specs: list[ExternalSpec] = []
    broken: dict[str, str] = {}
    for ep in _entry_points(group):
        name = ep.name.strip().lower()
        dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
        source = f"entry point ({dist})"
        try:
            loaded = ep.load()
            if isinstance(loaded, Mapping):
                spec = _spec_from_mapping(name, loaded, source)
            else:
                spec = ExternalSpec(name=name, target=loaded, kind=_kind(name, loaded), source=source,
                                    description=f"{ep.value} (entry point of {dist})")
        except Exception as exc:  # noqa: BLE001 - a third-party package's failure is reported, not raised
            broken[name] = f"entry point {ep.value} of {dist}: {_import_error_text(exc)}"[:300]
            continue
        specs.append(spec)
    return specs, broken


# --------------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------------

def split_hybrid(spec: ExternalSpec, hp: Mapping[str, Any]) -> tuple[bool, dict[str, Any], dict[str, Any]]:
    """(hybrid, swanbench's hybrid settings, the constructor's keyword arguments) from a hyperparameter table."""
    hybrid = hp.get("hybrid", spec.hybrid)
    if not isinstance(hybrid, bool):
        raise ValueError(f"hybrid must be true or false, got {hybrid!r}")
    settings = {k: hp[k] for k in HYBRID_KEYS if k in hp and k != "hybrid"}
    if settings and not hybrid:
        raise ValueError(f"{', '.join(settings)} only apply with hybrid = true")
    if hybrid and spec.kind != "class":
        raise ValueError(f"optimizer {spec.name!r}: hybrid = true needs a torch.optim.Optimizer subclass (built on "
                         "the hidden matrices); a factory builds for the whole model")
    kwargs = {k: v for k, v in hp.items() if k not in HYBRID_KEYS}
    return hybrid, {**HYBRID_DEFAULTS, **settings}, kwargs


def _checked(name: str, opt: Any) -> torch.optim.Optimizer:
    if not isinstance(opt, torch.optim.Optimizer):
        raise ValueError(f"optimizer {name!r}: the factory returned {type(opt).__name__}, not a torch.optim.Optimizer")
    return opt


def build_target(spec: ExternalSpec, params_or_model: Any, kwargs: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Call the class with parameters (a list) or the factory with the model; a constructor's complaint
    (TypeError for an unknown keyword, ValueError for a bad value) becomes one ValueError line naming it."""
    try:
        return _checked(spec.name, spec.target(params_or_model, **kwargs))
    except (TypeError, ValueError) as exc:
        if str(exc).startswith(f"optimizer {spec.name!r}"):
            raise
        raise ValueError(f"optimizer {spec.name!r}: {_import_error_text(exc)}") from None


# --------------------------------------------------------------------------------------------------
# packages with optional parts
# --------------------------------------------------------------------------------------------------

def load_attribute(module: str, attr: str) -> Any:
    """`module.attr`, importing only `module` when its package's `__init__` cannot be imported.

    galore-torch's and apollo-torch's `__init__` import their 8-bit optimizers, which need bitsandbytes (a
    CUDA library); the AdamW variants used here need only torch and transformers. When the normal import
    fails, the package is stood in for by an empty module of the same search path while `module` is
    imported, and removed again afterwards, so `import package` elsewhere behaves as it would have.
    """
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as first:
        package = module.split(".")[0]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations or module == package:
            raise first
        stand_in = types.ModuleType(package)
        stand_in.__path__ = list(spec.submodule_search_locations)
        stand_in.__spec__ = spec
        previous = sys.modules.get(package)
        sys.modules[package] = stand_in
        try:
            return getattr(importlib.import_module(module), attr)
        finally:
            if previous is None:
                sys.modules.pop(package, None)
            else:
                sys.modules[package] = previous


# --------------------------------------------------------------------------------------------------
# registry entries
# --------------------------------------------------------------------------------------------------

def _validate(spec: ExternalSpec, hp: dict[str, Any]) -> None:
    hybrid, settings, kwargs = split_hybrid(spec, hp)
    if not hybrid:
        return
    if settings["adamw_lr"] is None and "lr" not in kwargs:
        raise ValueError(f"optimizer {spec.name!r}: hybrid = true needs lr (or adamw_lr) for the AdamW part")
    hp.update(settings, hybrid=True)
    registry._adamw_hp(hp, "adamw_")


def _build(spec: ExternalSpec, model: torch.nn.Module, hp: dict[str, Any]) -> tuple[torch.optim.Optimizer, str]:
    hybrid, settings, kwargs = split_hybrid(spec, hp)
    if not hybrid:
        return build_target(spec, registry._trainable(model) if spec.kind == "class" else model, kwargs), spec.name
    rest = {**settings, "lr": kwargs.get("lr", settings["adamw_lr"]), "weight_decay": kwargs.get("weight_decay", 0.0)}
    return registry._hybrid(model, rest, lambda params, _: (build_target(spec, params, kwargs), spec.name))


def entry(spec: ExternalSpec) -> Any:
    """The registry entry of an external optimizer (hyperparameters pass through unless it declares defaults)."""
    info = registry.OptimizerInfo(
        name=spec.name, description=spec.description, implementation=spec.name, hybrid=spec.hybrid,
        state_dtype="param", scalar_state_bytes=spec.scalar_state_bytes, requires=None,
        hparams=dict(spec.hparams or {}), _state=spec.state or (lambda s: 0),
        _workspace=spec.workspace or (lambda s: 0), rest_optimizer="adamw" if spec.hybrid else None,
        declared=spec.declared, source=spec.source)
    return registry._Entry(info, lambda m, hp: _build(spec, m, hp), lambda hp: _validate(spec, hp),
                           open_hparams=spec.hparams is None, extra_keys=HYBRID_KEYS)


_IMPORTED: dict[str, Any] = {}  # import paths resolved in this process


def resolve_import_path(name: str) -> Any:
    """The registry entry of `"package.module:Name"`, imported once per process."""
    key = name.strip()
    if key not in _IMPORTED:
        _IMPORTED[key] = entry(import_spec(key))
    return _IMPORTED[key]


def register_entry_points() -> dict[str, str]:
    """Register every loadable entry point of `ENTRY_POINT_GROUP`; returns {name: why} for the others."""
    specs, broken = discover()
    for spec in specs:
        taken = registry._ENTRIES.get(spec.name)
        if taken is not None:
            broken[spec.name] = f"{spec.source}: the name is taken by the {taken.info.source} entry"
        else:
            registry._ENTRIES[spec.name] = entry(spec)
    return broken


def refresh_entry_points() -> None:
    """Forget the entry points registered so far and look again (a package installed in this process)."""
    for name in [n for n, e in registry._ENTRIES.items() if e.info.source.startswith("entry point")]:
        del registry._ENTRIES[name]
    registry._BROKEN.clear()
    registry._discovered = False
    registry._discover()


registry._RESOLVERS[:] = [resolve_import_path]
registry._DISCOVERERS[:] = [register_entry_points]
