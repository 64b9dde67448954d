"""SWAN and SinkGD: stateless matrix optimizers as thin `torch.optim.Optimizer` classes.

The math lives in `optimizers.functional`; these classes walk `param_groups`, skip parameters without a
gradient, group same-shape matrices into one batched call (SWAN), apply `lr * alpha` and keep
`self.state` empty: no momentum, no second moment, nothing persists between steps.

Shared behaviour:
- 2-D parameters only (`ValueError` otherwise): both methods are defined on matrices; use the hybrid
  (`optimizers.build("swan", model)`) to send embeddings, head and norms to AdamW.
- `lr` is in parameter units per unit-RMS update: the update has entry RMS 1 (Frobenius norm sqrt(m n)),
  and the step is `W <- W - lr * alpha * update` (alpha is the papers' matrix-group scale, default 0.05,
  so a scheduler acting on `group["lr"]` scales every group alike).
- `weight_decay` is decoupled (AdamW-style `W <- W (1 - lr wd)`; the protocol uses 0).
- Parameters and gradients may be bf16: everything between the gradient and the update is fp32; the
  update is added to the parameter in its own dtype (p + lr alpha u formed in fp32, rounded once), with no
  fp32 temporary of the parameter: on CPU, torch would otherwise allocate two for a mixed-dtype add.
- Non-finite gradients (`nonfinite=`): before any parameter changes, the step checks all gradients
  (one fused max-abs over the step's gradients: unlike a norm it cannot overflow, so every finite
  gradient, up to the fp32 maximum, passes). "raise" (default) raises `NonFiniteGradientError` and
  leaves every parameter untouched; "skip" skips the whole step, counts it in `skipped_steps` and warns.
  Whitening or Sinkhorn scaling would otherwise smear one NaN over the whole matrix.
- `preprocess_timer`: None, or a zero-argument callable returning a context manager; when set, the
  gradient preprocessing (GradNorm + whitening, or the SR-Sinkhorn scales) of each bucket of a step runs
  inside `with preprocess_timer():` (entered once per bucket; the harness sums a step's intervals).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from optimizers import functional as F
from optimizers.functional.gradnorm import _grad_norm_into
from optimizers.functional.sinkhorn import _scale_block_, _sinkhorn_inplace_
from optimizers.functional.whitening import _check_precision, _validate_whiten_args, _whiten_batch
from optimizers import native

__all__ = ["SWAN", "SinkGD", "NonFiniteGradientError", "swan_workspace_numel", "sinkgd_workspace_numel"]

NONFINITE_POLICIES = ("raise", "skip")

# SinkGD stacks same-shape matrices of at most this many elements into one batched call, up to this many
# elements per batch (4 MiB fp32; the batch's transient is the stacked fp32 copy, iterated in place, and on
# CPU a scratch of its squares of the same size).
SINKGD_STACK_NUMEL = 1 << 20
SINKGD_METHODS = ("auto", "native", "blocked", "vectors")


class NonFiniteGradientError(FloatingPointError):
    """A gradient had inf/NaN entries; raised before any parameter was modified."""


# --------------------------------------------------------------------------------------------------
# Workspace: the transient fp32 elements one step allocates (also declared through optimizers.info)
# --------------------------------------------------------------------------------------------------

def swan_workspace_numel(shape: tuple[int, ...], steps: int = 10, method: str = "newton-schulz",
                         precision: str = "fp32") -> int:
    """Peak transient fp32 elements of one SWAN step on one m x n matrix (s = min(m, n)), any parameter
    dtype and device.

    fp32 / tf32 whitening: the fp32 GradNorm'd copy X (m n) lives throughout; while whitening, the loop's
    s x s buffers (`functional.whiten_buffers`: 4 for k >= 3 coupled steps, 1 for NSDS) sit beside it; then
    Z (s^2) and the output Z X (m n). X then serves as the scratch through which a bf16 parameter is
    updated, so the parameter dtype adds nothing.
    bf16 whitening (counted in bytes, returned as bytes // 4): X (4 m n) throughout, plus the largest of
    its bf16 copy with the bf16 Gram and its fp32 normalisation (2 m n + 6 s^2), the bf16 copy with the
    loop's bf16 buffers (2 m n + 2 B s^2), and the bf16 copy, Z and the bf16 product (4 m n + 2 s^2); the
    product is converted into X's buffer, which becomes the update. These are the tensors; on CPU, oneDNN's
    bf16 matmuls also pack an operand into scratch of their own (measured: +11 KiB on 24 x 72, +225 KiB on
    300 x 700, i.e. +10% .. +75%), which this does not count; CUDA's matmuls allocate nothing per call.
    O(m + n) row statistics and scalars are not counted.
    """
    m, n = int(shape[-2]), int(shape[-1])
    s = min(m, n)
    buffers = F.whiten_buffers(steps, method)
    if precision == "bf16":
        peak = 4 * m * n + max(2 * m * n + 6 * s * s, 2 * m * n + 2 * buffers * s * s, 4 * m * n + 2 * s * s)
        return peak // 4
    _check_precision(precision)
    return m * n + max(buffers * s * s, s * s + m * n)


def sinkgd_workspace_numel(shape: tuple[int, ...], method: str = "auto", device: str | torch.device = "cpu",
                           dtype: torch.dtype = torch.float32) -> int:
    """Peak transient fp32 elements of one SinkGD step on one m x n matrix on `device`, parameters `dtype`.

    "auto" is what the step runs: on CPU "native" when the C kernels are built, else "blocked"; on other
    devices (CUDA) "vectors".
    "native": the scales r (m) and c (n) and one n-vector of column sums per torch thread; the update is
        fused into the parameter (fp32 or bf16) in the same C sweep. Exact.
    "blocked" (the pure-torch CPU kernel): one L2-sized scratch block of rows (b = `functional.
        sinkhorn_block_rows(n)` rows), the scales r and c, the row factors (m) and the column accumulator
        (n): b n + 2 m + 2 n; then the update with r, c and one scratch block, two for a bf16 parameter
        (the fp32 sum before rounding). No m x n buffer.
    "vectors" (CUDA's path, also runnable on CPU): the iterate, an fp32 m x n copy of the gradient scaled
        in place, and its row and column factors: m n + m + n on CUDA, whose update adds the iterate to the
        parameter in one kernel (bf16 cast in registers). On CPU the column sums go through an m x n
        scratch of squares (torch's CPU reduction over rows is ~10x slower than a BLAS product): 2 m n +
        m + n, which also covers a bf16 parameter's m x n fp32 cast in the update (torch casts mixed-dtype
        operands through temporaries on CPU only).
    Not counted (as for SWAN): O(m + n) transients of the first row step (row maxima and their exponents,
    at most ~4 (m + n) elements). The non-native kernels stack small same-shape matrices (m n <=
    SINKGD_STACK_NUMEL) into one fp32 batch iterated as "vectors" (the stack, up to 4 MiB, plus on CPU its
    squares scratch); this function declares one matrix stepped alone.
    """
    m, n = int(shape[-2]), int(shape[-1])
    cpu = torch.device(device).type == "cpu"
    half_on_cpu = cpu and dtype != torch.float32
    if method == "auto":
        method = ("native" if native.available() else "blocked") if cpu else "vectors"
    if method == "native":
        if not cpu:
            raise ValueError("sinkgd_workspace_numel: the native kernels run on CPU only")
        return m + n + max(1, torch.get_num_threads()) * n
    if method == "blocked":
        rows = min(m, F.sinkhorn_block_rows(n)) if cpu else m
        return max(rows * n + 2 * m + 2 * n, m + n + rows * n * (2 if half_on_cpu else 1))
    if method == "vectors":
        return (2 * m * n if cpu else m * n) + m + n
    raise ValueError(f"sinkgd_workspace_numel knows 'auto', 'native', 'blocked' and 'vectors', got {method!r}")


def _add_update_(p: Tensor, u: Tensor, alpha: float, scratch: Tensor | None = None) -> None:
    """p += alpha * u for an fp32 update u of p's shape, with p + alpha u formed in fp32 and rounded once.

    Same dtype, or any device but CPU (CUDA kernels cast mixed operands in registers): one add_. On CPU a
    bf16/fp16 parameter would make torch allocate two fp32 temporaries (p cast up, and the fp32 result
    before the cast down); instead the sum goes through `scratch` (an fp32 buffer of p's shape that the
    caller no longer needs: none allocated), or, without one, through u itself (consumed; one temporary,
    p cast up).
    """
    if p.dtype == u.dtype or p.device.type != "cpu":
        p.add_(u, alpha=alpha)
    elif scratch is not None:
        p.copy_(scratch.copy_(p).add_(u, alpha=alpha))
    else:
        p.copy_(u.mul_(alpha).add_(p))


# --------------------------------------------------------------------------------------------------
# The shared skeleton
# --------------------------------------------------------------------------------------------------

def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_nonneg(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_positive(name: str, value: Any) -> None:
    _check_nonneg(name, value)
    if value == 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


class _StatelessMatrixOptimizer(torch.optim.Optimizer):
    """Walks groups, checks gradients, times preprocessing; subclasses implement `_step_group`."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self._validate(defaults)
        super().__init__(params, defaults)
        self.preprocess_timer: Callable[[], contextlib.AbstractContextManager] | None = None
        self.skipped_steps = 0

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate(group)
        for p in group["params"]:
            if p.dim() != 2:
                raise ValueError(
                    f"{type(self).__name__} only supports 2-D parameters (matrices), got shape "
                    f"{tuple(p.shape)}; route vectors and embeddings to AdamW with optimizers.build(...)")

    def _validate(self, group: dict[str, Any]) -> None:
        _check_nonneg("lr", group["lr"])
        _check_positive("alpha", group["alpha"])
        _check_positive("eps", group["eps"])
        _check_nonneg("weight_decay", group["weight_decay"])
        if group["nonfinite"] not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {group['nonfinite']!r}")

    def _timer(self) -> contextlib.AbstractContextManager:
        return self.preprocess_timer() if self.preprocess_timer is not None else contextlib.nullcontext()

    @staticmethod
    def _params_with_grad(group: dict[str, Any]) -> list[Tensor]:
        out = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("SWAN/SinkGD do not support sparse gradients")
            out.append(p)
        return out

    def _all_finite(self, groups: list[list[Tensor]]) -> bool:
        """One fused max-abs per device/dtype over every gradient of the step (one host sync): inf and NaN
        propagate through it, and, unlike the 2-norm, it cannot overflow for finite entries (a norm
        overflowed from entries of ~1e17 on, flagging finite gradients)."""
        grads = [p.grad for params in groups for p in params]
        if not grads:
            return True
        maxima = torch._foreach_norm(grads, float("inf"))
        return bool(torch.stack([n.float() for n in maxima]).isfinite().all())

    def _nonfinite(self, policy: str) -> None:
        if policy == "raise":
            raise NonFiniteGradientError(
                f"{type(self).__name__}: a gradient has inf/NaN entries; no parameter was changed "
                "(pass nonfinite='skip' to skip such steps instead)")
        self.skipped_steps += 1
        warnings.warn(f"{type(self).__name__}: non-finite gradient, step skipped "
                      f"({self.skipped_steps} so far)", RuntimeWarning, stacklevel=3)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter with a gradient; returns the closure's loss (or None)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        per_group = [self._params_with_grad(g) for g in self.param_groups]
        if not self._all_finite(per_group):
            # the policy of the first group decides (groups rarely differ; the check is step-wide)
            self._nonfinite(self.param_groups[0]["nonfinite"])
            return loss
        for group, params in zip(self.param_groups, per_group):
            if params:
                self._step_group(group, params)
        return loss

    def _step_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        raise NotImplementedError

    @staticmethod
    def _decay_(params: list[Tensor], group: dict[str, Any]) -> None:
        if group["weight_decay"] != 0:
            torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])


