"""Tensor importance (paper Eq. 6): the first-order loss drop of the update the optimizer would make.

    I_k = - Σ_i Δw_i^(k) · ∂L/∂w_i^(k)

Δw is what the real AdamW would do at its next step (current moments, step count, bias correction,
the scheduler's current lr, decoupled weight decay), computed from a copy of its state; gradients
are averaged over a few batches in eval mode. Nothing observable changes: parameters, requires_grad
flags, ``.grad``, optimizer and scheduler state, RNG states and the training data order are the
same afterwards (gradients come from ``torch.autograd.grad``, never ``.backward()``).
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Callable, ContextManager, Iterable, Literal, Mapping, Sequence

import numpy as np
import torch

from gt_core.profiler import TensorProfile

Metric = Literal["dw_grad", "dw", "grad"]
METRICS: tuple[str, ...] = ("dw_grad", "dw", "grad")


def adam_update(
    param: torch.Tensor, grad: torch.Tensor, state: Mapping, group: Mapping, decoupled: bool | None = None
) -> torch.Tensor:
    """The change ``w_new - w`` one ``torch.optim.Adam``/``AdamW`` step would apply to ``param``.

    Mirrors the single-tensor implementation: moments updated with ``grad``, bias-corrected with the
    step count the step would reach, the group's current lr, and weight decay either decoupled
    (AdamW: ``w ← w·(1 - lr·wd)``) or added to the gradient (Adam). ``decoupled`` defaults to the
    group's ``decoupled_weight_decay`` key (absent, i.e. False, in torch versions that lack it).
    """
    if group.get("maximize", False):
        grad = -grad
    beta1, beta2 = group["betas"]
    lr = float(group["lr"])
    eps = float(group["eps"])
    weight_decay = float(group["weight_decay"])
    if decoupled is None:
        decoupled = bool(group.get("decoupled_weight_decay", False))
    p = param.detach().float()
    g = grad.detach().float()
    if weight_decay and not decoupled:
        g = g + weight_decay * p
    if state:
        step = float(state["step"]) + 1.0
        exp_avg = state["exp_avg"].float() * beta1 + (1 - beta1) * g
        exp_avg_sq = state["exp_avg_sq"].float() * beta2 + (1 - beta2) * g * g
    else:
        step = 1.0
        exp_avg = (1 - beta1) * g
        exp_avg_sq = (1 - beta2) * g * g
    if group.get("amsgrad", False):
        previous = state["max_exp_avg_sq"].float() if state else torch.zeros_like(exp_avg_sq)
        exp_avg_sq = torch.maximum(previous, exp_avg_sq)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    denom = exp_avg_sq.sqrt() / (bias_correction2**0.5) + eps
    delta = -(lr / bias_correction1) * exp_avg / denom
    if weight_decay and decoupled:
        delta = delta - lr * weight_decay * p
    return delta


def unreachable_tensors(profile: TensorProfile, rho: float) -> np.ndarray:
    """Mask of tensors that can never fit the budget (paper Eq. 8): their dy path alone is too dear.

    Walking from the output towards the input, the cumulated ``t_dy`` grows; the first tensor where
    it exceeds the backward budget ``ρ·T_full - T_fp`` and every tensor nearer the input are cut.
    The additive chain over-prices a lone tensor (it never needs its own input gradient), so the cut
    moves down while the exact cost of training the boundary tensor alone still fits.
    """
    n = len(profile)
    t_full = profile.t_full
    budget_backward = rho * t_full - profile.t_fp
    dy_from_output = np.cumsum(profile.t_dy[::-1])[::-1]  # [k] = Σ_{j ≥ k} t_dy[j]
    out = dy_from_output > budget_backward * (1 + 1e-12)
    cut = int(np.flatnonzero(out).max()) if out.any() else -1  # deepest unreachable index
    while cut >= 0:
        alone = np.zeros(n, dtype=bool)
        alone[cut] = True
        if profile.cost(alone) <= rho * t_full * (1 + 1e-12):
            out[cut] = False
            cut -= 1
        else:
            break
    return out


def _named_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    # Every alias of a tied weight, so profile names (first name in execution order) resolve.
    return dict(model.named_parameters(remove_duplicate=False))


def parameters_by_name(model: torch.nn.Module, names: Sequence[str]) -> list[torch.nn.Parameter]:
    """The parameters behind ``names`` (profile order); KeyError names the first unknown one."""
    by_name = _named_parameters(model)
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KeyError(f"model has no parameter named {missing[0]!r}")
    return [by_name[n] for n in names]


class _Restore:
    """Snapshot and restore everything importance evaluation could disturb (besides weights)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __enter__(self) -> "_Restore":
        self.training = {m: m.training for m in self.model.modules()}
        self.requires_grad = {p: p.requires_grad for p in self.model.parameters()}
        self.torch_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.numpy_rng = np.random.get_state()
        self.python_rng = random.getstate()
        return self

    def __exit__(self, *exc: object) -> None:
        for module, mode in self.training.items():
            module.training = mode
        for p, flag in self.requires_grad.items():
            p.requires_grad_(flag)
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        np.random.set_state(self.numpy_rng)
        random.setstate(self.python_rng)


def summed_gradients(
    model: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    batches: Iterable[Mapping[str, torch.Tensor]],
    loss_weights: Sequence[float] | None = None,
    autocast: Callable[[], ContextManager[Any]] | None = None,
) -> tuple[list[torch.Tensor], int]:
    """Σ_b weight_b·∂loss_b/∂p over ``batches`` (fp32), without touching ``p.grad``; and the batch count.

    ``loss_weights`` defaults to 1 per batch. Batches are moved to the device of the first
    parameter, so importance runs where the model lives; the forward runs under ``autocast()``
    when given (the training step's mixed precision), the sums stay float32."""
    device = params[0].device if params else torch.device("cpu")
    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    count = 0
    for k, batch in enumerate(batches):
        weight = 1.0 if loss_weights is None else float(loss_weights[k])
        batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
        with autocast() if autocast is not None else contextlib.nullcontext():
            loss = model(**batch).loss * weight
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
        for total, g in zip(sums, grads):
            if g is not None:
                total.add_(g.float())
        count += 1
    return sums, count


