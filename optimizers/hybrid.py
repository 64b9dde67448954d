"""The hybrid the papers use: hidden matrices to a matrix optimizer, everything else to AdamW.

Two pieces:
- `partition(model, rules)`: name rules `[(regex, group), ...]` decide each trainable parameter's group;
  the first rule whose regex `re.search`es the parameter's qualified name wins, every trainable parameter
  must be matched exactly once (an unmatched parameter is an error: no implicit default), and a rule
  that matches nothing is an error too (it is almost always a typo or the wrong model).
- `HybridOptimizer(parts)`: one `torch.optim.Optimizer` over several child optimizers. Its
  `param_groups` are the children's own group dicts, so an LR scheduler's writes to `group["lr"]` reach
  the children; `step(closure)` evaluates the closure once and steps every child (the matrix optimizer
  first, so its non-finite-gradient check can stop the step before anything changed).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

__all__ = ["LLAMA_RULES", "HybridOptimizer", "partition", "compile_rules"]


# LLaMA (transformers naming): the attention and MLP projections are the hidden matrices; embeddings,
# LM head and RMSNorm gains go to AdamW.
LLAMA_RULES: list[tuple[str, str]] = [
    (r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$", "matrix"),
    (r".*", "adamw"),
]


def compile_rules(rules: Sequence[Sequence[str]], groups: Sequence[str]) -> list[tuple[re.Pattern, str]]:
    """Validate `[(regex, group), ...]`: each a pair, a valid regex and a group among `groups`."""
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence) or not rules:
        raise ValueError("rules must be a non-empty list of (regex, group) pairs")
    compiled = []
    for i, rule in enumerate(rules):
        if isinstance(rule, (str, bytes)) or not isinstance(rule, Sequence) or len(rule) != 2:
            raise ValueError(f"rules[{i}] must be a (regex, group) pair, got {rule!r}")
        pattern, group = rule
        if group not in groups:
            raise ValueError(f"rules[{i}]: unknown group {group!r} (groups: {', '.join(groups)})")
        try:
            compiled.append((re.compile(pattern), group))
        except (re.error, TypeError) as exc:
            raise ValueError(f"rules[{i}]: invalid regex {pattern!r}: {exc}") from None
    return compiled


def partition(model: torch.nn.Module, rules: Sequence[Sequence[str]],
              groups: Sequence[str] = ("matrix", "adamw")) -> dict[str, list[tuple[str, Tensor]]]:
    """{group: [(name, parameter), ...]} for every trainable parameter of `model`, by first matching rule.

    Raises ValueError naming the unmatched parameters, or the rules that matched nothing.
    """
    compiled = compile_rules(rules, groups)
    out: dict[str, list[tuple[str, Tensor]]] = {g: [] for g in groups}
    hits = [0] * len(compiled)
    unmatched = []
    for name, param in model.named_parameters():  # shared (tied) parameters are listed once
        if not param.requires_grad:
            continue
        for i, (regex, group) in enumerate(compiled):
            if regex.search(name):
                out[group].append((name, param))
                hits[i] += 1
                break
        else:
            unmatched.append(name)
    if unmatched:
        raise ValueError(f"no rule matches {len(unmatched)} trainable parameter(s): {', '.join(unmatched[:5])}"
                         + (" ..." if len(unmatched) > 5 else "") + " (add a rule, e.g. ('.*', 'adamw'))")
    idle = [compiled[i][0].pattern for i, n in enumerate(hits) if n == 0]
    if idle:
        raise ValueError(f"rule(s) matched no trainable parameter: {', '.join(map(repr, idle))}")
    return out


class _MergedState(Mapping):
    """Read-only view of the children's `state` dicts (each parameter lives in exactly one child)."""

    def __init__(self, parts: Mapping[str, torch.optim.Optimizer]) -> None:
        self._parts = parts

    def __getitem__(self, param: Tensor) -> Any:
        for opt in self._parts.values():
            if param in opt.state:  # `in`, not `[]`: the children's defaultdicts must not grow entries
                return opt.state[param]
        raise KeyError(param)

    def __iter__(self) -> Iterator[Tensor]:
        for opt in self._parts.values():
            yield from opt.state

    def __len__(self) -> int:
        return sum(len(opt.state) for opt in self._parts.values())


class HybridOptimizer(torch.optim.Optimizer):
    """Several optimizers behind one `torch.optim.Optimizer` (for schedulers, the harness, checkpoints).

    Args:
        parts: {name: optimizer}, stepped in this order (put the matrix optimizer first).

    Attributes:
        optimizers: the children, by name (the harness walks them for state bytes).
        param_groups: the children's group dicts, concatenated (the same objects, not copies).
        state: a read-only merged view of the children's state.
        preprocess_timer: setting it sets it on every child (SWAN/SinkGD use it; AdamW ignores it).
    """

    def __init__(self, parts: Mapping[str, torch.optim.Optimizer]) -> None:
        if not parts:
            raise ValueError("HybridOptimizer needs at least one child optimizer")
        self.optimizers: dict[str, torch.optim.Optimizer] = dict(parts)
        self._preprocess_timer: Callable[[], contextlib.AbstractContextManager] | None = None
        self._initialising = True
        # The base constructor installs torch's step hooks and profiler wrapper; it needs one parameter,
        # so it gets a placeholder whose group is replaced by the children's groups right after.
        super().__init__([torch.zeros(())], {})
        self._initialising = False
        self.param_groups = [g for opt in self.optimizers.values() for g in opt.param_groups]

    # -- state: the children's, merged ---------------------------------------------------------

    @property
    def state(self) -> Mapping[Tensor, Any]:  # type: ignore[override]
        return _MergedState(self.optimizers)

    @state.setter
    def state(self, value: Any) -> None:
        if value:  # the base constructor assigns an empty defaultdict; anything else is a mistake
            raise AttributeError("HybridOptimizer.state is a view of its children's state; set theirs")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self._initialising:
            return super().add_param_group(param_group)
        raise TypeError("add the group to a child: hybrid.optimizers[name].add_param_group(...)")

    # -- the harness hook ----------------------------------------------------------------------

    @property
    def preprocess_timer(self) -> Callable[[], contextlib.AbstractContextManager] | None:
        return self._preprocess_timer

    @preprocess_timer.setter
    def preprocess_timer(self, timer: Callable[[], contextlib.AbstractContextManager] | None) -> None:
        self._preprocess_timer = timer
        for opt in self.optimizers.values():
            opt.preprocess_timer = timer

    # -- the optimizer surface -----------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate `closure` once (with grad enabled), then step every child in order; returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """{"optimizers": {name: child.state_dict()}}."""
        return {"optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()}}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        parts = state_dict.get("optimizers") if isinstance(state_dict, Mapping) else None
        if not isinstance(parts, Mapping) or set(parts) != set(self.optimizers):
            have = sorted(parts) if isinstance(parts, Mapping) else None
            raise ValueError(f"state dict holds parts {have}, this hybrid has {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(parts[name])
        # the children rebuilt their group dicts: point ours at the new ones
        self.param_groups = [g for opt in self.optimizers.values() for g in opt.param_groups]

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={type(opt).__name__}" for name, opt in self.optimizers.items())
        return f"HybridOptimizer({inner})"
