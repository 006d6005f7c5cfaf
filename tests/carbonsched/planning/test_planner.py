"""The planner against independent solutions: scipy's LP solver (HiGHS) and exhaustive enumeration."""

import dataclasses
import itertools
import math
import random

import pytest

from carbonsched.planning import CostModel, Job, PlanningInputError, Slot, plan_min_carbon, plan_within_budget
from carbonsched.planning.model import remaining_job
from carbonsched.planning.planner import clip_slots, energy_intensity_s, fastest_mix

linprog = pytest.importorskip("scipy.optimize").linprog

J_PER_KWH = 3.6e6


def _slots(values, length_s=1800.0):
    return [Slot(i * length_s, (i + 1) * length_s, v) for i, v in enumerate(values)]


def _lp_min_carbon(job: Job, cost: CostModel, slots, rhos) -> float:
    """Least carbon by LP: seconds y[s,k] at level k in slot s; idle handled per finishing slot f."""
    window = [s for s in slots if s.start_s < job.deadline_s]
    window = [Slot(s.start_s, min(s.end_s, job.deadline_s), s.intensity_g_per_kwh) for s in window]
    times = [cost.epoch_s(r) for r in rhos]
    floor = job.rho_floor
    best = math.inf
    finishes = range(len(window)) if cost.idle_power_w > 0 else [len(window) - 1]
    for f in finishes:
        used = window[: f + 1]
        n, k = len(used), len(rhos)
        c, bounds = [], []
        for s, slot in enumerate(used):
            displaced_w = 0.0 if (s == f or cost.idle_power_w == 0) else cost.idle_power_w
            c += [(cost.power_w(r) - displaced_w) * slot.intensity_g_per_kwh / J_PER_KWH for r in rhos]
        a_ub = [[1.0 if j // k == s else 0.0 for j in range(n * k)] for s in range(n)]
        b_ub = [slot.length_s for slot in used]
        a_ub.append([-(rhos[j % k] - floor) / times[j % k] for j in range(n * k)])  # mean ρ >= floor
        b_ub.append(0.0)
        a_eq = [[1.0 / times[j % k] for j in range(n * k)]]
        result = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[job.epochs], bounds=(0, None), method="highs")
        if result.status == 0:
            idle_g = sum(cost.idle_power_w * s.intensity_g_per_kwh * s.length_s / J_PER_KWH for s in used[:f])
            best = min(best, result.fun + idle_g)
    return best


def _continuous_runs(job: Job, cost: CostModel, slots, rhos):
    """For a job that may not pause, per slot its run may end in: the LP's carbon per second of each
    variable y[s,k] (level k in slot s), the equalities (every earlier slot runs throughout, the epochs
    are done) and the last slot's capacity row and length."""
    window = clip_slots(slots, job.deadline_s)
    times, k = [cost.epoch_s(r) for r in rhos], len(rhos)
    for last in range(len(window)):
        used = window[: last + 1]
        n = len(used)
        row = lambda s: [1.0 if j // k == s else 0.0 for j in range(n * k)]  # noqa: E731
        a_eq = [row(s) for s in range(last)] + [[1.0 / times[j % k] for j in range(n * k)]]
        b_eq = [slot.length_s for slot in used[:last]] + [job.epochs]
        carbon = [cost.power_w(r) * slot.intensity_g_per_kwh / J_PER_KWH for slot in used for r in rhos]
        yield carbon, a_eq, b_eq, row(last), used[last].length_s


def _lp_continuous_carbon(job: Job, cost: CostModel, slots, rhos) -> float:
    """Least carbon by LP for a job that may not pause: for each last slot k, every earlier slot runs throughout."""
    times, k = [cost.epoch_s(r) for r in rhos], len(rhos)
    best = math.inf
    for carbon, a_eq, b_eq, last_row, last_length_s in _continuous_runs(job, cost, slots, rhos):
        floor_row = [-(rhos[j % k] - job.rho_floor) / times[j % k] for j in range(len(carbon))]
        result = linprog(carbon, A_ub=[last_row, floor_row], b_ub=[last_length_s, 0.0], A_eq=a_eq, b_eq=b_eq,
                         bounds=(0, None), method="highs")
        if result.status == 0:
            best = min(best, result.fun)
    return best


@pytest.mark.parametrize("nonlinear", [False, True])
def test_a_job_that_may_not_pause_with_power_by_rho_gets_the_lp_optimum(nonlinear):
    rng = random.Random(31 + nonlinear)
    checked = 0
    for _ in range(60):
        slots = _slots([rng.uniform(20, 600) for _ in range(rng.randint(2, 9))])
        job = _random_job(rng, slots, may_pause=False)
        cost = _random_cost(rng, nonlinear, idle=False, power_by_rho=True)
        plan = plan_min_carbon(job, cost, slots)
        if _agrees_with_the_lp(plan, _lp_continuous_carbon(job, cost, slots, _lp_levels(job, cost)), cost):
            checked += 1
            assert plan.segments[0].start_s == 0 and plan.paused_s == pytest.approx(0, abs=1e-6)
    assert checked >= 30


def _random_job(rng: random.Random, slots, may_pause: bool) -> Job:
    rho_min = rng.choice([0.3, 0.4, 0.5])
    return Job(epochs=rng.uniform(0.5, 4), deadline_s=slots[-1].end_s * rng.uniform(0.6, 1.0), rho_min=rho_min,
               mean_rho=rng.choice([None, rng.uniform(rho_min, 1.0)]), may_pause=may_pause)


def _agrees_with_the_lp(plan, optimum: float, cost: CostModel) -> bool:
    """The plan's carbon is the LP optimum, and it keeps the deadline, the ρ bounds and the floor and does
    the epochs; False for an infeasible plan (then the LP must be infeasible too)."""
    job = plan.job
    if not plan.feasible:
        assert optimum == math.inf
        return False
    assert plan.expected_carbon_g == pytest.approx(optimum, rel=1e-6, abs=1e-9)
    assert plan.finish_s <= job.deadline_s + 1e-6
    assert plan.mean_rho >= job.rho_floor - 1e-9
    assert all(job.rho_min - 1e-12 <= s.rho <= 1 for s in plan.segments)
    assert sum(s.length_s / cost.epoch_s(s.rho) for s in plan.segments) == pytest.approx(job.epochs, rel=1e-9)
    return True


def _continuous_carbon_g(slots, power_w, seconds):
    return power_w * energy_intensity_s(slots, 0.0, seconds) / J_PER_KWH


def _random_cost(rng: random.Random, nonlinear: bool, idle: bool, power_by_rho: bool = False) -> CostModel:
    points = power = ()
    if nonlinear:
        rhos = sorted(rng.sample([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], 4))
        points = tuple((r, 1800 * (0.25 + 0.75 * r + rng.uniform(-0.08, 0.08))) for r in rhos)
    if power_by_rho:  # anything from "a low ρ idles the GPU" to "a low ρ draws more per second"
        power = tuple((r, rng.uniform(100, 400)) for r in sorted(rng.sample([0.3, 0.45, 0.6, 0.75, 0.9, 1.0], 3)))
    return CostModel(epoch_s_at_full=1800, running_power_w=rng.uniform(100, 400),
                     idle_power_w=rng.uniform(5, 60) if idle else 0.0, epoch_time_points=points, power_points=power)


def _lp_levels(job, cost):
    grid = {job.rho_min, 1.0, job.rho_floor, *cost.measured_rhos(), *[i / 20 for i in range(1, 21)]}
    return sorted(r for r in grid if job.rho_min <= r <= 1)


@pytest.mark.parametrize("nonlinear, idle, power_by_rho", [
    (False, False, False), (True, False, False), (False, True, False), (True, True, False),
    (False, False, True), (True, False, True), (False, True, True), (True, True, True)])
def test_pausing_plan_equals_the_lp_optimum_on_random_instances(nonlinear, idle, power_by_rho):
    rng = random.Random((hash((nonlinear, idle)) + 7 * power_by_rho) & 0xFFFF)
    checked = 0
    for _ in range(60):
        slots = _slots([rng.choice([rng.uniform(20, 600), 150.0]) for _ in range(rng.randint(2, 9))])
        job = _random_job(rng, slots, may_pause=True)
        cost = _random_cost(rng, nonlinear, idle, power_by_rho)
        assert cost.power_varies == power_by_rho
        plan = plan_min_carbon(job, cost, slots)
        checked += _agrees_with_the_lp(plan, _lp_min_carbon(job, cost, slots, _lp_levels(job, cost)), cost)
    assert checked >= 30


def test_power_by_rho_plans_beat_every_whole_epoch_assignment():
    """Brute force: every epoch at a measured ρ, each placed alone in its own cleanest free slot
    by power (the highest power in the cleanest slot); the plan is never worse."""
    rng = random.Random(5)
    for _ in range(40):
        slots = _slots([rng.uniform(20, 600) for _ in range(6)], length_s=3600.0)
        cost = CostModel(epoch_s_at_full=3600, running_power_w=200,
                         power_points=tuple((r, rng.uniform(100, 400)) for r in (0.4, 0.7, 1.0)))
        job = Job(epochs=3, deadline_s=slots[-1].end_s, rho_min=0.4, mean_rho=rng.choice([0.4, 0.6, 0.8]),
                  may_pause=True)
        plan = plan_min_carbon(job, cost, slots)
        best = math.inf
        for combo in itertools.product((0.4, 0.7, 1.0), repeat=3):
            if sum(combo) < 3 * job.rho_floor - 1e-12:
                continue
            cleanest = sorted(slots, key=lambda slot: slot.intensity_g_per_kwh)
            by_power = sorted(combo, key=cost.power_w, reverse=True)
            best = min(best, sum(cost.power_w(r) * cost.epoch_s(r) * slot.intensity_g_per_kwh / J_PER_KWH
                                 for r, slot in zip(by_power, cleanest)))
        assert plan.feasible and plan.expected_carbon_g <= best * (1 + 1e-9)


def test_power_between_measured_points_interpolates_the_energy_per_epoch():
    cost = CostModel(epoch_s_at_full=1000, running_power_w=1, power_points=((0.5, 400.0), (1.0, 200.0)))
    assert cost.power_w(0.3) == 400.0 and cost.power_w(1.0) == 200.0
    # 0.75 costs what half an epoch at 0.5 and half at 1.0 cost: (400·500 + 200·1000) / 2 J in 750 s.
    assert cost.epoch_energy_j(0.75) == pytest.approx((400 * 500 + 200 * 1000) / 2)
    assert cost.power_w(0.75) == pytest.approx(200_000 / 750)
    flat = CostModel(epoch_s_at_full=1000, running_power_w=300, power_points=((0.5, 300.0), (1.0, 300.0)))
    assert not flat.power_varies and flat.power_w(0.8) == pytest.approx(300.0)


def test_power_that_is_the_same_at_every_rho_gives_the_plans_of_constant_power():
    rng = random.Random(11)
    for _ in range(30):
        slots = _slots([rng.uniform(20, 600) for _ in range(rng.randint(2, 9))])
        job = Job(epochs=rng.uniform(0.5, 4), deadline_s=slots[-1].end_s, rho_min=0.4,
                  mean_rho=rng.choice([None, 0.7]), may_pause=rng.choice([True, False]))
        constant = _random_cost(rng, nonlinear=rng.choice([True, False]), idle=rng.choice([True, False]))
        points = dataclasses.replace(constant, power_points=((0.4, constant.running_power_w), (1.0, constant.running_power_w)))
        assert plan_min_carbon(job, points, slots) == plan_min_carbon(job, constant, slots)


def test_a_low_rho_that_draws_more_power_is_not_chosen_when_energy_per_epoch_is_higher():
    # ρ 0.5 halves the epoch time but doubles the power (+ a bit): an epoch at ρ 1 uses less energy.
    slots = _slots([100.0] * 12, length_s=3600.0)
    cost = CostModel(epoch_s_at_full=3600, running_power_w=200, power_points=((0.5, 450.0), (1.0, 200.0)))
    plan = plan_min_carbon(Job(epochs=3, deadline_s=12 * 3600, rho_min=0.5, may_pause=True), cost, slots)
    assert [(level.rho, pytest.approx(level.epochs)) for level in plan.levels] == [(1.0, pytest.approx(3.0))]
    constant = plan_min_carbon(Job(epochs=3, deadline_s=12 * 3600, rho_min=0.5, may_pause=True),
                               dataclasses.replace(cost, power_points=()), slots)
    assert constant.mean_rho == 0.5  # with power independent of ρ, the fastest mix wins


def test_linear_model_is_time_shifting_at_the_floor():
    slots = _slots([300, 100, 200, 50, 400, 150])
    job = Job(epochs=4, deadline_s=3 * 3600, rho_min=0.4, mean_rho=0.7, may_pause=True)
    plan = plan_min_carbon(job, CostModel(epoch_s_at_full=1800, running_power_w=300), slots)
    # 4 epochs × 0.7 × 30 min = 84 min: the 50 and 100 slots in full, then 24 min of the 150 slot.
    assert [(s.start_s, s.end_s, s.rho) for s in plan.segments] == [
        (1800, 3600, 0.7), (5400, 7200, 0.7), (9000, 9000 + 24 * 60, 0.7)]
    assert plan.expected_carbon_g == pytest.approx(300 * (1800 * 100 + 1800 * 50 + 1440 * 150) / J_PER_KWH)
    assert plan.rho_at(2000) == 0.7 and plan.rho_at(4000) is None and plan.rho_at(10_500) is None


def test_measured_epoch_times_mix_the_hull_levels_around_the_floor():
    # (0.8, 0.85) lies above the chord from 0.6 to 1.0, so mean ρ 0.7 is fastest as a 0.6/1.0 mix.
    cost = CostModel(epoch_s_at_full=1000, running_power_w=200,
                     epoch_time_points=((0.4, 550), (0.6, 620), (0.8, 850), (1.0, 1000)))
    levels = fastest_mix(Job(epochs=4, deadline_s=1e6, rho_min=0.4, mean_rho=0.7), cost)
    assert {round(level.rho, 9): round(level.epochs, 9) for level in levels} == {1.0: 1.0, 0.6: 3.0}
    # Exhaustively over whole epochs at the measured levels: nothing with mean ρ >= 0.7 is faster.
    fastest = min(sum(cost.epoch_s(r) for r in combo)
                  for combo in itertools.product((0.4, 0.6, 0.8, 1.0), repeat=4) if sum(combo) >= 4 * 0.7 - 1e-12)
    assert sum(level.epochs * cost.epoch_s(level.rho) for level in levels) == pytest.approx(fastest)


def test_a_job_that_may_not_pause_runs_now_at_the_floor_and_matches_exhaustive_search():
    slots = _slots([100, 500, 80, 400, 90, 300])
    cost = CostModel(epoch_s_at_full=1800, running_power_w=250)
    job = Job(epochs=3, deadline_s=slots[-1].end_s, rho_min=0.4, mean_rho=0.6)
    plan = plan_min_carbon(job, cost, slots)
    assert plan.segments[0].start_s == 0 and plan.paused_s == pytest.approx(0)
    best = min(_continuous_carbon_g(slots, 250, sum(cost.epoch_s(r) for r in combo))
               for combo in itertools.product([i / 10 for i in range(4, 11)], repeat=3) if sum(combo) >= 1.8 - 1e-12)
    assert plan.expected_carbon_g == pytest.approx(best, rel=1e-9)


def test_infeasible_deadline_runs_now_and_says_why():
    slots = _slots([100, 200])
    job = Job(epochs=4, deadline_s=3600, rho_min=0.5, mean_rho=0.9, may_pause=True)
    plan = plan_min_carbon(job, CostModel(epoch_s_at_full=1800, running_power_w=100), slots)
    assert not plan.feasible and "before the deadline" in plan.note
    assert plan.segments[0].start_s == 0 and plan.finish_s == pytest.approx(4 * 0.9 * 1800)


@pytest.mark.parametrize("concave", [False, True])
def test_budget_mode_beats_every_whole_epoch_assignment_within_budget(concave):
    rng = random.Random(7 + concave)
    grid = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    quality = (lambda r: math.sqrt(r)) if concave else None
    for _ in range(25):
        slots = _slots([rng.uniform(50, 500) for _ in range(8)])
        cost = CostModel(epoch_s_at_full=1800, running_power_w=300)
        full_g = _continuous_carbon_g(slots, 300, 3 * 1800)
        job = Job(epochs=3, deadline_s=slots[-1].end_s, rho_min=0.4, carbon_budget_g=full_g * rng.uniform(0.45, 1.1))
        plan = plan_within_budget(job, cost, slots, quality=quality, quality_rhos=grid if concave else ())
        value = quality or (lambda r: r)
        best = max((sum(value(r) for r in combo) for combo in itertools.product(grid, repeat=3)
                    if _continuous_carbon_g(slots, 300, sum(cost.epoch_s(r) for r in combo)) <= job.carbon_budget_g),
                   default=None)
        if best is None:
            assert not plan.feasible
            continue
        assert plan.feasible
        assert plan.expected_carbon_g <= job.carbon_budget_g * (1 + 1e-9)
        planned = sum(level.epochs * value(level.rho) for level in plan.levels)
        assert planned >= best - 1e-9
        # And no better than the fluid optimum: equal ρ spending the whole affordable running time.
        assert plan.segments[0].start_s == 0 and plan.paused_s == pytest.approx(0, abs=1e-6)


def test_budget_mode_mixes_hull_levels_and_puts_the_higher_rho_in_the_cleaner_hours():
    # (1250 s, ρ 0.55) lies below the chord from ρ 0.4 to ρ 0.7, so the budget buys a 0.4/0.7 mix.
    slots = _slots([400, 60, 400, 400])
    cost = CostModel(epoch_s_at_full=1800, running_power_w=300,
                     epoch_time_points=((0.4, 700), (0.55, 1250), (0.7, 1200), (1.0, 1800)))
    budget_g = 300 * (1800 * 400 + 1200 * 60) / J_PER_KWH  # 3000 s from now: 1000 s per epoch
    job = Job(epochs=3, deadline_s=slots[-1].end_s, rho_min=0.4, carbon_budget_g=budget_g)
    plan = plan_within_budget(job, cost, slots)
    assert {round(level.rho, 9): round(level.epochs, 9) for level in plan.levels} == {0.7: 1.8, 0.4: 1.2}
    assert plan.expected_carbon_g == pytest.approx(budget_g)
    assert [(s.start_s, s.end_s, s.rho) for s in plan.segments] == [(0, 960, 0.7), (960, 1800, 0.4), (1800, 3000, 0.7)]
    best = max(sum(combo) for combo in itertools.product((0.4, 0.55, 0.7, 1.0), repeat=3)
               if sum(cost.epoch_s(r) for r in combo) <= 3000)
    assert plan.work_full_epochs >= best


def _lp_most_quality(job: Job, cost: CostModel, slots, rhos, value) -> float:
    """Most Σ value(ρ) over the epochs by LP, for a job that may not pause: seconds y[s,k] at level k in
    slot s, carbon Σ y·P_k·I_s <= budget; for each last slot, every earlier slot runs throughout."""
    times, k = [cost.epoch_s(r) for r in rhos], len(rhos)
    best = -math.inf
    for carbon, a_eq, b_eq, last_row, last_length_s in _continuous_runs(job, cost, slots, rhos):
        c = [-value(rhos[j % k]) / times[j % k] for j in range(len(carbon))]
        result = linprog(c, A_ub=[last_row, carbon], b_ub=[last_length_s, job.carbon_budget_g], A_eq=a_eq,
                         b_eq=b_eq, bounds=(0, None), method="highs")
        if result.status == 0:
            best = max(best, -result.fun)
    return best


@pytest.mark.parametrize("nonlinear, power_by_rho, concave", [
    (False, False, False), (True, False, False), (False, True, False), (True, True, False),
    (False, True, True), (True, True, True)])
def test_budget_mode_equals_the_lp_optimum_on_random_instances(nonlinear, power_by_rho, concave):
    rng = random.Random(101 + 4 * nonlinear + 2 * power_by_rho + concave)
    grid = [i / 20 for i in range(4, 21)]
    value = (lambda r: math.sqrt(r)) if concave else (lambda r: r)
    checked = spent = 0
    for _ in range(50):
        slots = _slots([rng.choice([rng.uniform(20, 600), 150.0]) for _ in range(rng.randint(2, 8))])
        cost = _random_cost(rng, nonlinear, idle=False, power_by_rho=power_by_rho)
        epochs = rng.uniform(0.5, 3)
        full_g = _continuous_carbon_g(slots, cost.power_w(1.0), epochs * cost.epoch_s(1.0))
        job = Job(epochs=epochs, deadline_s=slots[-1].end_s * rng.uniform(0.7, 1.0), rho_min=rng.choice([0.3, 0.4, 0.5]),
                  carbon_budget_g=full_g * rng.uniform(0.3, 1.2))
        plan = plan_within_budget(job, cost, slots, quality=value if concave else None,
                                  quality_rhos=grid if concave else ())
        levels = sorted({*_lp_levels(job, cost), *(r for r in grid if r >= job.rho_min)})
        optimum = _lp_most_quality(job, cost, slots, levels, value)
        if not plan.feasible:
            assert optimum == -math.inf
            continue
        planned = sum(level.epochs * value(level.rho) for level in plan.levels)
        if concave and not power_by_rho:  # one ρ between two breakpoints: at least the chord's value
            assert planned >= optimum * (1 - 1e-6)
        else:
            assert planned == pytest.approx(optimum, rel=1e-6)
        assert plan.expected_carbon_g <= job.carbon_budget_g * (1 + 1e-9)
        assert plan.segments[0].start_s == 0 and plan.paused_s == pytest.approx(0, abs=1e-6)
        assert plan.finish_s <= job.deadline_s + 1e-6
        assert all(job.rho_min - 1e-12 <= s.rho <= 1 for s in plan.segments)
        assert sum(s.length_s / cost.epoch_s(s.rho) for s in plan.segments) == pytest.approx(job.epochs, rel=1e-9)
        checked += 1
        spent += plan.expected_carbon_g == pytest.approx(job.carbon_budget_g, rel=1e-6)
    assert checked >= 25 and spent >= 10  # and the budget binds in many of them


def test_budget_mode_with_power_by_rho_beats_every_whole_epoch_sequence_within_budget():
    """Brute force: every sequence of whole epochs at the candidate ρ, run one after another from now,
    priced with each epoch's own power; the plan does at least as much work within the budget."""
    rng = random.Random(17)
    rhos = (0.4, 0.7, 1.0)
    for _ in range(30):
        slots = _slots([rng.uniform(20, 600) for _ in range(5)], length_s=3600.0)
        cost = CostModel(epoch_s_at_full=3600, running_power_w=200,
                         power_points=tuple((r, rng.uniform(100, 400)) for r in rhos))
        full_g = _continuous_carbon_g(slots, cost.power_w(1.0), 3 * 3600)
        job = Job(epochs=3, deadline_s=slots[-1].end_s, rho_min=0.4, carbon_budget_g=full_g * rng.uniform(0.4, 1.1))
        plan = plan_within_budget(job, cost, slots)
        best = None
        for sequence in itertools.product(rhos, repeat=3):
            at_s, carbon = 0.0, 0.0
            for r in sequence:
                carbon += cost.power_w(r) * energy_intensity_s(slots, at_s, at_s + cost.epoch_s(r)) / J_PER_KWH
                at_s += cost.epoch_s(r)
            if carbon <= job.carbon_budget_g:
                best = max(best or 0.0, sum(sequence))
        if best is None:
            continue
        assert plan.feasible and plan.expected_carbon_g <= job.carbon_budget_g * (1 + 1e-9)
        assert plan.work_full_epochs >= best - 1e-9


def test_budget_mode_with_power_by_rho_spends_the_budget_as_measured():
    # ρ 0.4 draws 400 W, ρ 1 100 W: an epoch at ρ 1 (1800 s) takes 50 W·h, one at ρ 0.4 (720 s) 80 W·h.
    # Priced at one power, the budget would buy low ρ; measured, ρ 1 is cheaper and the budget is ample.
    slots = _slots([200.0] * 8)
    cost = CostModel(epoch_s_at_full=1800, running_power_w=250, power_points=((0.4, 400.0), (1.0, 100.0)))
    budget_g = 3 * 100 * 1800 * 200 / J_PER_KWH
    job = Job(epochs=3, deadline_s=slots[-1].end_s, rho_min=0.4, carbon_budget_g=budget_g)
    plan = plan_within_budget(job, cost, slots)
    assert plan.feasible and plan.expected_carbon_g == pytest.approx(budget_g)
    assert [(level.rho, pytest.approx(level.epochs)) for level in plan.levels] == [(1.0, pytest.approx(3.0))]
    poor = plan_within_budget(dataclasses.replace(job, carbon_budget_g=budget_g * 0.5), cost, slots)
    assert not poor.feasible and "least-carbon run" in poor.note
    assert poor.expected_carbon_g == pytest.approx(budget_g)  # the epochs' least-carbon run: 3 at ρ 1


def test_budget_mode_with_power_by_rho_runs_the_higher_rho_in_the_clean_hours():
    slots = _slots([100, 500] * 4)
    cost = CostModel(epoch_s_at_full=1800, running_power_w=300, power_points=((0.4, 150.0), (1.0, 300.0)))
    for budget_g in (40.0, 60.0, 80.0):
        plan = plan_within_budget(Job(epochs=3, deadline_s=slots[-1].end_s, rho_min=0.4, carbon_budget_g=budget_g),
                                  cost, slots)
        assert plan.feasible and plan.expected_carbon_g == pytest.approx(budget_g)

        def mean_rho_at(intensity):
            pieces = [s for s in plan.segments if s.intensity_g_per_kwh == intensity]
            return sum(s.rho * s.length_s for s in pieces) / sum(s.length_s for s in pieces)

        assert mean_rho_at(100) > mean_rho_at(500)


def test_budget_mode_with_the_same_power_at_every_rho_gives_the_constant_power_plans():
    rng = random.Random(23)
    for _ in range(30):
        slots = _slots([rng.uniform(20, 600) for _ in range(rng.randint(2, 9))])
        constant = _random_cost(rng, nonlinear=rng.choice([True, False]), idle=False)
        flat = dataclasses.replace(constant, power_points=((0.4, constant.running_power_w), (1.0, constant.running_power_w)))
        full_g = _continuous_carbon_g(slots, constant.running_power_w, 2 * 1800)
        job = Job(epochs=2, deadline_s=slots[-1].end_s, rho_min=0.4, carbon_budget_g=full_g * rng.uniform(0.3, 1.2))
        assert plan_within_budget(job, flat, slots) == plan_within_budget(job, constant, slots)


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0, deadline_s=10, rho_min=0.4), "epochs"),
    (dict(epochs=1, deadline_s=-1, rho_min=0.4), "deadline"),
    (dict(epochs=1, deadline_s=10, rho_min=0.4, mean_rho=0.3), "mean_rho"),
    (dict(epochs=1, deadline_s=10, rho_min=1.4), "rho_min"),
])
def test_bad_jobs_name_the_field(kwargs, message):
    with pytest.raises(PlanningInputError, match=message):
        Job(**kwargs)


