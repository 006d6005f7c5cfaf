"""Receding-horizon plans for running jobs that declared a deadline.

A job that sends ``deadline`` and ``epochs`` at ``job.start`` (and optionally ``epoch_seconds``,
``rho_min``, ``mean_rho``, ``may_pause``) is planned, not merely answered by the policy: at every
decide interval the daemon calls :func:`plan_job` with

- the job's progress, from its own records (:func:`progress_from_records`): epochs ended, the ρ
  they ran at, and the share of the open epoch done so far (its running time over the expected
  epoch time, at most 0.99). The epoch time at ρ 1 is learned from ended epochs (start to end,
  minus paused time, divided by the achieved ρ; the mean of the last three), else the declared
  ``epoch_seconds``; with neither the job is answered by the policy until its first epoch ends;
  and its running power per ρ: each ended epoch's energy (J, as the daemon attributed it) over its
  running seconds, the mean of the last three at each ρ (rounded to 0.01). Once epochs at two or
  more ρ have been measured, the plan prices an epoch at ρ as P(ρ)·t(ρ)·intensity (see
  :class:`~carbonsched.planning.model.CostModel`); before that power is taken to be the same at every ρ;
- the latest reading and its forecast as planning slots (:func:`planning_slots`); beyond the
  forecast's end, up to the deadline, each slot (at the forecast's step) gets the mean of the
  stored readings at the same time of day over the previous (up to) seven days, the daemon's own
  history read from the store before planning (:func:`reading_history`): only the readings of the
  provider and zone that gave the latest reading, so a provider configured earlier (another zone,
  a trace used for testing) does not leak into the plan; a slot with no such readings gets the
  forecast's last value;
- a margin: the plan must finish ``MARGIN_SHARE`` of its running time (at least one decide
  interval) before the deadline, so that a forecast or epoch-time estimate that is a little off
  does not miss it.

The answer for *now* is the plan's ρ, or a pause until the plan's next running segment.

The deadline guard: when the remaining epochs at ρ 1 no longer fit in the time left with a margin
to spare (``MARGIN_SHARE`` of the whole job's running time at ρ 1, at least one decide interval),
the job is not paused again and runs now at the highest single ρ that still fits with that margin
(ρ 1 while it does, never below the job's floor). The margin is fixed for the job, so once
guarded a job stays guarded: running at that ρ keeps the time left and the work left in step. The guard keeps full quality reachable and the deadline met whatever the forecast
promises for later; it costs carbon only in the last stretch before the deadline. An infeasible
plan (not even the floor fits) also runs now at the floor.

A job that declared no ``rho_min`` is only shifted in time (ρ 1), unless it declared ``mean_rho``,
which then is also its ``rho_min``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

from carbonsched.planning import CostModel, Job, PlanningInputError, Slot
from carbonsched.planning.forecast import (
    DAY_S, DEFAULT_STEP_S, HISTORY_DAYS, ReadingHistory, fill_beyond_forecast, slots_from_forecast,
)
from carbonsched.planning.model import remaining_job
from carbonsched.planning.margin import MARGIN_SHARE, plan_with_margin
from carbonsched.types import ForecastPoint, IntensityReading

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


def pause_intervals(pauses: Sequence[Mapping[str, Any]], now_s: float) -> list[tuple[float, float]]:
    """Stored pause rows as (start, end) unix seconds; an open pause ends now."""
    return [(p["started_at"], p["ended_at"] if p["ended_at"] is not None else now_s) for p in pauses]


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


def planning_slots(now: datetime, current_g_per_kwh: float, forecast: Sequence[ForecastPoint],
                   horizon_s: float, history: ReadingHistory | None = None) -> list[Slot]:
    """Slots from now to ``horizon_s``: the forecast, then the same time of day on the previous
    days from ``history`` (:func:`~carbonsched.planning.forecast.fill_beyond_forecast`), else the
    forecast's last value. With no forecast, the current reading holds for one step first."""
    has_forecast = any(point.timestamp > now for point in forecast)
    if has_forecast or history is None:
        slots = slots_from_forecast(now, current_g_per_kwh, forecast, horizon_s)
    else:
        slots = [Slot(0.0, min(DEFAULT_STEP_S, horizon_s), current_g_per_kwh)]
    step_s = slots[-1].length_s if has_forecast and len(slots) > 1 else DEFAULT_STEP_S
    return fill_beyond_forecast(slots, horizon_s, now.timestamp(), history or ReadingHistory(()), step_s)


