"""One receding-horizon decision for a job with a deadline, from its progress. Pure, no I/O.

The daemon (:mod:`carbonsched.planning.job_planner`) and the backtest's ``planner-receding``
(:mod:`carbonsched.planning.closed_loop`) both call these functions: :func:`progress_from_records`
turns a job's epoch records and pause intervals into its progress (epochs done, their ρ, the epoch
time at ρ 1 learned from ended epochs, running power per ρ), and :func:`decide` answers "ρ now or
pause until when" from that progress, the time left and the planning slots, with the deadline guard
and the margin. The module docstring of :mod:`carbonsched.planning.job_planner` states the rules.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

from carbonsched.planning.forecast_trust import LeadError, expected_slots
from carbonsched.planning.margin import MARGIN_SHARE, plan_with_margin, running_need_s
from carbonsched.planning.model import CostModel, Job, PlanningInputError, Slot, remaining_job
from carbonsched.planning.planner import Level, Plan, Segment, expected_carbon_g

MAX_OPEN_EPOCH_SHARE = 0.99
LEARNED_EPOCHS = 3
POWER_RHO_DIGITS = 2  # epochs whose ρ agree to this many digits share one measured power point
# Without measured power per ρ, running power cancels out of the plan (a paused job is taken to draw nothing).
UNIT_POWER_W = 1.0


GUARD_FLOOR = "floor"
GUARD_FULL = "full"
GUARDS = (GUARD_FLOOR, GUARD_FULL)
# A fresh plan replaces the one a job follows only when it is cheaper by more than this share of
# the followed plan's cost on the same forecast (see keep_or_replace). 0: whenever it is cheaper at
# all, so equal plans never flip-flop. Measured in the scheduling benchmark: with forecasts whose
# successive issues agree (real ones, the noise model's), any positive share costs carbon (a newer
# forecast knows more); only with independent noise at every ask does holding help, and barely.
SWITCH_SHARE = 0.0
# Until an epoch has ended, the plan keeps this share of its running time free before the deadline
# on top of MARGIN_SHARE: a declared epoch time nobody has measured may be 30 % off, and a plan that
# learns that only when its first epoch ends, late before the deadline, could no longer make it.
UNMEASURED_EPOCH_TIME_SHARE = 0.3
WORK_TOLERANCE = 1e-6  # relative: a held plan doing this much less than the work left still counts as doing it


@dataclass(frozen=True)
class PlanningSettings:
    """How the daemon re-plans deadline jobs (the ``[planning]`` table of its config)."""

    guard: str = GUARD_FLOOR  # "floor": the work left at the floor ρ must fit; "full": at ρ 1 (opt-in)
    switch_share: float = SWITCH_SHARE  # a fresh plan replaces the followed one only when this much cheaper
    # The forecast's error by lead (a fitted noise model); None: the forecast is taken at face value.
    forecast_error: LeadError | None = None

    def __post_init__(self) -> None:
        if self.guard not in GUARDS:
            raise PlanningInputError(f"guard must be one of {', '.join(GUARDS)}, got {self.guard!r}")
        if not (math.isfinite(self.switch_share) and 0 <= self.switch_share < 1):
            raise PlanningInputError(f"switch_share must be a fraction in [0, 1), got {self.switch_share!r}")


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
    # Largest relative deviation of a measured epoch time at ρ 1 from their mean; None before two epochs ended.
    epoch_s_spread: float | None = None


@dataclass(frozen=True)
class HeldPlan:
    """The plan a job follows, made at ``origin_s`` (segment times are relative to it)."""

    origin_s: float
    plan: Plan
    made_with: CostModel  # a plan made under another cost model (a newly measured epoch time) is not kept

    def remainder(self, now_s: float, job: Job, cost: CostModel) -> Plan | None:
        """The plan's segments from ``now_s`` on (times relative to ``now_s``), cut where they have
        done ``job.epochs`` at ``cost``; None when they do less than that or their mean ρ with the
        work already done falls below ``job``'s floor (``job`` is the remaining job at ``now_s``)."""
        shift_s = self.origin_s - now_s
        segments: list[Segment] = []
        epochs_by_rho: dict[float, float] = {}
        work_left = job.epochs
        for segment in self.plan.segments:
            start_s, end_s = max(0.0, segment.start_s + shift_s), segment.end_s + shift_s
            if end_s <= start_s + 1e-9 or work_left <= 1e-12:
                continue
            epoch_s = cost.epoch_s(segment.rho)
            epochs = min((end_s - start_s) / epoch_s, work_left)
            end_s = start_s + epochs * epoch_s
            segments.append(Segment(start_s, end_s, segment.rho, segment.intensity_g_per_kwh))
            epochs_by_rho[segment.rho] = epochs_by_rho.get(segment.rho, 0.0) + epochs
            work_left -= epochs
        if work_left > WORK_TOLERANCE * job.epochs:
            return None
        levels = tuple(Level(rho, epochs) for rho, epochs in sorted(epochs_by_rho.items(), reverse=True))
        if sum(level.rho * level.epochs for level in levels) < job.rho_floor * job.epochs * (1 - WORK_TOLERANCE):
            return None
        return Plan(job, tuple(segments), levels, self.plan.expected_carbon_g, feasible=True, note="held")


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
    spread = None
    if len(at_full) >= 2:
        mean_s = sum(at_full) / len(at_full)
        spread = max(abs(seconds - mean_s) for seconds in at_full) / mean_s
    epoch_s_at_full = learned or declaration.epoch_seconds
    if open_epoch is not None and epoch_s_at_full:
        rho = open_epoch.get("rho_asked") or 1.0
        share = running_seconds(open_epoch["started_at"], now_s, pauses) / (epoch_s_at_full * rho)
        share = min(MAX_OPEN_EPOCH_SHARE, share)
        done, rho_sum = done + share, rho_sum + share * rho
    power_points = tuple((rho, sum(w[-LEARNED_EPOCHS:]) / len(w[-LEARNED_EPOCHS:]))
                         for rho, w in sorted(watts_by_rho.items()))
    return JobProgress(done, rho_sum, epoch_s_at_full, learned is not None,
                       power_points if len(power_points) >= 2 else (), spread)


