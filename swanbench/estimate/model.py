"""The analytic memory model of one training step (see `swanbench.estimate` for the components and units)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from swanbench.hints import did_you_mean
from swanbench.models import ModelPreset, get_preset

GIB = 1024 ** 3

# The dtype names a suite or the CLI may use, with their element size in bytes.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "float": "float32", "bf16": "bfloat16",
                 "fp16": "float16", "f16": "float16", "half": "float16", "fp64": "float64",
                 "double": "float64"}
# Attention implementations whose saved tensors the activation model knows.
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")
# Log-softmax, its incoming gradient and its input gradient are fp32 ([B*T, vocab] each): the HF
# causal-LM loss upcasts logits with `.float()` before cross-entropy, whatever the model dtype.
LOSS_DTYPE_BYTES = 4
# The matrix optimizers' workspace is declared in fp32 elements (whitening runs in fp32 on bf16 models).
WORKSPACE_DTYPE_BYTES = 4
# A hybrid routes everything that is not a hidden matrix here (embeddings, LM head, norm gains).
HYBRID_REST_OPTIMIZER = "adamw"
PARALLELISMS = ("ddp", "fsdp")
# FSDP2 keeps this many decoder layers unsharded at once: the one computing and the one prefetched.
FSDP_GATHERED_LAYERS = 2


class EstimateError(ValueError):
    """Bad input to the estimator (unknown dtype, attention implementation, optimizer); one line."""


class NotDeclared(EstimateError):
    """The optimizer declares no state or workspace (an import path, an entry point without declarations):
    the estimate is "not declared", never a guess; a run of it still measures its state bytes exactly."""


# --------------------------------------------------------------------------------------------------
# Names and units
# --------------------------------------------------------------------------------------------------

def canonical_dtype(name: Any) -> str:
    """'float32' / 'bfloat16' / 'float16' / 'float64' from a name, an alias ('bf16') or a torch.dtype."""
    text = str(name).removeprefix("torch.").strip().lower()
    text = DTYPE_ALIASES.get(text, text)
    if text not in DTYPE_BYTES:
        known = sorted(DTYPE_BYTES) + sorted(DTYPE_ALIASES)
        raise EstimateError(f"unknown dtype {name!r}{did_you_mean(text, known)} "
                            f"(known: {', '.join(sorted(DTYPE_BYTES))})")
    return text


def dtype_bytes(name: Any) -> int:
    """Bytes per element of a dtype name or torch.dtype."""
    return DTYPE_BYTES[canonical_dtype(name)]


def parse_bytes(value: Any) -> int:
    """Bytes from an int or a size string: '80GiB' (1024^3), '80GB' (10^9), '512MiB', '1234'."""
    from swanbench.suite import parse_size  # one size grammar for suites and the CLI

    try:
        size = parse_size(value)
    except ValueError as exc:
        raise EstimateError(str(exc)) from None
    if size <= 0:
        raise EstimateError(f"a memory size must be positive, got {value!r}")
    return size


def gib(n_bytes: float | None) -> float | None:
    """Bytes to GiB (1024^3); None stays None."""
    return None if n_bytes is None else n_bytes / GIB


# --------------------------------------------------------------------------------------------------
# Parameters of a preset, by role
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParamSpec:
    """One trainable tensor of the preset: its transformers name, shape ([out, in]) and role.

    role: "hidden" (attention/MLP linear weights, what SWAN/SinkGD precondition), "embedding",
    "head" (the untied LM head) or "norm" (RMSNorm gains).
    """

    name: str
    shape: tuple[int, ...]
    role: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def parameter_specs(preset: ModelPreset) -> list[ParamSpec]:
    """Every trainable tensor of `LlamaForCausalLM` for the preset, in `named_parameters()` order."""
    h, i, v = preset.hidden, preset.intermediate, preset.vocab
    specs = [ParamSpec("model.embed_tokens.weight", (v, h), "embedding")]
    for layer in range(preset.layers):
        pre = f"model.layers.{layer}."
        specs += [ParamSpec(f"{pre}self_attn.{p}_proj.weight", (h, h), "hidden") for p in "qkvo"]
        specs += [ParamSpec(f"{pre}mlp.gate_proj.weight", (i, h), "hidden"),
                  ParamSpec(f"{pre}mlp.up_proj.weight", (i, h), "hidden"),
                  ParamSpec(f"{pre}mlp.down_proj.weight", (h, i), "hidden"),
                  ParamSpec(f"{pre}input_layernorm.weight", (h,), "norm"),
                  ParamSpec(f"{pre}post_attention_layernorm.weight", (h,), "norm")]
    specs += [ParamSpec("model.norm.weight", (h,), "norm"), ParamSpec("lm_head.weight", (v, h), "head")]
    return specs


# --------------------------------------------------------------------------------------------------
# Optimizer state and workspace, from the optimizers' declarations
# --------------------------------------------------------------------------------------------------

def optimizer_info(name: str):
    """`optimizers.info(name)`, with an unknown name turned into one EstimateError line."""
    import optimizers

    try:
        return optimizers.info(name)
    except (KeyError, ValueError) as exc:
        message = exc.args[0] if exc.args else str(exc)
        raise EstimateError(str(message)) from None


def state_element_bytes(state_dtype: Any, param_dtype: str) -> int:
    """Bytes per state element: the declared dtype, or the parameter's when it declares none/"param".

    torch's AdamW keeps `exp_avg`/`exp_avg_sq` as `zeros_like(param)`, i.e. in the parameter dtype.
    """
    if state_dtype is None or str(state_dtype).lower() in ("param", "same", "param_dtype", "like_param"):
        return dtype_bytes(param_dtype)
    return dtype_bytes(state_dtype)


@dataclass(frozen=True)
class GroupEstimate:
    """One parameter group: which optimizer steps it, and what it holds (bytes)."""

    name: str          # "all" for a plain optimizer; "matrix" / "rest" for a hybrid
    optimizer: str     # the optimizer that steps this group
    params: int        # parameter count (elements)
    param_bytes: int
    state_bytes: int
    workspace_bytes: int  # the largest transient of one parameter of this group inside step()


def shard_spec(spec: ParamSpec, shards: int) -> ParamSpec:
    """The largest row-block of `spec` under FSDP2's Shard(0) over `shards` ranks (rank 0's: ceil rows)."""
    if shards == 1:
        return spec
    return ParamSpec(spec.name, (math.ceil(spec.shape[0] / shards), *spec.shape[1:]), spec.role)


def _declared(info, method: str, spec: ParamSpec, context: dict[str, Any] | None) -> int:
    """info.<method>(shape), with a `ParamContext` (name, dtype, heads, hyperparameters) where the registry
    takes one (tests pass plain tables whose declarations take the shape alone)."""
    fn = getattr(info, method)
    if context is None:
        return int(fn(spec.shape))
    from optimizers.declare import ParamContext

    return int(fn(spec.shape, ParamContext(name=spec.name, **context)))


def _group_estimate(name: str, optimizer: str, info, specs: list[ParamSpec], param_dtype: str,
                    shards: int = 1, context: dict[str, Any] | None = None) -> GroupEstimate:
    """One group's bytes on one rank; `shards` > 1: FSDP's row-blocks (the workspace stays full-shape)."""
    elem = dtype_bytes(param_dtype)
    local = [shard_spec(s, shards) for s in specs]
    state_elem = state_element_bytes(getattr(info, "state_dtype", None), param_dtype)
    state_numel = sum(_declared(info, "state_numel", s, context) for s in local)
    # 0-dim per-parameter counters (torch's Adam keeps `step` as a float32 tensor per parameter)
    if context is not None and hasattr(info, "scalar_bytes"):
        scalars = sum(_declared(info, "scalar_bytes", s, context) for s in specs)
    else:
        scalars = int(getattr(info, "scalar_state_bytes", 0) or 0) * len(specs)
    workspace = max((_declared(info, "workspace_numel", s, context) for s in specs), default=0)
    return GroupEstimate(name=name, optimizer=optimizer, params=sum(s.numel for s in specs),
                         param_bytes=sum(s.numel for s in local) * elem,
                         state_bytes=state_numel * state_elem + scalars,
                         workspace_bytes=workspace * WORKSPACE_DTYPE_BYTES)


def optimizer_groups(preset: ModelPreset, optimizer: str, param_dtype: str,
                     info_of: Callable[[str], Any] = optimizer_info, shards: int = 1,
                     hparams: dict[str, Any] | None = None, device: str = "cpu") -> list[GroupEstimate]:
    """The parameter groups `optimizers.build(optimizer, model)` makes, with their state and workspace.

    A hybrid: hidden matrices to `optimizer`'s matrix rule, everything else to AdamW. Otherwise one
    group holding every parameter. `shards` > 1: per-rank bytes under FSDP2 (row-sharded tensors).
    hparams: the optimizer's hyperparameters where its declaration depends on them (GaLore's rank, SWAN's
    `steps` and `whiten_precision`). device: where the step runs (SinkGD's CUDA path holds an m x n iterate
    its CPU kernels avoid). Raises NotDeclared for an optimizer without declarations.
    """
    info = info_of(optimizer)
    if not getattr(info, "declared", True):
        raise NotDeclared(f"optimizer {optimizer!r}: not declared (it declares no state or workspace; a run "
                          "measures its state bytes exactly)")
    specs = parameter_specs(preset)
    registry = info_of is optimizer_info  # the registry's entries take a ParamContext; a test's table may not
    facts = {"dtype": param_dtype, "heads": preset.heads, "hidden": preset.hidden, "device": device}
    context = {**facts, "hparams": dict(hparams or {})} if registry else None
    rest_context = {**facts, "hparams": {}} if registry else None
    if not getattr(info, "hybrid", False):
        return [_group_estimate("all", optimizer, info, specs, param_dtype, shards, context)]
    hidden = [s for s in specs if s.role == "hidden"]
    rest = [s for s in specs if s.role != "hidden"]
    rest_name = getattr(info, "rest_optimizer", None) or HYBRID_REST_OPTIMIZER
    return [_group_estimate("matrix", optimizer, info, hidden, param_dtype, shards, context),
            _group_estimate("rest", rest_name, info_of(rest_name), rest, param_dtype, shards, rest_context)]


def whole_matrix_extra_bytes(preset: ModelPreset, parallelism: str | None, world_size: int) -> int:
    """fp32 bytes SWAN's distributed variants hold beyond the single-process workspace, per rank.

    FSDP (FSDPSWAN): the owner gathers a matrix's row-blocks into one full fp32 copy before whitening:
    + the largest hidden matrix (m n). DDP (DDPSWAN): a rank whitens its share first and keeps those fp32
    updates until it broadcasts them: + (hidden elements / world_size), balanced by cost, rounded up to
    the largest matrix.
    """
    if parallelism is None or world_size == 1:
        return 0
    shapes = preset.hidden_matrix_shapes()
    largest = max(m * n for m, n in shapes)
    if parallelism == "fsdp":
        return largest * WORKSPACE_DTYPE_BYTES
    share = math.ceil(sum(m * n for m, n in shapes) / world_size)
    return max(share, largest) * WORKSPACE_DTYPE_BYTES


def comm_buffer_bytes(preset: ModelPreset, dtype: str, parallelism: str | None, world_size: int) -> int:
    """Per-rank bytes the data-parallel engine itself holds (see the module doc), 0 on one rank.

    DDP: its gradient buckets, one more copy of every gradient (alive all run). FSDP2: the parameters it
    all-gathers for compute: the root module's (embedding, LM head, final norm: gathered for the whole
    forward and backward) plus FSDP_GATHERED_LAYERS decoder layers, unsharded.
    """
    if parallelism is None or world_size == 1:
        return 0
    elem = dtype_bytes(dtype)
    specs = parameter_specs(preset)
    if parallelism == "ddp":
        return sum(s.numel for s in specs) * elem
    per_layer = sum(s.numel for s in specs if s.name.startswith("model.layers.0."))
    root = sum(s.numel for s in specs if not s.name.startswith("model.layers."))
    return (root + min(FSDP_GATHERED_LAYERS, preset.layers) * per_layer) * elem


# --------------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ActivationBreakdown:
    """Bytes autograd keeps between forward and backward for one micro-batch, by where they come from.

    per_layer: one decoder layer (both RMSNorms, attention, MLP); layers: `per_layer * n_layers`;
    final_norm: the last RMSNorm (its output feeds the LM head); log_softmax: the fp32 [B*T, vocab]
    log-probabilities cross-entropy saves; loss_backward: the two further fp32 [B*T, vocab] buffers alive
    when backward starts (nll's gradient and log-softmax's input gradient).
    """

    per_layer: int
    layers: int
    final_norm: int
    log_softmax: int
    loss_backward: int

    @property
    def saved(self) -> int:
        """Everything saved for backward (the layers, the last norm, log-softmax)."""
        return self.layers + self.final_norm + self.log_softmax


def rmsnorm_saved_bytes(tokens: int, hidden: int, act_bytes: int) -> int:
    """Saved by one `LlamaRMSNorm` (x.float(); x * rsqrt(mean(x^2)); weight * x.to(dtype)).

    - the fp32 input (`pow` and `mul` save it; for an fp32 model that is the residual stream itself),
    - the normalised tensor cast back to the model dtype (saved by `weight *` for the weight's gradient),
    - the output (saved by the next linear layers; one storage however many read it),
    - the fp32 rsqrt per token.
    """
    return tokens * hidden * (4 + 2 * act_bytes) + tokens * 4


def attention_saved_bytes(batch: int, seq: int, preset: ModelPreset, act_bytes: int, attn: str) -> int:
    """Saved by one `LlamaAttention` beyond its input (counted with the norm).

    Both implementations keep q and k after RoPE, v, and the attention output that `o_proj` reads:
    4 x [B, T, hidden]. RoPE's pre-rotation q/k are not kept (cos/sin need no gradient).
    - sdpa (flash / memory-efficient kernels): no [T, T] matrix; the kernel keeps its fp32
      log-sum-exp [B, heads, T]. Its output is laid out [B, T, heads, head_dim], so transformers'
      `transpose(1, 2).contiguous()` is free and `o_proj` saves that same storage.
    - eager: softmax's fp32 probabilities [B, heads, T, T], plus their cast to the model dtype when it
      is not fp32 (the `matmul` with v saves that copy).
    """
    tokens = batch * seq
    qkvo = 4 * tokens * preset.hidden * act_bytes
    if attn == "sdpa":
        return qkvo + batch * preset.heads * seq * 4
    scores = batch * preset.heads * seq * seq
    cast = scores * act_bytes if act_bytes != 4 else 0
    return qkvo + scores * 4 + cast


def mlp_saved_bytes(tokens: int, intermediate: int, act_bytes: int) -> int:
    """Saved by one `LlamaMLP` beyond its input: gate(x) (SiLU's input), silu(gate), up(x) (both for
    the product's gradient) and the product (down_proj's input): 4 x [B, T, intermediate]."""
    return 4 * tokens * intermediate * act_bytes


def activation_breakdown(preset: ModelPreset, batch_size: int, seq_len: int, dtype: Any,
                         attn_implementation: str = "sdpa") -> ActivationBreakdown:
    """The activation model of `LlamaForCausalLM(input_ids, labels=...)` training in `dtype` (bytes).

    Verified against autograd's saved tensors and torch's MemTracker on CPU (see tests/test_estimate.py
    and docs/estimate.md); small tensors (labels, cos/sin [T, head_dim]) are left out.
    """
    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise EstimateError(f"unknown attention implementation {attn_implementation!r} "
                            f"(known: {', '.join(ATTENTION_IMPLEMENTATIONS)})")
    act = dtype_bytes(dtype)
    tokens = batch_size * seq_len
    per_layer = (2 * rmsnorm_saved_bytes(tokens, preset.hidden, act)
                 + attention_saved_bytes(batch_size, seq_len, preset, act, attn_implementation)
                 + mlp_saved_bytes(tokens, preset.intermediate, act))
    logits = tokens * preset.vocab * LOSS_DTYPE_BYTES
    return ActivationBreakdown(per_layer=per_layer, layers=per_layer * preset.layers,
                               final_norm=rmsnorm_saved_bytes(tokens, preset.hidden, act),
                               log_softmax=logits, loss_backward=2 * logits)


# --------------------------------------------------------------------------------------------------
# The estimate
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemoryEstimate:
    """The analytic memory of one training cell (bytes). `peak_bytes` is the number to compare."""

    model: str
    optimizer: str
    dtype: str
    batch_size: int
    seq_len: int
    grad_accum: int
    attn_implementation: str
    params: int
    param_bytes: int
    grad_bytes: int
    groups: tuple[GroupEstimate, ...]
    activations: ActivationBreakdown
    notes: tuple[str, ...] = field(default=())
    world_size: int = 1
    parallelism: str | None = None
    comm_bytes: int = 0  # the data-parallel engine's own buffers per rank (comm_buffer_bytes)

    @property
    def optimizer_state_bytes(self) -> int:
        return sum(g.state_bytes for g in self.groups)

    @property
    def workspace_bytes(self) -> int:
        """Groups are stepped one after another, so the step's transient is the largest group's."""
        return max((g.workspace_bytes for g in self.groups), default=0)

    @property
    def activation_bytes(self) -> int:
        return self.activations.saved

    @property
    def loss_transient_bytes(self) -> int:
        return self.activations.loss_backward

    @property
    def weights_and_state_bytes(self) -> int:
        """Parameters + optimizer state: the number the papers' memory tables give."""
        return self.param_bytes + self.optimizer_state_bytes

    @property
    def backward_peak_bytes(self) -> int:
        """When backward starts: every activation and the loss's buffers are alive (grads too when a
        previous micro-batch of the same step already wrote them)."""
        grads = self.grad_bytes if self.grad_accum > 1 else 0
        return (self.weights_and_state_bytes + grads + self.activation_bytes + self.loss_transient_bytes
                + self.comm_bytes)

    @property
    def step_peak_bytes(self) -> int:
        """Inside `optimizer.step()`: activations are gone, gradients and the step's workspace are alive
        (and DDP's buckets; FSDP has resharded its gathered parameters by then)."""
        comm = self.comm_bytes if self.parallelism == "ddp" else 0
        return self.weights_and_state_bytes + self.grad_bytes + self.workspace_bytes + comm

    @property
    def peak_bytes(self) -> int:
        return max(self.backward_peak_bytes, self.step_peak_bytes)

    @property
    def peak_phase(self) -> str:
        return "backward" if self.backward_peak_bytes >= self.step_peak_bytes else "optimizer_step"

    def components(self) -> dict[str, int]:
        """Named byte components (the estimate_* columns of a run row)."""
        out = {
            "estimate_bytes": self.peak_bytes,
            "estimate_param_bytes": self.param_bytes,
            "estimate_grad_bytes": self.grad_bytes,
            "estimate_optimizer_state_bytes": self.optimizer_state_bytes,
            "estimate_activation_bytes": self.activation_bytes,
            "estimate_loss_transient_bytes": self.loss_transient_bytes,
            "estimate_workspace_bytes": self.workspace_bytes,
            "estimate_weights_and_state_bytes": self.weights_and_state_bytes,
            "estimate_comm_bytes": self.comm_bytes,
        }
        for g in self.groups:
            out[f"estimate_optimizer_state_bytes.{g.name}"] = g.state_bytes
        return out


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EstimateError(f"{key} must be a positive integer, got {value!r}")


def check_parallelism(world_size: int, parallelism: str | None) -> str | None:
    """Validated (world_size, parallelism): None on one rank; "ddp" or "fsdp" required on more."""
    _check_positive(world_size=world_size)
    if world_size == 1:
        return None
    if parallelism not in PARALLELISMS:
        raise EstimateError(f"world_size {world_size} needs parallelism ddp or fsdp, "
                            f"got {parallelism!r}{did_you_mean(parallelism, PARALLELISMS)}")
    return parallelism


def estimate(model: str, optimizer: str, dtype: Any = "float32", batch_size: int = 1, seq_len: int = 256, *,
             grad_accum: int = 1, attn_implementation: str = "sdpa",
             info_of: Callable[[str], Any] = optimizer_info, world_size: int = 1,
             parallelism: str | None = None, hparams: dict[str, Any] | None = None,
             device: str = "cpu") -> MemoryEstimate:
    """The memory one training step of `model` with `optimizer` needs (bytes; see the module doc).

    Args:
        model: a preset name (swanbench.models.PRESETS), e.g. "1b".
        optimizer: a registry name (optimizers.available()), e.g. "adamw", "swan", "sinkgd".
        dtype: the whole model's dtype (weights, gradients, activations), e.g. "bfloat16".
        batch_size: sequences per micro-batch; seq_len: tokens per sequence.
        grad_accum: micro-batches per optimizer step (gradients stay alive across them).
        attn_implementation: "sdpa" (default of swanbench.models.build_model) or "eager".
        info_of: where optimizer declarations come from (tests pass a table).
        world_size, parallelism: ranks and "ddp" | "fsdp" (required when world_size > 1); every number
            is then per rank (module doc), batch_size the per-rank micro-batch.
        hparams: the optimizer's hyperparameters, for declarations that depend on them (GaLore's and
            APOLLO's rank, SWAN's `steps` and `whiten_precision`); defaults otherwise.
        device: where the step runs ("cpu", "cuda", ...): some optimizers' workspace depends on it.
    Raises NotDeclared (an EstimateError) for an optimizer that declares no state or workspace.
    """
    _check_positive(batch_size=batch_size, seq_len=seq_len, grad_accum=grad_accum)
    parallelism = check_parallelism(world_size, parallelism)
    try:
        preset = get_preset(model)
    except KeyError as exc:
        raise EstimateError(str(exc)) from None
    dt = canonical_dtype(dtype)
    shards = world_size if parallelism == "fsdp" else 1
    groups = list(optimizer_groups(preset, optimizer, dt, info_of, shards,
                                   _valid_hparams(optimizer, hparams, info_of), device))
    # A matrix optimizer that whitens needs each hidden matrix whole on one rank (its registry entry says so).
    if getattr(info_of(optimizer), "whole_matrix", False) and groups and groups[0].name == "matrix":
        extra = whole_matrix_extra_bytes(preset, parallelism, world_size)
        groups[0] = replace(groups[0], workspace_bytes=groups[0].workspace_bytes + extra)
    params = sum(g.params for g in groups)
    local_bytes = sum(g.param_bytes for g in groups)  # == params * element size on one rank or DDP
    return MemoryEstimate(
        model=model, optimizer=optimizer, dtype=dt, batch_size=batch_size, seq_len=seq_len,
        grad_accum=grad_accum, attn_implementation=attn_implementation, params=params,
        param_bytes=local_bytes, grad_bytes=local_bytes, groups=tuple(groups),
        activations=activation_breakdown(preset, batch_size, seq_len, dt, attn_implementation),
        world_size=world_size, parallelism=parallelism,
        comm_bytes=comm_buffer_bytes(preset, dt, parallelism, world_size),
    )


def _valid_hparams(optimizer: str, hparams: dict[str, Any] | None, info_of: Callable) -> dict[str, Any] | None:
    """The hyperparameters, resolved by the registry (defaults filled in, an unknown or invalid one an
    EstimateError line); as given when the declarations come from a test's table."""
    if not hparams or info_of is not optimizer_info:
        return hparams
    import optimizers

    try:
        return optimizers.resolve_hparams(optimizer, **hparams)
    except (ValueError, TypeError) as exc:
        raise EstimateError(f"optimizer {optimizer!r}: {exc}") from None


def estimate_run(model: str, optimizer: str, dtype: Any, batch_size: int, seq_len: int,
                 device: str = "cpu", *, grad_accum: int = 1,
                 attn_implementation: str = "sdpa", world_size: int = 1,
                 parallelism: str | None = None, hparams: dict[str, Any] | None = None) -> dict[str, Any]:
    """The estimate columns for one measured run: `estimate_bytes` (the modelled peak) and components.

    Beside them the harness records `unexplained_bytes(row, estimate_bytes)`: measured - estimate, from
    the device's comparable column (`estimate_compare_column`). The device and `hparams` also reach the
    declarations (GaLore's and APOLLO's rank, SWAN's `steps`, SinkGD's per-device workspace).
    """
    est = estimate(model, optimizer, dtype, batch_size, seq_len, grad_accum=grad_accum,
                   attn_implementation=attn_implementation, world_size=world_size, parallelism=parallelism,
                   hparams=hparams, device=device)
    out: dict[str, Any] = dict(est.components())
    out["estimate_peak_phase"] = est.peak_phase
    out["estimate_compare_column"] = comparable_column(device)
    return out


def comparable_column(device: str) -> str:
    """The runs.csv column that measures what the estimate models (live tensor bytes at the peak).

    CUDA: `peak_allocated_bytes`, the caching allocator's high-water mark of live tensors over the run
    (reserved adds its free cached blocks; NVML adds the CUDA context). CPU has no allocator statistics:
    `profiled_step_peak_bytes`, the torch profiler's peak of live tensor bytes during a sampled step after
    warm-up. Peak RSS is not comparable: it also holds the interpreter and libraries (~0.4 GiB), code
    pages touched by the first step, and heap memory glibc keeps after tensors are freed.
    """
    return "peak_allocated_bytes" if str(device).startswith("cuda") else "profiled_step_peak_bytes"


def measured_peak_bytes(row: dict[str, Any]) -> int | None:
    """The measured number comparable with `estimate_bytes` in a runs.csv row (bytes), or None."""
    value = row.get(comparable_column(str(row.get("device", ""))))
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return None
    return int(float(value))


def unexplained_bytes(row: dict[str, Any], estimate_bytes: int) -> int | None:
    """measured peak - estimate for a run row (None when the device gave no comparable measurement)."""
    measured = measured_peak_bytes(row)
    return None if measured is None else measured - int(estimate_bytes)


def estimate_many(model: str, optimizers: Iterable[str], dtype: Any, batch_size: int, seq_len: int,
                  **kwargs: Any) -> list[MemoryEstimate]:
    """One estimate per optimizer name, in order."""
    return [estimate(model, name, dtype, batch_size, seq_len, **kwargs) for name in optimizers]


# --------------------------------------------------------------------------------------------------