def plan_job(declaration: JobDeclaration, progress: JobProgress, now: datetime, current_g_per_kwh: float,
             forecast: Sequence[ForecastPoint], *, interval_s: float,
             history: ReadingHistory | None = None) -> JobPlanDecision | None:
    """ρ or a pause for now (see the module docstring); None when the job cannot be planned
    (no epoch time known yet, or all declared epochs done): the policy answers it then."""
    epoch_s_at_full = progress.epoch_s_at_full
    left = declaration.epochs - progress.epochs_done
    if epoch_s_at_full is None or left <= 1e-9:
        return None
    now_s = now.timestamp()
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

    def run_now(rho: float, reason: str, guard: bool) -> JobPlanDecision:
        finish_s = now_s + left * cost.epoch_s(rho)
        return JobPlanDecision(rho, None, reason, guard, time_left_s - left * cost.epoch_s(rho), left, None, None, finish_s)

    # Fixed for the job (not shrinking with the work left), so a job the guard runs stays guarded.
    guard_margin_s = max(MARGIN_SHARE * declaration.epochs * epoch_s_at_full, interval_s)
    if time_left_s <= full_need_s + guard_margin_s:
        fitting = max(0.0, time_left_s - guard_margin_s) / full_need_s
        rho = min(1.0, max(job.rho_floor, fitting))
        fits = "fits" if fitting >= job.rho_floor else "no longer fits even at the floor"
        return run_now(rho, f"deadline guard: {left:.2f} epochs at ρ 1 need {full_need_s:.0f} s, "
                            f"{max(time_left_s, 0.0):.0f} s left; running now at ρ {rho:.2f} ({fits})", True)
    slots = planning_slots(now, current_g_per_kwh, forecast, time_left_s, history)
    plan = plan_with_margin(job, cost, slots, at_least_s=interval_s)
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
        return JobPlanDecision(upcoming.rho, resume_s, reason, False, slack_s, left, None, resume_s, finish_at_s)
    next_pause_at_s = next_resume_at_s = None
    block_end_s = 0.0
    for segment in plan.segments:
        if segment.start_s > block_end_s + 1e-6:
            next_pause_at_s, next_resume_at_s = now_s + block_end_s, now_s + segment.start_s
            break
        block_end_s = max(block_end_s, segment.end_s)
    reason = (f"planned ρ {rho_now:.2f} now ({current_g_per_kwh:.0f} gCO2e/kWh); "
              f"finish {plan.finish_s:.0f} s from now, {time_left_s - plan.finish_s:.0f} s before the deadline")
    return JobPlanDecision(rho_now, None, reason, False, slack_s, left, next_pause_at_s, next_resume_at_s, finish_at_s)


def reading_history(store: Any, reading: IntensityReading, now_s: float) -> ReadingHistory:
    """The stored readings of the last ``HISTORY_DAYS`` days from ``reading``'s provider and zone."""
    rows = store.intensity_samples(now_s - HISTORY_DAYS * DAY_S, now_s, source=(reading.provider, reading.zone))
    return ReadingHistory([(row["ts"], row["intensity_g_per_kwh"]) for row in rows])


class JobPlanner:
    """The daemon's side: plans its running deadline jobs, and records when a job says it is paused."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paused: set[str] = set()
        self._seen: set[str] = set()

    def plan_running_jobs(self, store: Any, jobs: Sequence[Mapping[str, Any]], now: datetime,
                          reading: IntensityReading | None, interval_s: float) -> dict[str, JobPlanDecision]:
        """A decision for each of ``jobs`` (stored rows) that declared a deadline and can be planned,
        from ``reading`` (the latest, with its forecast)."""
        with self._lock:  # only running jobs can still report a pause
            running = {job["job_id"] for job in jobs}
            self._paused &= running
            self._seen &= running
        if reading is None or not math.isfinite(reading.intensity_g_per_kwh):
            return {}
        current_g_per_kwh, forecast = reading.intensity_g_per_kwh, reading.forecast
        decisions = {}
        now_s = now.timestamp()
        declared = [(job, JobDeclaration.from_job(job)) for job in jobs]
        declared = [(job, declaration) for job, declaration in declared if declaration is not None]
        if not declared:
            return {}
        history = reading_history(store, reading, now_s)
        for job, declaration in declared:
            pauses = pause_intervals(store.pauses(job["job_id"]), now_s)
            progress = progress_from_records(declaration, store.epochs(job["job_id"]), pauses, now_s)
            decision = plan_job(declaration, progress, now, current_g_per_kwh, forecast, interval_s=interval_s,
                                history=history)
            if decision is not None:
                decisions[job["job_id"]] = decision
        return decisions

    def note_paused(self, store: Any, job_id: str, paused: bool, now: datetime, planned_until_s: float | None) -> None:
        """The job asked for ρ while paused (``paused``) or running: open or close its pause interval.
        Writes only on a change (and once per job after a daemon start, to close a stale pause)."""
        with self._lock:
            first = job_id not in self._seen
            self._seen.add(job_id)
            if paused and job_id not in self._paused:
                self._paused.add(job_id)
            elif not paused and (job_id in self._paused or first):
                self._paused.discard(job_id)
            else:
                return
        if paused:
            store.start_pause(job_id, now, planned_until_s)
        else:
            store.end_pause(job_id, now)


def paused_seconds(pauses: Sequence[Mapping[str, Any]], now_s: float) -> float:
    """Total paused time of a job (an open pause counts up to now)."""
    return sum(end - start for start, end in pause_intervals(pauses, now_s))