def guard_margin_s(progress: JobProgress, floor_need_s: float, interval_s: float) -> float:
    """Seconds the floor guard keeps in hand: the relative spread of the job's own measured epoch
    times (:attr:`JobProgress.epoch_s_spread`; ``MARGIN_SHARE`` after one epoch has ended,
    ``UNMEASURED_EPOCH_TIME_SHARE`` before) times
    the running time the remaining work needs at the floor, at least one decide interval."""
    if progress.epoch_s_spread is not None:
        spread = progress.epoch_s_spread
    else:
        spread = MARGIN_SHARE if progress.learned else UNMEASURED_EPOCH_TIME_SHARE
    return max(interval_s, spread * floor_need_s)


def guard_fires(time_left_s: float, need_s: float, margin_s: float) -> bool:
    """Whether ``need_s`` of running no longer fits in ``time_left_s`` with ``margin_s`` to spare."""
    return time_left_s < need_s + margin_s - 1e-6


def decide(declaration: JobDeclaration, progress: JobProgress, now_s: float, current_g_per_kwh: float,
           slots_for: Callable[[float], Sequence[Slot]], *, interval_s: float, held: HeldPlan | None = None,
           guard: str = GUARD_FLOOR, switch_share: float = SWITCH_SHARE, forecast_error: LeadError | None = None,
           ) -> tuple[JobPlanDecision, HeldPlan | None] | None:
    """ρ or a pause for now, and the plan behind it (None when the deadline guard or an infeasible
    plan runs the job now); None when the job cannot be planned (no epoch time known yet, or all
    declared epochs done). ``slots_for(horizon_s)`` gives the planning slots from now to the deadline,
    ``horizon_s`` seconds ahead; it is called only when a plan is made. Instants are in the caller's
    seconds (unix seconds in the daemon).

    ``held``: the plan this job has been following (from the previous call); it is kept unless the
    fresh plan is cheaper on the fresh forecast by more than ``switch_share`` of its cost, or it no
    longer finishes the work by the deadline at the floor (see :func:`keep_or_replace`). ``guard``:
    ``"floor"`` (the remaining work at the floor ρ must fit, with :func:`guard_margin_s`) or
    ``"full"`` (the remaining work at ρ 1 must fit: full quality stays reachable; opt-in).
    ``forecast_error``: the forecast's error by lead; the plan then prices each slot at its
    expected value (:func:`~carbonsched.planning.forecast_trust.expected_slots`)."""
    if guard not in GUARDS:
        raise PlanningInputError(f"guard must be one of {', '.join(GUARDS)}, got {guard!r}")
    epoch_s_at_full = progress.epoch_s_at_full
    left = declaration.epochs - progress.epochs_done
    if epoch_s_at_full is None or left <= 1e-9:
        return None
    time_left_s = declaration.deadline_s - now_s
    try:
        job = remaining_job(
            Job(epochs=declaration.epochs, deadline_s=max(time_left_s, 1e-3), rho_min=declaration.rho_min,
                mean_rho=declaration.mean_rho, may_pause=declaration.may_pause),
            epochs_done=progress.epochs_done, rho_sum_done=progress.rho_sum_done, elapsed_s=0.0,
        )
    except PlanningInputError:
        return None
    cost = CostModel(epoch_s_at_full=epoch_s_at_full, running_power_w=UNIT_POWER_W, power_points=progress.power_points)

    def run_now(rho: float, reason: str, guarded: bool) -> tuple[JobPlanDecision, None]:
        finish_s = now_s + left * cost.epoch_s(rho)
        return JobPlanDecision(rho, None, reason, guarded, time_left_s - left * cost.epoch_s(rho), left, None, None,
                               finish_s), None

    if guard == GUARD_FULL:
        full_need_s = left * epoch_s_at_full
        # Fixed for the job (not shrinking with the work left), so a job the guard runs stays guarded.
        margin = max(MARGIN_SHARE * declaration.epochs * epoch_s_at_full, interval_s)
        if guard_fires(time_left_s, full_need_s, margin):
            fitting = max(0.0, time_left_s - margin) / full_need_s
            rho = min(1.0, max(job.rho_floor, fitting))
            fits = "fits" if fitting >= job.rho_floor else "no longer fits even at the floor"
            return run_now(rho, f"deadline guard (full quality): {left:.2f} epochs at ρ 1 need {full_need_s:.0f} s, "
                                f"{max(time_left_s, 0.0):.0f} s left; running now at ρ {rho:.2f} ({fits})", True)
    floor_need_s = running_need_s(job, cost)
    floor_margin_s = guard_margin_s(progress, floor_need_s, interval_s)
    if guard == GUARD_FLOOR:
        margin = floor_margin_s
        if guard_fires(time_left_s, floor_need_s, margin):
            return run_now(job.rho_floor, f"deadline guard: {left:.2f} epochs at the floor ρ {job.rho_floor:.2f} need "
                                          f"{floor_need_s:.0f} s (+{margin:.0f} s margin), "
                                          f"{max(time_left_s, 0.0):.0f} s left; running now at the floor", True)
    slots = slots_for(time_left_s)
    if forecast_error is not None:
        slots = expected_slots(slots, forecast_error)
    share = MARGIN_SHARE if progress.learned else MARGIN_SHARE + UNMEASURED_EPOCH_TIME_SHARE
    fresh = plan_with_margin(job, cost, slots, share=share, at_least_s=interval_s)
    if not fresh.feasible and guard == GUARD_FLOOR:  # the plan's margin no longer fits, the guard's still does
        fresh = plan_with_margin(job, cost, slots, share=0.0, at_least_s=margin)
    if not fresh.feasible or not fresh.segments:
        return run_now(job.rho_floor, f"plan infeasible ({fresh.note}); running now at ρ {job.rho_floor:.2f}", True)
    plan = keep_or_replace(held, fresh, now_s, slots, cost, switch_share=switch_share,
                           latest_finish_s=time_left_s - floor_margin_s)
    slack_s = time_left_s - plan.running_s
    finish_at_s = now_s + plan.finish_s
    rho_now = plan.rho_at(0.0)
    kept = " (kept: the fresh plan is not enough better)" if plan is not fresh else ""
    if rho_now is None:
        upcoming = next(s for s in plan.segments if s.start_s > 0)
        resume_s = now_s + upcoming.start_s
        reason = (f"planned pause until {upcoming.start_s:.0f} s from now "
                  f"({upcoming.intensity_g_per_kwh:.0f} gCO2e/kWh forecast), then ρ {upcoming.rho:.2f}{kept}")
        decision = JobPlanDecision(upcoming.rho, resume_s, reason, False, slack_s, left, None, resume_s, finish_at_s)
        return decision, HeldPlan(now_s, plan, cost)
    next_pause_at_s = next_resume_at_s = None
    block_end_s = 0.0
    for segment in plan.segments:
        if segment.start_s > block_end_s + 1e-6:
            next_pause_at_s, next_resume_at_s = now_s + block_end_s, now_s + segment.start_s
            break
        block_end_s = max(block_end_s, segment.end_s)
    reason = (f"planned ρ {rho_now:.2f} now ({current_g_per_kwh:.0f} gCO2e/kWh); "
              f"finish {plan.finish_s:.0f} s from now, {time_left_s - plan.finish_s:.0f} s before the deadline{kept}")
    return (JobPlanDecision(rho_now, None, reason, False, slack_s, left, next_pause_at_s, next_resume_at_s, finish_at_s),
            HeldPlan(now_s, plan, cost))


