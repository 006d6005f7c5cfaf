"""Joint planning of several pausable deadline jobs under a GPU count, checked against scipy's LP."""

from __future__ import annotations

import random

import pytest

from carbonsched.planning import CostModel, Job, Slot
from carbonsched.planning.capacity import CapacityJob, max_concurrent, plan_jointly
from carbonsched.planning.jobset_backtest import lp_optimum_g
from carbonsched.planning.margin import plan_with_margin
from carbonsched.planning.planner import fastest_mix, running_s_of

pytest.importorskip("scipy.optimize")
HOUR_S = 3600.0


def random_instance(rng: random.Random) -> tuple[list[CapacityJob], list[Slot], int]:
    slots = [Slot(h * HOUR_S, (h + 1) * HOUR_S, rng.uniform(50, 600)) for h in range(24)]
    jobs = []
    for index in range(rng.randint(2, 7)):
        rho_min = rng.choice([1.0, 0.5])
        job = Job(epochs=rng.randint(1, 6), deadline_s=rng.randint(6, 16) * HOUR_S, rho_min=rho_min,
                  mean_rho=rng.choice([None, 0.7]) if rho_min < 1 else None, may_pause=True)
        cost = CostModel(epoch_s_at_full=rng.choice([0.5, 1.0, 1.5]) * HOUR_S, running_power_w=rng.uniform(200, 400))
        jobs.append(CapacityJob(f"j{index}", rng.randint(0, 8) * HOUR_S + rng.choice([0.0, 900.0]), job, cost))
    return jobs, slots, rng.randint(1, 3)


def test_joint_plans_match_the_lp_optimum_and_never_exceed_the_gpus_on_random_instances():
    rng = random.Random(11)
    checked = 0
    for _ in range(60):
        jobs, slots, gpus = random_instance(rng)
        optimum = lp_optimum_g(jobs, slots, gpus)
        joint = plan_jointly(jobs, slots, gpus)
        assert max_concurrent(list(joint.plans.values())) <= gpus
        for j in jobs:
            plan = joint.plans[j.name]
            need_s = running_s_of(fastest_mix(j.job, j.cost), j.cost)
            assert plan.running_s == pytest.approx(need_s, rel=1e-6)
            assert plan.segments[0].start_s >= j.arrival_s - 1e-6
        if optimum is None:
            assert not joint.feasible
            continue
        checked += 1
        assert joint.feasible
        assert joint.expected_carbon_g == pytest.approx(optimum, rel=1e-6)
    assert checked >= 30


def test_with_one_gpu_two_jobs_do_not_share_the_clean_hours_that_each_would_take_alone():
    slots = [Slot(0, 2 * HOUR_S, 500.0), Slot(2 * HOUR_S, 3 * HOUR_S, 100.0), Slot(3 * HOUR_S, 6 * HOUR_S, 300.0)]
    cost = CostModel(epoch_s_at_full=HOUR_S, running_power_w=300.0)
    job = Job(epochs=1, deadline_s=6 * HOUR_S, rho_min=1.0, may_pause=True)
    alone = plan_with_margin(job, cost, slots)
    assert alone.segments[0].start_s == 2 * HOUR_S  # each alone takes the clean hour
    joint = plan_jointly([CapacityJob("a", 0.0, job, cost), CapacityJob("b", 0.0, job, cost)], slots, gpus=1)
    starts = sorted(plan.segments[0].start_s for plan in joint.plans.values())
    assert starts == [2 * HOUR_S, 3 * HOUR_S] and joint.feasible
    assert joint.expected_carbon_g == pytest.approx(0.3 * 100 + 0.3 * 300)


def run_cli(*args: str):
    from typer.testing import CliRunner

    from carbonsched.cli import app

    return CliRunner().invoke(app, list(args))


def test_backtest_of_a_job_set_joint_planning_stays_within_the_gpus_and_at_the_lp_optimum(tmp_path):
    import json
    from importlib import resources

    trace = resources.files("carbonsched") / "data" / "synthetic_trace.csv"
    jobs = tmp_path / "jobs.csv"
    rng = random.Random(5)
    rows = ["arrival_h,epochs,epoch_minutes,deadline_h,mean_rho"]
    for _ in range(10):
        rows.append(f"{rng.randint(0, 24)},{rng.randint(1, 6)},{rng.choice([30, 60])},{rng.randint(12, 30)},"
                    f"{rng.choice(['', '0.7'])}")
    jobs.write_text("\n".join(rows) + "\n")
    for gpus in (1, 2, 3):
        result = run_cli("backtest", "--trace", str(trace), "--jobs", str(jobs), "--gpus", str(gpus), "--format", "json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)["strategies"]
        lp_g = json.loads(result.output)["lp_g"]
        for name in ("joint", "joint-known"):
            assert report[name]["max_running"] <= gpus
        if lp_g is not None:
            assert report["joint-known"]["carbon_g"] == pytest.approx(lp_g, rel=0.01)
            assert report["joint-known"]["deadlines_met"] == 10
            assert report["independent"]["carbon_g"] >= lp_g * (1 - 1e-9) or report["independent"]["deadlines_met"] < 10


def test_a_bad_jobs_file_is_one_line_naming_the_line_and_field(tmp_path):
    from importlib import resources

    trace = resources.files("carbonsched") / "data" / "synthetic_trace.csv"
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("arrival_h,epochs,epoch_minutes,deadline_h\n0,2,30,12\n1,two,30,12\n")
    result = run_cli("backtest", "--trace", str(trace), "--jobs", str(jobs), "--gpus", "2")
    assert result.exit_code == 2
    assert f"{jobs}:3: field 'epochs': 'two' is not a number" in result.output and "Traceback" not in result.output
