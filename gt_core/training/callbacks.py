"""Hooks into a training run: start, each epoch's start and end, and the end of the run.

A callback sees the trainer itself, so it can read anything it needs (config, profile, current
selection) without the trainer growing a parameter per use. A ρ source that also needs to know
about epochs (the daemon source reports them) simply subclasses :class:`TrainerCallback`: the
trainer registers such a source as its first callback, so one object asks ρ and reports epochs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

if TYPE_CHECKING:
    from gt_core.selection.pipeline import GreenSelection
    from gt_core.rho.sources import RhoReading
    from gt_core.training.records import EpochRecord, TrainerView

TrainStatus = Literal["completed", "failed", "interrupted"]


class TrainerCallback:
    """Override any subset; every method is a no-op by default. Exceptions propagate."""

    def on_train_start(self, trainer: "TrainerView") -> None:
        """Before the first epoch this process runs (after a resume, the first remaining one)."""

    def on_epoch_start(self, trainer: "TrainerView", epoch: int, reading: "RhoReading | None") -> None:
        """After the epoch's first selection, before its first optimizer step. ``reading`` is
        the ρ answer that selection used; None for fixed-mask schemes and for an epoch resumed
        mid-way without a new selection."""

    def on_selection(self, trainer: "TrainerView", selection: "GreenSelection") -> None:
        """After each green selection set ``requires_grad`` (epoch start, and every re-selection)."""

    def on_epoch_end(self, trainer: "TrainerView", record: "EpochRecord") -> None:
        """After the epoch's record was written to metrics.jsonl."""

    def on_train_end(self, trainer: "TrainerView", records: "Sequence[EpochRecord]", status: TrainStatus) -> None:
        """Once per :meth:`GreenTrainer.train` call: completed, interrupted (signal) or failed (exception)."""
