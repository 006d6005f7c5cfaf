"""The daemon's receding-horizon decision: the floor guard, and a held plan against plan thrash."""

from __future__ import annotations

import json
import random

import pytest

from carbonsched.config import ConfigError, load_config
from carbonsched.planning import CostModel, Job, Slot
from carbonsched.planning.margin import running_need_s
from carbonsched.planning.noise_model import UK_LIKE
from carbonsched.planning.model import remaining_job
from carbonsched.planning.planner import plan_min_carbon
from carbonsched.planning.receding import (
    HeldPlan, JobDeclaration, JobProgress, PlanningSettings, decide, guard_margin_s, keep_or_replace,
    progress_from_records,
)

HOUR_S = 3600.0


def _flat(horizon_s: float, value: float = 100.0) -> list[Slot]:
    return [Slot(0.0, max(horizon_s, 1.0), value)]


def test_the_floor_guard_cannot_fire_while_the_work_left_fits_at_the_floor():
    rng = random.Random(5)
    checked = 0
    for _ in range(400):
        epochs = rng.choice([2.0, 4.0, 12.0])
        epoch_s = rng.uniform(600, 3600)
        rho_min = rng.choice([0.3, 0.5])
        mean_rho = rng.choice([None, 0.6, 0.8])
        done = rng.uniform(0, epochs - 0.5)
        spread = rng.choice([None, 0.0, 0.05, 0.2])
        progress = JobProgress(done, done * (mean_rho or rho_min), epoch_s, True, epoch_s_spread=spread)
        declaration = JobDeclaration(deadline_s=1e6, epochs=epochs, epoch_seconds=epoch_s, rho_min=rho_min,
                                     mean_rho=mean_rho, may_pause=True)
        job = remaining_job(Job(epochs=epochs, deadline_s=1e6, rho_min=rho_min, mean_rho=mean_rho, may_pause=True),
                            epochs_done=done, rho_sum_done=progress.rho_sum_done, elapsed_s=0.0)
        need_s = running_need_s(job, CostModel(epoch_s_at_full=epoch_s, running_power_w=1.0))
        margin_s = guard_margin_s(progress, need_s, 60.0)
        time_left_s = (need_s + margin_s) * rng.uniform(1.0001, 3.0)
        decided = decide(declaration, progress, 1e6 - time_left_s, 300.0, _flat, interval_s=60.0)
        assert decided is not None
        decision, held = decided
        assert not decision.guard, (time_left_s, need_s, margin_s, decision.reason)
        checked += 1
        # Just below the line it fires, and runs at the floor.
        tight_left_s = (need_s + margin_s) * 0.999
        tight, _ = decide(declaration, progress, 1e6 - tight_left_s, 300.0, _flat, interval_s=60.0)
        assert tight.guard and tight.pause_until_s is None and tight.rho == pytest.approx(job.rho_floor)
    assert checked == 400


def test_the_guard_margin_comes_from_the_jobs_own_epoch_times():
    records = [{"started_at": 0.0, "ended_at": 1000.0, "rho_effective": 1.0},
               {"started_at": 1000.0, "ended_at": 2200.0, "rho_effective": 1.0},
               {"started_at": 2200.0, "ended_at": 3300.0, "rho_effective": 1.0}]
    declaration = JobDeclaration(deadline_s=1e5, epochs=10, epoch_seconds=900.0, rho_min=0.5, mean_rho=None,
                                 may_pause=True)
    progress = progress_from_records(declaration, records, [], now_s=3300.0)
    assert progress.epoch_s_spread == pytest.approx(100.0 / 1100.0)
    assert guard_margin_s(progress, 10_000.0, 60.0) == pytest.approx(10_000.0 / 11)
    assert guard_margin_s(progress, 100.0, 60.0) == 60.0  # never less than one decide interval
    one = progress_from_records(declaration, records[:1], [], now_s=1000.0)
    assert one.epoch_s_spread is None and guard_margin_s(one, 10_000.0, 60.0) == pytest.approx(1000.0)
    unmeasured = progress_from_records(declaration, [], [], now_s=0.0)
    assert guard_margin_s(unmeasured, 10_000.0, 60.0) == pytest.approx(3000.0)  # 30 %: nothing measured yet


JOB = Job(epochs=2.0, deadline_s=10 * HOUR_S, rho_min=1.0, may_pause=True)
COST = CostModel(epoch_s_at_full=HOUR_S, running_power_w=1.0)


def _slots(values: list[float]) -> list[Slot]:
    return [Slot(i * HOUR_S, (i + 1) * HOUR_S, v) for i, v in enumerate(values)]


