"""The memory-efficient peers SWAN and SinkGD are compared with, from their own packages (never copied).

- **GaLore** (`galore-torch`, `galore_torch.GaLoreAdamW`): Adam on the gradient projected onto its top-r
  singular subspace (recomputed by SVD every `update_proj_gap` steps), projected back and scaled by `scale`.
- **APOLLO** (`apollo-torch`, `apollo_torch.APOLLOAdamW`, random projection, channel-wise scaling): Adam
  moments of a rank-r random projection of the gradient give one scaling factor per channel of the raw
  gradient; **APOLLO-Mini** is the same class with rank 1 and one tensor-wise factor (`scale` 128, so the
  update is multiplied by sqrt(128) as the paper says).
- **Adam-mini** (`adam-mini`, `adam_mini.Adam_mini`): Adam's second moment averaged over blocks that the
  package finds by parameter name (one value per head for q/k, per output row for v/o/MLP/embedding/head,
  one per tensor otherwise).

GaLore and APOLLO are hybrids (the hidden matrices to them, AdamW the rest, as their papers train and as
swanbench's other hybrids do); Adam-mini takes the whole model. Each `Peer` below becomes a registry entry
(`source = "peer"`) when this module is imported (`optimizers/__init__.py` does); an entry whose package is
not installed is listed by `optimizers.registry.missing()` with the package to install.

Declarations, per parameter (`ParamContext`: its name, dtype, the model's heads and hidden size, the resolved
hyperparameters), for an m x n matrix with M = max(m, n), k = min(m, n), the "std" projection the papers use:

| optimizer | state elements (parameter dtype) | step workspace (parameter dtype) |
|---|---|---|
| GaLore | 2 M r' (moments of the projected gradient) + the projector: r' k, but k^2 for float32 parameters (galore-torch keeps a view of the whole SVD factor when no dtype cast copies the slice); r' = min(r, k) | 2 m n + 3 M r' |
| APOLLO | 2 M r + r k (the random projection matrix is kept, not regenerated from its seed) + one 0-dim norm | 2 m n + 3 M r + M |
| APOLLO-Mini | 2 M + k + one 0-dim norm | 2 m n + 3 M |
| Adam-mini | the momentum (numel) + one second-moment value per block; norms: numel + one 0-dim value | 2 numel + 3 x blocks |

The workspace is declared in fp32 elements (the estimator's unit) from the element size of the parameter
dtype. `tests/test_peers.py` checks every declaration against the measured state (the harness's tensor walk)
and the profiled transient of one step on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import torch

from optimizers import registry
from optimizers.declare import ParamContext, element_bytes
from optimizers.external import load_attribute

__all__ = ["Peer", "PEERS"]

Shape = Sequence[int]


def _as_fp32_elements(elements: int, ctx: ParamContext) -> int:
    """Elements of the parameter dtype as fp32 elements (the unit of workspace declarations), rounded up."""
    return math.ceil(elements * element_bytes(ctx.dtype) / 4)


def _mn(shape: Shape) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"a low-rank optimizer declares state for 2-D shapes only, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])


# --------------------------------------------------------------------------------------------------
# GaLore
# --------------------------------------------------------------------------------------------------

def galore_state(shape: Shape, ctx: ParamContext) -> int:
    m, n = _mn(shape)
    k, big = min(m, n), max(m, n)
    r = min(int(ctx.hparams.get("rank", 128)), k)
    projector = k * k if ctx.dtype == "float32" else r * k
    return 2 * big * r + projector


def galore_workspace(shape: Shape, ctx: ParamContext) -> int:
    m, n = _mn(shape)
    r = min(int(ctx.hparams.get("rank", 128)), m, n)
    # projected gradient, sqrt(v) + eps and m / that (3 M r'), the projected-back update and its scaled copy
    return _as_fp32_elements(2 * m * n + 3 * max(m, n) * r, ctx)


def galore_matrix(params: list, hp: Mapping[str, Any]) -> tuple[torch.optim.Optimizer, str]:
    cls = load_attribute("galore_torch.adamw", "AdamW")
    group = {"params": params, "rank": hp["rank"], "update_proj_gap": hp["update_proj_gap"], "scale": hp["scale"],
             "proj_type": "std"}
    opt = cls([group], lr=hp["lr"], betas=tuple(hp["betas"]), eps=hp["eps"], weight_decay=hp["weight_decay"],
              no_deprecation_warning=True)
    return opt, (f"galore_torch.GaLoreAdamW(rank={hp['rank']}, update_proj_gap={hp['update_proj_gap']}, "
                 f"scale={hp['scale']})")


# --------------------------------------------------------------------------------------------------
# APOLLO and APOLLO-Mini
# --------------------------------------------------------------------------------------------------

def apollo_state(shape: Shape, ctx: ParamContext) -> int:
    m, n = _mn(shape)
    r = int(ctx.hparams.get("rank", 256))
    return 2 * max(m, n) * r + r * min(m, n)


def apollo_workspace(shape: Shape, ctx: ParamContext) -> int:
    m, n = _mn(shape)
    r = int(ctx.hparams.get("rank", 256))
    channel = max(m, n) if ctx.hparams.get("scale_type", "channel") == "channel" else 0  # the factor vector
    return _as_fp32_elements(2 * m * n + 3 * max(m, n) * r + channel, ctx)


def apollo_scalars(shape: Shape, ctx: ParamContext) -> int:
    """The norm-growth limiter keeps the last update norm: one 0-dim tensor of the parameter dtype."""
    return element_bytes(ctx.dtype)


def apollo_matrix(params: list, hp: Mapping[str, Any]) -> tuple[torch.optim.Optimizer, str]:
    cls = load_attribute("apollo_torch.apollo", "AdamW")
    group = {"params": params, "rank": hp["rank"], "proj": "random", "scale_type": hp["scale_type"],
             "scale": hp["scale"], "update_proj_gap": hp["update_proj_gap"], "proj_type": "std"}
    opt = cls([group], lr=hp["lr"], betas=tuple(hp["betas"]), eps=hp["eps"], weight_decay=hp["weight_decay"],
              scale_front=hp["scale_front"])
    return opt, (f"apollo_torch.APOLLOAdamW(rank={hp['rank']}, scale_type={hp['scale_type']!r}, "
                 f"scale={hp['scale']}, proj='random')")


# --------------------------------------------------------------------------------------------------
# Adam-mini
# --------------------------------------------------------------------------------------------------

# Adam-mini's partition by name (adam_mini 1.1.1), in the order it tests them: Adam for biases; one second
# moment per head for queries and keys; one per output row for the others listed; one per tensor otherwise.
ADAM_MINI_BIAS = ("bias",)
ADAM_MINI_PER_HEAD = ("k_proj", "q_proj", "wq", "wk", "query", "key")
ADAM_MINI_PER_ROW = ("embed", "embd", "wte", "lm_head", "output", "final_layer", "v_proj", "wv", "value",
                     "feed_forward", "linear", "mlp", "o_proj", "wo", "attn.proj")


def adam_mini_block(shape: Shape, ctx: ParamContext) -> str:
    """"bias", "head", "row" or "tensor": how Adam-mini treats the parameter named in `ctx`."""
    name = (ctx.name or "").lower()
    if ctx.name is None:  # no name: a matrix is most often a per-row block
        return "row" if len(shape) == 2 else "tensor"
    for block, keys in (("bias", ADAM_MINI_BIAS), ("head", ADAM_MINI_PER_HEAD), ("row", ADAM_MINI_PER_ROW)):
        if any(key in name for key in keys):
            return block
    return "tensor"


def _adam_mini_values(shape: Shape, ctx: ParamContext) -> int:
    """Second-moment values of one parameter (0 for a bias: Adam's full v is counted as state)."""
    numel = math.prod(int(d) for d in shape)
    block = adam_mini_block(shape, ctx)
    if block == "head":
        dim = ctx.hparams.get("dim") or ctx.hidden
        heads = ctx.hparams.get("n_heads") or ctx.heads
        if not dim or not heads:
            raise ValueError("adam-mini's state of a query/key matrix needs the model's hidden size and heads")
        return numel // (int(dim) * int(dim) // int(heads))
    if block == "row":
        return int(shape[0])
    return 0


def adam_mini_state(shape: Shape, ctx: ParamContext) -> int:
    numel = math.prod(int(d) for d in shape)
    if adam_mini_block(shape, ctx) == "bias":
        return 2 * numel
    return numel + _adam_mini_values(shape, ctx)


def adam_mini_scalars(shape: Shape, ctx: ParamContext) -> int:
    """A per-tensor block keeps its one second-moment value as a 0-dim tensor of the parameter dtype."""
    return element_bytes(ctx.dtype) if adam_mini_block(shape, ctx) == "tensor" else 0


def adam_mini_workspace(shape: Shape, ctx: ParamContext) -> int:
    numel = math.prod(int(d) for d in shape)
    # the update and its negation, plus the per-block mean of g^2, its sqrt and the step size per block
    return _as_fp32_elements(2 * numel + 3 * _adam_mini_values(shape, ctx), ctx)


def build_adam_mini(model: torch.nn.Module, hp: Mapping[str, Any]) -> tuple[torch.optim.Optimizer, str]:
    cls = load_attribute("adam_mini.adam_mini", "Adam_mini")
    config = getattr(model, "config", None)
    dim = hp["dim"] or getattr(config, "hidden_size", None)
    heads = hp["n_heads"] or getattr(config, "num_attention_heads", None)
    kv_heads = hp["n_kv_heads"] or getattr(config, "num_key_value_heads", None)
    if not dim or not heads:
        raise ValueError("adam-mini needs dim and n_heads: the model has no transformers config, so set them in "
                         "its hyperparameter table")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    opt = cls(named, lr=hp["lr"], betas=tuple(hp["betas"]), eps=hp["eps"], weight_decay=hp["weight_decay"],
              dim=int(dim), n_heads=int(heads), n_kv_heads=int(kv_heads) if kv_heads else None, verbose=False)
    return opt, f"adam_mini.Adam_mini(dim={dim}, n_heads={heads})"


# --------------------------------------------------------------------------------------------------
# the table the registry reads
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Peer:
    """One peer registry entry. `build` is a matrix builder `(params, hp)` for a hybrid, else `(model, hp)`;
    `checks` names each specific hyperparameter's rule ("int", "positive", "betas", "bool", "int_or_none",
    or a tuple of allowed values), applied by the registry after lr and weight_decay."""

    name: str
    description: str
    implementation: str
    requires: str
    hybrid: bool
    hparams: Mapping[str, Any]
    checks: Mapping[str, Any]
    build: Callable = field(repr=False)
    state: Callable = field(repr=False)
    workspace: Callable = field(repr=False)
    scalars: Callable | None = field(default=None, repr=False)
    color: str | None = None
    order: int = 1000


_ADAM_CHECKS = {"betas": "betas", "eps": "positive"}
_LOW_RANK_CHECKS = {**_ADAM_CHECKS, "rank": "int", "update_proj_gap": "int", "scale": "positive"}

PEERS: tuple[Peer, ...] = (
    Peer("galore", "GaLore-AdamW: Adam on the gradient's top-r SVD subspace (hidden matrices); AdamW on the rest",
         "HybridOptimizer(galore_torch.GaLoreAdamW + torch.optim.AdamW)", "galore-torch", True,
         dict(lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, rank=128, update_proj_gap=200, scale=0.25),
         _LOW_RANK_CHECKS, galore_matrix, galore_state, galore_workspace, color="#0b7285", order=92),
    Peer("apollo", "APOLLO: channel-wise gradient scaling from Adam moments of a rank-r random projection "
         "(hidden matrices); AdamW on the rest", "HybridOptimizer(apollo_torch.APOLLOAdamW + torch.optim.AdamW)",
         "apollo-torch", True,
         dict(lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, rank=256, update_proj_gap=200, scale=1.0,
              scale_type="channel", scale_front=False),
         {**_LOW_RANK_CHECKS, "scale_type": ("channel", "tensor"), "scale_front": "bool"},
         apollo_matrix, apollo_state, apollo_workspace, apollo_scalars, color="#8c6d31", order=94),
    Peer("apollo-mini", "APOLLO-Mini: one tensor-wise scale from a rank-1 random projection (hidden matrices); "
         "AdamW on the rest", "HybridOptimizer(apollo_torch.APOLLOAdamW(rank=1, tensor) + torch.optim.AdamW)",
         "apollo-torch", True,
         dict(lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, rank=1, update_proj_gap=200, scale=128.0,
              scale_type="tensor", scale_front=False),
         {**_LOW_RANK_CHECKS, "scale_type": ("channel", "tensor"), "scale_front": "bool"},
         apollo_matrix, apollo_state, apollo_workspace, apollo_scalars, color="#e7ba52", order=96),
    Peer("adam-mini", "Adam-mini: Adam with one second-moment value per block (head, output row or tensor)",
         "adam_mini.Adam_mini", "adam-mini", False,
         dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, dim=None, n_heads=None, n_kv_heads=None),
         {**_ADAM_CHECKS, "dim": "int_or_none", "n_heads": "int_or_none", "n_kv_heads": "int_or_none"},
         build_adam_mini, adam_mini_state, adam_mini_workspace, adam_mini_scalars, color="#5254a3", order=15),
)


