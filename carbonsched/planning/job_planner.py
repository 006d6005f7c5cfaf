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
  interval) before the deadline, and ``UNMEASURED_EPOCH_TIME_SHARE`` more until an epoch has
  ended, so that a forecast or epoch-time estimate that is off does not miss it;
- the daemon's ``[planning]`` settings (:class:`~carbonsched.planning.receding.PlanningSettings`):
  the guard, the switch share and, when configured, the forecast's error by lead, with which each
  slot is priced at its expected value (:mod:`carbonsched.planning.forecast_trust`);
- the plan the job has been following (:class:`JobPlanner` keeps it per job), which a fresh plan
  replaces only when cheaper on the fresh forecast by more than the switch share.

The answer for *now* is the plan's ρ, or a pause until the plan's next running segment.

The deadline guard, by default on the job's floor: when the work left at the floor ρ no longer fits
in the time left with a margin (the spread of the job's measured epoch times times that running
time, at least one decide interval), the job is not paused again and runs now at the floor. It
cannot fire while the floor fits, so it does not undo a plan that keeps work for the clean hours
before the deadline. ``guard = "full"`` (opt-in) guards the work left at ρ 1 instead (with
``MARGIN_SHARE`` of the whole job's ρ-1 time, fixed per job) and runs at the highest single ρ that
still fits: full quality stays reachable, at a carbon cost near the deadline. An infeasible plan
(not even the floor fits) also runs now at the floor.

A job that declared no ``rho_min`` is only shifted in time (ρ 1), unless it declared ``mean_rho``,
which then is also its ``rho_min``.

The first plan the daemon makes for a job (its first decision that is a plan, not the guard) is
kept in the store (:meth:`~carbonsched.store.Store.record_first_plan`): when it was made, from which
provider's reading, the mean ρ, running seconds and finish it planned, and its expected carbon,
priced by :func:`~carbonsched.planning.planner.expected_carbon_g` over the slots it was planned on
at the job's measured running power (:func:`running_power_w`; per ρ once measured at two or more),
or, before any power is measured, as gCO2e per W of running power. ``carbonsched report --job``
compares it with what the job cost (:mod:`carbonsched.reporting.plan_outcome`).

The pure part (progress from records, the guard and the decision) is
:mod:`carbonsched.planning.receding`, which the backtest's ``planner-receding`` also runs; this
module adds the store, the provider's forecast and the history fill.
"""

from __future__ import annotations

import logging
import math
import threading
from datetime import datetime
from typing import Any, Mapping, Sequence

from carbonsched.planning import CostModel, Plan, PlanningInputError, Slot
from carbonsched.planning.forecast import (
    DAY_S, DEFAULT_STEP_S, HISTORY_DAYS, ReadingHistory, fill_beyond_forecast, slots_from_forecast,
)
from carbonsched.planning.margin import MARGIN_SHARE
from carbonsched.planning.planner import expected_carbon_g
from carbonsched.planning.receding import (
    HeldPlan, JobDeclaration, JobPlanDecision, JobProgress, PlanningSettings, decide, progress_from_records,
    running_seconds,
)
from carbonsched.types import ForecastPoint, IntensityReading

log = logging.getLogger("carbonsched.daemon")

__all__ = ["MARGIN_SHARE", "JobDeclaration", "JobPlanDecision", "JobPlanner", "JobProgress", "PlanningSettings",
           "decide_job", "first_plan_values", "pause_intervals", "paused_seconds", "plan_job", "planning_slots",
           "progress_from_records", "reading_history", "running_power_w"]


def pause_intervals(pauses: Sequence[Mapping[str, Any]], now_s: float) -> list[tuple[float, float]]:
    """Stored pause rows as (start, end) unix seconds; an open pause ends now."""
    return [(p["started_at"], p["ended_at"] if p["ended_at"] is not None else now_s) for p in pauses]


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
             forecast: Sequence[ForecastPoint], *, interval_s: float, history: ReadingHistory | None = None,
             held: HeldPlan | None = None, settings: PlanningSettings = PlanningSettings()) -> JobPlanDecision | None:
    """ρ or a pause for now (see the module docstring; :func:`~carbonsched.planning.receding.decide`);
    None when the job cannot be planned (no epoch time known yet, or all declared epochs done): the
    policy answers it then."""
    decided = decide_job(declaration, progress, now, current_g_per_kwh, forecast, interval_s=interval_s,
                         history=history, held=held, settings=settings)
    return None if decided is None else decided[0]


def decide_job(declaration: JobDeclaration, progress: JobProgress, now: datetime, current_g_per_kwh: float,
               forecast: Sequence[ForecastPoint], *, interval_s: float, history: ReadingHistory | None = None,
               held: HeldPlan | None = None, settings: PlanningSettings = PlanningSettings(),
               ) -> tuple[JobPlanDecision, HeldPlan | None, Sequence[Slot]] | None:
    """:func:`plan_job` with the plan the job follows from now (None when the guard or an infeasible
    plan runs it), which the next call gets back as ``held``, and the slots it was priced on (empty
    without a plan)."""
    planned_over: list[Sequence[Slot]] = []

    def slots_for(horizon_s: float) -> list[Slot]:
        slots = planning_slots(now, current_g_per_kwh, forecast, horizon_s, history)
        planned_over.append(slots)
        return slots

    decided = decide(declaration, progress, now.timestamp(), current_g_per_kwh, slots_for, interval_s=interval_s,
                     held=held, guard=settings.guard, switch_share=settings.switch_share,
                     forecast_error=settings.forecast_error)
    if decided is None:
        return None
    decision, followed = decided
    return decision, followed, planned_over[-1] if followed is not None else ()


def running_power_w(epochs: Sequence[Mapping[str, Any]], pauses: Sequence[tuple[float, float]]) -> float | None:
    """The job's mean running power (W): the energy (J) of its ended epochs over their running
    seconds (start to end minus paused time); None before an ended epoch has energy."""
    energy_j = running_s = 0.0
    for epoch in epochs:
        if epoch.get("ended_at") is None or epoch.get("started_at") is None or not epoch.get("energy_j"):
            continue
        seconds = running_seconds(epoch["started_at"], epoch["ended_at"], pauses)
        if seconds > 0:
            energy_j, running_s = energy_j + epoch["energy_j"], running_s + seconds
    return energy_j / running_s if running_s > 0 else None


def first_plan_values(plan: Plan, slots: Sequence[Slot], progress: JobProgress, now_s: float,
                      measured_power_w: float | None) -> dict[str, float | None]:
    """What the store keeps of a job's first plan (:meth:`~carbonsched.store.Store.record_first_plan`,
    without the provider): expected carbon (gCO2e) at ``measured_power_w`` or at the power measured
    per ρ, else None; expected gCO2e per W of running power (None when power depends on ρ); the
    plan's mean ρ, running seconds and finish (unix s)."""
    assert progress.epoch_s_at_full is not None  # a plan is made only once the epoch time is known
    expected_g = g_per_w = None
    if progress.power_points or measured_power_w:
        priced = CostModel(epoch_s_at_full=progress.epoch_s_at_full, running_power_w=measured_power_w or 1.0,
                           power_points=progress.power_points)
        expected_g = expected_carbon_g(plan.segments, slots, priced)
    if not progress.power_points:
        g_per_w = expected_carbon_g(plan.segments, slots, CostModel(epoch_s_at_full=progress.epoch_s_at_full,
                                                                    running_power_w=1.0))
    return {"epochs_left": sum(level.epochs for level in plan.levels), "mean_rho": plan.mean_rho,
            "running_s": plan.running_s, "finish_at": now_s + plan.finish_s, "expected_carbon_g": expected_g,
            "expected_g_per_w": g_per_w, "power_w": None if progress.power_points else measured_power_w}


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
        self._held: dict[str, HeldPlan] = {}  # the plan each job follows, kept while a fresh one is not enough better
        self._plan_recorded: set[str] = set()

    def plan_running_jobs(self, store: Any, jobs: Sequence[Mapping[str, Any]], now: datetime,
                          reading: IntensityReading | None, interval_s: float,
                          settings: PlanningSettings = PlanningSettings()) -> dict[str, JobPlanDecision]:
        """A decision for each of ``jobs`` (stored rows) that declared a deadline and can be planned,
        from ``reading`` (the latest, with its forecast)."""
        with self._lock:  # only running jobs can still report a pause
            running = {job["job_id"] for job in jobs}
            self._paused &= running
            self._seen &= running
            self._held = {job_id: held for job_id, held in self._held.items() if job_id in running}
            self._plan_recorded &= running
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
            job_id = job["job_id"]
            pauses = pause_intervals(store.pauses(job_id), now_s)
            epochs = store.epochs(job_id)
            progress = progress_from_records(declaration, epochs, pauses, now_s)
            with self._lock:
                held = self._held.get(job_id)
            decided = decide_job(declaration, progress, now, current_g_per_kwh, forecast, interval_s=interval_s,
                                 history=history, held=held, settings=settings)
            with self._lock:
                if decided is None or decided[1] is None:
                    self._held.pop(job_id, None)
                else:
                    self._held[job_id] = decided[1]
            if decided is None:
                continue
            decision, followed, slots = decided
            decisions[job_id] = decision
            if followed is not None and job_id not in self._plan_recorded:
                with self._lock:
                    self._plan_recorded.add(job_id)
                try:
                    values = first_plan_values(followed.plan, slots, progress, now_s, running_power_w(epochs, pauses))
                except PlanningInputError as exc:  # the job is still planned; only the record is missing
                    log.warning("job %s: first plan not recorded: %s", job_id, exc)
                    continue
                store.record_first_plan(job_id, now_s, provider=reading.provider, zone=reading.zone, **values)
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