def test_a_held_plan_is_kept_unless_the_fresh_one_is_better_by_more_than_the_switch_share():
    old_forecast = _slots([300, 100, 100, 300, 300, 300, 300, 300, 300, 300])
    held = HeldPlan(0.0, plan_min_carbon(JOB, COST, old_forecast), COST)
    assert [s.start_s for s in held.plan.segments] == [HOUR_S, 2 * HOUR_S]
    # An hour later the newest forecast finds hour 4 1 % cleaner than hour 2: noise, the held plan stays.
    new_forecast = _slots([100, 101, 300, 100, 300, 300, 300, 300, 300])
    job_now = Job(epochs=2.0, deadline_s=9 * HOUR_S, rho_min=1.0, may_pause=True)
    fresh = plan_min_carbon(job_now, COST, _slots([100, 100, 300, 99, 300, 300, 300, 300, 300]))
    kept = keep_or_replace(held, fresh, HOUR_S, new_forecast, COST, switch_share=0.02, latest_finish_s=9 * HOUR_S)
    assert kept is not fresh and [(s.start_s, s.end_s) for s in kept.segments] == [(0.0, HOUR_S), (HOUR_S, 2 * HOUR_S)]
    assert kept.expected_carbon_g == pytest.approx((100 + 101) * HOUR_S / 3.6e6)
    # A much cleaner hour: replaced.
    much = plan_min_carbon(job_now, COST, _slots([100, 101, 300, 20, 300, 300, 300, 300, 300]))
    assert keep_or_replace(held, much, HOUR_S, _slots([100, 101, 300, 20, 300, 300, 300, 300, 300]), COST,
                           switch_share=0.02, latest_finish_s=9 * HOUR_S) is much
    # With switch share 0 every fresh plan that is any cheaper replaces it.
    assert keep_or_replace(held, fresh, HOUR_S, _slots([100, 100, 300, 99, 300, 300, 300, 300, 300]), COST,
                           switch_share=0.0, latest_finish_s=9 * HOUR_S) is fresh


def test_with_the_default_share_an_equally_cheap_fresh_plan_does_not_replace_the_held_one():
    forecast = _slots([300, 100, 100, 100, 100, 300, 300, 300, 300, 300])  # four equal clean hours
    held = HeldPlan(0.0, plan_min_carbon(JOB, COST, forecast), COST)
    job_now = Job(epochs=2.0, deadline_s=9 * HOUR_S, rho_min=1.0, may_pause=True)
    # A fresh plan as cheap, in other hours (the last two clean ones): the held plan stays.
    later = [300, 300, 300, 100, 100, 300, 300, 300, 300]
    equal = plan_min_carbon(job_now, COST, _slots(later))
    now_slots = _slots([100, 100, 100, 100, 300, 300, 300, 300, 300])
    kept = keep_or_replace(held, equal, HOUR_S, now_slots, COST, switch_share=PlanningSettings().switch_share,
                           latest_finish_s=9 * HOUR_S)
    assert kept is not equal and kept.segments[0].start_s == 0.0


def test_a_held_plan_is_dropped_when_it_no_longer_does_the_work_or_the_epoch_time_changed():
    forecast = _slots([300, 100, 100, 300, 300, 300, 300, 300, 300, 300])
    held = HeldPlan(0.0, plan_min_carbon(JOB, COST, forecast), COST)
    job_now = Job(epochs=2.0, deadline_s=9 * HOUR_S, rho_min=1.0, may_pause=True)
    fresh = plan_min_carbon(job_now, COST, _slots([100, 100, 300, 300, 300, 300, 300, 300, 300]))
    slower = CostModel(epoch_s_at_full=1.2 * HOUR_S, running_power_w=1.0)
    assert keep_or_replace(held, fresh, HOUR_S, fresh_slots := _slots([100, 100, 300, 300, 300, 300, 300, 300, 300]),
                           slower, switch_share=0.5,
                           latest_finish_s=9 * HOUR_S) is fresh  # measured another epoch time
    assert held.remainder(HOUR_S, job_now, slower) is None  # 2 h at 1.2 h per epoch do not finish 2 epochs
    # The remainder, later than the latest finish the guard allows: replaced.
    assert keep_or_replace(held, fresh, HOUR_S, fresh_slots, COST, switch_share=0.5,
                           latest_finish_s=1.5 * HOUR_S) is fresh
    # Half an hour into the plan's first run the remainder does what is left, from now.
    half = Job(epochs=1.5, deadline_s=8.5 * HOUR_S, rho_min=1.0, may_pause=True)
    remainder = held.remainder(1.5 * HOUR_S, half, COST)
    assert [(s.start_s, s.end_s) for s in remainder.segments] == [(0.0, 0.5 * HOUR_S), (0.5 * HOUR_S, 1.5 * HOUR_S)]


