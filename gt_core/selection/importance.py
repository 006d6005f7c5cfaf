"""Tensor importance (paper Eq. 6): the first-order loss drop of the update the optimizer would make.

    I_k = - Σ_i Δw_i^(k) · ∂L/∂w_i^(k)

Δw is what the real AdamW would do at its next step (current moments, step count, bias correction,
the scheduler's current lr, decoupled weight decay), computed from a copy of its state; gradients
are averaged over a few batches in eval mode. Nothing observable changes: parameters, requires_grad
flags, ``.grad``, optimizer and scheduler state, RNG states and the training data order are the
same afterwards (the pass sets the caller's ``.grad`` aside and puts it back).
"""

from __future__ import annotations

import contextlib
import functools
import random
from typing import Callable, ContextManager, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from gt_core.models.traits import forwards_replaced, transformer_blocks
from gt_core.profiler import TensorProfile
from gt_core.distributed.sharding import is_sharded, local_part

Metric = Literal["dw_grad", "dw", "grad"]
METRICS: tuple[str, ...] = ("dw_grad", "dw", "grad")
# Elements of a tensor scored at once: the Adam update's temporaries are a few of these (fp32, 256 KiB each).
SCORE_SLICE_ELEMENTS = 1 << 16


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
        # Gradients arrive in .grad during the pass: whatever the caller had there is set aside.
        self.grads = {p: p.grad for p in self.model.parameters() if p.grad is not None}
        for p in self.grads:
            p.grad = None
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
        for p in self.model.parameters():
            p.grad = self.grads.get(p)
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        np.random.set_state(self.numpy_rng)
        random.setstate(self.python_rng)


class _ScoreOnArrival:
    """Post-accumulate-grad hooks that turn each tensor's gradient into its score as it arrives.

    On the last pass a tensor's gradient (plus its fp32 sum over the earlier passes, if any) is
    scored at once and freed, so no pass holds more than the gradients in flight; with several
    batches the running fp32 sums of the earlier passes are the only gradient-sized memory kept.
    Replicated parameters (one process, DDP) get their gradient summed over processes (``reduce``)
    before scoring: Adam's update is not linear in it. Sharded parameters (FSDP2) arrive already
    summed over processes by the reduce-scatter, as this rank's shard; Adam is elementwise, so the
    shard's score is this rank's part of the tensor's score and the parts are summed afterwards.
    """

    def __init__(self, indices: Sequence[int], params: Sequence[torch.nn.Parameter], names: Sequence[str],
                 optimizer: torch.optim.Optimizer, metric: Metric, count: int,
                 reduce: Callable[[torch.Tensor], None] | None) -> None:
        self.positions: dict[torch.nn.Parameter, list[int]] = {}
        for i, p in zip(indices, params):  # a tied weight may stand behind several names
            self.positions.setdefault(p, []).append(i)
        self.names, self.metric, self.count, self.reduce = names, metric, count, reduce
        self.optimizer = unwrap_optimizer(optimizer)
        # AdamW by type: torch versions before the group key existed decay it decoupled all the same.
        self.decoupled_type = isinstance(self.optimizer, torch.optim.AdamW)
        self.group_of = {p: group for group in self.optimizer.param_groups for p in group["params"]}
        for p in params:
            if p not in self.group_of:
                raise KeyError(f"optimizer does not hold parameter {names[self.positions[p][0]]!r}")
        self.sums: dict[torch.nn.Parameter, torch.Tensor] = {}
        self.replicated_scores: dict[torch.nn.Parameter, float] = {}
        self.shard_scores: dict[torch.nn.Parameter, float] = {}
        self.last_pass = False

    def __call__(self, p: torch.nn.Parameter) -> None:
        grad = local_part(p.grad).float()
        p.grad = None
        total = self.sums.pop(p, None)
        total = grad if total is None else total.add_(grad)
        if self.last_pass:
            self.score(p, total)
        else:
            self.sums[p] = total

    def score(self, p: torch.nn.Parameter, total: torch.Tensor) -> None:
        """Score ``p`` from ``total``, its gradient summed over this rank's passes (owned: divided in place)."""
        if is_sharded(p):
            self.shard_scores[p] = self.tensor_score(p, total.div_(self.count))
            return
        if self.reduce is not None:
            self.reduce(total)
        self.replicated_scores[p] = self.tensor_score(p, total.div_(self.count))

    def finish(self) -> None:
        """Score the tensors whose gradient never arrived on the last pass (zero, or the earlier sum)."""
        for p in self.positions:
            if p not in self.replicated_scores and p not in self.shard_scores:
                total = self.sums.pop(p, None)
                self.score(p, torch.zeros_like(local_part(p), dtype=torch.float32) if total is None else total)

    def write(self, importance: np.ndarray, device: torch.device) -> None:
        """Every tensor's score into ``importance``; shard scores summed over processes first."""
        for p, value in self.replicated_scores.items():
            importance[self.positions[p]] = value
        if not self.shard_scores:
            return
        sharded = list(self.shard_scores)
        parts = torch.tensor([self.shard_scores[p] for p in sharded], dtype=torch.float64, device=device)
        if self.reduce is not None:
            self.reduce(parts)
        for p, value in zip(sharded, parts.tolist()):
            importance[self.positions[p]] = value

    def tensor_score(self, p: torch.nn.Parameter, grad: torch.Tensor) -> float:
        """This rank's score of ``p`` (``metric``) for the mean gradient ``grad`` (local piece, fp32)."""
        if self.metric == "grad":
            return float(grad.abs().sum())
        group = self.group_of[p]
        decoupled = self.decoupled_type or bool(group.get("decoupled_weight_decay", False))
        weight = local_part(p).detach().reshape(-1)
        flat_grad = grad.reshape(-1)
        state = {key: local_part(value) for key, value in self.optimizer.state.get(p, {}).items()}
        per_element = {key: value.reshape(-1) for key, value in state.items() if value.numel() == weight.numel()
                       and value.dim() > 0}
        score = 0.0
        # Slices keep adam_update's temporaries (a few tensors of the slice's size) small next to the tensor.
        for start in range(0, weight.numel(), SCORE_SLICE_ELEMENTS):
            part = slice(start, start + SCORE_SLICE_ELEMENTS)
            sliced_state = {**state, **{key: value[part] for key, value in per_element.items()}}
            delta = adam_update(weight[part], flat_grad[part], sliced_state, group, decoupled=decoupled)
            score += float(delta.abs().sum() if self.metric == "dw" else -(delta * flat_grad[part]).sum())
        return score


