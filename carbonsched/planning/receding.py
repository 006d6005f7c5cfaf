"""One receding-horizon decision for a job with a deadline, from its progress. Pure, no I/O.

The daemon (:mod:`carbonsched.job_planning`) and the backtest's ``planner-receding``
(:mod:`carbonsched.planning.closed_loop`) both call these functions: :func:`progress_from_records`
turns a job's epoch records and pause intervals into its progress (epochs done, their ρ, the epoch
time at ρ 1 learned from ended epochs, running power per ρ), and :func:`decide` answers "ρ now or
pause until when" from that progress, the time left and the planning slots, with the deadline guard
and the margin. The module docstring of :mod:`carbonsched.job_planning` states the rules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

from carbonsched.planning.margin import MARGIN_SHARE, plan_with_margin
from carbonsched.planning.model import CostModel, Job, PlanningInputError, Slot, remaining_job
from carbonsched.planning.planner import Plan

MAX_OPEN_EPOCH_SHARE = 0.99
LEARNED_EPOCHS = 3
POWER_RHO_DIGITS = 2  # epochs whose ρ agree to this many digits share one measured power point
# Without measured power per ρ, running power cancels out of the plan (a paused job is taken to draw nothing).
UNIT_POWER_W = 1.0


@dataclass(frozen=True)
class JobDeclaration:
    """What a job declared at ``job.start``; ``deadline_s`` in unix seconds."""

    deadline_s: float
    epochs: float
    epoch_seconds: float | None
    rho_min: float
    mean_rho: float | None
    may_pause: bool

    @classmethod
    def from_job(cls, job: Mapping[str, Any]) -> "JobDeclaration | None":
        """From a stored job row; None for a job that declared no deadline and epochs."""
        if job.get("deadline") is None or job.get("epochs") is None:
            return None
        mean_rho = job.get("mean_rho")
        rho_min = job.get("rho_min") or mean_rho or 1.0
        if mean_rho is not None and mean_rho < rho_min:
            mean_rho = rho_min
        return cls(deadline_s=float(job["deadline"]), epochs=float(job["epochs"]), epoch_seconds=job.get("epoch_seconds"),
                   rho_min=float(rho_min), mean_rho=mean_rho, may_pause=bool(job.get("may_pause")))


@dataclass(frozen=True)
class JobProgress:
    """How far a job is: epochs done (fractional), their ρ summed, and its epoch seconds at ρ 1."""

    epochs_done: float
    rho_sum_done: float
    epoch_s_at_full: float | None
    learned: bool
    power_points: tuple[tuple[float, float], ...] = ()  # (ρ, running W) measured at two or more ρ


@dataclass(frozen=True)
class JobPlanDecision:
    """The plan's answer for now. Instants are unix seconds; ``pause_until_s`` None: run now."""

    rho: float  # to run at now, or to resume at after the pause
    pause_until_s: float | None
    reason: str
    guard: bool
    slack_s: float  # time to the deadline minus the running time the remaining work needs
    work_left_epochs: float
    next_pause_at_s: float | None
    next_resume_at_s: float | None
    finish_at_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def running_seconds(start_s: float, end_s: float, pauses: Sequence[tuple[float, float]]) -> float:
    """Seconds of ``[start_s, end_s)`` outside the paused ``(start, end)`` intervals."""
    paused = sum(max(0.0, min(end_s, p_end) - max(start_s, p_start)) for p_start, p_end in pauses)
    return max(0.0, end_s - start_s - paused)


def progress_from_records(declaration: JobDeclaration, epochs: Sequence[Mapping[str, Any]],
                          pauses: Sequence[tuple[float, float]], now_s: float) -> JobProgress:
    """The job's progress from its stored epochs and pause intervals (see the module docstring)."""
    done, rho_sum, at_full = 0.0, 0.0, []
    watts_by_rho: dict[float, list[float]] = {}
    open_epoch = None
    for epoch in epochs:
        rho = epoch.get("rho_effective") or epoch.get("rho_asked") or 1.0
        if epoch.get("ended_at") is None:
            open_epoch = epoch if epoch.get("started_at") is not None else open_epoch
            continue
        done, rho_sum = done + 1, rho_sum + rho
        if epoch.get("started_at") is not None:
            seconds = running_seconds(epoch["started_at"], epoch["ended_at"], pauses)
            if seconds > 0:
                at_full.append(seconds / rho)
                if epoch.get("energy_j"):
                    watts_by_rho.setdefault(round(min(1.0, rho), POWER_RHO_DIGITS), []).append(epoch["energy_j"] / seconds)
    learned = sum(at_full[-LEARNED_EPOCHS:]) / len(at_full[-LEARNED_EPOCHS:]) if at_full else None
    epoch_s_at_full = learned or declaration.epoch_seconds
    if open_epoch is not None and epoch_s_at_full:
        rho = open_epoch.get("rho_asked") or 1.0
        share = running_seconds(open_epoch["started_at"], now_s, pauses) / (epoch_s_at_full * rho)
        share = min(MAX_OPEN_EPOCH_SHARE, share)
        done, rho_sum = done + share, rho_sum + share * rho
    power_points = tuple((rho, sum(w[-LEARNED_EPOCHS:]) / len(w[-LEARNED_EPOCHS:]))
                         for rho, w in sorted(watts_by_rho.items()))
    return JobProgress(done, rho_sum, epoch_s_at_full, learned is not None,
                       power_points if len(power_points) >= 2 else ())


