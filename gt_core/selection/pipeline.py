"""The one selection pipeline: ask ρ → clamp to the feasible floor → importance → DP → fallback.

:class:`GreenSelector` owns a model's :class:`~gt_core.profiler.TensorProfile` and a ρ source.
:meth:`GreenSelector.ask` returns the ρ to use (clamped by one rule), :meth:`GreenSelector.choose`
the :class:`GreenSelection` for it, and :meth:`GreenSelector.apply` sets ``requires_grad`` on the
model. Every user of GreenTrainer's selection goes through it: our trainer
(:class:`gt_core.training.trainer.GreenTrainer`), its data-parallel form
(:class:`gt_core.distributed.data_parallel.DistributedGreenTrainer`) and the ``transformers.Trainer`` callback
(:class:`gt_core.integrations.hf_callback.GreenTrainerCallback`). They differ only in the hooks they pass:

- ``SelectionHooks.reduce``: an in-place sum of a tensor over processes. Set, every process
  computes gradients on its own share of the importance batches and the sums are reduced before
  Eq. 6 is evaluated (DDP fills it with ``dist.all_reduce``).
- ``SelectionHooks.broadcast``: the leader's object on every process. Set, only the leader
  (``SelectionHooks.leader``) asks the ρ source and solves the DP; ρ and the mask are broadcast.
- The batch source is the caller's: :class:`ImportanceBatches` carries the batches (this
  process's share), their loss weights and the global batch count the gradient sum divides by.

The clamp: a runtime ρ below the cost of the cheapest possible step (the forward pass plus one
tensor) is raised to :attr:`GreenSelector.rho_floor`, the smallest float ρ whose budget
``ρ·T_full`` is not below that cost (``min_cost / T_full`` alone can round the product below it).

The fallback: when the DP selects nothing (no tensor has positive finite importance: a learning
rate of 0, vanishing gradients, or fp16 overflow), the selection trains the most important finite
tensor that fits alone, else the cheapest tensor, and says why in ``GreenSelection.fallback``
and once in the log. Non-finite importance values never reach the DP: they are reported in
``GreenSelection.non_finite`` and those tensors are not selected.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Mapping, Sequence

import numpy as np
import torch

from gt_core.selection import schemes
from gt_core.selection.importance import compute_importance
from gt_core.profiler import TensorProfile
from gt_core.rho.sources import RhoReading, RhoSource
from gt_core.selection.dp import InfeasibleBudgetError, select_tensors

if TYPE_CHECKING:
    from carbonsched.protocol import JsonObject

log = logging.getLogger("gt_core.green_selector")


@dataclass(frozen=True)
class SelectionHooks:
    """How a multi-process user plugs into :class:`GreenSelector` (defaults: one process)."""

    reduce: Callable[[torch.Tensor], None] | None = None
    broadcast: Callable[[Any], Any] | None = None
    leader: bool = True


@dataclass
class ImportanceBatches:
    """Batches to score importance on: this process's share, each batch's loss weight (default
    1), and the number of global batches the summed gradient is divided by (default: len)."""

    batches: Sequence[Mapping[str, torch.Tensor]]
    loss_weights: Sequence[float] | None = None
    batch_count: int | None = None


@dataclass
class GreenSelection:
    """One selection: what ρ was asked and used, which tensors train, what it cost to decide.

    FLOPs are per training step of one profiled micro-batch. ``rho_effective`` is the step's
    FLOPs over full fine-tuning's. ``clamped_from`` is the ρ the source asked when it was below
    the floor; ``fallback`` says why the DP's answer was replaced (None when it was not).
    """

    epoch: int
    global_step: int
    rho_asked: float
    rho: float
    rho_source: str
    mask: np.ndarray
    names: list[str]
    param_share: float
    flops: schemes.StepFLOPs
    rho_effective: float
    importance: np.ndarray
    importance_s: float
    dp_s: float
    clamped_from: float | None = None
    fallback: str | None = None
    non_finite: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> JsonObject:
        """JSON-ready fields for logs and checkpoints (no arrays)."""
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "rho": self.rho,
            "rho_asked": self.rho_asked,
            "source": self.rho_source,
            "rho_effective": self.rho_effective,
            "selected": list(self.names),
            "param_share": self.param_share,
            "clamped_from": self.clamped_from,
            "fallback": self.fallback,
            "non_finite": self.non_finite,
        }


def feasible_floor(profile: TensorProfile, single_costs: np.ndarray | None = None) -> float:
    """Smallest float ρ in (0, 1] with ``ρ·T_full`` at or above the cheapest single-tensor step
    (``single_costs``: ``profile.single_tensor_costs()``, when the caller has them)."""
    costs = profile.single_tensor_costs() if single_costs is None else single_costs
    cheapest = float(costs.min())
    t_full = profile.t_full
    rho = cheapest / t_full
    while rho * t_full < cheapest and rho < 1.0:
        rho = float(np.nextafter(rho, 2.0))
    return min(1.0, rho)


class GreenSelector:
    """Selection for one model profile under a ρ source (see the module text)."""

    def __init__(
        self,
        profile: TensorProfile,
        rho_source: RhoSource,
        *,
        importance_metric: str = "dw_grad",
        resolution: int = 1000,
        hooks: SelectionHooks | None = None,
    ) -> None:
        self.profile = profile
        self.rho_source = rho_source
        self.importance_metric = importance_metric
        self.resolution = int(resolution)
        self.hooks = hooks or SelectionHooks()
        single_costs = profile.single_tensor_costs()  # one exact cost per tensor: priced once
        self.min_rho = float(single_costs.min() / profile.t_full)  # = profile.min_feasible_rho()
        self.rho_floor = feasible_floor(profile, single_costs)

    # ------------------------------------------------------------------ ρ

    def check_rho_values(self, values: Sequence[float]) -> None:
        """Raise :class:`InfeasibleBudgetError` for a ρ known in advance that no step can meet."""
        for rho in values:
            if rho < self.min_rho:
                raise InfeasibleBudgetError(rho, self.min_rho)

    def clamp(self, reading: RhoReading) -> RhoReading:
        """``reading`` with ρ raised to :attr:`rho_floor` when below it (``clamped_from`` in detail)."""
        if reading.rho >= self.rho_floor:
            return reading
        return RhoReading(self.rho_floor, reading.source, {**reading.detail, "clamped_from": reading.rho})

    def ask(self, epoch: int, global_step: int) -> RhoReading:
        """The leader asks the source and clamps; with a broadcast hook every process gets its answer."""
        reading = self.clamp(self.rho_source.rho_for(epoch, global_step)) if self.hooks.leader else None
        if self.hooks.broadcast is not None:
            reading = self.hooks.broadcast(reading)
        return reading

    # ------------------------------------------------------------------ selection

    def choose(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        batches: ImportanceBatches,
        reading: RhoReading,
        *,
        epoch: int,
        global_step: int,
        autocast: Callable[[], ContextManager[None]] | None = None,
        eligible: np.ndarray | None = None,
    ) -> GreenSelection:
        """Importance on ``batches``, the DP under ``reading.rho``, the fallback; nothing changes on
        ``model`` (call :meth:`apply`). Under a ``reduce`` hook every process must call it.
        ``autocast``: the training step's mixed-precision context, so importance sees its numbers.
        ``eligible``: a mask of the tensors that may be selected (default: all)."""
        prof = self.profile
        started = time.perf_counter()
        importance = compute_importance(
            model, prof.names, batches.batches, optimizer, metric=self.importance_metric, profile=prof,
            rho=reading.rho, loss_weights=batches.loss_weights, batch_count=batches.batch_count,
            reduce=self.hooks.reduce, autocast=autocast, eligible=eligible,
        )
        importance_s = time.perf_counter() - started
        started = time.perf_counter()
        solved = self._solve(importance, reading.rho) if self.hooks.leader else None
        if self.hooks.broadcast is not None:
            solved = self.hooks.broadcast(solved)
        mask, fallback, non_finite = solved
        mask = np.asarray(mask, dtype=bool)
        dp_s = time.perf_counter() - started
        flops = schemes.mask_flops(prof, mask)
        clamped = reading.detail.get("clamped_from")
        return GreenSelection(
            epoch=epoch,
            global_step=global_step,
            rho_asked=float(clamped) if clamped is not None else reading.rho,
            rho=reading.rho,
            rho_source=reading.source,
            mask=mask,
            names=[n for n, m in zip(prof.names, mask) if m],
            param_share=float(prof.param_counts[mask].sum() / prof.param_counts.sum()),
            flops=flops,
            rho_effective=flops.total / prof.t_full,
            importance=importance,
            importance_s=importance_s,
            dp_s=dp_s,
            clamped_from=None if clamped is None else float(clamped),
            fallback=fallback,
            non_finite=non_finite,
            detail=dict(reading.detail),
        )

    def _solve(self, importance: np.ndarray, rho: float) -> tuple[np.ndarray, str | None, int]:
        prof = self.profile
        scores = np.array(importance, dtype=np.float64)
        bad = np.isnan(scores) | np.isposinf(scores)
        non_finite = int(bad.sum())
        if non_finite:
            log.warning(
                "importance of %d of %d tensors is not finite (NaN/inf gradients, e.g. fp16 overflow): "
                "they are not selected this time", non_finite, len(scores),
            )
            scores[bad] = -np.inf
        mask = np.asarray(select_tensors(prof, scores, rho, resolution=self.resolution).mask, dtype=bool)
        fallback = None
        if not mask.any():
            mask, fallback = self._fallback(scores, rho)
            log.warning("no tensor has positive importance (%s): %s", _importance_state(scores), fallback)
        return mask, fallback, non_finite

    def _fallback(self, importance: np.ndarray, rho: float) -> tuple[np.ndarray, str]:
        """The most important finite tensor that fits alone, else the cheapest one."""
        prof = self.profile
        costs = prof.single_tensor_costs()
        fits = costs <= rho * prof.t_full
        candidates = np.where(fits & np.isfinite(importance), importance, -np.inf)
        mask = np.zeros(len(prof), dtype=bool)
        if np.isfinite(candidates).any():
            index = int(np.argmax(candidates))
            why = f"trained the most important tensor that fits alone, {prof.names[index]}"
        else:
            index = int(np.argmin(costs))
            why = f"no finite importance fits: trained the cheapest tensor, {prof.names[index]}"
        mask[index] = True
        return mask, why

    @staticmethod
    def apply(model: torch.nn.Module, selection: GreenSelection) -> None:
        """Exactly the selected tensors require grad (on every process)."""
        schemes.set_trainable(model, selection.names)


def _importance_state(scores: np.ndarray) -> str:
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return "none is finite"
    if not finite.any():
        return "all are zero: is the learning rate 0?"
    return f"largest is {finite.max():.3g}"


def selection_from_names(profile: TensorProfile, names: Sequence[str]) -> tuple[np.ndarray, schemes.StepFLOPs]:
    """Mask and step FLOPs of training exactly ``names`` (used to restore a saved selection)."""
    chosen = set(names)
    mask = np.array([n in chosen for n in profile.names], dtype=bool)
    return mask, schemes.mask_flops(profile, mask)


__all__ = [
    "GreenSelection", "GreenSelector", "ImportanceBatches", "SelectionHooks", "feasible_floor", "selection_from_names",
]
