"""When a job submitted now should start: the batch scheduler's begin time. Pure, no I/O.

A queued job holds no resources until it starts, so its start is free to choose. For a job that
may pause, the planner's own plan (:func:`~carbonsched.planning.strategies.planned`) already
puts its running time into the cleanest slots: it begins at the plan's first running segment. A
job that may not pause runs without a break once started; its begin time is chosen among the
slot boundaries before the deadline: at each candidate the planner plans the job over the slots
from there on (and the deadline that is left), and the start whose plan is feasible with the
least expected carbon wins (the earliest on a tie). Either way the plan is the planner's, only
shifted; nothing here plans ρ itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from carbonsched.planning import strategies
from carbonsched.planning.model import CostModel, Job, PlanningInputError, Slot
from carbonsched.planning.planner import Plan, Segment

__all__ = ["StartPlan", "plan_start", "shifted_slots"]


@dataclass(frozen=True)
class StartPlan:
    """``plan`` in seconds from submission; the job should begin at ``begin_s``."""

    begin_s: float
    plan: Plan

    @property
    def finish_s(self) -> float:
        return self.plan.finish_s


def shifted_slots(slots: Sequence[Slot], offset_s: float) -> list[Slot]:
    """The slots from ``offset_s`` on, with ``offset_s`` as time 0."""
    return [Slot(max(slot.start_s, offset_s) - offset_s, slot.end_s - offset_s, slot.intensity_g_per_kwh)
            for slot in slots if slot.end_s > offset_s]


def _shifted_plan(plan: Plan, offset_s: float, job: Job) -> Plan:
    segments = tuple(Segment(s.start_s + offset_s, s.end_s + offset_s, s.rho, s.intensity_g_per_kwh)
                     for s in plan.segments)
    return dataclasses.replace(plan, segments=segments, job=job)


def plan_start(job: Job, cost: CostModel, slots: Sequence[Slot]) -> StartPlan:
    """The begin time and plan of ``job`` submitted at time 0 (see the module docstring)."""
    if job.may_pause:
        plan = strategies.planned(job, cost, slots)
        return StartPlan(plan.segments[0].start_s if plan.segments else 0.0, plan)
    best: StartPlan | None = None
    for offset_s in sorted({0.0, *(slot.start_s for slot in slots)}):
        if offset_s >= job.deadline_s:
            break
        try:
            shifted_job = dataclasses.replace(job, deadline_s=job.deadline_s - offset_s)
            plan = strategies.planned(shifted_job, cost, shifted_slots(slots, offset_s))
        except PlanningInputError:
            continue
        candidate = StartPlan(offset_s, _shifted_plan(plan, offset_s, job))
        if best is None or (plan.feasible and not best.plan.feasible) or (
                plan.feasible == best.plan.feasible and plan.expected_carbon_g < best.plan.expected_carbon_g - 1e-9):
            best = candidate
    if best is None:  # not even a start now could be planned: the planner's own answer
        return StartPlan(0.0, strategies.planned(job, cost, slots))
    return best
