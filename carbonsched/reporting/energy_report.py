"""Per-job, per-epoch reports from the store: energy, carbon, ρ, FLOPs and savings vs full FT.

Reads the SQLite store directly, so it works whether or not the daemon runs. Energy and carbon
are the values the daemon computed when each epoch ended (they outlive sample retention);
savings are computed here, so a full fine-tuning run recorded later turns "modelled" savings
into "measured" ones.

Multi-node jobs: every node's daemon meters its own node and records the job (all nodes share
rank 0's job id). A report built from several nodes' stores, or from their JSON reports
(``carbonsched report --format json``), merges each job: per epoch, energy, carbon and savings
are summed over the nodes; ρ, FLOPs and losses are the job's own (every node reports the same
job-wide FLOPs, so they are taken once, from the lowest-ranked node); the epoch's time is the
longest node's; its intensity is the energy-weighted mean. The nodes are listed with their own
totals. The same node of the same job given twice is an error, never counted twice.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from carbonsched.reporting.accounting import measured_j_per_flop, recorded_epoch_intensity_g_per_kwh, recorded_epoch_savings
from carbonsched.planning.job_planner import paused_seconds
from carbonsched.reporting.plan_outcome import Counterfactual, PlanOutcome, plan_outcome
from carbonsched.store import J_PER_KWH, Store, to_unix_s
from carbonsched.times import iso_utc, parse_instant_s

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
    gpu_kwh: float | None = None
    cpu_kwh: float | None = None
    ram_kwh: float | None = None
    gpu_attribution: str | None = None
    end_inferred: str | None = None  # the daemon never heard the epoch end: what its end was inferred from


def _total(epochs: Sequence[EpochRow], name: str) -> float | None:
    values = [getattr(e, name) for e in epochs if getattr(e, name) is not None]
    return sum(values) if values else None


def _labels(epochs: Sequence[EpochRow]) -> str:
    return "/".join(sorted({e.saved_label for e in epochs if e.saved_label})) or "-"


@dataclass
class NodeReport:
    """One node's part of a job: what that node's daemon recorded. ``node`` is the daemon's
    node name; ``hostname``/``rank``/``local_rank``/``world_size`` come from the process that
    registered the job there (None for a single-process job); ``source`` is where it was read."""

    node: str
    hostname: str | None
    rank: int | None
    local_rank: int | None
    world_size: int | None
    status: str
    started_at: float
    ended_at: float | None
    source: str
    epochs: list[EpochRow] = field(default_factory=list)

    def total(self, name: str) -> float | None:
        return _total(self.epochs, name)

    @property
    def mean_intensity_g_per_kwh(self) -> float | None:
        energy, carbon = self.total("energy_kwh"), self.total("carbon_g")
        return carbon / energy if energy and carbon is not None else None


@dataclass
class JobReport:
    """A job with its epochs; ``nodes`` lists each node's part (one entry for a one-node job)."""

    job_id: str
    model: str
    scheme: str
    status: str
    started_at: float
    ended_at: float | None
    epochs: list[EpochRow] = field(default_factory=list)
    nodes: list[NodeReport] = field(default_factory=list)
    paused_s: float = 0.0  # paused by its deadline plan (an epoch's duration includes its paused time)
    planning: PlanOutcome | None = None  # with ``--job``: did its deadline plan pay off (one node's store)

    def total(self, name: str) -> float | None:
        return _total(self.epochs, name)

    @property
    def saved_labels(self) -> str:
        return _labels(self.epochs)


def _epoch_row(store: Store, job_id: str, e: dict[str, Any], j_per_flop: float | None) -> EpochRow:
    start, end = e["started_at"], e["ended_at"]
    duration_s = end - start if start is not None and end is not None else e["wall_s"]
    carbon_g = e["carbon_g"]
    intensity = recorded_epoch_intensity_g_per_kwh(store, e)
    savings = recorded_epoch_savings(store, e, j_per_flop=j_per_flop)
    used = None
    if e["flops_forward"] is not None or e["flops_backward"] is not None:
        used = (e["flops_forward"] or 0.0) + (e["flops_backward"] or 0.0)

    def kwh(column: str) -> float | None:  # a store older than the column reads as None
        value = e.get(column)
        return None if value is None else value / J_PER_KWH

    return EpochRow(
        job_id=job_id, epoch=e["epoch"], started_at=start, duration_s=duration_s,
        mean_intensity_g_per_kwh=intensity, rho_asked=e["rho_asked"], rho_effective=e["rho_effective"],
        flops=used, flops_full=e["flops_full"],
        energy_kwh=kwh("energy_j"), carbon_g=carbon_g,
        saved_kwh=None if savings is None else savings.saved_j / J_PER_KWH,
        saved_g=None if savings is None else savings.saved_g,
        saved_label=None if savings is None else savings.label,
        train_loss=e["train_loss"], val_loss=e["val_loss"],
        gpu_kwh=kwh("gpu_j"), cpu_kwh=kwh("cpu_j"), ram_kwh=kwh("ram_j"), gpu_attribution=e.get("gpu_attribution"),
        end_inferred=(e.get("extra") or {}).get("end_inferred"),
    )


