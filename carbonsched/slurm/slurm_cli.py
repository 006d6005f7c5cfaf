"""Slurm's command-line tools as carbonsched uses them: submit with a begin time, requeue, and
write a job's energy and carbon into its record.

Times are given to Slurm relative to now (``now+N`` seconds), so the controller's time zone does
not matter. Every call is bounded by ``timeout_s``; a failure is a :class:`SlurmError` with one
line naming the command and what it said.
"""

from __future__ import annotations

import logging
import math
import re
import subprocess
import threading
from typing import Mapping, Sequence

__all__ = ["SLURM_TIMEOUT_S", "SlurmError", "admin_comment", "exporting", "job_state", "split_sbatch_args", "move_begin", "parse_job_id", "record_in_slurm",
           "relative_time", "release", "requeue_held", "run_slurm", "sbatch_command", "set_admin_comment", "set_begin"]

SLURM_TIMEOUT_S = 30.0
log = logging.getLogger("carbonsched.slurm")
_JOB_ID = re.compile(r"\d+(?:_\d+)?")


class SlurmError(RuntimeError):
    """A Slurm command failed or is missing; the message is one line."""


def relative_time(seconds_from_now: float) -> str:
    """``now+N`` (whole seconds, rounded up so the job never begins before the plan says)."""
    return f"now+{max(0, math.ceil(seconds_from_now))}"


def sbatch_command(sbatch_args: Sequence[str], *, begin_in_s: float, deadline_in_s: float) -> list[str]:
    """``sbatch --parsable --begin=now+B --deadline=now+D`` followed by the user's sbatch options,
    the script and its arguments (options given later win in sbatch, so the user's own
    ``--begin`` would override the plan's: the caller refuses those)."""
    return ["sbatch", "--parsable", f"--begin={relative_time(begin_in_s)}",
            f"--deadline={relative_time(deadline_in_s)}", *sbatch_args]


# sbatch options that take no value (every other option without "=" takes the next argument).
_FLAGS = frozenset({
    "--requeue", "--no-requeue", "--exclusive", "--parsable", "--hold", "--wait", "--test-only", "--contiguous",
    "--use-min-nodes", "--overcommit", "--spread-job", "--quiet", "--verbose", "--help", "--usage", "--version",
    "--ignore-pbs", "--no-kill", "--oversubscribe", "--reboot", "--get-user-env", "--nice", "--exclusive=user",
    "-h", "-H", "-I", "-k", "-O", "-Q", "-s", "-v", "-V", "-W",
})


def split_sbatch_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """sbatch's own options, and the script with its arguments (empty when no script is given).
    An option written ``--name value`` or ``-x value`` takes the next argument; ``--`` ends them."""
    options: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            return options, list(args[index + 1:])
        if not arg.startswith("-") or arg == "-":
            return options, list(args[index:])
        options.append(arg)
        takes_value = "=" not in arg and arg not in _FLAGS and (arg.startswith("--") or len(arg) == 2)
        if takes_value and index + 1 < len(args):
            options.append(args[index + 1])
            index += 1
        index += 1
    return options, []


def exporting(sbatch_args: Sequence[str], variable: str) -> list[str]:
    """``sbatch_args`` with ``variable`` added to a ``--export=`` list among sbatch's options
    (``NONE`` becomes just ``variable``), so that the batch script still gets it; unchanged without
    one (sbatch exports the whole environment by default)."""
    options, script = split_sbatch_args(sbatch_args)
    out = []
    for arg in options:
        if arg.startswith("--export="):
            value = arg.split("=", 1)[1]
            names = [v.split("=", 1)[0] for v in value.split(",")]
            if value.upper() == "NONE":
                arg = f"--export={variable}"
            elif "ALL" not in (n.upper() for n in names) and variable not in names:
                arg = f"--export={value},{variable}"
        out.append(arg)
    return out + script


def parse_job_id(stdout: str) -> str:
    """The job id ``sbatch --parsable`` printed (``ID`` or ``ID;CLUSTER``)."""
    first = stdout.strip().splitlines()[0] if stdout.strip() else ""
    job_id = first.split(";")[0].strip()
    if not _JOB_ID.fullmatch(job_id):
        raise SlurmError(f"sbatch printed no job id: {stdout.strip()[:200]!r}")
    return job_id


