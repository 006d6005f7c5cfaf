"""What a job does under each strategy the planner is compared with. Pure functions, no I/O.

Every strategy answers with a :class:`~carbonsched.planning.planner.Plan` priced by the slots it
was given (a forecast, or the truth for the oracle):

``now-full``      ρ 1 from now without a break (carbon-agnostic full fine-tuning).
``now-constant``  ρ = the job's mean-ρ floor from now without a break.
``shift``         ρ 1, paused outside the cleanest slots before the deadline ("Let's Wait Awhile").
``steps``         the reactive policy: each epoch asks a ρ function of the intensity at its start
                  and the next 24 h of slots (the forecast a daemon would have then).
``planner``       :func:`~carbonsched.planning.margin.plan_with_margin` (``MARGIN_SHARE`` of the
                  running time kept free before the deadline), or the budget mode.
``planner-receding``   the daemon's receding horizon: re-planned at every slot from the job's
                  progress and a fresh forecast (:mod:`carbonsched.planning.closed_loop`).
``planner-no-margin``  the same planner with no margin: what the margin costs in carbon.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from carbonsched.planning.margin import MARGIN_SHARE, plan_with_margin
from carbonsched.planning.model import CostModel, Job, Slot
from carbonsched.planning.planner import Level, Plan, Segment, expected_carbon_g, plan_min_carbon, plan_within_budget

RECEDING = "planner-receding"
STRATEGIES = ("now-full", "now-constant", "shift", "steps", "planner", RECEDING, "planner-no-margin", "oracle")

FORECAST_WINDOW_S = 24 * 3600.0
"""How far ahead the reactive strategy's ρ function sees: the next 24 h, as a daemon's provider forecasts."""

RhoForIntensity = Callable[[float, float, Sequence[Slot]], float]
"""(intensity gCO2e/kWh, seconds since submission, forecast) → ρ; may keep state (hysteresis, dwell).
The forecast is the slots starting after that moment and within the next ``FORECAST_WINDOW_S``,
times in seconds since submission: what a daemon's provider would forecast then."""


def now_full(job: Job, cost: CostModel, slots: Sequence[Slot]) -> Plan:
    return plan_min_carbon(dataclasses.replace(job, rho_min=1.0, mean_rho=1.0, may_pause=False), cost, slots)


def now_constant(job: Job, cost: CostModel, slots: Sequence[Slot]) -> Plan:
    floor = job.rho_floor
    return plan_min_carbon(dataclasses.replace(job, rho_min=floor, mean_rho=floor, may_pause=False), cost, slots)


def shift(job: Job, cost: CostModel, slots: Sequence[Slot]) -> Plan:
    return plan_min_carbon(dataclasses.replace(job, rho_min=1.0, mean_rho=1.0, may_pause=True), cost, slots)


def planned(job: Job, cost: CostModel, slots: Sequence[Slot], *, margin_share: float = MARGIN_SHARE) -> Plan:
    if job.carbon_budget_g is not None and not job.may_pause:
        return plan_within_budget(job, cost, slots)
    return plan_with_margin(job, cost, slots, share=margin_share)


def reactive(job: Job, cost: CostModel, slots: Sequence[Slot], rho_for: RhoForIntensity) -> Plan:
    """Epoch after epoch from now; each takes the ρ ``rho_for`` gives at its start from the intensity
    then and ``slots``' next ``FORECAST_WINDOW_S`` as the forecast, clamped to the job's bounds."""
    at_s, remaining = 0.0, job.epochs
    segments: list[Segment] = []
    epochs_by_rho: dict[float, float] = {}
    while remaining > 1e-12:
        intensity = intensity_at(slots, at_s)
        forecast = [slot for slot in slots if at_s < slot.start_s < at_s + FORECAST_WINDOW_S]
        rho = min(1.0, max(job.rho_min, rho_for(intensity, at_s, forecast)))
        share = min(1.0, remaining)
        length_s = cost.epoch_s(rho) * share
        segments.append(Segment(at_s, at_s + length_s, rho, intensity))
        epochs_by_rho[rho] = epochs_by_rho.get(rho, 0.0) + share
        at_s += length_s
        remaining -= share
    levels = tuple(Level(rho, epochs) for rho, epochs in epochs_by_rho.items())
    feasible = at_s <= job.deadline_s * (1 + 1e-9)
    return Plan(job, tuple(segments), levels, expected_carbon_g(segments, slots, cost), feasible)


def intensity_at(slots: Sequence[Slot], at_s: float) -> float:
    """The slot value at ``at_s``; the last slot's value beyond the end."""
    for slot in slots:
        if slot.start_s <= at_s < slot.end_s:
            return slot.intensity_g_per_kwh
    return slots[-1].intensity_g_per_kwh if at_s >= slots[-1].end_s else slots[0].intensity_g_per_kwh


def met_deadline(plan: Plan, *, slower_share: float = 0.0) -> bool:
    """Finished by the deadline; with ``slower_share``, had every epoch taken that share longer and
    the missing work run right after the plan's end."""
    return finishes_by(plan.finish_s + slower_share * plan.running_s, plan.job.deadline_s)


def finishes_by(finish_s: float, deadline_s: float) -> bool:
    """``finish_s`` is at or before ``deadline_s`` (seconds from submission), up to rounding."""
    return finish_s <= deadline_s * (1 + 1e-9) + 1e-6


def met_floor(plan: Plan) -> bool:
    return plan.mean_rho >= plan.job.rho_floor - 1e-9
