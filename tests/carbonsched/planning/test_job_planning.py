"""The daemon's receding-horizon planning of deadline jobs: progress from records, slots beyond
the forecast, pauses, and the deadline guard under a forecast that keeps promising a cleaner hour."""

import math
from datetime import datetime, timedelta, timezone

import pytest

from carbonsched.planning.job_planner import (
    MARGIN_SHARE, JobDeclaration, JobPlanner, JobProgress, PlanningSettings, decide_job, first_plan_values, plan_job,
    planning_slots,
    progress_from_records, reading_history,
)
from carbonsched.planning import Slot
from carbonsched.planning.forecast import ReadingHistory
from carbonsched.store import Store
from carbonsched.types import ForecastPoint, IntensityReading

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
HOUR_S = 3600.0


def hourly_forecast(now: datetime, values: list[float]) -> tuple[ForecastPoint, ...]:
    """``values[i]`` for the hour starting i + 1 hours after ``now``."""
    return tuple(ForecastPoint(now + timedelta(hours=i + 1), v) for i, v in enumerate(values))


def declaration(**overrides) -> JobDeclaration:
    fields = dict(deadline_s=T0.timestamp() + 10 * HOUR_S, epochs=4.0, epoch_seconds=HOUR_S, rho_min=0.5,
                  mean_rho=None, may_pause=True)
    return JobDeclaration(**{**fields, **overrides})


def test_declaration_from_a_stored_job_row():
    assert JobDeclaration.from_job({"deadline": None, "epochs": 3}) is None
    assert JobDeclaration.from_job({"deadline": 5.0, "epochs": None}) is None
    only_shift = JobDeclaration.from_job({"deadline": 5.0, "epochs": 3, "may_pause": 1})
    assert only_shift.rho_min == 1.0 and only_shift.may_pause is True
    floor_from_mean = JobDeclaration.from_job({"deadline": 5.0, "epochs": 3, "mean_rho": 0.7})
    assert floor_from_mean.rho_min == 0.7 and floor_from_mean.mean_rho == 0.7


def test_progress_learns_epoch_time_without_paused_seconds_and_counts_the_open_epoch():
    decl = declaration(epoch_seconds=99.0)
    epochs = [
        {"epoch": 0, "started_at": 0.0, "ended_at": 1000.0, "rho_asked": 0.5, "rho_effective": 0.5},
        {"epoch": 1, "started_at": 1000.0, "ended_at": None, "rho_asked": 0.5, "rho_effective": None},
    ]
    pauses = [(200.0, 500.0), (1100.0, 1150.0)]
    progress = progress_from_records(decl, epochs, pauses, now_s=1400.0)
    at_full = (1000.0 - 300.0) / 0.5
    open_share = (400.0 - 50.0) / (at_full * 0.5)
    assert progress.learned and progress.epoch_s_at_full == pytest.approx(at_full)
    assert progress.epochs_done == pytest.approx(1 + open_share)
    assert progress.rho_sum_done == pytest.approx(0.5 + 0.5 * open_share)
    unmeasured = progress_from_records(decl, [], [], now_s=10.0)
    assert unmeasured.epoch_s_at_full == 99.0 and not unmeasured.learned and unmeasured.epochs_done == 0


def test_slots_beyond_the_forecast_repeat_its_last_value():
    slots = planning_slots(T0, 300.0, hourly_forecast(T0, [200.0, 100.0]), horizon_s=6 * HOUR_S)
    assert slots[0] == Slot(0.0, HOUR_S, 300.0)
    assert slots[-1].end_s == 6 * HOUR_S and slots[-1].intensity_g_per_kwh == 100.0
    assert [s.start_s for s in slots[1:]] == [HOUR_S, 2 * HOUR_S, 3 * HOUR_S]


