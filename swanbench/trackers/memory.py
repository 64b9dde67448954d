"""Exact tensor bytes by role: parameters, gradients and optimizer state, found by walking the tensors.

The floor of every memory figure: what the tensors of a role hold, in bytes, with storages deduplicated
(views and tied weights count once; a DTensor counts this rank's shard). No allocator rounding, no
workspace, no caching: see the allocator, the profiler and the process for those.
"""

from __future__ import annotations

import types
from typing import Any, Iterable, Iterator

import torch


def _storage_key(t: torch.Tensor) -> tuple:
    """Identity of the memory a tensor uses, so that views and tied weights are counted once."""
    storage = t.untyped_storage()
    return (t.device.type, t.device.index, storage.data_ptr(), storage.nbytes())


def _local(t: torch.Tensor) -> torch.Tensor:
    """The tensor holding this rank's memory: a DTensor's (FSDP2, tensor parallel) local shard, else `t`."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` on this rank (a view or a shared tensor counts once).

    Uses the storage size, not numel * element_size, because that is what the allocator holds: a view of a
    larger buffer costs the whole buffer. A DTensor counts its local shard (memory is per rank). Tensors
    without real storage (meta, wrapper subclasses) count numel * element_size.
    """
    seen: set[tuple] = set()
    total = 0
    for t in tensors:
        t = _local(t)
        try:
            key = _storage_key(t) if t.device.type != "meta" else None
        except RuntimeError:  # a wrapper subclass with no storage of its own
            key = None
        if key is None:
            key = ("tensor", id(t), 0, t.numel() * t.element_size())
        if key in seen:
            continue
        seen.add(key)
        total += key[3]
    return total


def tensors_in(obj: Any, _seen: set[int] | None = None) -> Iterator[torch.Tensor]:
    """Every tensor inside a nested state value (dicts, lists, tuples, and the attributes of plain objects
    kept in the state, such as GaLore's and APOLLO's projector, which holds its projection matrix);
    numbers and strings yield nothing. Each container is walked once, so a cycle cannot loop."""
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return
    if isinstance(obj, dict):
        seen.add(id(obj))
        for v in obj.values():
            yield from tensors_in(v, seen)
    elif isinstance(obj, (list, tuple)):
        seen.add(id(obj))
        for v in obj:
            yield from tensors_in(v, seen)
    elif _plain_object(obj):
        seen.add(id(obj))
        yield from tensors_in(vars(obj), seen)


def _plain_object(obj: Any) -> bool:
    """An instance with its own attribute dict (not a class, module, function or nn.Module, whose tensors
    are parameters or buffers, not optimizer state)."""
    return (hasattr(obj, "__dict__") and not isinstance(obj, (type, types.ModuleType, types.FunctionType,
                                                              types.MethodType, torch.nn.Module)))


def leaf_optimizers(optimizer: Any) -> list[Any]:
    """The torch optimizers that hold state: the optimizer itself, or a composite's parts.

    A hybrid (SWAN on hidden matrices + AdamW on the rest) may keep its parts in an attribute such as
    `optimizers` or `parts`; those are walked instead of the wrapper, so nothing is counted twice.
    """
    for attr in ("optimizers", "parts", "children_optimizers"):
        parts = getattr(optimizer, attr, None)
        if isinstance(parts, dict):
            parts = list(parts.values())
        if isinstance(parts, (list, tuple)) and parts and all(hasattr(p, "param_groups") for p in parts):
            return [leaf for p in parts for leaf in leaf_optimizers(p)]
    return [optimizer]