def test_gapped_slots_are_refused():
    with pytest.raises(PlanningInputError, match="slot 1 starts"):
        plan_min_carbon(Job(epochs=1, deadline_s=10, rho_min=0.5), CostModel(epoch_s_at_full=1, running_power_w=1),
                        [Slot(0, 5, 1), Slot(6, 10, 1)])


def test_replanning_carries_the_mean_rho_floor_over_the_work_done():
    job = Job(epochs=10, deadline_s=10 * 3600, rho_min=0.4, mean_rho=0.7, may_pause=True)
    behind = remaining_job(job, epochs_done=4, rho_sum_done=4 * 0.4, elapsed_s=3600)
    assert (behind.epochs, behind.deadline_s, behind.mean_rho) == (6, 9 * 3600, pytest.approx(0.9))
    ahead = remaining_job(job, epochs_done=5, rho_sum_done=5.0, elapsed_s=0)
    assert ahead.mean_rho == 0.4  # (7 - 5) / 5 = 0.4
    assert remaining_job(job, epochs_done=8, rho_sum_done=3.2, elapsed_s=0).mean_rho == 1.0
    cost = CostModel(epoch_s_at_full=1800, running_power_w=300)
    plan = plan_min_carbon(behind, cost, _slots([200, 100, 300] * 6))
    assert plan.work_full_epochs + 4 * 0.4 == pytest.approx(0.7 * 10)
    with pytest.raises(PlanningInputError, match="no work left"):
        remaining_job(job, epochs_done=10, rho_sum_done=7, elapsed_s=0)


def test_slots_from_a_forecast_start_now_and_stop_at_the_horizon():
    from datetime import datetime, timedelta, timezone

    from carbonsched.planning.forecast import slots_from_forecast
    from carbonsched.types import ForecastPoint

    now = datetime(2025, 1, 1, 10, 10, tzinfo=timezone.utc)
    points = [ForecastPoint(datetime(2025, 1, 1, 10, 0, tzinfo=timezone.utc) + timedelta(minutes=30 * i), 100.0 + i)
              for i in range(6)]
    slots = slots_from_forecast(now, 99.0, points, horizon_s=5000)
    assert [(s.start_s, s.end_s, s.intensity_g_per_kwh) for s in slots] == [
        (0, 1200, 99.0), (1200, 3000, 101.0), (3000, 4800, 102.0), (4800, 5000, 103.0)]
    assert [(s.start_s, s.end_s) for s in slots_from_forecast(now, 99.0, points, horizon_s=1e6)][-1] == (8400, 10200)
    assert slots_from_forecast(now, 99.0, (), horizon_s=7200) == [Slot(0.0, 7200, 99.0)]
