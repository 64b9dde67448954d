"""The controls a fair comparison with the hybrids needs, registered like every other entry.

The hybrids (SWAN, SinkGD, Muon on the hidden matrices) train embeddings, head and norms with AdamW at their
own lr (`lr`, or `adamw_lr`). A speedup over plain AdamW at one lr for everything may come from that grouping
and its lrs rather than from the matrix update, so:

- `adamw-split`: AdamW with exactly the hybrids' grouping and per-group lrs (`lr` for the hidden matrices,
  `adamw_lr` for the rest); without `adamw_lr` it is AdamW;
- `muon-nomomentum`: Muon's Newton-Schulz on the raw gradient, momentum 0: an orthogonalised update with no
  memory of past gradients, the bar a "stateless" optimizer has to clear;
- `swan` with `ablation = "gradnorm-only" | "whitening-only"`: SWAN's own ablation (one of its two stages).

Imported by `optimizers/__init__.py` (importing it registers the entries).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from optimizers import registry
from optimizers.ablation import ABLATIONS, SWANAblation
from optimizers.info import Shape, StepPart

# The hybrids train embeddings, head and norms with AdamW at their own (global or `adamw_lr`) lr. A speedup
# over plain AdamW at one lr for everything may come from that grouping and its lrs rather than from the
# matrix update: `adamw-split` is AdamW with exactly the hybrids' grouping and per-group lrs, and
# `muon-nomomentum` is an orthogonalised update with no momentum (the bar "stateless" has to clear).

def _build_adamw_split(model, hp):
    # the rest group's betas/eps are the matrix group's: one AdamW configuration, two lrs
    hp = dict(hp, adamw_betas=hp["betas"], adamw_eps=hp["eps"])
    return registry._hybrid(model, hp, lambda params, h: registry._adamw(params, h["lr"], h["betas"], h["eps"], h["weight_decay"]))


def _validate_adamw_split(hp: dict[str, Any]) -> None:
    registry._validate_adam(hp)
    if hp["adamw_lr"] is not None:
        hp["adamw_lr"] = registry._number("adamw_lr", hp["adamw_lr"])


def _validate_muon_nomomentum(hp: dict[str, Any]) -> None:
    registry._validate_hybrid(hp)
    hp["ns_steps"] = registry._int("ns_steps", hp["ns_steps"])
    if hp["ns_steps"] >= 100:
        raise ValueError(f"ns_steps must be < 100 (torch.optim.Muon), got {hp['ns_steps']}")


def _muon_nomomentum_workspace(shape: Shape) -> int:
    # torch.optim.Muon with momentum 0 and no Nesterov blend, fp32 params: the bf16 copy of the gradient and
    # the next iterate (2 x m n bf16 = m n fp32), the bf16 Gram and its polynomial (2 s^2 bf16 = s^2 fp32).
    m, n = registry._matrix(shape)
    return m * n + min(m, n) ** 2


registry._register(registry._info("adamw-split", "AdamW with the hybrids' grouping: hidden matrices at lr, embeddings/head/norms at "
                "adamw_lr (default: lr)", "HybridOptimizer(torch.optim.AdamW + torch.optim.AdamW)",
                lambda s: 2 * registry._numel(registry._matrix(s)), lambda s: 0,
                dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, rules=None, adamw_lr=None),
                hybrid=True, scalar=4, color="#3b5b92", order=5),
          _build_adamw_split, _validate_adamw_split)
# torch.optim.Muon allocates its momentum buffer whatever the momentum; at 0 the gradient overwrites it every
# step and it is never read back. It is declared (m n) because it is what torch holds.
registry._register(registry._info("muon-nomomentum", "Muon's quintic Newton-Schulz on the raw gradient (momentum 0) on hidden "
                "matrices, AdamW on the rest: the stateless orthogonalisation control",
                "HybridOptimizer(torch.optim.Muon(momentum=0, nesterov=False) + torch.optim.AdamW)",
                lambda s: registry._numel(registry._matrix(s)), _muon_nomomentum_workspace,
                dict(registry._HYBRID_DEFAULTS, ns_steps=5), hybrid=True, parts=registry._muon_parts, color="#d2a679", order=55),
          lambda m, hp: registry._hybrid(m, dict(hp, momentum=0.0, nesterov=False), registry._muon_matrix), _validate_muon_nomomentum)


# SWAN's ablation (its paper's): `ablation = "gradnorm-only" | "whitening-only"` runs one of its two stages
# (optimizers.ablation); "none" (default) is SWAN. Added to the swan entry here, after it is registered.

def _swan_ablation_matrix(params, hp):
    opt = SWANAblation(params, ablation=hp["ablation"], lr=hp["lr"], alpha=hp["alpha"], steps=hp["steps"],
                       beta=hp["beta"], eps=hp["eps"], weight_decay=hp["weight_decay"],
                       nonfinite=hp["nonfinite"], batch_budget=hp["batch_budget"],
                       whiten_precision=hp["whiten_precision"])
    return opt, f"optimizers.SWANAblation({hp['ablation']}, steps={hp['steps']}, beta={hp['beta']})"


def _add_swan_ablation(name: str) -> None:
    entry = registry._ENTRIES[name]
    base_parts = entry.info._parts
    stage = {"gradnorm-only": "grad_norm", "whitening-only": "grad_whiten"}

    def parts(hp: Mapping[str, Any]) -> tuple[StepPart, ...]:
        keep = stage.get(hp["ablation"])
        return tuple(p for p in base_parts(hp) if keep is None or p.operator == keep)

    def validate(hp: dict[str, Any]) -> None:
        entry.validate(hp)
        if hp["ablation"] not in ABLATIONS:
            raise ValueError(f"ablation must be one of {', '.join(map(repr, ABLATIONS))}, got {hp['ablation']!r}")

    def build(model, hp):
        if hp["ablation"] == "none":
            return entry.build(model, hp)
        return registry._hybrid(model, hp, _swan_ablation_matrix)

    info_ = dataclasses.replace(entry.info, hparams={**entry.info.hparams, "ablation": "none"}, _parts=parts)
    registry._register(info_, build, validate)


_add_swan_ablation("swan")