def build_report(
    store: Store, *, job_id: str | None = None, since: datetime | float | None = None, source: str | None = None
) -> list[JobReport]:
    """Jobs (one, or all started since ``since``) with their epochs, oldest first, as this one
    store (one node) recorded them. ``source`` names the store in messages (default: its path).
    With ``job_id``, the job's planning outcome too (:mod:`carbonsched.reporting.plan_outcome`)."""
    jobs = store.jobs(since=since)
    if job_id is not None:
        jobs = [j for j in jobs if j["job_id"] == job_id]
    node_name = store.meta("node_name")
    reports = []
    j_per_flop_by_model: dict[str, float | None] = {}
    for job in jobs:
        model = job["model"]
        if model not in j_per_flop_by_model:
            j_per_flop_by_model[model] = measured_j_per_flop(store, model)
        epochs = [_epoch_row(store, job["job_id"], e, j_per_flop_by_model[model]) for e in store.epochs(job["job_id"])]
        node = NodeReport(
            node=node_name or job.get("hostname") or "local", hostname=job.get("hostname"), rank=job.get("rank"),
            local_rank=job.get("local_rank"), world_size=job.get("world_size"), status=job["status"],
            started_at=job["started_at"], ended_at=job["ended_at"], source=source or str(store.path), epochs=epochs,
        )
        now_s = time.time()
        paused_until_s = job["ended_at"] if job["ended_at"] is not None else now_s
        report = JobReport(
            job["job_id"], model, job["scheme"], job["status"], job["started_at"], job["ended_at"],
            epochs=list(epochs), nodes=[node], paused_s=paused_seconds(store.pauses(job["job_id"]), paused_until_s),
        )
        if job_id is not None:
            report.planning = plan_outcome(store, job, report.total("carbon_g"), report.total("energy_kwh"), now_s)
        reports.append(report)
    return reports


# -- several nodes -------------------------------------------------------------------------------


class ReportMergeError(ValueError):
    """Reports that cannot be merged (the same node twice, one job id for different models)."""


_STATUS_ORDER = ("running", "failed", "interrupted", "cancelled", "completed")


def _merged_status(statuses: Sequence[str]) -> str:
    """A job runs while any node runs; else the worst ending any node saw."""
    known = [s for s in _STATUS_ORDER if s in statuses]
    return known[0] if known else statuses[0]


