"""Per-job, per-epoch reports from the store: energy, carbon, ρ, FLOPs and savings vs full FT.

Reads the SQLite store directly, so it works whether or not the daemon runs. Energy and carbon
are the values the daemon computed when each epoch ended (they outlive sample retention);
savings are computed here, so a full fine-tuning run recorded later turns "modelled" savings
into "measured" ones.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from carbonsched.accounting import IntensityCurve, epoch_savings, measured_j_per_flop
from carbonsched.store import J_PER_KWH, Store

FORMATS = ("table", "json", "csv")


class ReportPathError(ValueError):
    """An output path the report cannot write; the message is one line for the user."""


def check_output_file(path: Path | str, what: str = "output") -> Path:
    """A file path to write: not a directory, and its parent directory must exist."""
    path = Path(path)
    if path.is_dir() or str(path).endswith(("/", "\\")):
        raise ReportPathError(f"{what} {path} is a directory; give a file path")
    if not path.parent.is_dir():
        raise ReportPathError(f"{what} {path}: directory {path.parent} does not exist")
    return path


@dataclass
class EpochRow:
    """One epoch as reported. Energy in kWh, carbon in gCO2e, intensity in gCO2e/kWh."""

    job_id: str
    epoch: int
    started_at: float | None
    duration_s: float | None
    mean_intensity_g_per_kwh: float | None
    rho_asked: float | None
    rho_effective: float | None
    flops: float | None
    flops_full: float | None
    energy_kwh: float | None
    carbon_g: float | None
    saved_kwh: float | None
    saved_g: float | None
    saved_label: str | None
    train_loss: float | None
    val_loss: float | None


@dataclass
class JobReport:
    job_id: str
    model: str
    scheme: str
    status: str
    started_at: float
    ended_at: float | None
    epochs: list[EpochRow] = field(default_factory=list)

    def total(self, name: str) -> float | None:
        values = [getattr(e, name) for e in self.epochs if getattr(e, name) is not None]
        return sum(values) if values else None

    @property
    def saved_labels(self) -> str:
        return "/".join(sorted({e.saved_label for e in self.epochs if e.saved_label})) or "-"


def _epoch_row(store: Store, job_id: str, e: dict[str, Any], j_per_flop: float | None) -> EpochRow:
    start, end = e["started_at"], e["ended_at"]
    duration_s = end - start if start is not None and end is not None else e["wall_s"]
    energy_j, carbon_g = e["energy_j"], e["carbon_g"]
    if energy_j and carbon_g is not None:
        intensity = carbon_g / (energy_j / J_PER_KWH)  # energy-weighted: what the energy was priced at
    elif start is not None and end is not None:
        intensity = IntensityCurve.from_store(store, start, end).mean(start, end)
    else:
        intensity = None
    savings = epoch_savings(e, j_per_flop=j_per_flop, mean_intensity_g_per_kwh=intensity)
    used = None
    if e["flops_forward"] is not None or e["flops_backward"] is not None:
        used = (e["flops_forward"] or 0.0) + (e["flops_backward"] or 0.0)
    return EpochRow(
        job_id=job_id, epoch=e["epoch"], started_at=start, duration_s=duration_s,
        mean_intensity_g_per_kwh=intensity, rho_asked=e["rho_asked"], rho_effective=e["rho_effective"],
        flops=used, flops_full=e["flops_full"],
        energy_kwh=None if energy_j is None else energy_j / J_PER_KWH, carbon_g=carbon_g,
        saved_kwh=None if savings is None else savings.saved_j / J_PER_KWH,
        saved_g=None if savings is None else savings.saved_g,
        saved_label=None if savings is None else savings.label,
        train_loss=e["train_loss"], val_loss=e["val_loss"],
    )


def build_report(store: Store, *, job_id: str | None = None, since: datetime | float | None = None) -> list[JobReport]:
    """Jobs (one, or all started since ``since``) with their epochs, oldest first."""
    jobs = store.jobs(since=since)
    if job_id is not None:
        jobs = [j for j in jobs if j["job_id"] == job_id]
    reports = []
    j_per_flop_by_model: dict[str, float | None] = {}
    for job in jobs:
        model = job["model"]
        if model not in j_per_flop_by_model:
            j_per_flop_by_model[model] = measured_j_per_flop(store, model)
        report = JobReport(job["job_id"], model, job["scheme"], job["status"], job["started_at"], job["ended_at"])
        report.epochs = [_epoch_row(store, job["job_id"], e, j_per_flop_by_model[model]) for e in store.epochs(job["job_id"])]
        reports.append(report)
    return reports


# -- formats -----------------------------------------------------------------------------------


def _iso(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


TABLE_COLUMNS = (
    ("epoch", ">5"), ("start (UTC)", "<19"), ("time s", ">7"), ("gCO2e/kWh", ">9"), ("rho", ">4"), ("eff", ">5"),
    ("FLOPs", ">9"), ("full FLOPs", ">10"), ("kWh", ">9"), ("gCO2e", ">9"), ("saved kWh", ">9"), ("saved g", ">9"),
    ("saved as", "<8"),
)


def _table_line(cells: Sequence[str]) -> str:
    return "  ".join(format(c, spec) for c, (_name, spec) in zip(cells, TABLE_COLUMNS)).rstrip()


def format_table(reports: Sequence[JobReport]) -> str:
    if not reports:
        return "no jobs"
    blocks = []
    for r in reports:
        lines = [
            f"job {r.job_id}  {r.model} ({r.scheme})  {r.status}  {_iso(r.started_at)} → {_iso(r.ended_at)}",
            _table_line([name for name, _ in TABLE_COLUMNS]),
        ]
        for e in r.epochs:
            lines.append(_table_line([
                str(e.epoch), _iso(e.started_at), _f(e.duration_s, ".1f"), _f(e.mean_intensity_g_per_kwh, ".1f"),
                _f(e.rho_asked, ".2f"), _f(e.rho_effective, ".3f"), _f(e.flops, ".3e"), _f(e.flops_full, ".3e"),
                _f(e.energy_kwh, ".3e"), _f(e.carbon_g, ".4f"), _f(e.saved_kwh, ".3e"), _f(e.saved_g, ".4f"),
                e.saved_label or "-",
            ]))
        flops, full = r.total("flops"), r.total("flops_full")
        share = f" ({flops / full:.3f} of full)" if flops and full else ""
        lines.append(
            f"total: {len(r.epochs)} epochs, {_f(r.total('duration_s'), '.1f')} s, FLOPs {_f(flops, '.3e')}{share}, "
            f"{_f(r.total('energy_kwh'), '.3e')} kWh, {_f(r.total('carbon_g'), '.4f')} gCO2e, "
            f"saved {_f(r.total('saved_kwh'), '.3e')} kWh / {_f(r.total('saved_g'), '.4f')} gCO2e ({r.saved_labels})"
        )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def to_json(reports: Sequence[JobReport]) -> str:
    out = []
    for r in reports:
        job = {k: v for k, v in asdict(r).items() if k != "epochs"}
        totals = {name: r.total(name) for name in ("duration_s", "flops", "flops_full", "energy_kwh", "carbon_g", "saved_kwh", "saved_g")}
        out.append({**job, "totals": totals, "epochs": [asdict(e) for e in r.epochs]})
    return json.dumps({"jobs": out}, indent=2)


CSV_FIELDS = ("model", "scheme", *EpochRow.__dataclass_fields__)


def to_csv(reports: Sequence[JobReport]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in reports:
        for e in r.epochs:
            writer.writerow({"model": r.model, "scheme": r.scheme, **asdict(e)})
    return buffer.getvalue()


def render(reports: Sequence[JobReport], fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return {"table": format_table, "json": to_json, "csv": to_csv}[fmt](reports)