def compute_importance(
    model: torch.nn.Module,
    names: Sequence[str],
    batches: Iterable[Mapping[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    metric: Metric = "dw_grad",
    profile: TensorProfile | None = None,
    rho: float | None = None,
    loss_weights: Sequence[float] | None = None,
    batch_count: int | None = None,
    reduce: Callable[[torch.Tensor], None] | None = None,
    autocast: Callable[[], ContextManager[Any]] | None = None,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Importance of each tensor in ``names`` (profile order), scaled by the largest magnitude.

    ``metric``: ``"dw_grad"`` is Eq. 6, ``-Σ Δw·g``; ``"dw"`` is ``Σ|Δw|``; ``"grad"`` is ``Σ|g|``.
    With ``profile`` and ``rho``, tensors that can never fit the budget (Eq. 8) are frozen for the
    backward (so it stops early and uses less memory) and get ``-inf``.
    ``optimizer`` must be Adam or AdamW holding every named parameter (any optimizer for ``"grad"``).

    The gradient is the mean over batches: Σ weight·grad / ``batch_count`` (default: the number
    of batches). Several processes pass their own share of the batches, each weighted by its
    share of the loss, the global ``batch_count``, and ``reduce`` (an in-place sum over
    processes, e.g. ``dist.all_reduce``), so every process returns the same array.
    ``eligible`` (a mask over ``names``): the others are not scored and get ``-inf``.
    Non-finite gradients (fp16 overflow) give non-finite scores for their tensors; the caller
    decides what to do with them (:class:`gt_core.green_selector.GreenSelector` skips them).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown importance metric {metric!r}; choose one of {', '.join(METRICS)}")
    if metric != "grad":
        check_adam(optimizer)
    params = parameters_by_name(model, names)
    excluded = np.zeros(len(names), dtype=bool)
    if profile is not None and rho is not None:
        if list(profile.names) != list(names):
            raise ValueError("profile and names disagree")
        excluded = unreachable_tensors(profile, rho)
    if eligible is not None:  # e.g. tensors the user froze, which the optimizer does not hold
        excluded = excluded | ~np.asarray(eligible, dtype=bool)

    importance = np.full(len(names), -np.inf)
    live = [i for i in range(len(names)) if not excluded[i]]
    if not live:
        return importance
    live_params = [params[i] for i in live]
    with _Restore(model), torch.no_grad():
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for p in live_params:
            p.requires_grad_(True)
        with torch.enable_grad():
            sums, seen = summed_gradients(model, live_params, batches, loss_weights, autocast)
        count = seen if batch_count is None else int(batch_count)
        if count <= 0:
            raise ValueError("importance needs at least one batch")
        if reduce is not None:
            flat = torch.cat([s.reshape(-1) for s in sums])
            reduce(flat)
            sums = [g.view_as(s) for g, s in zip(torch.split(flat, [s.numel() for s in sums]), sums)]
        grads = [s / count for s in sums]
        score_tensors(importance, live, live_params, grads, names, optimizer, metric)
    return normalise(importance)


def check_adam(optimizer: torch.optim.Optimizer) -> None:
    """Raise ValueError unless ``optimizer`` is (or wraps, as accelerate does) torch's Adam or AdamW:
    Eq. 6 needs the update the optimizer would make, which is modelled for those two only."""
    inner = unwrap_optimizer(optimizer)
    if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
        raise ValueError(
            f"importance metric needs torch.optim.Adam or AdamW, got {type(inner).__name__}; "
            "use importance_metric='grad' or an Adam/AdamW optimizer"
        )


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a wrapper (accelerate's AcceleratedOptimizer keeps it as ``.optimizer``)."""
    # AcceleratedOptimizer is itself an Optimizer subclass: unwrap by the attribute, not the type.
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def score_tensors(
    importance: np.ndarray,
    indices: Sequence[int],
    params: Sequence[torch.nn.Parameter],
    grads: Sequence[torch.Tensor],
    names: Sequence[str],
    optimizer: torch.optim.Optimizer,
    metric: Metric,
) -> None:
    """Write each tensor's unscaled score (``metric``) into ``importance[indices]``."""
    inner = unwrap_optimizer(optimizer)
    # AdamW by type: torch versions before the group key existed decay it decoupled all the same.
    decoupled_type = isinstance(inner, torch.optim.AdamW)
    group_of = {id(p): group for group in inner.param_groups for p in group["params"]}
    for i, p, g in zip(indices, params, grads):
        if id(p) not in group_of:
            raise KeyError(f"optimizer does not hold parameter {names[i]!r}")
        if metric == "grad":
            value = g.abs().sum()
        else:
            group = group_of[id(p)]
            decoupled = decoupled_type or bool(group.get("decoupled_weight_decay", False))
            delta = adam_update(p, g, inner.state.get(p, {}), group, decoupled=decoupled)
            value = delta.abs().sum() if metric == "dw" else -(delta * g).sum()
        importance[i] = float(value)


def normalise(importance: np.ndarray) -> np.ndarray:
    """Scale the finite scores by their largest magnitude (in place; -inf stays -inf)."""
    finite = np.isfinite(importance)
    scale = float(np.abs(importance[finite]).max()) if finite.any() else 0.0
    if scale > 0:
        importance[finite] /= scale
    return importance
