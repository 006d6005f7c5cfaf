"""`carbonsched backtest --jobs FILE --gpus G`: a set of deadline jobs sharing a partition, planned
one by one (and queued by Slurm), jointly, and by the LP (:mod:`carbonsched.planning.jobset_backtest`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from carbonsched.commands.plan_cmds import fail


def backtest_jobs(trace: Path, jobs_file: Path, gpus: int, fmt: str, time_column: Optional[str],
                  intensity_column: Optional[str]) -> None:
    from carbonsched.planning import PlanningInputError
    from carbonsched.planning.jobset_backtest import JobsFileError, load_jobs, run_jobset_backtest
    from carbonsched.planning.series import Series
    from carbonsched.providers.trace import TraceFormatError, load_trace

    if gpus < 1:
        fail(f"--gpus must be at least 1, got {gpus}")
    try:
        jobs = load_jobs(jobs_file)
        loaded = load_trace(trace, time_column=time_column, intensity_column=intensity_column)
    except (JobsFileError, TraceFormatError) as exc:
        fail(str(exc))
    series = Series(loaded.offsets_s, loaded.values_g_per_kwh, loaded.duration_s, loaded.timestamps[0].timestamp())
    try:
        result = run_jobset_backtest(jobs, series, gpus)
    except PlanningInputError as exc:
        fail(f"{jobs_file}: {exc}")
    if fmt == "json":
        typer.echo(json.dumps({"trace": str(trace), "jobs_file": str(jobs_file), **result.to_json()}, indent=2))
        return
    base = result.total_g("independent")
    lines = [f"{len(jobs)} jobs from {jobs_file} on {gpus} GPU(s), trace {trace}", "",
             f"{'strategy':<12} {'gCO2e':>12} {'vs independent':>15} {'deadlines met':>14} {'most running':>13}"]
    for name in result.outcomes:
        share = f"{result.total_g(name) / base:.1%}" if base > 0 else "-"
        lines.append(f"{name:<12} {result.total_g(name):>12.2f} {share:>15} "
                     f"{result.deadlines_met(name):>8}/{len(jobs):<5} {result.max_running[name]:>13}")
    if result.lp_g is not None:
        gap = result.total_g("joint-known") / result.lp_g - 1 if result.lp_g > 0 else 0.0
        lines.append(f"{'lp':<12} {result.lp_g:>12.2f}   (joint-known is {gap:+.4%} of it)")
    if result.note:
        lines.append(f"note: {result.note}")
    typer.echo("\n".join(lines))