def test_a_pausable_job_waits_for_the_clean_hours_and_a_non_pausable_one_runs_now():
    forecast = hourly_forecast(T0, [500.0, 500.0, 40.0, 40.0, 40.0, 500.0])
    progress = JobProgress(0.0, 0.0, HOUR_S, learned=False)
    paused = plan_job(declaration(epochs=2.0), progress, T0, 500.0, forecast, interval_s=60.0)
    assert paused.pause_until_s == (T0 + timedelta(hours=3)).timestamp()
    assert paused.rho == 0.5 and not paused.guard and paused.next_resume_at_s == paused.pause_until_s
    running = plan_job(declaration(epochs=2.0, may_pause=False), progress, T0, 500.0, forecast, interval_s=60.0)
    assert running.pause_until_s is None and running.rho == 0.5 and not running.guard
    assert plan_job(declaration(epoch_seconds=None), JobProgress(0.0, 0.0, None, False), T0, 500.0, forecast,
                    interval_s=60.0) is None


def test_a_running_plan_names_its_next_pause_and_resume():
    forecast = hourly_forecast(T0, [500.0, 40.0, 40.0, 500.0, 500.0, 500.0])
    decision = plan_job(declaration(epochs=4.0, rho_min=1.0), JobProgress(0.0, 0.0, HOUR_S / 2, False), T0, 40.0,
                        forecast, interval_s=60.0)
    assert decision.pause_until_s is None and decision.rho == 1.0
    assert decision.next_pause_at_s == (T0 + timedelta(hours=1)).timestamp()
    assert decision.next_resume_at_s == (T0 + timedelta(hours=2)).timestamp()


FULL_QUALITY_GUARD = PlanningSettings(guard="full")


def simulate(decl: JobDeclaration, forecast_for, step_s: float = 300.0, settings: PlanningSettings = PlanningSettings()):
    """Re-plan every ``step_s`` and run as told; returns (decisions, finish time s from T0 or None)."""
    done, rho_sum, decisions = 0.0, 0.0, []
    for index in range(int((decl.deadline_s - T0.timestamp()) / step_s) + 10):
        now = T0 + timedelta(seconds=index * step_s)
        current, forecast = forecast_for(now)
        decision = plan_job(decl, JobProgress(done, rho_sum, decl.epoch_seconds, True), now, current, forecast,
                            interval_s=step_s, settings=settings)
        decisions.append(decision)
        if decision.pause_until_s is None:
            epochs = min(decl.epochs - done, step_s / (decl.epoch_seconds * decision.rho))
            done, rho_sum = done + epochs, rho_sum + epochs * decision.rho
            if done >= decl.epochs - 1e-9:
                used_s = epochs * decl.epoch_seconds * decision.rho
                return decisions, index * step_s + used_s, rho_sum / decl.epochs
    return decisions, None, None


def pessimistic(now):  # dirty now, clean from the next hour on: at every re-plan
    return 500.0, hourly_forecast(now, [50.0] * 24)


def test_floor_guard_meets_the_deadline_at_the_floor_when_the_forecast_always_promises_a_cleaner_hour():
    decl = declaration()
    decisions, finish_s, mean_rho = simulate(decl, pessimistic)
    assert decisions[0].pause_until_s is not None  # the plan alone would wait for the clean hour
    assert finish_s is not None and finish_s <= decl.deadline_s - T0.timestamp()
    # Nothing pushes ρ above the job's floor: the deadline is met at the floor.
    assert all(d.rho == 0.5 for d in decisions) and mean_rho == pytest.approx(0.5)


def test_full_quality_guard_meets_the_deadline_when_the_forecast_always_promises_a_cleaner_hour():
    decl = declaration()
    decisions, finish_s, mean_rho = simulate(decl, pessimistic, settings=FULL_QUALITY_GUARD)
    assert decisions[0].pause_until_s is not None  # the plan alone would wait for the clean hour
    assert finish_s is not None and finish_s <= decl.deadline_s - T0.timestamp()
    guarded = [d for d in decisions if d.guard]
    first_guard = decisions.index(guarded[0])
    assert all(d.pause_until_s is not None for d in decisions[:first_guard])  # it paused until the guard
    assert all(d.guard and d.pause_until_s is None for d in decisions[first_guard:])  # then ran to the end
    # Re-planned every 5 min, the guard starts within one step of the time full ρ barely fits.
    assert guarded[0].rho > 0.95 and mean_rho > 0.95
    assert "deadline guard" in guarded[0].reason


