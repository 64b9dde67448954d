"""Training memory without running: an analytic model of one training step of a LLaMA preset.

Before renting a GPU: will `1b` train with SWAN at batch 64 on an 80 GiB card? `estimate(...)` answers
from shapes alone (nothing is allocated, so it works for 7b on a laptop) with these components, in bytes:

- **parameters**: every trainable tensor of the preset in the model dtype.
- **gradients**: one per parameter, same dtype (`zero_grad(set_to_none=True)` frees them before forward).
- **optimizer state**, per parameter group, from each optimizer's own declaration
  (`optimizers.info(name).state_numel(shape)` elements of `state_dtype`). A hybrid (SWAN, SinkGD) sends the
  hidden matrices (q, k, v, o, gate, up, down) to its matrix optimizer and the rest (embeddings, LM head,
  RMSNorm gains) to AdamW, as the papers do, so its state is the sum of two groups.
- **activations**: what autograd saves for backward in transformers' `LlamaForCausalLM`
  (see `activation_breakdown` for the per-tensor model), plus the loss's backward buffers.
- **workspace**: the transient fp32 elements one `optimizer.step()` allocates for its largest parameter
  (`OptimizerInfo.workspace_numel(shape)`); groups and matrices are stepped one after another.

The peak is the larger of two moments of a step (state exists from the second step on):

    backward start = params + state + activations + loss backward buffers (+ grads when accumulating) + comm
    optimizer step = params + state + grads + workspace (+ comm under DDP)

Several ranks (`world_size`, `parallelism`): every number is per rank. DDP replicates parameters, gradients
and state, and adds its gradient buckets (comm = one more copy of the gradients). FSDP2 shards parameters,
gradients and element-wise state by rows (ceil(rows / world_size) per tensor), so Adam's state shrinks,
and adds the unsharded parameters it gathers during forward/backward (comm = the root's embedding, head
and final norm plus two decoder layers: the one computing and the one prefetched). SWAN's whitening
does not shrink: the owner of a matrix holds it whole in fp32 (FSDP: the gathered row-blocks beside the
usual workspace; DDP: the fp32 updates of all matrices it owns until they are broadcast). Activations
are per rank already (batch_size is the per-rank micro-batch).

Units: bytes everywhere; GiB = 1024^3 only when rendered.

The package: `model` (the memory model), `render` (the rich table, the verdict, CSV rows).
"""

from __future__ import annotations

from swanbench.estimate.model import (
    ATTENTION_IMPLEMENTATIONS, ActivationBreakdown, DTYPE_ALIASES, DTYPE_BYTES, EstimateError,
    FSDP_GATHERED_LAYERS, GIB, GroupEstimate, HYBRID_REST_OPTIMIZER, LOSS_DTYPE_BYTES, MemoryEstimate,
    PARALLELISMS, ParamSpec, WORKSPACE_DTYPE_BYTES, activation_breakdown, attention_saved_bytes, canonical_dtype,
    check_parallelism, comm_buffer_bytes, comparable_column, dtype_bytes, estimate, estimate_many, estimate_run,
    gib, measured_peak_bytes, mlp_saved_bytes, NotDeclared, optimizer_groups, optimizer_info, parameter_specs, parse_bytes,
    rmsnorm_saved_bytes, shard_spec, state_element_bytes, unexplained_bytes, whole_matrix_extra_bytes,
)
from swanbench.estimate.render import (
    ESTIMATE_COLUMNS, estimate_row, format_bytes, render_table, verdict_lines, write_estimates,
)

__all__ = [
    "ATTENTION_IMPLEMENTATIONS", "ActivationBreakdown", "DTYPE_ALIASES", "DTYPE_BYTES", "ESTIMATE_COLUMNS",
    "EstimateError", "FSDP_GATHERED_LAYERS", "GIB", "GroupEstimate", "HYBRID_REST_OPTIMIZER", "LOSS_DTYPE_BYTES",
    "MemoryEstimate", "PARALLELISMS", "ParamSpec", "WORKSPACE_DTYPE_BYTES", "activation_breakdown",
    "attention_saved_bytes", "canonical_dtype", "check_parallelism", "comm_buffer_bytes", "comparable_column",
    "dtype_bytes", "estimate", "estimate_many", "estimate_row", "estimate_run", "format_bytes", "gib",
    "measured_peak_bytes", "mlp_saved_bytes", "NotDeclared", "optimizer_groups", "optimizer_info", "parameter_specs",
    "parse_bytes", "render_table", "rmsnorm_saved_bytes", "shard_spec", "state_element_bytes", "unexplained_bytes",
    "verdict_lines", "whole_matrix_extra_bytes", "write_estimates",
]
