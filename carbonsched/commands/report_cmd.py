"""`carbonsched report`: per-job, per-epoch energy, carbon, ρ, FLOPs and savings from the store."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import NoReturn, Optional

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
    from carbonsched.paths import default_state_dir, store_path
    from carbonsched.report import (
        FORMATS, ReportMergeError, ReportPathError, build_report, check_output_file, merge_reports, render,
        reports_from_path,
    )
    from carbonsched.store import Store, StoreError

    if fmt not in FORMATS:
        _fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if job is not None and slurm_job is not None:
        _fail("give --job or --slurm-job, not both")
    try:
        since_dt = parse_instant(since, "--since") if since is not None else None
        if output is not None:
            check_output_file(output, "--output")
        if plot is not None:
            check_output_file(plot, "--plot")
            from carbonsched.plot import plot_format

            plot_format(plot)
    except (ValueError, ReportPathError) as exc:
        _fail(str(exc))
    directory = state_dir or default_state_dir()
    db = store_path(directory)
    use_local = db.is_file() or not include or state_dir is not None
    if use_local and not db.is_file():
        _fail(f"no store at {db} (has `carbonsched run --state-dir {directory}` run?)", 1)
    if slurm_job is not None:
        job = _slurm_job_id_in_store(db if use_local else None, slurm_job)
    try:
        reports = [r for path in include for r in reports_from_path(path, job_id=job, since=since_dt)]
    except ReportMergeError as exc:
        _fail(f"--include: {exc}", 1)
    try:
        with Store(db) if use_local else contextlib.nullcontext() as store:
            if use_local:
                reports = build_report(store, job_id=job, since=since_dt) + reports
            try:
                reports = merge_reports(reports)
            except ReportMergeError as exc:
                _fail(str(exc), 1)
            if job is not None and not reports:
                _fail(f"no job {job!r} in {', '.join(str(p) for p in ([db] if use_local else []) + list(include))}", 1)
            samples = []
            if plot is not None and use_local:
                times = [e.started_at for r in reports for e in r.epochs if e.started_at is not None]
                ends = [e.started_at + e.duration_s for r in reports for e in r.epochs
                        if e.started_at is not None and e.duration_s is not None]
                if times:
                    start, end = min(times), max(ends or times)
                    samples = [(row["ts"], row["intensity_g_per_kwh"]) for row in store.intensity_samples(start - 3600, end)]
                    samples = [(max(t, start), v) for t, v in samples] + ([(end, samples[-1][1])] if samples else [])
    except StoreError as exc:
        _fail(f"cannot read the store: {exc}", 1)
    text = render(reports, fmt)
    if output is not None:
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    else:
        typer.echo(text.rstrip("\n"))
    if plot is not None:
        from carbonsched.plot import plot_report

        plot_report(reports, samples, plot)
        typer.echo(f"plot written to {plot}", err=output is None and fmt != "table")


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