def test_full_quality_guard_runs_at_the_highest_rho_that_still_fits_and_at_the_floor_when_none_does():
    progress = JobProgress(0.0, 0.0, HOUR_S, False)
    forecast = hourly_forecast(T0, [50.0] * 24)
    tight = declaration(deadline_s=T0.timestamp() + 3 * HOUR_S)  # 4 epochs at ρ 1 need 4 h
    decision = plan_job(tight, progress, T0, 500.0, forecast, interval_s=60.0, settings=FULL_QUALITY_GUARD)
    assert decision.guard and decision.pause_until_s is None
    assert decision.rho == pytest.approx((3 * HOUR_S - MARGIN_SHARE * 4 * HOUR_S) / (4 * HOUR_S))
    hopeless = declaration(deadline_s=T0.timestamp() + HOUR_S)
    decision = plan_job(hopeless, progress, T0, 500.0, forecast, interval_s=60.0, settings=FULL_QUALITY_GUARD)
    assert decision.guard and decision.rho == 0.5 and "no longer fits" in decision.reason
    passed = declaration(deadline_s=T0.timestamp() - 10.0)
    assert plan_job(passed, progress, T0, 500.0, forecast, interval_s=60.0, settings=FULL_QUALITY_GUARD).rho == 0.5


def test_floor_guard_runs_at_the_floor_once_the_floor_no_longer_fits_with_its_margin():
    forecast = hourly_forecast(T0, [50.0] * 24)
    # 4 epochs at the floor 0.5 need 2 h; measured epoch times 10 % apart keep 10 % of that in hand.
    progress = JobProgress(0.0, 0.0, HOUR_S, True, epoch_s_spread=0.1)
    fits = plan_job(declaration(deadline_s=T0.timestamp() + 3.3 * HOUR_S), progress, T0, 500.0, forecast,
                    interval_s=60.0)
    assert not fits.guard and fits.pause_until_s is not None  # 500 g now, 50 g from the next hour: it waits
    tight = plan_job(declaration(deadline_s=T0.timestamp() + 2.1 * HOUR_S), progress, T0, 500.0, forecast,
                     interval_s=60.0)
    assert tight.guard and tight.pause_until_s is None and tight.rho == 0.5
    assert "at the floor" in tight.reason


def diurnal_g_per_kwh(at: datetime) -> float:
    """Peak at 19:00 UTC (450), trough at 07:00 (150)."""
    hour = at.hour + at.minute / 60
    return 300.0 + 150.0 * math.cos(2 * math.pi * (hour - 19) / 24)


def store_with_a_week_of_readings(tmp_path, now: datetime, provider: str = "trace", zone: str | None = None,
                                  g_per_kwh=diurnal_g_per_kwh, store: Store | None = None) -> Store:
    store = store or Store(tmp_path / "state.sqlite")
    at = now - timedelta(days=7)
    while at < now:
        store.add_intensity(IntensityReading(g_per_kwh(at), at, provider, "average", at, zone=zone, interval_s=900.0))
        at += timedelta(minutes=15)
    return store


def start_a_pausable_two_epoch_job(store: Store) -> None:
    """Job "j": two epochs of an hour at ρ 1, may pause, due 24 h after ``T0``."""
    store.start_job("j", model="m", scheme="green", pid=None, uid=None, started_at=T0)
    store.declare_job("j", deadline=T0.timestamp() + 24 * HOUR_S, epochs=2.0, epoch_seconds=HOUR_S, rho_min=1.0,
                      mean_rho=None, may_pause=True)


def reading_now(value: float, forecast, provider: str = "trace", zone: str | None = None) -> IntensityReading:
    return IntensityReading(value, T0, provider, "average", T0, zone=zone, forecast=tuple(forecast))


def history_from(store: Store, now: datetime) -> ReadingHistory:
    return reading_history(store, reading_now(0.0, ()), now.timestamp())


