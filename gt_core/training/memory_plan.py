"""Per-rank memory of a training run, modelled before launch (``greentrainer profile --world-size``).

For full fine-tuning and for GreenTrainer at a ρ, per rank, in bytes:

- *weights*: every parameter at the precision's weight width (fp32 master weights under
  ``bf16-mixed``, 2 bytes under ``bf16``), divided by the world size under ``fsdp``;
- *gradients*: the trained tensors' gradients (sharded under ``fsdp``);
- *optimizer state*: AdamW's two fp32 moments (the weight width under ``bf16``) of the tensors that
  hold them: every tensor for full fine-tuning, the selected ones under ``--frozen-state drop``,
  every tensor ever trained under ``keep`` (at most all of them);
- *activations*: the bytes autograd saves for the backward of one micro-batch of this rank, counted
  exactly by running the forward on the meta device (no weights, no arithmetic) under a
  saved-tensors hook with exactly the trained tensors requiring grad, so a selection that stops
  the backward early saves less; with gradient checkpointing only what the checkpointed forward
  saves, plus one block's recomputation;
- *transient*: what lives only inside a step: AdamW's two temporaries of the largest tensor it
  updates, and under ``fsdp`` the all-gathered (unsharded) parameters of two wrap units (the one
  running and the one prefetched) and the unsharded gradients of one unit before its reduce-scatter.

GreenTrainer's selection at ρ depends on importance, known only while training; the model prices
the selection that trains the most parameters the budget allows (the DP with each tensor's
parameter count as its value), an upper bound for the gradients and moments. Its importance pass
holds the moments of every tensor the budget can reach (trained in an earlier epoch), one gradient
in flight, and the activations of a backward reaching the deepest of them: the pass recomputes each
transformer block in its backward (:func:`gt_core.selection.importance.recomputed_blocks`), so these are the
checkpointed forward's saved bytes plus one block's recomputation, with or without the training
run's gradient checkpointing. Under ``fsdp`` the pass's peak is inside its backward, where FSDP2
still holds the previous unit's reduce-scatter input (its unsharded gradients, kept until the next
unit's reduce-scatter) while the current unit's gradients accumulate: the unsharded gradients of
the two largest units the budget reaches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from gt_core.selection.importance import unreachable_tensors
from gt_core.profiler import TensorProfile, model_from_config
from gt_core.profiler.profile_model import make_batch, one_sequence_per_row
from gt_core.selection.dp import select_tensors

if TYPE_CHECKING:
    from transformers import PretrainedConfig

PLAN_RHOS: tuple[float, ...] = (0.4, 0.5, 0.7)
_UNIT = re.compile(r"^(.*\.(?:layers|layer|h|blocks|block)\.\d+)\.")


@dataclass(frozen=True)
class RankMemory:
    """Modelled bytes on one rank (see the module text)."""

    label: str
    weights: int
    gradients: int
    optimizer_state: int
    activations: int
    transient: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.activations + self.transient


def weight_bytes(precision: str) -> int:
    """Bytes per stored weight, gradient and AdamW moment element (fp32 except under pure bf16)."""
    return 2 if precision == "bf16" else 4


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype activations are kept in."""
    return torch.bfloat16 if precision in ("bf16", "bf16-mixed") else torch.float32


def wrap_units(names: list[str]) -> list[str]:
    """Each tensor's FSDP wrap unit: its transformer block (``…layers.N``) or the root."""
    units = []
    for name in names:
        match = _UNIT.match(name)
        units.append(match.group(1) if match else "")
    return units


