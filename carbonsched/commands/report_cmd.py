"""`carbonsched report`: per-job, per-epoch energy, carbon, ρ, FLOPs and savings from the store.

Validate (pure: a frozen :class:`ReportOptions` or a usage error naming the option), then read
(this node's store and the ``--include`` reports, merged), then write (the report; with
``--plot`` the intensity samples over the reported epochs and the plot).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer

from carbonsched.times import parse_instant

EXIT_BAD_INPUT = 2


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def report(
    job: Optional[str] = typer.Option(None, "--job", help="Only this job id."),
    slurm_job: Optional[str] = typer.Option(
        None, "--slurm-job", help="Only this Slurm job: every part of it (each requeue) on this node and on the "
                                  "nodes given with --include."),
    since: Optional[str] = typer.Option(None, "--since", help="Only jobs started at or after this ISO 8601 date or time (UTC unless an offset is given) or unix seconds."),
    fmt: str = typer.Option("table", "--format", help="table | json | csv"),
    output: Optional[Path] = typer.Option(None, "--output", help="Write the report to this file instead of stdout."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write a plot (intensity, ρ, FLOPs per epoch) to this file; .png, .jpg, .svg or .pdf by its extension."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="The daemon's state directory (default: as the daemon)."),
    include: list[Path] = typer.Option(
        [], "--include",
        help="Another node's part of the jobs: its state directory, a copy of its store file, or its "
             "`report --format json` output. Repeat per node; jobs sharing an id are summed over nodes.",
    ),
) -> None:
    """Energy (kWh), carbon (gCO2e) and savings vs full fine-tuning per job and epoch; no daemon needed."""
    try:
        options = validate_report_options(job, slurm_job, since, fmt, output, plot, state_dir, include)
    except ReportOptionsError as exc:
        _fail(str(exc))
    _write_report(options)


class ReportOptionsError(ValueError):
    """A usage error of ``carbonsched report``; the message is one line naming the option."""


@dataclass(frozen=True)
class ReportOptions:
    """``carbonsched report``'s options, checked; ``since`` parsed (UTC when no offset was given)."""

    job: str | None
    slurm_job: str | None
    since: datetime | None
    fmt: str
    output: Path | None
    plot: Path | None
    state_dir: Path | None
    include: tuple[Path, ...]


def validate_report_options(
    job: str | None, slurm_job: str | None, since: str | None, fmt: str, output: Path | None, plot: Path | None,
    state_dir: Path | None, include: Sequence[Path],
) -> ReportOptions:
    """The options checked without touching the filesystem (the --output and --plot paths are
    checked when the report is written); :class:`ReportOptionsError` otherwise."""
    from carbonsched.reporting.energy_report import FORMATS

    if fmt not in FORMATS:
        raise ReportOptionsError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if job is not None and slurm_job is not None:
        raise ReportOptionsError("give --job or --slurm-job, not both")
    try:
        since_dt = parse_instant(since, "--since") if since is not None else None
    except ValueError as exc:
        raise ReportOptionsError(str(exc)) from None
    return ReportOptions(job, slurm_job, since_dt, fmt, output, plot, state_dir, tuple(include))


def _write_report(options: ReportOptions) -> None:
    """Check the output paths, read and merge the reports (this node's store and --include),
    then write the report and the plot."""
    from carbonsched.paths import default_state_dir, store_path
    from carbonsched.reporting.report_plot import PlotFormatError, plot_format
    from carbonsched.reporting.energy_report import ReportPathError, check_output_file, render
    from carbonsched.store import Store, StoreError

    try:
        if options.output is not None:
            check_output_file(options.output, "--output")
        if options.plot is not None:
            check_output_file(options.plot, "--plot")
            plot_format(options.plot)
    except (ReportPathError, PlotFormatError) as exc:
        _fail(str(exc))
    directory = options.state_dir or default_state_dir()
    db = store_path(directory)
    use_local = db.is_file() or not options.include or options.state_dir is not None
    if use_local and not db.is_file():
        _fail(f"no store at {db} (has `carbonsched run --state-dir {directory}` run?)", 1)
    job = options.job
    if options.slurm_job is not None:
        job = _slurm_job_id_in_store(db if use_local else None, options.slurm_job)
    included = _included_reports(options, job)
    try:
        with Store(db) if use_local else contextlib.nullcontext() as store:
            reports = _merged_reports(store, included, options, job, [db] if use_local else [])
            samples = _plot_intensity_samples(store, reports) if options.plot is not None and use_local else []
    except StoreError as exc:
        _fail(f"cannot read the store: {exc}", 1)
    text = render(reports, options.fmt)
    if options.output is not None:
        options.output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    else:
        typer.echo(text.rstrip("\n"))
    if options.plot is not None:
        from carbonsched.reporting.report_plot import plot_report

        plot_report(reports, samples, options.plot)
        typer.echo(f"plot written to {options.plot}", err=options.output is None and options.fmt != "table")


def _included_reports(options: ReportOptions, job: str | None) -> list[Any]:
    """The reports of the other nodes given with --include."""
    from carbonsched.reporting.energy_report import ReportMergeError, reports_from_path

    try:
        return [r for path in options.include for r in reports_from_path(path, job_id=job, since=options.since)]
    except ReportMergeError as exc:
        _fail(f"--include: {exc}", 1)


def _merged_reports(store: Any, included: list[Any], options: ReportOptions, job: str | None,
                    local: list[Path]) -> list[Any]:
    """This node's reports (from ``store``, when there is one) and the ``included`` ones, jobs
    sharing an id summed over nodes; a usage failure when the asked ``job`` is in none of them."""
    from carbonsched.reporting.energy_report import ReportMergeError, build_report, merge_reports

    reports = included
    if store is not None:
        reports = build_report(store, job_id=job, since=options.since) + reports
    try:
        reports = merge_reports(reports)
    except ReportMergeError as exc:
        _fail(str(exc), 1)
    if job is not None and not reports:
        _fail(f"no job {job!r} in {', '.join(str(p) for p in local + list(options.include))}", 1)
    return reports


def _plot_intensity_samples(store: Any, reports: list[Any]) -> list[tuple[float, float]]:
    """The store's intensity samples (unix s, gCO2e/kWh) over the reported epochs, clipped to their
    first start and held to their last end: the plot's intensity line."""
    times = [e.started_at for r in reports for e in r.epochs if e.started_at is not None]
    ends = [e.started_at + e.duration_s for r in reports for e in r.epochs
            if e.started_at is not None and e.duration_s is not None]
    if not times:
        return []
    start, end = min(times), max(ends or times)
    samples = [(row["ts"], row["intensity_g_per_kwh"]) for row in store.intensity_samples(start - 3600, end)]
    return [(max(t, start), v) for t, v in samples] + ([(end, samples[-1][1])] if samples else [])


def _slurm_job_id_in_store(db: Optional[Path], slurm_job_id: str) -> str:
    """The daemon's id of a Slurm job: the one the store recorded with that Slurm id, else the
    trainer's default ``slurm-<ID>`` (every requeued part and every node use it)."""
    from carbonsched.store import Store, StoreError

    if db is not None:
        try:
            with Store(db, read_only=True) as store:
                ids = store.jobs_of_slurm_job(slurm_job_id)
        except StoreError as exc:
            _fail(f"cannot read the store: {exc}", 1)
        if len(ids) == 1:
            return ids[0]
    return f"slurm-{slurm_job_id}"


def register(app: typer.Typer) -> None:
    app.command("report")(report)