def decide(declaration: JobDeclaration, progress: JobProgress, now_s: float, current_g_per_kwh: float,
           slots_for: Callable[[float], Sequence[Slot]], *, interval_s: float) -> tuple[JobPlanDecision, Plan | None] | None:
    """ρ or a pause for now, and the plan behind it (None when the deadline guard or an infeasible
    plan runs the job now); None when the job cannot be planned (no epoch time known yet, or all
    declared epochs done). ``slots_for(horizon_s)`` gives the planning slots from now to the deadline,
    ``horizon_s`` seconds ahead; it is called only when a plan is made. Instants are in the caller's
    seconds (unix seconds in the daemon)."""
    epoch_s_at_full = progress.epoch_s_at_full
    left = declaration.epochs - progress.epochs_done
    if epoch_s_at_full is None or left <= 1e-9:
        return None
    time_left_s = declaration.deadline_s - now_s
    full_need_s = left * epoch_s_at_full
    try:
        job = remaining_job(
            Job(epochs=declaration.epochs, deadline_s=max(time_left_s, 1e-3), rho_min=declaration.rho_min,
                mean_rho=declaration.mean_rho, may_pause=declaration.may_pause),
            epochs_done=progress.epochs_done, rho_sum_done=progress.rho_sum_done, elapsed_s=0.0,
        )
    except PlanningInputError:
        return None
    cost = CostModel(epoch_s_at_full=epoch_s_at_full, running_power_w=UNIT_POWER_W, power_points=progress.power_points)

    def run_now(rho: float, reason: str, guard: bool) -> tuple[JobPlanDecision, None]:
        finish_s = now_s + left * cost.epoch_s(rho)
        return JobPlanDecision(rho, None, reason, guard, time_left_s - left * cost.epoch_s(rho), left, None, None,
                               finish_s), None

    # Fixed for the job (not shrinking with the work left), so a job the guard runs stays guarded.
    guard_margin_s = max(MARGIN_SHARE * declaration.epochs * epoch_s_at_full, interval_s)
    if time_left_s <= full_need_s + guard_margin_s:
        fitting = max(0.0, time_left_s - guard_margin_s) / full_need_s
        rho = min(1.0, max(job.rho_floor, fitting))
        fits = "fits" if fitting >= job.rho_floor else "no longer fits even at the floor"
        return run_now(rho, f"deadline guard: {left:.2f} epochs at ρ 1 need {full_need_s:.0f} s, "
                            f"{max(time_left_s, 0.0):.0f} s left; running now at ρ {rho:.2f} ({fits})", True)
    plan = plan_with_margin(job, cost, slots_for(time_left_s), at_least_s=interval_s)
    if not plan.feasible or not plan.segments:
        return run_now(job.rho_floor, f"plan infeasible ({plan.note}); running now at ρ {job.rho_floor:.2f}", True)
    slack_s = time_left_s - plan.running_s
    finish_at_s = now_s + plan.finish_s
    rho_now = plan.rho_at(0.0)
    if rho_now is None:
        upcoming = next(s for s in plan.segments if s.start_s > 0)
        resume_s = now_s + upcoming.start_s
        reason = (f"planned pause until {upcoming.start_s:.0f} s from now "
                  f"({upcoming.intensity_g_per_kwh:.0f} gCO2e/kWh forecast), then ρ {upcoming.rho:.2f}")
        return JobPlanDecision(upcoming.rho, resume_s, reason, False, slack_s, left, None, resume_s, finish_at_s), plan
    next_pause_at_s = next_resume_at_s = None
    block_end_s = 0.0
    for segment in plan.segments:
        if segment.start_s > block_end_s + 1e-6:
            next_pause_at_s, next_resume_at_s = now_s + block_end_s, now_s + segment.start_s
            break
        block_end_s = max(block_end_s, segment.end_s)
    reason = (f"planned ρ {rho_now:.2f} now ({current_g_per_kwh:.0f} gCO2e/kWh); "
              f"finish {plan.finish_s:.0f} s from now, {time_left_s - plan.finish_s:.0f} s before the deadline")
    return (JobPlanDecision(rho_now, None, reason, False, slack_s, left, next_pause_at_s, next_resume_at_s, finish_at_s),
            plan)


__all__ = ["LEARNED_EPOCHS", "MAX_OPEN_EPOCH_SHARE", "UNIT_POWER_W", "JobDeclaration", "JobPlanDecision",
           "JobProgress", "decide", "progress_from_records", "running_seconds"]