def saved_activation_bytes(config: PretrainedConfig, batch_size: int, seq_len: int, trainable: set[str] | None,
                           precision: str = "fp32", gradient_checkpointing: bool = False) -> int:
    """Bytes autograd saves for the backward of one micro-batch (``trainable``: the names that
    require grad; None: all), counted on the meta device. With gradient checkpointing: the
    checkpointed forward's saved bytes plus the largest block's own (its recomputation)."""
    model = model_from_config(config, dtype=compute_dtype(precision))
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    for name, p in model.named_parameters():
        p.requires_grad_(trainable is None or name in trainable)
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            saved[storage._cdata] = max(saved.get(storage._cdata, 0), storage.nbytes())
        return tensor

    batch = make_batch(model, batch_size, seq_len)
    with one_sequence_per_row(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(**batch)
    total = sum(saved.values())
    if gradient_checkpointing:
        total += _largest_block_bytes(model, batch_size, seq_len)
    return total


def _largest_block_bytes(model: torch.nn.Module, batch_size: int, seq_len: int) -> int:
    """Saved bytes of one block's forward run without checkpointing (its recomputation in backward)."""
    blocks = [m for m in model.modules() if type(m).__name__ in (getattr(model, "_no_split_modules", None) or [])]
    if not blocks:
        return 0
    model.gradient_checkpointing_disable()
    for p in model.parameters():
        p.requires_grad_(True)
    saved: dict[int, int] = {}
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    inside = {"on": False}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if inside["on"] and storage._cdata not in parameters:
            saved[storage._cdata] = max(saved.get(storage._cdata, 0), storage.nbytes())
        return tensor

    block = blocks[-1]
    pre = block.register_forward_pre_hook(lambda module, args: inside.update(on=True))
    post = block.register_forward_hook(lambda module, args, out: inside.update(on=False))
    batch = make_batch(model, batch_size, seq_len)
    try:
        with one_sequence_per_row(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(**batch)
    finally:
        pre.remove()
        post.remove()
    return sum(saved.values())


def widest_selection(profile: TensorProfile, rho: float) -> np.ndarray:
    """The mask that trains the most parameters within ρ (the DP valued by parameter counts)."""
    return np.asarray(select_tensors(profile, profile.param_counts.astype(np.float64), rho).mask, dtype=bool)


class RankMemoryModel:
    """The per-rank memory of one set-up (see the module text); ``batch_size`` is the global batch."""

    def __init__(self, config: PretrainedConfig, profile: TensorProfile, *, world_size: int = 1, strategy: str = "ddp",
                 precision: str = "fp32", batch_size: int, seq_len: int, gradient_checkpointing: bool = False) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} (global) must be a multiple of the world size {world_size}")
        self.config, self.profile, self.precision = config, profile, precision
        self.per_rank_batch, self.seq_len, self.gradient_checkpointing = batch_size // world_size, seq_len, gradient_checkpointing
        self.shard = world_size if strategy == "fsdp" else 1
        self.width = weight_bytes(precision)
        self.counts = profile.param_counts.astype(np.int64)
        self.names = list(profile.names)
        self.units = wrap_units(self.names)
        self.unit_params: dict[str, int] = {}
        for unit, count in zip(self.units, self.counts):
            self.unit_params[unit] = self.unit_params.get(unit, 0) + int(count)
        compute_width = torch.tensor([], dtype=compute_dtype(precision)).element_size()
        self.gathered = 2 * max(self.unit_params.values()) * compute_width if self.shard > 1 else 0
        self.weights = int(self.counts.sum()) * self.width // self.shard

    def activations(self, trained: np.ndarray, recomputed: bool | None = None) -> int:
        """Saved bytes of a backward with ``trained`` tensors; ``recomputed``: blocks checkpointed
        (default: as the run's gradient checkpointing)."""
        trainable = {n for n, keep in zip(self.names, trained) if keep}
        return saved_activation_bytes(self.config, self.per_rank_batch, self.seq_len, trainable, self.precision,
                                      self.gradient_checkpointing if recomputed is None else recomputed)

    def training(self, label: str, trained: np.ndarray, with_state: np.ndarray) -> RankMemory:
        """A training step with ``trained`` tensors, AdamW moments held for ``with_state``."""
        unit_grads = max((self.unit_params[u] for u, t in zip(self.units, trained) if t), default=0) * 4
        # AdamW's per-tensor step keeps two temporaries of the tensor it updates (sqrt, denominator).
        step_temporaries = 2 * int(self.counts[trained].max(initial=0)) * self.width // self.shard
        return RankMemory(label, self.weights, int(self.counts[trained].sum()) * self.width // self.shard,
                          2 * int(self.counts[with_state].sum()) * self.width // self.shard, self.activations(trained),
                          self.gathered + (unit_grads if self.shard > 1 else 0) + step_temporaries)

    def importance(self, label: str, rho: float, with_state: np.ndarray | None = None) -> RankMemory:
        """The importance pass at ``rho``: one gradient in flight, moments of ``with_state`` (default:
        every tensor the budget can reach), the activations of a backward reaching all of them with
        each block recomputed; under ``fsdp`` two units' unsharded gradients (see the module text)."""
        reachable = ~unreachable_tensors(self.profile, rho)
        state = reachable if with_state is None else with_state
        in_flight = int(self.counts[reachable].max()) * 4 // self.shard
        reached_units = {u for u, t in zip(self.units, reachable) if t}
        # The previous unit's reduce-scatter input and the current unit's accumulating gradients.
        unit_grads = sum(sorted((self.unit_params[u] for u in reached_units), reverse=True)[:2]) * 4
        return RankMemory(label, self.weights, in_flight, 2 * int(self.counts[state].sum()) * self.width // self.shard,
                          self.activations(reachable, recomputed=True),
                          self.gathered + (unit_grads if self.shard > 1 else 0))

    def plan(self, rhos: tuple[float, ...] = PLAN_RHOS) -> list[RankMemory]:
        """Full fine-tuning, then per ρ GreenTrainer's widest training step (``drop``) and its importance
        pass; a ρ below the profile's feasible floor gets no rows."""
        every = np.ones(len(self.names), dtype=bool)
        rows = [self.training("full fine-tuning", every, every)]
        for rho in rhos:
            if rho < self.profile.min_feasible_rho():
                continue
            mask = widest_selection(self.profile, rho)
            rows.append(self.training(f"green ρ={rho:g} step (drop)", mask, mask))
            rows.append(self.importance(f"green ρ={rho:g} importance pass", rho))
        return rows
