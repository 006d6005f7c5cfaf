"""The demo's per-epoch table: intensity, ρ, tensors trained, FLOPs vs full, time, loss, energy."""

from __future__ import annotations

from typing import Any, Callable

from gt_core.training.callbacks import TrainerCallback
from gt_core.rho.sources import RhoReading

J_PER_KWH = 3.6e6

ROW_HEADER = (
    f"{'epoch':>5}  {'at ask':>6}  {'gCO2e/kWh':>9}  {'rho':>4}  {'tensors':>9}  {'FLOPs':>9}  {'vs full':>7}  "
    f"{'time s':>6}  {'loss':>6}  {'val':>6}  {'kWh':>9}  {'gCO2e':>9}"
)


def format_optional(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


class EpochPrinter(TrainerCallback):
    """One line per finished epoch; ``source`` is the daemon ρ source, whose ``epoch_reports`` hold
    the daemon's answer to each epoch report (mean intensity, energy_j, carbon_g)."""

    def __init__(self, source: Any, echo: Callable[[str], None]):
        self.source = source
        self.echo = echo
        self.rows: list[dict[str, Any]] = []
        self.readings: dict[int, RhoReading | None] = {}

    def on_train_start(self, trainer: Any) -> None:
        self.echo(ROW_HEADER)

    def on_epoch_start(self, trainer: Any, epoch: int, reading: RhoReading | None) -> None:
        self.readings[epoch] = reading

    def on_epoch_end(self, trainer: Any, record: Any) -> None:
        reply = self.source.epoch_reports.get(record.epoch) or {}
        reading = self.readings.get(record.epoch)
        intensity = reply.get("mean_intensity_g_per_kwh")  # over the epoch
        at_ask = reading.detail.get("intensity_g_per_kwh") if reading is not None else None  # what ρ was decided on
        energy_j = reply.get("energy_j")
        row = {
            "epoch": record.epoch, "intensity_g_per_kwh": intensity, "intensity_at_ask_g_per_kwh": at_ask, "rho": record.rho_asked,
            "rho_source": record.rho_source, "tensors": record.tensors_selected, "tensors_total": len(trainer.profile),
            "flops": record.flops_forward + record.flops_backward, "flops_share": record.rho_effective,
            "wall_s": record.wall_s, "train_loss": record.train_loss, "val_loss": record.val_loss,
            "energy_kwh": None if energy_j is None else energy_j / J_PER_KWH, "carbon_g": reply.get("carbon_g"),
        }
        self.rows.append(row)
        tensors = f"{row['tensors']}/{row['tensors_total']}"
        self.echo(
            f"{record.epoch:>5}  {format_optional(at_ask, '6.1f')}  {format_optional(intensity, '9.1f')}  "
            f"{format_optional(record.rho_asked, '4.2f')}  {tensors:>9}  {row['flops']:9.3e}  {record.rho_effective:7.3f}  "
            f"{record.wall_s:6.1f}  {record.train_loss:6.3f}  {format_optional(record.val_loss, '6.3f')}  "
            f"{format_optional(row['energy_kwh'], '9.3e')}  {format_optional(row['carbon_g'], '9.5f')}"
        )
