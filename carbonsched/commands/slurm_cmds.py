"""`carbonsched sbatch`: plan a deadline job against the forecast and submit it to Slurm to begin
when the plan starts it (``sbatch --begin``), with Slurm's own ``--deadline``.

The job's declaration (deadline, epochs, epoch seconds, ρ bounds, may pause) goes to the batch
script in the environment (:data:`~carbonsched.protocol.JOB_DECLARATION_ENV`), so the trainer
inside (``greentrainer train --rho-from daemon``, or a ``DaemonRhoSource``) declares the job it
was planned as and the daemon on its node keeps planning it from there.
"""

from __future__ import annotations

import os
import shlex
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from carbonsched.commands.daemon_cmds import CONFIG_ENV
from carbonsched.commands.plan_cmds import (
    EpochMinutes, IdlePowerW, MayPause, MeanRho, PowerW, fail, forecast_slots, job_and_cost, deadline_from_now_s,
)
from carbonsched.protocol import JOB_DECLARATION_ENV, PlanSubmitReply, encode_job_declaration
from carbonsched.times import parse_duration_s, parse_instant_s

# Options of sbatch that the plan sets; given again by the user they would silently override it.
PLANNED_SBATCH_OPTIONS = ("--begin", "-b", "--deadline")


def _check_sbatch_args(sbatch_args: list[str]) -> None:
    """A script is given, and none of sbatch's options is one the plan sets."""
    from carbonsched.slurm.slurm_cli import split_sbatch_args

    options, script = split_sbatch_args(sbatch_args)
    for arg in options:
        name = arg.split("=", 1)[0]
        if name in PLANNED_SBATCH_OPTIONS or (name.startswith("-b") and not name.startswith("--")):
            fail(f"sbatch option {arg!r}: carbonsched sbatch sets the begin time and deadline from the plan; "
                 "leave it out (use --deadline of carbonsched sbatch)")
    if not script:
        fail("give the batch script after the sbatch options: carbonsched sbatch [OPTIONS] -- [SBATCH OPTIONS] SCRIPT")


def sbatch(
    sbatch_args: list[str] = typer.Argument(..., metavar="-- [SBATCH OPTIONS] SCRIPT [ARGS]",
                                            help="sbatch's own options, the batch script and its arguments."),
    epochs: float = typer.Option(..., "--epochs", help="Epochs the job trains."),
    epoch_minutes: float = EpochMinutes,
    deadline: str = typer.Option(..., "--deadline", help="A duration from now (8h, 90m, 1h30m, PT8H; a plain number is hours) or an ISO 8601 time (UTC unless an offset is given)."),
    mean_rho: Optional[float] = MeanRho,
    rho_min: Optional[float] = typer.Option(None, "--rho-min", help="Lowest ρ any epoch may get (default: "
                                            "--mean-rho, else 1: the job is only shifted in time)."),
    may_pause: bool = MayPause,
    release_after: str = typer.Option("30m", "--release-after", help="With --may-pause: a planned pause longer than "
                                      "this (90s, 30m, 2h; a bare number is minutes) requeues the job, giving its "
                                      "GPUs back, to begin again when the plan runs it next."),
    power_w: float = PowerW,
    idle_power_w: float = IdlePowerW,
    provider: Optional[str] = typer.Option(None, "--provider", help="Provider spec (default: the daemon config's)."),
    config_file: Optional[Path] = typer.Option(None, "--config", envvar=CONFIG_ENV,
                                               help="Daemon TOML config (its provider is used)."),
    socket: Optional[Path] = typer.Option(None, "--socket", help="Plan with the daemon at this socket instead: "
                                          "against its forecast, together with the jobs it planned before, under "
                                          "its partition_gpus (the job must --may-pause)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and the sbatch command; submit nothing."),
) -> None:
    """Plan a deadline job and submit it to Slurm to begin at the plan's start (sbatch --begin)."""
    from carbonsched.planning.receding import JobDeclaration
    from carbonsched.planning.start import plan_start
    from carbonsched.slurm.slurm_cli import SlurmError, exporting, parse_job_id, run_slurm, sbatch_command
    from carbonsched.types import utcnow

    _check_sbatch_args(sbatch_args)
    now = utcnow()
    try:
        deadline_s = deadline_from_now_s(deadline, now)
    except ValueError as exc:
        fail(str(exc))
    if deadline_s <= 0:
        fail(f"--deadline {deadline!r} is not in the future")
    for name, value in (("--mean-rho", mean_rho), ("--rho-min", rho_min)):
        if value is not None and not 0 < value <= 1:
            fail(f"{name} must be in (0, 1], got {value}")
    try:
        release_after_s = parse_duration_s(release_after, "--release-after", bare_unit_s=60.0)
    except ValueError as exc:
        fail(str(exc))
    declaration = {"deadline": now.timestamp() + deadline_s, "epochs": epochs, "epoch_seconds": epoch_minutes * 60,
                   "rho_min": rho_min, "mean_rho": mean_rho, "may_pause": may_pause,
                   "release_after_s": release_after_s if may_pause else None}
    if socket is not None:
        if not may_pause:
            fail("--socket plans jobs together, which needs jobs that may pause: add --may-pause")
        if dry_run:
            fail("--dry-run with --socket would hand out a plan the daemon then keeps; drop one of them")
        begin_in_s, summary, notes, submission = _daemon_plan(socket, declaration, power_w)
    else:
        declared = JobDeclaration.from_job(declaration)  # the daemon's reading of it: ρ floor rules included
        job, cost = job_and_cost(epochs, epoch_minutes, deadline_s, declared.rho_min, declared.mean_rho, may_pause,
                                 None, power_w, idle_power_w, [], [])
        _, slots, notes = forecast_slots(provider, config_file, now, job.deadline_s)
        start = plan_start(job, cost, slots)
        begin_in_s, submission = start.begin_s, None
        notes = notes + ([start.plan.note] if start.plan.note else [])
        paused_s = max(0.0, start.plan.paused_s - start.begin_s)
        summary = _summary(now.timestamp() + start.begin_s, start.begin_s, now.timestamp() + start.finish_s,
                           start.plan.mean_rho, start.plan.expected_carbon_g, start.plan.feasible,
                           f", running {start.plan.running_s / 3600:.2f} h, paused {paused_s / 3600:.2f} h")
    command = sbatch_command(exporting(sbatch_args, JOB_DECLARATION_ENV), begin_in_s=begin_in_s, deadline_in_s=deadline_s - (time.time() - now.timestamp()))
    env_value = encode_job_declaration(declaration)
    if dry_run:
        typer.echo(f"{JOB_DECLARATION_ENV}={shlex.quote(env_value)} {shlex.join(command)}")
        typer.echo(summary)
    else:
        try:
            out = run_slurm(command, env={**os.environ, JOB_DECLARATION_ENV: env_value})
            job_id = parse_job_id(out)
        except SlurmError as exc:
            fail(str(exc), 1)
        typer.echo(f"Submitted Slurm job {job_id}")
        typer.echo(summary)
        if submission is not None:
            _bind(socket, submission["plan_id"], job_id)
    for note in notes:
        typer.echo(f"note: {note}")


