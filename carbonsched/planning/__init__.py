"""Deadline-aware planning of when a job runs and at which ρ (pure functions, no I/O).

:mod:`~carbonsched.planning.model` states the job and cost model, :mod:`~carbonsched.planning.planner`
the optimal plans, :mod:`~carbonsched.planning.backtest` the replay of strategies over a trace.
"""

from carbonsched.planning.model import CostModel, Job, PlanningInputError, Slot
from carbonsched.planning.planner import Level, Plan, Segment, plan_min_carbon, plan_within_budget

__all__ = ["CostModel", "Job", "Level", "Plan", "PlanningInputError", "Segment", "Slot", "plan_min_carbon",
           "plan_within_budget"]
