"""The begin time `carbonsched sbatch` gives Slurm: the planner's plan, started when it says."""

from __future__ import annotations

import pytest

from carbonsched.planning import CostModel, Job, Slot, strategies
from carbonsched.planning.start import plan_start, shifted_slots

HOUR_S = 3600.0
# Dirty for 2 h, clean for 2 h, dirty again: a 2 h job should run in the clean hours.
SLOTS = [Slot(0, 2 * HOUR_S, 500.0), Slot(2 * HOUR_S, 4 * HOUR_S, 100.0), Slot(4 * HOUR_S, 8 * HOUR_S, 400.0)]
COST = CostModel(epoch_s_at_full=HOUR_S, running_power_w=300.0)


def test_a_job_that_may_not_pause_begins_where_its_unbroken_run_costs_least():
    job = Job(epochs=2, deadline_s=8 * HOUR_S, rho_min=1.0)
    start = plan_start(job, COST, SLOTS)
    assert start.begin_s == 2 * HOUR_S
    assert start.plan.feasible and start.plan.segments[0].start_s == 2 * HOUR_S
    # 0.3 kW x 2 h in the 100 g slot; beginning now would cost the 500 g slot.
    assert start.plan.expected_carbon_g == pytest.approx(0.3 * 2 * 100)
    now = strategies.planned(job, COST, SLOTS)
    assert now.segments[0].start_s == 0 and now.expected_carbon_g > start.plan.expected_carbon_g


def test_a_deadline_too_close_for_the_clean_hours_begins_now():
    job = Job(epochs=2, deadline_s=2.5 * HOUR_S, rho_min=1.0)
    start = plan_start(job, COST, SLOTS)
    assert start.begin_s == 0.0 and start.plan.feasible


def test_a_pausable_job_begins_at_its_plans_first_running_segment():
    job = Job(epochs=2, deadline_s=8 * HOUR_S, rho_min=1.0, may_pause=True)
    start = plan_start(job, COST, SLOTS)
    assert start.begin_s == start.plan.segments[0].start_s == 2 * HOUR_S


def test_shifted_slots_start_at_the_offset():
    assert shifted_slots(SLOTS, 3 * HOUR_S) == [Slot(0, HOUR_S, 100.0), Slot(HOUR_S, 5 * HOUR_S, 400.0)]