def _summary(begin_s: float, begin_in_s: float, finish_s: float, mean_rho: float, carbon_g: float,
             feasible: bool, times: str = "") -> str:
    begin, finish = (datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") for t in (begin_s, finish_s))
    return (f"plan: begin {begin} UTC (in {begin_in_s:.0f} s), finish by {finish} UTC, mean ρ {mean_rho:.3f}{times}, "
            f"expected {carbon_g:.2f} gCO2e" + ("" if feasible else "; the deadline cannot be met as declared"))


def _daemon_plan(socket: Path, declaration: dict, power_w: float) -> tuple[float, str, list[str], PlanSubmitReply]:
    """The daemon's joint plan for the job (op ``plan.submit``): begin in s from now, summary, notes, reply."""
    from carbonsched.client import DaemonClient, DaemonRequestError, DaemonUnavailable

    fields = {k: v for k, v in declaration.items() if v is not None and k not in ("may_pause", "release_after_s")}
    try:
        with DaemonClient(socket, timeout_s=30.0) as client:
            reply = client.plan_submit(**fields, power_w=power_w)
    except DaemonUnavailable as exc:
        fail(f"no daemon at {socket}: {exc}", 1)
    except DaemonRequestError as exc:
        fail(f"the daemon at {socket} did not plan the job: {exc.message}", 1)
    begin_in_s = max(0.0, reply["begin_s"] - time.time())
    finish_s = parse_instant_s(reply["finish"], "the daemon's finish")
    summary = _summary(reply["begin_s"], begin_in_s, finish_s, reply["mean_rho"], reply["expected_carbon_g"],
                       reply["feasible"])
    notes = [f"planned by the daemon at {socket} with the jobs it planned before, on {reply['gpus']} GPUs"]
    notes += [f"Slurm job {m['slurm_job_id']} now begins at {m['begin']}" for m in reply["moved"]]
    return begin_in_s, summary, notes, reply


def _bind(socket: Path, plan_id: str, slurm_job_id: str) -> None:
    """Tell the daemon which Slurm job the plan became, so that a later re-plan can move it."""
    from carbonsched.client import DaemonClient, DaemonRequestError, DaemonUnavailable

    try:
        with DaemonClient(socket, timeout_s=10.0) as client:
            client.plan_bind(plan_id, slurm_job_id)
    except (DaemonUnavailable, DaemonRequestError) as exc:
        typer.echo(f"warning: the daemon at {socket} was not told the job's Slurm id ({exc}): a later "
                   "submission cannot move its begin time", err=True)


def register(app: typer.Typer) -> None:
    app.command("sbatch", context_settings={"allow_interspersed_args": False})(sbatch)