def test_the_daemon_planner_keeps_the_plan_it_follows_between_decisions(tmp_path):
    from datetime import datetime, timedelta, timezone

    from carbonsched.planning.job_planner import JobPlanner
    from carbonsched.store import Store
    from carbonsched.types import ForecastPoint, IntensityReading

    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)

    def reading(values: list[float]) -> IntensityReading:
        forecast = tuple(ForecastPoint(t0 + timedelta(hours=i + 1), v) for i, v in enumerate(values))
        return IntensityReading(300.0, t0, "trace", "average", t0, zone="X", forecast=forecast)

    with Store(tmp_path / "s.sqlite") as store:
        store.start_job("j", model="m", scheme="green", pid=None, uid=None, started_at=t0)
        store.declare_job("j", deadline=(t0 + timedelta(hours=12)).timestamp(), epochs=2.0, epoch_seconds=HOUR_S,
                          rho_min=1.0, mean_rho=None, may_pause=True)
        jobs = store.jobs(status="running")
        first = [300, 100, 100] + [300] * 9
        noisy = [300, 101, 100, 99] + [300] * 8  # hour 4 now looks 1 % cleaner than hour 2: 199 g·h against 201
        holding = PlanningSettings(switch_share=0.02)
        planner = JobPlanner()
        planned = planner.plan_running_jobs(store, jobs, t0, reading(first), 60.0, holding)["j"]
        again = planner.plan_running_jobs(store, jobs, t0, reading(noisy), 60.0, holding)["j"]
        fresh = JobPlanner().plan_running_jobs(store, jobs, t0, reading(noisy), 60.0, holding)["j"]
        switching = planner.plan_running_jobs(store, jobs, t0, reading(noisy), 60.0)["j"]  # the default share, 0
    # Now 300 g, the forecast's hours 2 and 3 at 100 g: pause until hour 2.
    assert planned.pause_until_s == again.pause_until_s == (t0 + timedelta(hours=2)).timestamp()
    assert "kept" in again.reason
    assert fresh.pause_until_s == (t0 + timedelta(hours=3)).timestamp()
    assert switching.pause_until_s == fresh.pause_until_s


def test_planning_settings_in_the_daemon_config(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[planning]\nguard = "full"\nswitch_share = 0.05\n')
    assert load_config(path).planning == PlanningSettings(guard="full", switch_share=0.05)
    model = tmp_path / "error.json"
    model.write_text(json.dumps(UK_LIKE.to_json()))
    path.write_text('[planning]\nforecast_error = "error.json"\n')
    assert load_config(path).planning.forecast_error == UK_LIKE
    model.write_text("{}")
    with pytest.raises(ConfigError, match="forecast_error"):
        load_config(path)
    for text, message in (('[planning]\nguard = "always"\n', "guard must be one of floor, full"),
                          ("[planning]\nswitch_share = 1.5\n", "switch_share must be a fraction"),
                          ('[planning]\nswitch_share = "x"\n', "planning.switch_share"),
                          ("[planning]\nhold = 1\n", "planning.hold: unknown key")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(path)


class _Error:
    """σ of the log error: 0 for the next hour, then 0.3 (a forecast that is sure only of the next hour)."""

    def sigma_at(self, lead_s: float) -> float:
        return 0.0 if lead_s < 2 * HOUR_S else 0.3


def test_a_forecast_error_model_shrinks_far_slots_towards_the_window_mean_and_keeps_near_ones():
    from carbonsched.planning.forecast_trust import expected_slots

    slots = _slots([300, 120, 300, 300, 300, 300, 100, 300])
    assert expected_slots(slots, type("Exact", (), {"sigma_at": lambda self, lead_s: 0.0})()) == slots
    trusted = expected_slots(slots, _Error())
    assert trusted[:2] == slots[:2]  # measured now, and the hour whose forecast is sure
    assert trusted[6].intensity_g_per_kwh > 120  # the far dip: a 0.3 σ error on a forecast this spread is most of it
    assert all(t.intensity_g_per_kwh < 300 for t in trusted[2:])  # far slots move towards the mean too
    # The plan: at face value it waits six hours for the far 100 g; knowing that forecast's error,
    # it takes the sure 120 g of the next hour.
    declaration = JobDeclaration(deadline_s=8 * HOUR_S, epochs=1.0, epoch_seconds=HOUR_S, rho_min=1.0, mean_rho=None,
                                 may_pause=True)
    progress = JobProgress(0.0, 0.0, HOUR_S, True, epoch_s_spread=0.0)
    face, _ = decide(declaration, progress, 0.0, 300.0, lambda horizon_s: slots, interval_s=60.0)
    aware, _ = decide(declaration, progress, 0.0, 300.0, lambda horizon_s: slots, interval_s=60.0,
                      forecast_error=_Error())
    assert face.pause_until_s == 6 * HOUR_S and aware.pause_until_s == HOUR_S