def run_slurm(args: Sequence[str], *, env: Mapping[str, str] | None = None,
              timeout_s: float = SLURM_TIMEOUT_S) -> str:
    """Run one Slurm command; its stdout, or :class:`SlurmError`."""
    try:
        done = subprocess.run(list(args), env=None if env is None else dict(env), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout_s)
    except FileNotFoundError:
        raise SlurmError(f"{args[0]} not found: is Slurm installed on this host?") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{args[0]} did not answer within {timeout_s:g} s") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise SlurmError(f"{args[0]} failed (exit {done.returncode}): {said[-1] if said else 'no message'}")
    return done.stdout


def admin_comment(energy_kwh: float, carbon_g: float) -> str:
    """What carbonsched writes into a job's AdminComment (no spaces: ``scontrol show job`` splits at them)."""
    return f"carbonsched:energy_kwh={energy_kwh:.6g},carbon_gco2e={carbon_g:.6g}"


def set_admin_comment(job_id: str, comment: str, *, timeout_s: float = SLURM_TIMEOUT_S) -> None:
    run_slurm(["scontrol", "update", f"JobId={job_id}", f"AdminComment={comment}"], timeout_s=timeout_s)


def requeue_held(job_id: str, *, timeout_s: float = SLURM_TIMEOUT_S) -> None:
    """``scontrol requeuehold``: Slurm signals the batch script (SIGTERM), and the job goes back
    to the queue held, so that its new begin time can be set before anything starts it."""
    run_slurm(["scontrol", "requeuehold", job_id], timeout_s=timeout_s)


def release(job_id: str, *, timeout_s: float = SLURM_TIMEOUT_S) -> None:
    run_slurm(["scontrol", "release", job_id], timeout_s=timeout_s)


def job_state(job_id: str, *, timeout_s: float = SLURM_TIMEOUT_S) -> str:
    """The job's ``JobState`` (PENDING, RUNNING, COMPLETING, ...)."""
    out = run_slurm(["scontrol", "show", "job", "-o", job_id], timeout_s=timeout_s)
    for token in out.split():
        if token.startswith("JobState="):
            return token.split("=", 1)[1]
    raise SlurmError(f"scontrol show job {job_id} gave no JobState")


def set_begin(job_id: str, begin_in_s: float, *, timeout_s: float = SLURM_TIMEOUT_S) -> None:
    """Hold a pending job until ``begin_in_s`` seconds from now."""
    run_slurm(["scontrol", "update", f"JobId={job_id}", f"StartTime={relative_time(begin_in_s)}"],
              timeout_s=timeout_s)


def record_in_slurm(slurm_job_id: str, energy_kwh: float, carbon_g: float, *,
                    timeout_s: float = SLURM_TIMEOUT_S) -> threading.Thread:
    """Write the job's energy and carbon into its Slurm record (AdminComment), in a background
    thread so the daemon's answer does not wait for the controller; a failure is one log line."""

    def write() -> None:
        try:
            set_admin_comment(slurm_job_id, admin_comment(energy_kwh, carbon_g), timeout_s=timeout_s)
        except SlurmError as exc:
            log.warning("Slurm job %s: energy and carbon not written to its record: %s", slurm_job_id, exc)
        else:
            log.info("Slurm job %s: %.6g kWh, %.6g gCO2e written to its AdminComment", slurm_job_id, energy_kwh,
                     carbon_g)

    thread = threading.Thread(target=write, name=f"slurm-record-{slurm_job_id}", daemon=True)
    thread.start()
    return thread


def move_begin(slurm_job_id: str, begin_in_s: float, *, timeout_s: float = SLURM_TIMEOUT_S) -> threading.Thread:
    """Move a pending job's begin time (a joint re-plan moved it), in a background thread; a
    failure (the job began meanwhile, or is gone) is one log line."""

    def move() -> None:
        try:
            set_begin(slurm_job_id, begin_in_s, timeout_s=timeout_s)
        except SlurmError as exc:
            log.warning("Slurm job %s: begin time not moved: %s", slurm_job_id, exc)
        else:
            log.info("Slurm job %s: begin moved to %s by a joint re-plan", slurm_job_id, relative_time(begin_in_s))

    thread = threading.Thread(target=move, name=f"slurm-begin-{slurm_job_id}", daemon=True)
    thread.start()
    return thread