# --------------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------------

def check_table(hp: dict[str, Any], checks: Mapping[str, Any]) -> None:
    """Apply a peer's rules by key: "int", "positive", "betas", "bool", "int_or_none" or allowed values."""
    for key, rule in checks.items():
        value = hp[key]
        if rule == "int" or (rule == "int_or_none" and value is not None):
            hp[key] = registry._int(key, value)
        elif rule == "positive":
            hp[key] = registry._number(key, value, 0.0, True)
        elif rule == "betas":
            hp[key] = registry._betas(key, value)
        elif rule == "bool" and not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        elif isinstance(rule, tuple) and value not in rule:
            raise ValueError(f"{key} must be one of {', '.join(map(repr, rule))}, got {value!r}")


def register(peer: Peer) -> None:
    """Add `peer` to the registry: hybrids get swanbench's hybrid settings (rules, adamw_lr, ...) too."""
    hparams = dict(registry._HYBRID_DEFAULTS, **peer.hparams) if peer.hybrid else dict(peer.hparams)

    def validate(hp: dict[str, Any]) -> None:
        (registry._validate_hybrid if peer.hybrid else registry._common)(hp)
        check_table(hp, peer.checks)

    info = replace(registry._info(peer.name, peer.description, peer.implementation, peer.state, peer.workspace,
                                  hparams, hybrid=peer.hybrid, requires=peer.requires, color=peer.color,
                                  order=peer.order), source="peer", _scalars=peer.scalars)
    build = (lambda model, hp: registry._hybrid(model, hp, peer.build)) if peer.hybrid else peer.build
    registry._register(info, build, validate)


for _peer in PEERS:
    register(_peer)