def test_slots_beyond_the_forecast_follow_the_same_hour_of_previous_days(tmp_path):
    with store_with_a_week_of_readings(tmp_path, T0) as store:
        history = history_from(store, T0)
    slots = planning_slots(T0, 350.0, hourly_forecast(T0, [350.0, 350.0]), 24 * HOUR_S, history)
    assert slots[:3] == [Slot(0.0, HOUR_S, 350.0), Slot(HOUR_S, 2 * HOUR_S, 350.0), Slot(2 * HOUR_S, 3 * HOUR_S, 350.0)]
    beyond = slots[3:]
    assert slots[-1].end_s == 24 * HOUR_S and all(s.length_s == HOUR_S for s in beyond)
    for slot in beyond:  # the mean of four readings a quarter hour apart, at the same hour every day
        readings = [diurnal_g_per_kwh(T0 + timedelta(seconds=slot.start_s, minutes=15 * k)) for k in range(4)]
        assert slot.intensity_g_per_kwh == pytest.approx(sum(readings) / 4)
    cleanest = min(beyond, key=lambda s: s.intensity_g_per_kwh)
    assert (T0 + timedelta(seconds=cleanest.start_s)).hour in (6, 7)
    assert max(s.intensity_g_per_kwh for s in beyond) - cleanest.intensity_g_per_kwh > 250


def test_the_daemon_plans_a_pausable_job_into_the_clean_hours_its_store_remembers(tmp_path):
    forecast = hourly_forecast(T0, [350.0, 350.0])
    with store_with_a_week_of_readings(tmp_path / "week", T0) as store:
        start_a_pausable_two_epoch_job(store)
        decision = JobPlanner().plan_running_jobs(store, store.jobs(status="running"), T0, reading_now(350.0, forecast),
                                                  60.0)["j"]
    # The two cleanest hours are around 07:00 tomorrow (19 h from now), where the week's readings dip.
    assert decision.pause_until_s is not None
    assert 17 * HOUR_S <= decision.pause_until_s - T0.timestamp() <= 19 * HOUR_S


def test_without_history_the_last_forecast_value_holds(tmp_path):
    forecast = hourly_forecast(T0, [350.0, 300.0])
    with Store(tmp_path / "empty.sqlite") as store:
        history = history_from(store, T0)
        start_a_pausable_two_epoch_job(store)
        decision = JobPlanner().plan_running_jobs(store, store.jobs(status="running"), T0, reading_now(350.0, forecast),
                                                  60.0)["j"]
    slots = planning_slots(T0, 350.0, forecast, 24 * HOUR_S, history)
    assert slots[-1] == Slot(3 * HOUR_S, 24 * HOUR_S, 300.0) and len(slots) == 4
    assert decision.pause_until_s == (T0 + timedelta(hours=2)).timestamp()  # the last forecast hour, 300


def afternoon_dip_g_per_kwh(at: datetime) -> float:
    """Another grid: clean from 14:00 to 17:00 UTC only, dirty otherwise."""
    return 0.0 if 14 <= at.hour < 17 else 1000.0


def test_the_history_fill_takes_only_the_readings_of_the_provider_and_zone_giving_the_forecast(tmp_path):
    forecast = hourly_forecast(T0, [350.0, 300.0])
    with store_with_a_week_of_readings(tmp_path, T0, provider="electricitymaps", zone="DE") as store:
        # The same week from a trace used earlier and from another zone of the same provider.
        store_with_a_week_of_readings(tmp_path, T0, provider="trace:old.csv", g_per_kwh=afternoon_dip_g_per_kwh, store=store)
        store_with_a_week_of_readings(tmp_path, T0, provider="electricitymaps", zone="FR",
                                      g_per_kwh=afternoon_dip_g_per_kwh, store=store)
        start_a_pausable_two_epoch_job(store)
        jobs = store.jobs(status="running")
        # A fresh planner for each: one planner would keep the plan it made first (see test_planner_keeps...).
        germany = JobPlanner().plan_running_jobs(store, jobs, T0, reading_now(350.0, forecast, "electricitymaps", "DE"),
                                                 60.0)
        france = JobPlanner().plan_running_jobs(store, jobs, T0, reading_now(350.0, forecast, "electricitymaps", "FR"),
                                                60.0)
        unknown = JobPlanner().plan_running_jobs(store, jobs, T0, reading_now(350.0, forecast, "ukgrid", "GB"), 60.0)
    # DE's own week dips around 07:00 tomorrow (19 h from now); mixed with the others' 15:00 dip it would not.
    assert 17 * HOUR_S <= germany["j"].pause_until_s - T0.timestamp() <= 19 * HOUR_S
    assert france["j"].pause_until_s == (T0 + timedelta(hours=3)).timestamp()  # FR's own 15:00 dip
    # No stored reading from this provider: the forecast's last value (300, two hours from now) holds.
    assert unknown["j"].pause_until_s == (T0 + timedelta(hours=2)).timestamp()