def _sum(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _merge_epoch(rows: Sequence[EpochRow]) -> EpochRow:
    """One epoch over several nodes; ``rows`` ordered by rank (the job-wide values come from the
    first row that has them)."""

    def first(name: str) -> Any:
        return next((getattr(r, name) for r in rows if getattr(r, name) is not None), None)

    energy, carbon = _sum([r.energy_kwh for r in rows]), _sum([r.carbon_g for r in rows])
    starts = [r.started_at for r in rows if r.started_at is not None]
    attributions = sorted({r.gpu_attribution for r in rows if r.gpu_attribution})
    return EpochRow(
        job_id=rows[0].job_id, epoch=rows[0].epoch, started_at=min(starts) if starts else None,
        duration_s=max((r.duration_s for r in rows if r.duration_s is not None), default=None),
        mean_intensity_g_per_kwh=carbon / energy if energy and carbon is not None else first("mean_intensity_g_per_kwh"),
        rho_asked=first("rho_asked"), rho_effective=first("rho_effective"), flops=first("flops"),
        flops_full=first("flops_full"), energy_kwh=energy, carbon_g=carbon,
        saved_kwh=_sum([r.saved_kwh for r in rows]), saved_g=_sum([r.saved_g for r in rows]),
        saved_label="/".join(sorted({r.saved_label for r in rows if r.saved_label})) or None,
        train_loss=first("train_loss"), val_loss=first("val_loss"),
        gpu_kwh=_sum([r.gpu_kwh for r in rows]), cpu_kwh=_sum([r.cpu_kwh for r in rows]),
        ram_kwh=_sum([r.ram_kwh for r in rows]),
        gpu_attribution=attributions[0] if len(attributions) == 1 else ("mixed" if attributions else None),
        end_inferred=first("end_inferred"),
    )


def _rank_key(node: NodeReport) -> tuple[int, str]:
    return (node.rank if node.rank is not None else 1 << 30, node.node)


def merge_reports(reports: Sequence[JobReport]) -> list[JobReport]:
    """Jobs from several nodes' reports, one per job id, nodes summed (see the module docstring);
    ordered by start time."""
    by_job: dict[str, list[JobReport]] = {}
    for report in reports:
        by_job.setdefault(report.job_id, []).append(report)
    merged = []
    for job_id, parts in by_job.items():
        nodes: list[NodeReport] = []
        seen: dict[str, str] = {}
        for part in parts:
            if (part.model, part.scheme) != (parts[0].model, parts[0].scheme):
                raise ReportMergeError(
                    f"job {job_id}: {part.nodes[0].source if part.nodes else '?'} has {part.model} ({part.scheme}), "
                    f"{parts[0].nodes[0].source if parts[0].nodes else '?'} has {parts[0].model} ({parts[0].scheme})"
                )
            for node in part.nodes:
                if node.node in seen:
                    raise ReportMergeError(
                        f"job {job_id}: node {node.node!r} appears twice ({seen[node.node]} and {node.source}); "
                        "give each node's store or report once (set node_name in each daemon's config if hosts share a name)"
                    )
                seen[node.node] = node.source
                nodes.append(node)
        nodes.sort(key=_rank_key)
        if len(nodes) == 1:
            merged.append(parts[0])
            continue
        epoch_numbers = sorted({e.epoch for n in nodes for e in n.epochs})
        epochs = [_merge_epoch([e for n in nodes for e in n.epochs if e.epoch == k]) for k in epoch_numbers]
        ends = [n.ended_at for n in nodes]
        merged.append(JobReport(
            job_id, parts[0].model, parts[0].scheme, _merged_status([n.status for n in nodes]),
            min(n.started_at for n in nodes), None if None in ends else max(e for e in ends if e is not None),
            epochs=epochs, nodes=nodes, paused_s=max(part.paused_s for part in parts),
        ))
    return sorted(merged, key=lambda r: (r.started_at, r.job_id))


def reports_from_json(text: str, source: str) -> list[JobReport]:
    """Per-node job reports back from ``to_json`` output (``carbonsched report --format json``)."""
    try:
        data = json.loads(text)
        jobs = data["jobs"]
        reports = []
        for job in jobs:
            job = _unix_times(job)
            nodes = []
            for node in job["nodes"]:
                fields = {**_known(NodeReport, _unix_times(node)), "source": source}
                fields["epochs"] = [EpochRow(**_known(EpochRow, _unix_times(e))) for e in node["epochs"]]
                nodes.append(NodeReport(**fields))
            epochs = [EpochRow(**_known(EpochRow, _unix_times(e))) for e in job["epochs"]]
            reports.append(JobReport(
                job["job_id"], job["model"], job["scheme"], job["status"], job["started_at"], job["ended_at"],
                epochs=epochs, nodes=nodes, paused_s=job.get("paused_s", 0.0),
            ))
    except json.JSONDecodeError as exc:
        raise ReportMergeError(f"{source}: not JSON ({exc.msg} at line {exc.lineno})") from None
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ReportMergeError(
            f"{source}: not a carbonsched JSON report (from `carbonsched report --format json`): missing or bad field {exc}"
        ) from None
    return reports


SQLITE_MAGIC = b"SQLite format 3\x00"


def reports_from_path(
    path: Path | str, *, job_id: str | None = None, since: datetime | float | None = None
) -> list[JobReport]:
    """Another node's reports: its state directory, its store file (read-only), or a JSON
    report it wrote; filtered like :func:`build_report`."""
    from carbonsched.paths import store_path
    from carbonsched.store import StoreError

    path = Path(path)
    if path.is_dir():
        path = store_path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise ReportMergeError(f"{path}: {exc.strerror or exc}") from None
    if head == SQLITE_MAGIC:
        try:
            with Store(path, read_only=True) as store:
                return build_report(store, job_id=job_id, since=since, source=str(path))
        except StoreError as exc:
            raise ReportMergeError(f"cannot read the store {exc}") from None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ReportMergeError(f"{path}: neither a carbonsched store nor a JSON report") from None
    reports = reports_from_json(text, str(path))
    since_s = to_unix_s(since)
    return [
        r for r in reports
        if (job_id is None or r.job_id == job_id) and (since_s is None or r.started_at >= since_s)
    ]


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``values`` that ``cls`` has; missing optional ones take their defaults."""
    return {k: v for k, v in values.items() if k in cls.__dataclass_fields__}


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


def _table_line(cells: Sequence[str], columns: Sequence[tuple[str, str]] = TABLE_COLUMNS) -> str:
    return "  ".join(format(c, spec) for c, (_name, spec) in zip(cells, columns)).rstrip()


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
            ]) + (f"  end inferred ({e.end_inferred})" if e.end_inferred else ""))
        flops, full = r.total("flops"), r.total("flops_full")
        share = f" ({flops / full:.3f} of full)" if flops and full else ""
        lines.append(
            f"total: {len(r.epochs)} epochs, {_f(r.total('duration_s'), '.1f')} s, FLOPs {_f(flops, '.3e')}{share}, "
            f"{_f(r.total('energy_kwh'), '.3e')} kWh, {_f(r.total('carbon_g'), '.4f')} gCO2e, "
            f"saved {_f(r.total('saved_kwh'), '.3e')} kWh / {_f(r.total('saved_g'), '.4f')} gCO2e ({r.saved_labels})"
            + (f", paused {r.paused_s:.1f} s" if r.paused_s else "")
        )
        if len(r.nodes) > 1:
            lines.extend(_node_lines(r))
        if r.planning is not None:
            lines.extend(planning_lines(r.planning))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _saving(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _counterfactual_line(label: str, run: Counterfactual) -> str:
    return (f"  {label:<26} {run.carbon_g:.4f} gCO2e, {run.energy_kwh:.3e} kWh, {run.epochs} epochs x "
            f"{run.running_s / run.epochs:.1f} s at {run.power_w:.1f} W; saved {_saving(run.saving_pct)}")


def planning_lines(outcome: PlanOutcome) -> list[str]:
    """Did planning pay off (see :mod:`carbonsched.reporting.plan_outcome`), as report lines."""
    if not outcome.planned:
        return [f"planning: {outcome.note}"]
    lines = ["planning:"]
    if outcome.planned_at is not None:
        priced = f", priced at {outcome.expected_priced_at}" if outcome.expected_priced_at else ""
        lines.append(
            f"  {'expected (first plan)':<26} {_f(outcome.expected_carbon_g, '.4f')} gCO2e, "
            f"{_f(outcome.plan_epochs, '.2f')} epochs at mean ρ {_f(outcome.plan_mean_rho, '.2f')}, "
            f"finish {_iso(outcome.plan_finish_at)} (planned {_iso(outcome.planned_at)}{priced})")
    lines.append(f"  {'actual':<26} {_f(outcome.actual_carbon_g, '.4f')} gCO2e, {_f(outcome.actual_energy_kwh, '.3e')} kWh, "
                 f"{outcome.epochs} epochs")
    if outcome.at_full is not None:
        lines.append(_counterfactual_line("ρ 1 from start, no pause", outcome.at_full))
    if outcome.at_floor is not None:
        lines.append(_counterfactual_line(f"ρ {outcome.at_floor.rho:.2f} (floor), no pause", outcome.at_floor))
    if outcome.provider is not None:
        zone = f" ({outcome.zone})" if outcome.zone else ""
        assumed = (f"; no later reading: the last ({_f(outcome.last_reading_g_per_kwh, '.1f')} gCO2e/kWh at "
                   f"{_iso(outcome.last_reading_at)}) assumed to hold to the runs' end" if outcome.last_reading_assumed else "")
        lines.append(f"  intensities: {outcome.provider}{zone} readings from {_iso(outcome.first_reading_at)} to "
                     f"{_iso(outcome.last_reading_at)}, each holding until the next{assumed}")
    if outcome.note:
        lines.append(f"  note: {outcome.note}")
    return lines


NODE_COLUMNS = (
    ("node", "<16"), ("host", "<16"), ("rank", ">4"), ("world", ">5"), ("epochs", ">6"), ("time s", ">7"),
    ("kWh", ">9"), ("gCO2e", ">9"), ("gCO2e/kWh", ">9"), ("saved kWh", ">9"), ("saved g", ">9"), ("status", "<11"),
)


def _node_lines(r: JobReport) -> list[str]:
    lines = [
        f"nodes: {len(r.nodes)} (energy, carbon and savings above are their sums)",
        _table_line([name for name, _ in NODE_COLUMNS], NODE_COLUMNS),
    ]
    for n in r.nodes:
        lines.append(_table_line([
            n.node, n.hostname or "-", "-" if n.rank is None else str(n.rank), "-" if n.world_size is None else str(n.world_size),
            str(len(n.epochs)), _f(n.total("duration_s"), ".1f"), _f(n.total("energy_kwh"), ".3e"),
            _f(n.total("carbon_g"), ".4f"), _f(n.mean_intensity_g_per_kwh, ".1f"), _f(n.total("saved_kwh"), ".3e"),
            _f(n.total("saved_g"), ".4f"), n.status,
        ], NODE_COLUMNS))
    return lines


TOTAL_FIELDS = ("duration_s", "flops", "flops_full", "energy_kwh", "carbon_g", "saved_kwh", "saved_g")
NODE_TOTAL_FIELDS = ("duration_s", "energy_kwh", "carbon_g", "saved_kwh", "saved_g")


def _with_iso_times(row: dict[str, Any]) -> dict[str, Any]:
    """``*_at`` fields as ISO 8601 UTC, each followed by ``*_at_s`` with the Unix seconds."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key.endswith("_at") and (value is None or isinstance(value, (int, float))):
            out[key], out[f"{key}_s"] = iso_utc(value, zulu=True), value
        else:
            out[key] = value
    return out


def _unix_times(row: dict[str, Any]) -> dict[str, Any]:
    """Back from :func:`_with_iso_times` (reports written before it carry Unix seconds in ``*_at``)."""
    out = {k: v for k, v in row.items() if not (k.endswith("_at_s") and k[:-2] in row)}
    for key in [k for k in out if k.endswith("_at")]:
        if f"{key}_s" in row:
            out[key] = row[f"{key}_s"]
        elif isinstance(out[key], str):
            out[key] = parse_instant_s(out[key], f"the report's {key}")
    return out


def to_json(reports: Sequence[JobReport]) -> str:
    """Jobs with merged epochs and totals, and under ``nodes`` each node's own epochs and totals
    (so several nodes' JSON reports can be merged again by :func:`reports_from_json`).
    Timestamps are ISO 8601 UTC (``started_at``), with the Unix seconds beside them (``started_at_s``)."""
    out = []
    for r in reports:
        job = {k: v for k, v in asdict(r).items() if k not in ("epochs", "nodes", "planning")}
        if r.planning is not None:
            job["planning"] = _with_iso_times(asdict(r.planning))
        totals = {name: r.total(name) for name in TOTAL_FIELDS}
        nodes = [
            {**_with_iso_times({k: v for k, v in asdict(n).items() if k not in ("epochs", "source")}),
             "totals": {name: n.total(name) for name in NODE_TOTAL_FIELDS},
             "epochs": [_with_iso_times(asdict(e)) for e in n.epochs]}
            for n in r.nodes
        ]
        out.append({**_with_iso_times(job), "totals": totals, "epochs": [_with_iso_times(asdict(e)) for e in r.epochs],
                    "nodes": nodes})
    return json.dumps({"jobs": out}, indent=2)


CSV_FIELDS = tuple(
    field for name in ("model", "scheme", "nodes", *EpochRow.__dataclass_fields__)
    for field in ((name, f"{name}_s") if name.endswith("_at") else (name,))
)


def to_csv(reports: Sequence[JobReport]) -> str:
    """One row per job and epoch (summed over nodes); ``nodes`` lists the nodes, ';'-separated."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in reports:
        nodes = ";".join(n.node for n in r.nodes)
        for e in r.epochs:
            writer.writerow({"model": r.model, "scheme": r.scheme, "nodes": nodes, **_with_iso_times(asdict(e))})
    return buffer.getvalue()


def render(reports: Sequence[JobReport], fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return {"table": format_table, "json": to_json, "csv": to_csv}[fmt](reports)