def keep_or_replace(held: HeldPlan | None, fresh: Plan, now_s: float, slots: Sequence[Slot], cost: CostModel, *,
                    switch_share: float, latest_finish_s: float) -> Plan:
    """``fresh``, unless ``held`` was made under ``cost`` and its remainder (from ``now_s``, cut where the work left is done at
    ``cost``) still does all the work left at the job's floor by ``latest_finish_s`` (seconds from
    now) and costs, on ``slots``, no more than ``switch_share`` above ``fresh``: then the remainder.

    Re-planning on every fresh forecast chases its noise (each forecast's cleanest hours differ a
    little); a plan that is only marginally better on the newest forecast is no evidence that it is
    better on the truth."""
    if held is None or held.made_with != cost:
        return fresh
    remainder = held.remainder(now_s, fresh.job, cost)
    if remainder is None or remainder.finish_s > latest_finish_s + 1e-6:
        return fresh
    kept_g = expected_carbon_g(remainder.segments, slots, cost)
    if kept_g - fresh.expected_carbon_g > switch_share * kept_g:
        return fresh
    return dataclasses.replace(remainder, expected_carbon_g=kept_g)


__all__ = ["GUARDS", "GUARD_FLOOR", "GUARD_FULL", "LEARNED_EPOCHS", "MAX_OPEN_EPOCH_SHARE", "SWITCH_SHARE",
           "PlanningSettings",
           "UNIT_POWER_W", "HeldPlan", "JobDeclaration", "JobPlanDecision", "JobProgress", "decide", "guard_fires",
           "guard_margin_s", "keep_or_replace", "progress_from_records", "running_seconds"]