def test_power_per_rho_is_learned_from_epoch_energy_and_changes_the_plan():
    # Epochs at ρ 0.5 drew 450 W, at ρ 1 200 W: an epoch at ρ 1 takes less energy (200·t vs 450·t/2).
    epochs = [
        {"epoch": 0, "started_at": 0.0, "ended_at": 1800.0, "rho_asked": 0.5, "rho_effective": 0.5,
         "energy_j": 450.0 * 1800},
        {"epoch": 1, "started_at": 1800.0, "ended_at": 5400.0, "rho_asked": 1.0, "rho_effective": 1.0,
         "energy_j": 200.0 * 3600},
        {"epoch": 2, "started_at": 5400.0, "ended_at": None, "rho_asked": 1.0, "rho_effective": None},
    ]
    decl = declaration(epochs=6.0, epoch_seconds=HOUR_S, rho_min=0.5)
    progress = progress_from_records(decl, epochs, [], now_s=5400.0)
    assert progress.power_points == ((0.5, pytest.approx(450.0)), (1.0, pytest.approx(200.0)))
    forecast = hourly_forecast(T0, [100.0] * 12)
    learned = plan_job(decl, progress, T0, 100.0, forecast, interval_s=60.0)
    assert learned.rho == 1.0 and learned.pause_until_s is None
    unmeasured = JobProgress(progress.epochs_done, progress.rho_sum_done, progress.epoch_s_at_full, True)
    assert plan_job(decl, unmeasured, T0, 100.0, forecast, interval_s=60.0).rho == 0.5  # least running time
    one_rho = progress_from_records(decl, [dict(epochs[1], epoch=0, started_at=0.0, ended_at=3600.0)], [], now_s=4000.0)
    assert one_rho.power_points == ()


def test_the_first_plan_is_priced_at_the_measured_power_or_per_watt_before_any():
    decl = declaration(epochs=2.0)
    forecast = hourly_forecast(T0, [40.0] * 12)  # dirty now (500), clean from the next hour on
    progress = JobProgress(0.0, 0.0, HOUR_S, False)
    decision, followed, slots = decide_job(decl, progress, T0, 500.0, forecast, interval_s=60.0)
    plan = followed.plan
    assert decision.pause_until_s is not None and all(s.intensity_g_per_kwh == 40.0 for s in plan.segments)
    unmeasured = first_plan_values(plan, slots, progress, T0.timestamp(), None)
    assert unmeasured["expected_carbon_g"] is None and unmeasured["power_w"] is None
    assert unmeasured["expected_g_per_w"] == pytest.approx(plan.running_s * 40.0 / 3.6e6)
    assert unmeasured["finish_at"] == T0.timestamp() + plan.finish_s and unmeasured["mean_rho"] == 0.5
    measured = first_plan_values(plan, slots, progress, T0.timestamp(), 250.0)
    assert measured["expected_carbon_g"] == pytest.approx(250.0 * plan.running_s * 40.0 / 3.6e6)
    by_rho = JobProgress(0.0, 0.0, HOUR_S, True, power_points=((0.5, 150.0), (1.0, 300.0)))
    decision, followed, slots = decide_job(decl, by_rho, T0, 500.0, forecast, interval_s=60.0)
    plan = followed.plan
    per_rho = first_plan_values(plan, slots, by_rho, T0.timestamp(), 220.0)
    watts = {0.5: 150.0, 1.0: 300.0}
    assert per_rho["expected_g_per_w"] is None and per_rho["power_w"] is None
    assert per_rho["expected_carbon_g"] == pytest.approx(
        sum(watts[s.rho] * s.length_s * s.intensity_g_per_kwh for s in plan.segments) / 3.6e6)
