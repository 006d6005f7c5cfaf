"""Records shared by the trainer, its callbacks and the daemon ρ source (no behaviour here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gt_core.selection.schemes import StepFLOPs


@dataclass
class EpochRecord:
    """One epoch's log line. FLOPs are totals over the epoch's optimizer steps at the profiled shape.

    ``selected``: names of the tensors trained in the epoch's last selection (green scheme);
    ``rho_clamped_from``: the ρ the source asked when it was below the feasible floor;
    ``fallback``: why the DP's answer was replaced (nothing had positive importance);
    ``skipped_steps``: optimizer steps the fp16 gradient scaler skipped (inf/NaN gradients);
    ``paused_s``: seconds the carbon plan paused the epoch (not part of ``wall_s``);
    ``peak_memory_bytes``: the epoch's training peak, measured as ``peak_memory_kind`` says
    (:mod:`gt_core.training.memory`)."""

    epoch: int
    scheme: str
    rho_asked: float | None
    rho_effective: float
    tensors_selected: int
    param_share_selected: float
    flops_forward: float
    flops_backward: float
    flops_full: float
    wall_s: float
    importance_s: float
    dp_s: float
    train_loss: float
    val_loss: float | None
    steps: int
    selections: int
    rho_source: str | None = None
    selected: list[str] | None = None
    rho_clamped_from: float | None = None
    fallback: str | None = None
    skipped_steps: int = 0
    paused_s: float = 0.0
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None


@dataclass
class TrainedTensors:
    """The tensors training now: mask over the profile, FLOPs of one step, and the ρ they answer
    (None for fixed-mask schemes)."""

    mask: np.ndarray
    flops: StepFLOPs
    rho: float | None


class TrainerView(Protocol):
    """What a callback may read from the trainer running it."""

    config: Any
    output_dir: Path
    state: Any

    @property
    def rho_effective(self) -> float | None: ...