def split_state(tensors: Iterable[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(per-parameter buffers, 0-dim bookkeeping scalars such as Adam's `step` counters).

    The buffers are the memory an optimizer's claim is about (Adam: 2 per parameter); the scalars are a few
    bytes per parameter tensor and are reported separately so neither hides in the other.
    """
    buffers, scalars = [], []
    for t in tensors:
        (scalars if t.dim() == 0 else buffers).append(t)
    return buffers, scalars


def optimizer_state_tensors(optimizer: Any) -> list[torch.Tensor]:
    """All tensors in the optimizer state (momenta, second moments, factored statistics, step counters)."""
    out: list[torch.Tensor] = []
    for opt in leaf_optimizers(optimizer):
        for state in opt.state.values():
            out.extend(tensors_in(state))
    return out


def optimizer_state_bytes(optimizer: Any) -> tuple[int, int]:
    """(bytes of per-parameter state buffers, bytes of 0-dim bookkeeping scalars); exact, storages deduped."""
    buffers, scalars = split_state(optimizer_state_tensors(optimizer))
    return tensor_bytes(buffers), tensor_bytes(scalars)


def _group_label(index: int, group: dict, taken: set[str]) -> str:
    name = group.get("name")
    label = str(name) if isinstance(name, str) and name else f"group{index}"
    return label if label not in taken else f"{label}{index}"  # two parts may both call a group "default"


def per_group_bytes(optimizer: Any) -> dict[str, dict[str, int]]:
    """{group label: {"params", "grads", "state"}: bytes} over every leaf optimizer's param groups.

    Labels are the group's "name" entry when it has one, else group<i> (i counts across a hybrid's parts).
    "state" counts the per-parameter buffers only (0-dim step counters excluded, as in the run total).
    """
    out: dict[str, dict[str, int]] = {}
    index = 0
    for opt in leaf_optimizers(optimizer):
        for group in opt.param_groups:
            params = list(group["params"])
            label = _group_label(index, group, set(out))
            buffers, _ = split_state(t for p in params for t in tensors_in(opt.state.get(p, {})))
            out[label] = {
                "params": tensor_bytes(params),
                "grads": tensor_bytes(p.grad for p in params if p.grad is not None),
                "state": tensor_bytes(buffers),
            }
            index += 1
    return out


def model_param_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters (tied weights once; frozen ones included: they are resident)."""
    return tensor_bytes(model.parameters())


def model_grad_bytes(model: torch.nn.Module) -> int:
    """Bytes of the gradients currently held in `.grad` (0 after zero_grad(set_to_none=True))."""
    return tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)


class ExactBytes:
    """A run's exact bytes by role, observed on a few steps: the runs.csv columns `param_bytes`, `grad_bytes`,
    `optimizer_state_bytes`, `optimizer_state_scalar_bytes` and per group `param_bytes.<group>`,
    `optimizer_state_bytes.<group>` (bytes).

    Gradients are observed when `optimizer.step()` starts and state when it ends (the meter does it on the
    warm-up, the first timed and the profiled steps only: a walk costs host time). The largest gradient
    bytes seen are kept (a run ends with `.grad` cleared); the state is the larger of the last observation
    and the state at `columns()` time.
    """

    def __init__(self, model: torch.nn.Module, optimizer: Any):
        self.model = model
        self.optimizer = optimizer
        self.grads: int | None = None
        self.state: tuple[int, int] | None = None  # (buffers, 0-dim scalars), max so far

    def observe_grads(self) -> None:
        """Before `optimizer.step()`: the gradients it is about to consume are all in `.grad`."""
        self.grads = max(self.grads or 0, model_grad_bytes(self.model))

    def observe_state(self) -> None:
        """After `optimizer.step()`: the state it created or updated."""
        self.state = optimizer_state_bytes(self.optimizer)

    def columns(self) -> dict[str, Any]:
        buffers, scalars = optimizer_state_bytes(self.optimizer)
        if self.state is not None:  # max: the state may have been larger mid-run than it is now
            buffers, scalars = max(buffers, self.state[0]), max(scalars, self.state[1])
        grads = self.grads
        if grads is None:  # no optimizer step was observed: whatever .grad holds now, if anything
            grads = model_grad_bytes(self.model) or None
        out: dict[str, Any] = {
            "param_bytes": model_param_bytes(self.model),
            "grad_bytes": grads,
            "optimizer_state_bytes": buffers,
            "optimizer_state_scalar_bytes": scalars,
        }
        for label, b in per_group_bytes(self.optimizer).items():
            out[f"param_bytes.{label}"] = b["params"]
            out[f"optimizer_state_bytes.{label}"] = b["state"]
        return out