@contextlib.contextmanager
def recomputed_blocks(model: torch.nn.Module) -> Iterator[None]:
    """Inside: each transformer block's forward runs under non-reentrant activation checkpointing,
    so the backward holds the blocks' inputs and recomputes one block's activations at a time
    instead of keeping every block's. Works in eval mode (transformers' own checkpointing is off
    there) and leaves the forward's results unchanged; the model's key-value cache is off inside
    (a recomputed forward would append to it twice)."""
    # Sub-models may hold their own copy of the config (T5's encoder and decoder stacks do).
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
               and getattr(c, "use_cache", None) is not None}
    saved = {key: config.use_cache for key, config in configs.items()}
    for config in configs.values():
        config.use_cache = False
    try:
        with forwards_replaced(transformer_blocks(model),
                               lambda block: functools.partial(checkpoint, block.forward, use_reentrant=False)):
            yield
    finally:
        for key, config in configs.items():
            config.use_cache = saved[key]


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
    autocast: Callable[[], ContextManager[None]] | None = None,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Importance of each tensor in ``names`` (profile order), scaled by the largest magnitude.

    ``metric``: ``"dw_grad"`` is Eq. 6, ``-Σ Δw·g``; ``"dw"`` is ``Σ|Δw|``; ``"grad"`` is ``Σ|g|``.
    With ``profile`` and ``rho``, tensors that can never fit the budget (Eq. 8) are frozen for the
    backward (so it stops early and uses less memory) and get ``-inf``.
    ``optimizer`` must be Adam or AdamW holding every named parameter (any optimizer for ``"grad"``).

    The gradient is the mean over batches: Σ weight·grad / ``batch_count`` (default: the number
    of batches). Each tensor is scored as its gradient arrives in the backward pass and the
    gradient is freed at once (see :class:`_ScoreOnArrival`), so the pass never holds every
    gradient together. Several processes pass their own share of the batches (every process the
    same number of batches: a process without rows of a batch passes a row of it with weight 0),
    each weighted by its share of the loss, the global ``batch_count``, and ``reduce`` (an in-place
    sum over processes, e.g. ``dist.all_reduce``), so every process returns the same array. The
    model may be the plain model (one process, DDP) or an FSDP2 model (``fully_shard``): sharded
    tensors are scored per shard and the per-tensor scores summed over processes with ``reduce``.
    ``eligible`` (a mask over ``names``): the others are not scored and get ``-inf``.
    Non-finite gradients (fp16 overflow) give non-finite scores for their tensors; the caller
    decides what to do with them (:class:`gt_core.selection.pipeline.GreenSelector` skips them).
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
    batches = list(batches)
    count = len(batches) if batch_count is None else int(batch_count)
    if count <= 0 or not batches:
        raise ValueError("importance needs at least one batch")
    device = live_params[0].device
    scorer = _ScoreOnArrival(live, live_params, names, optimizer, metric, count, reduce)
    handles = []
    try:
        with _Restore(model), recomputed_blocks(model):
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            for p in live_params:
                p.requires_grad_(True)
            handles = [p.register_post_accumulate_grad_hook(scorer) for p in scorer.positions]
            for k, batch in enumerate(batches):
                scorer.last_pass = k == len(batches) - 1
                weight = 1.0 if loss_weights is None else float(loss_weights[k])
                batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
                with torch.enable_grad(), autocast() if autocast is not None else contextlib.nullcontext():
                    loss = model(**batch).loss * weight
                with torch.enable_grad():
                    loss.backward()
                del loss
            with torch.no_grad():
                scorer.finish()
    finally:
        for handle in handles:
            handle.remove()
    scorer.write(importance, device)
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


def unwrap_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside a wrapper (accelerate's AcceleratedOptimizer keeps it as ``.optimizer``)."""
    # AcceleratedOptimizer is itself an Optimizer subclass: unwrap by the attribute, not the type.
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def normalise(importance: np.ndarray) -> np.ndarray:
    """Scale the finite scores by their largest magnitude (in place; -inf stays -inf)."""
    finite = np.isfinite(importance)
    scale = float(np.abs(importance[finite]).max()) if finite.any() else 0.0
    if scale > 0:
        importance[finite] /= scale
    return importance
