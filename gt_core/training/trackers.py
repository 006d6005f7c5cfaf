"""Epoch records sent to experiment trackers through their own APIs: TensorBoard, Weights &
Biases, MLflow. Each is an optional install; naming one that is missing is one clear error.

Every epoch logs, at the step ``epoch + 1``: losses, ρ asked and effective, FLOPs (forward,
backward, full), the parameter share and number of tensors trained, wall seconds, importance and
DP seconds, skipped optimizer steps and the epoch's peak memory in bytes. Offline modes work
without network: TensorBoard writes event files under ``OUTPUT_DIR/tensorboard``; W&B runs with
``WANDB_MODE=offline`` unless the environment says otherwise; MLflow logs to
``OUTPUT_DIR/mlruns`` unless ``MLFLOW_TRACKING_URI`` is set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from gt_core.training.callbacks import TrainerCallback, TrainStatus

if TYPE_CHECKING:
    from collections.abc import Mapping

    from mlflow import ActiveRun
    from torch.utils.tensorboard import SummaryWriter
    from wandb.sdk.wandb_run import Run as WandbRun

    from gt_core.training.records import EpochRecord, TrainerView

REPORTERS: tuple[str, ...] = ("tensorboard", "wandb", "mlflow", "none")
_MODULE = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
_SCALARS = (
    "train_loss", "val_loss", "rho_asked", "rho_effective", "flops_forward", "flops_backward", "flops_full",
    "param_share_selected", "tensors_selected", "wall_s", "importance_s", "dp_s", "skipped_steps", "peak_memory_bytes",
)


def check_reporters(names: Sequence[str]) -> list[str]:
    """The reporters to use (``none`` alone means none); ValueError naming what is unknown or not installed."""
    wanted = [n.strip().lower() for n in names if n.strip()]
    unknown = [n for n in wanted if n not in REPORTERS]
    if unknown:
        raise ValueError(f"unknown --report-to {unknown[0]!r}; choose from {', '.join(REPORTERS)}")
    wanted = [n for n in wanted if n != "none"]
    for name in wanted:
        try:
            __import__(_MODULE[name])
        except ImportError:
            raise ValueError(f"--report-to {name} needs the {_PACKAGE[name]} package: pip install {_PACKAGE[name]}") from None
    return wanted


def epoch_scalars(record: EpochRecord) -> dict[str, float]:
    """The numeric fields of an epoch record worth plotting (None values left out)."""
    out = {}
    for name in _SCALARS:
        value = getattr(record, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


class TrackerCallback(TrainerCallback):
    """Logs each epoch record to the named trackers (from the main process only)."""

    def __init__(self, names: Sequence[str], output_dir: str | Path, run_config: Mapping[str, object]) -> None:
        self.names = list(names)
        self.output_dir = Path(output_dir)
        self.run_config = run_config
        self.writers: dict[str, object] = {}  # tracker name -> its open writer or run

    def _main(self, trainer: TrainerView) -> bool:
        return bool(getattr(trainer, "is_main_process", True))

    def on_train_start(self, trainer: TrainerView) -> None:
        if not self._main(trainer):
            return
        for name in self.names:
            self.writers[name] = getattr(self, f"_open_{name}")()

    def on_epoch_end(self, trainer: TrainerView, record: EpochRecord) -> None:
        if not self._main(trainer):
            return
        scalars, step = epoch_scalars(record), int(record.epoch) + 1
        for name, writer in self.writers.items():
            getattr(self, f"_log_{name}")(writer, scalars, step)

    def on_train_end(self, trainer: TrainerView, records: Sequence[EpochRecord], status: TrainStatus) -> None:
        for name, writer in self.writers.items():
            getattr(self, f"_close_{name}")(writer, status)
        self.writers = {}

    # -- TensorBoard ----------------------------------------------------------------------------

    def _open_tensorboard(self) -> SummaryWriter:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))
        writer.add_text("config", "\n".join(f"{k}: {v}" for k, v in sorted(self.run_config.items())))
        return writer

    @staticmethod
    def _log_tensorboard(writer: SummaryWriter, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            writer.add_scalar(f"greentrainer/{key}", value, step)
        writer.flush()

    @staticmethod
    def _close_tensorboard(writer: SummaryWriter, status: str) -> None:
        writer.close()

    # -- Weights & Biases -------------------------------------------------------------------------

    def _open_wandb(self) -> WandbRun:
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")
        return wandb.init(project="greentrainer", dir=str(self.output_dir), config=self.run_config, reinit=True)

    @staticmethod
    def _log_wandb(run: WandbRun, scalars: dict[str, float], step: int) -> None:
        run.log(scalars, step=step)

    @staticmethod
    def _close_wandb(run: WandbRun, status: str) -> None:
        run.finish(exit_code=0 if status == "completed" else 1)

    # -- MLflow -----------------------------------------------------------------------------------

    def _open_mlflow(self) -> ActiveRun:
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri((self.output_dir / "mlruns").resolve().as_uri())
        run = mlflow.start_run()
        mlflow.log_params({k: str(v)[:250] for k, v in self.run_config.items()})
        return run

    @staticmethod
    def _log_mlflow(run: ActiveRun, scalars: dict[str, float], step: int) -> None:
        import mlflow

        mlflow.log_metrics(scalars, step=step)

    @staticmethod
    def _close_mlflow(run: ActiveRun, status: str) -> None:
        import mlflow

        mlflow.end_run(status="FINISHED" if status == "completed" else "FAILED")