def _same_shape_buckets(params: list[Tensor]) -> list[list[Tensor]]:
    """Parameters grouped by (shape, dtype, device), in first-seen order."""
    buckets: dict[tuple, list[Tensor]] = {}
    for p in params:
        buckets.setdefault((tuple(p.shape), p.dtype, p.device), []).append(p)
    return list(buckets.values())


def _chunks(items: list[Tensor], size: int) -> list[list[Tensor]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


# --------------------------------------------------------------------------------------------------
# SWAN
# --------------------------------------------------------------------------------------------------

class SWAN(_StatelessMatrixOptimizer):
    r"""SWAN: SGD with GradNorm and GradWhitening, no optimizer state (arXiv 2412.13148, ICML 2025).

    For every 2-D parameter W (m x n) with gradient G:

        Gn = GradNorm(G)                     rows standardised: (G - mean_row) / max(std_row, eps)
        U  = GradWhiten(Gn)                  (Gn Gn^T)^(-1/2) Gn ~ U V^T, smaller Gram side, fp32
        U  <- U * sqrt(m n) / ||U||_F        entry RMS 1, like an Adam update
        W  <- W (1 - lr wd) - lr * alpha * U

    Use it for the hidden attention/MLP matrices of a transformer, with AdamW on embeddings, LM head and
    norms (`optimizers.build("swan", model)` builds exactly that).

    Args:
        params: 2-D parameters or groups.
        lr: learning rate (default 0.02, the papers' global lr); schedulers act on it.
        alpha: matrix-group scale (default 0.05, the papers' convention; effective step 1e-3 per unit RMS).
        steps: Newton-Schulz steps k (default 10, the full Newton-Schulz setting of the SWAN paper's cost
            estimate, whose whitening share of a 1.3B step is about 9%).
        beta: Newton-Schulz step factor b (default 0.8: x -> b(3x - x^3) lifts small singular values by
            2.4x per step (x0 >= 2.4^-10 ~ 1.6e-4 is lifted within 10 steps) and, once lifted, keeps them in
            [0.56, 1.6];
            b = 0.5 converges to exactly U V^T but needs many more steps for small singular values).
        whitening: "newton-schulz" (coupled iteration) or "diag" (NSDS diagonal substitution, the paper's
            fast variant; use steps=2, beta=0.4 with it, as `swan-fast` does).
        whiten_precision: "fp32" (default, the paper's choice), "tf32" (fp32 tensors with TF32 matmuls for
            the whitening only, then the global setting is restored; CUDA only: elsewhere it runs in fp32,
            see `functional.effective_whiten_precision`) or "bf16" (the Gram, Newton-Schulz and final
            products in bfloat16, fp32 norms and output). Error against the float64 iteration:
            `functional.grad_whiten`'s docstring.
        eps: floor on row std in GradNorm and on the Frobenius norm in the rescale (default 1e-8).
        weight_decay: decoupled weight decay (default 0, as in the protocol).
        nonfinite: "raise" (default) or "skip" for steps with inf/NaN gradients.
        batch_budget: fp32 elements a batch of same-shape matrices may use for its whitening workspace;
            default None = the workspace of the largest matrix in the optimizer, so batching never raises
            the step's transient peak above stepping that one matrix alone. Raise it on GPUs with many
            small matrices.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.02, alpha: float = 0.05, steps: int = 10,
                 beta: float = 0.8, whitening: str = "newton-schulz", eps: float = F.GRAD_NORM_EPS,
                 weight_decay: float = 0.0, nonfinite: str = "raise", batch_budget: int | None = None,
                 whiten_precision: str = "fp32") -> None:
        defaults = dict(lr=lr, alpha=alpha, steps=steps, beta=beta, whitening=whitening, eps=eps,
                        weight_decay=weight_decay, nonfinite=nonfinite, batch_budget=batch_budget,
                        whiten_precision=whiten_precision)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # groups pickled before whiten_precision existed
            group.setdefault("whiten_precision", "fp32")

    def _validate(self, group: dict[str, Any]) -> None:
        super()._validate(group)
        group.setdefault("whiten_precision", "fp32")
        _validate_whiten_args(group["steps"], group["beta"], group["whitening"], group["whiten_precision"])
        if group["batch_budget"] is not None:
            _check_positive_int("batch_budget", group["batch_budget"])

    def _workspace(self, shape: tuple[int, ...], group: dict[str, Any]) -> int:
        return swan_workspace_numel(shape, group["steps"], group["whitening"], group["whiten_precision"])

    def _budget(self, group: dict[str, Any]) -> int:
        if group["batch_budget"] is not None:
            return group["batch_budget"]
        return max(self._workspace(tuple(p.shape), g) for g in self.param_groups for p in g["params"])

    def _step_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        budget = self._budget(group)
        for bucket in _same_shape_buckets(params):
            per_matrix = self._workspace(tuple(bucket[0].shape), group)
            for chunk in _chunks(bucket, max(1, budget // per_matrix)):
                with self._timer():
                    update, scratch = self._preprocess(chunk, group)
                self._apply(chunk, update, group, scratch)
                del update, scratch

    @staticmethod
    def _preprocess(params: list[Tensor], group: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """(update, scratch): the fp32 update [B, m, n] from GradNorm (written straight into the batch X) ->
        whitening -> RMS-1 rescale, and X, now free, as the scratch for the update (None where the update
        was written into X itself)."""
        m, n = params[0].shape
        x = torch.empty((len(params), m, n), dtype=torch.float32, device=params[0].device)
        for i, p in enumerate(params):
            _grad_norm_into(p.grad, x[i], group["eps"])
        update = _whiten_batch(x, group["steps"], group["beta"], group["whitening"], group["whiten_precision"],
                                 centered=True, owned=True)
        F.frobenius_rescale_(update, math.sqrt(m * n), group["eps"], check_finite=True)
        return update, (None if update is x else x)

    def _apply(self, params: list[Tensor], update: Tensor, group: dict[str, Any],
               scratch: Tensor | None = None) -> None:
        self._decay_(params, group)
        step = -group["lr"] * group["alpha"]
        for i, (p, u) in enumerate(zip(params, update.unbind(0))):
            _add_update_(p, u, step, None if scratch is None else scratch[i])


# --------------------------------------------------------------------------------------------------
# SinkGD
# --------------------------------------------------------------------------------------------------

class SinkGD(_StatelessMatrixOptimizer):
    r"""SinkGD: gradient descent on the SR-Sinkhorn-normalised gradient, no state (arXiv 2502.06742).

    For every 2-D parameter W (m x n) with gradient G, SR-Sinkhorn (Algorithm 3) repeats L times
    "rows to l2 norm sqrt(n), then columns to l2 norm sqrt(m)", i.e. finds vectors r, c with
    S = diag(r) G diag(c) (entry RMS 1), and

        W <- W (1 - lr wd) - lr * alpha * diag(r) G diag(c)

    On CPU the scales are computed with one pass over G per iteration (see `functional.sinkhorn_scales`)
    and the scaled matrix is never materialised: it is fused into the parameter update (one C sweep, or
    block by block). On CUDA ("vectors") the iterate is one fp32 m x n copy of G, scaled in place, and the
    update is a single kernel per matrix (no row blocks: those were ~10k tiny launches per 1b step). Large
    matrices are stepped one at a time; small same-shape ones (<= SINKGD_STACK_NUMEL elements) are stacked
    into one batched call where per-op overhead would otherwise dominate (not with the native kernels).

    Args:
        params: 2-D parameters or groups.
        lr: learning rate (default 0.02, the paper's global lr).
        alpha: matrix-group scale (default 0.05: the paper's matrix lr is 0.05 x global lr).
        iterations: Sinkhorn iterations L (default 5, the paper's; L = 1 is cheaper with a small loss).
        eps: floor on the iterate's row/column norms (default 1e-8); a zero row or column stays zero.
        weight_decay: decoupled weight decay (default 0, as in the protocol).
        nonfinite: "raise" (default) or "skip" for steps with inf/NaN gradients.
        method: "native" (the C kernels of `optimizers.native`, CPU; the update fused into the same
            row sweep), "blocked" (pure torch, one L2-sized row block at a time; CPU) or "vectors"
            (the iterate materialised and scaled in place, one fused update per matrix: the CUDA path,
            runnable on CPU to test it); default "auto" picks native on CPU when it is built, else
            blocked, and vectors elsewhere.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.02, alpha: float = 0.05, iterations: int = 5,
                 eps: float = F.GRAD_NORM_EPS, weight_decay: float = 0.0, nonfinite: str = "raise",
                 method: str = "auto") -> None:
        defaults = dict(lr=lr, alpha=alpha, iterations=iterations, eps=eps, weight_decay=weight_decay,
                        nonfinite=nonfinite, method=method)
        super().__init__(params, defaults)

    def _validate(self, group: dict[str, Any]) -> None:
        super()._validate(group)
        _check_positive_int("iterations", group["iterations"])
        if group["method"] not in SINKGD_METHODS:
            raise ValueError(f"method must be one of {', '.join(map(repr, SINKGD_METHODS))}, got {group['method']!r}")

    def _step_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        self._decay_(params, group)
        step = -group["lr"] * group["alpha"]
        for bucket in _same_shape_buckets(params):
            m, n = bucket[0].shape
            method = F.resolve_sinkhorn_method(bucket[0].grad, group["method"])
            # Stacking pays for itself only where per-op overhead dominates (the torch kernels); a native
            # call costs microseconds, so native matrices go one by one with no stacked copy.
            if method != "native" and len(bucket) > 1 and m * n <= SINKGD_STACK_NUMEL:
                for chunk in _chunks(bucket, max(1, SINKGD_STACK_NUMEL // (m * n))):
                    self._step_stacked(chunk, group, step)
                continue
            for p in bucket:
                if method == "vectors":  # the scaled gradient itself, then one fused update
                    with self._timer():
                        update = F.sr_sinkhorn(p.grad, group["iterations"], group["eps"], "vectors")
                    _add_update_(p, update, step)
                    del update
                    continue
                with self._timer():
                    r, c = F.sinkhorn_scales(p.grad, group["iterations"], group["eps"], method)
                self._apply_scaled_(p, r, c, step, method)
                del r, c  # before the next matrix's scales: the step's peak is one matrix's workspace

    def _step_stacked(self, params: list[Tensor], group: dict[str, Any], step: float) -> None:
        """Small same-shape matrices in one batch: a handful of ops for the chunk instead of ~20 per matrix.

        The stack is one fp32 copy (B m n; on CPU plus a scratch of its squares), iterated in place into the
        scaled matrices and added to the parameters. Per-op overhead, not bandwidth, dominates small matrices on CPU (and kernel launches on
        GPU), so the copy pays for itself.
        """
        m, n = params[0].shape
        with self._timer():
            x = torch.empty((len(params), m, n), dtype=torch.float32, device=params[0].device)
            for i, p in enumerate(params):
                x[i].copy_(p.grad)
            _sinkhorn_inplace_(x, group["iterations"], group["eps"], scales=False)
        for p, u in zip(params, x.unbind(0)):
            _add_update_(p, u, step)

    @staticmethod
    def _apply_scaled_(p: Tensor, r: Tensor, c: Tensor, step: float, method: str) -> None:
        """p += step * (G r) c with no m x n temporary on CPU: one fused C sweep for the native method (p and
        G of one dtype), else one L2-sized block of rows at a time. Elsewhere (CUDA) one block: the whole
        matrix in two kernels."""
        g = p.grad
        if method == "native" and p.dtype == g.dtype and native.supports(p) and native.supports(g):
            native.update(p.detach(), g, r, c, step)
            return
        m, n = p.shape
        cpu = p.device.type == "cpu"
        rows = min(m, F.sinkhorn_block_rows(n)) if cpu else m
        scratch = torch.empty((rows, n), dtype=r.dtype, device=p.device)
        spare = torch.empty_like(scratch) if cpu and p.dtype != scratch.dtype else None
        for start in range(0, m, rows):
            blk = _scale_block_(g[start:start + rows], r[start:start + rows], c, scratch[: min(rows, m - start)])
            _add_update_(p[start:start + rows], blk, step, None if spare is None else spare[: blk.shape[0]])
