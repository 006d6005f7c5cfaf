"""Backtests: strategies replayed over traces, through the pure functions and the real command."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carbonsched.cli import app
from carbonsched.planning import CostModel, Job, PlanningInputError, Slot
from carbonsched.planning import strategies, synthetic_grids
from carbonsched.planning.backtest import epoch_time_factor, noisy_forecast, run_backtest, true_cost_model
from carbonsched.planning.series import Series
from carbonsched.planning.closed_loop import execute_open_loop, execute_receding
from carbonsched.planning.margin import MARGIN_SHARE
from carbonsched.planning.receding import PlanningSettings
from carbonsched.providers.trace import bundled_trace_path, load_trace

REPO = Path(__file__).resolve().parents[3]
runner = CliRunner()
STRATEGY_FIELDS = {"carbon_g_mean", "carbon_vs_now_full_mean", "carbon_vs_now_full_p10", "carbon_vs_now_full_p90",
                   "deadline_met_share", "deadline_met_if_slower_share", "rho_floor_met_share", "mean_rho"}


def _bundled_series() -> Series:
    trace = load_trace(bundled_trace_path())
    return Series(trace.offsets_s, trace.values_g_per_kwh, trace.duration_s)


def _constant_rho(rho):
    return lambda offset_s: (lambda intensity, at_s, forecast: rho)


JOB = Job(epochs=6, deadline_s=12 * 3600, rho_min=0.4, mean_rho=0.7, may_pause=True)
COST = CostModel(epoch_s_at_full=3600, running_power_w=250, idle_power_w=20)


def test_with_a_perfect_forecast_the_oracle_is_the_planner_without_margin_and_beats_every_rule_that_keeps_the_floor():
    result = run_backtest(_bundled_series(), JOB, COST, every_s=6 * 3600, noise=0.0, seed=0,
                          make_steps_rho=_constant_rho(0.7))
    assert result.submissions == 27  # offsets 0, 6, ..., 156 h: the 12 h deadline still inside the week
    assert result.outcomes["planner-no-margin"] == result.outcomes["oracle"]
    # The oracle is the optimum: the planner's regret is exactly what its margin costs.
    assert all(p.carbon_g >= o.carbon_g * (1 - 1e-9) for p, o in zip(result.outcomes["planner"], result.outcomes["oracle"]))
    assert result.regret_total == pytest.approx(result.margin_carbon_cost)
    assert result.regret_max > 0
    for name in ("now-full", "now-constant", "shift", "steps"):
        for best, other in zip(result.outcomes["oracle"], result.outcomes[name]):
            assert best.carbon_g <= other.carbon_g * (1 + 1e-9), name
    assert all(s.deadline_met_share == 1 for s in result.summaries.values())
    assert result.summaries["oracle"].carbon_vs_now_full_mean < result.summaries["shift"].carbon_vs_now_full_mean


def test_the_margin_costs_carbon_and_keeps_the_deadline_when_epochs_run_slower():
    result = run_backtest(_bundled_series(), JOB, COST, every_s=6 * 3600, noise=0.1, seed=0,
                          make_steps_rho=_constant_rho(0.7))
    with_margin, without = result.outcomes["planner"], result.outcomes["planner-no-margin"]
    assert sum(o.carbon_g for o in without) < sum(o.carbon_g for o in with_margin)
    assert result.margin_carbon_cost == pytest.approx(
        sum(o.carbon_g for o in with_margin) / sum(o.carbon_g for o in without) - 1)
    # Forecast noise never delays an executed plan; 10 % slower epochs do, unless the margin absorbs them.
    assert all(o.met_deadline for o in (*with_margin, *without))
    assert all(o.met_deadline_if_slower for o in with_margin)
    assert not all(o.met_deadline_if_slower for o in without)
    assert result.summaries["planner-no-margin"].deadline_met_if_slower_share < 1
    for plan_start in result.submitted_at_s[:3]:  # the planner is the daemon's: finish 10 % of the running time early
        slots = _bundled_series().slots(plan_start, plan_start + JOB.deadline_s)
        plan = strategies.planned(JOB, COST, slots)
        assert plan.finish_s <= JOB.deadline_s - MARGIN_SHARE * plan.running_s + 1e-6


def test_noise_is_seeded_and_costs_the_planner_against_the_oracle():
    series = _bundled_series()
    runs = [run_backtest(series, JOB, COST, every_s=6 * 3600, noise=0.2, seed=seed, make_steps_rho=_constant_rho(0.7))
            for seed in (1, 1, 2)]
    assert runs[0].outcomes == runs[1].outcomes
    assert runs[0].outcomes["planner"] != runs[2].outcomes["planner"]
    assert runs[0].outcomes["oracle"] == runs[2].outcomes["oracle"]
    assert runs[0].regret_mean > 0 and min(runs[0].regret_mean, runs[2].regret_mean) >= 0


def test_budget_mode_backtest_keeps_the_oracle_within_the_budget():
    budget_g = 150.0
    job = Job(epochs=6, deadline_s=12 * 3600, rho_min=0.4, carbon_budget_g=budget_g)
    cost = CostModel(epoch_s_at_full=1800, running_power_w=300)
    result = run_backtest(_bundled_series(), job, cost, every_s=12 * 3600, noise=0.1, seed=4,
                          make_steps_rho=_constant_rho(1.0))
    spent = 0
    for oracle, full in zip(result.outcomes["oracle"], result.outcomes["now-full"]):
        assert oracle.carbon_g <= budget_g * (1 + 1e-9)
        if full.carbon_g <= budget_g:  # ρ 1 throughout fits: the most work is ρ 1
            assert oracle.mean_rho == pytest.approx(1.0)
        else:  # otherwise the whole budget buys the highest ρ it can
            assert oracle.carbon_g == pytest.approx(budget_g) and 0.4 < oracle.mean_rho < 1
            spent += 1
    assert 0 < spent < result.submissions


def test_forecast_noise_leaves_the_measured_slot_alone():
    import random

    truth = [Slot(i * 10.0, (i + 1) * 10.0, 100.0) for i in range(50)]
    forecast = noisy_forecast(truth, 0.1, random.Random(3))
    assert forecast[0] == truth[0]
    errors = [f.intensity_g_per_kwh / 100 - 1 for f in forecast[1:]]
    assert 0.05 < math.sqrt(sum(e * e for e in errors) / len(errors)) < 0.15


def _foreign_trace(tmp_path: Path) -> Path:
    """An Electricity Maps style export: naive UTC times, hourly, one missing hour, two intensity columns."""
    start = datetime(2025, 3, 3)
    lines = ["Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
             "Carbon Intensity gCO₂eq/kWh (Life cycle),Data Estimated"]
    for hour in range(72):
        if hour == 30:
            continue
        direct = 250 + 150 * math.cos(2 * math.pi * (hour - 14) / 24)
        lines.append(f"{(start + timedelta(hours=hour)).isoformat(sep=' ')},Germany,Germany,DE,{direct:.1f},"
                     f"{direct + 60:.1f},false")
    path = tmp_path / "DE_2025_hourly.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_backtest_command_on_a_foreign_column_layout(tmp_path):
    trace_path, plot_path = _foreign_trace(tmp_path), tmp_path / "carbon.png"
    args = ["--trace", str(trace_path), "--epochs", "4", "--epoch-minutes", "60", "--deadline-hours", "12",
            "--mean-rho", "0.7", "--rho-min", "0.4", "--may-pause", "--noise", "0.1", "--every-hours", "6"]
    done = subprocess.run([sys.executable, "-m", "carbonsched.cli", "backtest", *args, "--format", "json",
                           "--plot", str(plot_path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["trace"]["intensity_column"] == "Carbon Intensity gCO₂eq/kWh (direct)"
    assert report["trace"]["step_s"] == 3600
    assert report["trace"]["gaps"] == [{"start": "2025-03-04T06:00:00+00:00", "missing_s": 3600.0}]
    assert report["trace"]["start"] == "2025-03-03T00:00:00+00:00"
    assert set(report["strategies"]) == {"now-full", "now-constant", "shift", "steps", "planner", "planner-receding",
                                         "planner-no-margin", "oracle"}
    assert report["epoch_time_error"] == 0.0
    assert report["planner_receding"]["submissions"] == report["submissions"]
    assert set(report["planner_receding"]["regret_vs_oracle"]) == {"mean", "p90", "max", "total"}
    assert all(set(fields) == STRATEGY_FIELDS for fields in report["strategies"].values())
    assert set(report["planner_regret_vs_oracle"]) == {"mean", "p90", "max", "total"}
    assert report["margin"]["share"] == 0.1 and report["margin"]["carbon_cost"] >= 0
    assert set(report["margin"]) == {"share", "slower_share", "carbon_cost", "deadline_met_share",
                                     "deadline_met_share_without", "deadline_met_if_slower_share",
                                     "deadline_met_if_slower_share_without"}
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The command's numbers are the library's on the same trace (hourly steps; the gap holds hour 29).
    trace = load_trace(trace_path)
    expected = run_backtest(Series(trace.offsets_s, trace.values_g_per_kwh, trace.duration_s),
                            Job(epochs=4, deadline_s=12 * 3600, rho_min=0.4, mean_rho=0.7, may_pause=True),
                            CostModel(epoch_s_at_full=3600, running_power_w=300), every_s=6 * 3600, noise=0.1, seed=0,
                            make_steps_rho=_constant_rho(1.0))
    assert report["submissions"] == expected.submissions == 11
    for name in ("now-full", "now-constant", "shift", "planner", "oracle"):
        assert report["strategies"][name]["carbon_g_mean"] == pytest.approx(expected.summaries[name].carbon_g_mean)

    table = subprocess.run([sys.executable, "-m", "carbonsched.cli", "backtest", *args], capture_output=True,
                           text=True, timeout=120, cwd=REPO)
    assert table.returncode == 0, table.stderr
    assert "1 gap in the samples, longest 1 h from 2025-03-04T06:00:00+00:00" in table.stdout
    assert "planner regret vs oracle: mean" in table.stdout
    assert "planner-receding regret vs oracle: mean" in table.stdout
    assert "the 10% margin costs" in table.stdout


def _trace_file(tmp_path: Path, values) -> Path:
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    path = tmp_path / "flat.csv"
    path.write_text("time,intensity\n" + "".join(f"{(start + timedelta(hours=i)).isoformat()},{v}\n"
                                                 for i, v in enumerate(values)))
    return path


@pytest.mark.parametrize("intensity, rho", [(150, 1.0), (250, 0.7), (350, 0.5)])
def test_steps_strategy_follows_the_given_policy(tmp_path, intensity, rho):
    path = _trace_file(tmp_path, [intensity] * 30)
    result = runner.invoke(app, ["backtest", "--trace", str(path), "--epochs", "2", "--epoch-minutes", "60",
                                 "--deadline-hours", "6", "--rho-min", "0.4", "--format", "json",
                                 "--policy", str(REPO / "policies" / "steps-synthetic.toml")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["strategies"]["steps"]["mean_rho"] == pytest.approx(rho)


def test_the_built_in_policy_runs_a_trace_that_never_changes_at_full_rho(tmp_path):
    """Scale-free: 350 gCO2e/kWh every hour is as clean as the next 24 h will be."""
    path = _trace_file(tmp_path, [350] * 30)
    result = runner.invoke(app, ["backtest", "--trace", str(path), "--epochs", "2", "--epoch-minutes", "60",
                                 "--deadline-hours", "6", "--rho-min", "0.4", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["strategies"]["steps"]["mean_rho"] == 1.0


def _solar_trace(tmp_path: Path) -> Path:
    path = tmp_path / "solar.csv"
    path.write_text(synthetic_grids.to_csv(synthetic_grids.generate("solar", days=4, step_min=60, seed=3)))
    return path


def test_a_forecast_policy_reacts_to_the_trace_s_forecast(tmp_path):
    """The reactive strategy hands the policy the trace's next 24 h, as a daemon's provider would:
    the forecast policy ranks each epoch's intensity in it instead of answering its fallback_rho
    (0.7, which with --mean-rho 0.7 would be exactly now-constant)."""
    args = ["backtest", "--trace", str(_solar_trace(tmp_path)), "--epochs", "6", "--epoch-minutes", "60",
            "--deadline-hours", "12", "--rho-min", "0.4", "--mean-rho", "0.7", "--every-hours", "6",
            "--format", "json", "--policy", str(REPO / "policies" / "forecast.toml")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summaries = json.loads(result.stdout)["strategies"]
    steps, constant = summaries["steps"], summaries["now-constant"]
    assert constant["mean_rho"] == pytest.approx(0.7)
    assert steps["mean_rho"] != pytest.approx(0.7)
    assert steps["carbon_g_mean"] != pytest.approx(constant["carbon_g_mean"])
    # Each ρ function gets the slots after its epoch's start within the next 24 h.
    seen = []
    slots = [Slot(i * 3600.0, (i + 1) * 3600.0, 100.0 + i) for i in range(40)]
    strategies.reactive(Job(epochs=2, deadline_s=12 * 3600, rho_min=0.4), CostModel(epoch_s_at_full=3600,
                        running_power_w=300), slots, lambda g, at_s, forecast: seen.append((g, at_s, forecast)) or 1.0)
    assert [(g, at_s) for g, at_s, _ in seen] == [(100.0, 0.0), (101.0, 3600.0)]
    assert seen[1][2] == slots[2:25]


def test_the_policy_sees_the_trace_s_last_days_as_history_when_there_is_no_forecast(tmp_path):
    """At the trace's end there is no slot ahead: a forecast policy with history_days ranks the
    intensity among the readings before it, as the daemon does with its stored readings."""
    from carbonsched.commands.plan_cmds import policy_rho_factory

    policy = tmp_path / "history.toml"
    policy.write_text('kind = "forecast"\nhistory_days = 7\nrho_min = 0.4\nrho_at_lowest = 1.0\n'
                      'rho_at_highest = 0.4\nfallback_rho = 0.55\n')
    series = Series((0.0, 3600.0, 7200.0), (300.0, 100.0, 200.0), 10800.0, datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp())
    rho_for = policy_rho_factory(policy, series)(7200.0)
    assert rho_for(200.0, 0.0, []) == pytest.approx(0.7)  # 200 ranks in the middle of 100, 200, 300
    assert policy_rho_factory(policy, series)(0.0)(300.0, 0.0, []) == 0.55  # one reading: no ranking


@pytest.mark.parametrize("extra, message", [
    (["--trace", "{missing}"], "trace: cannot read"),
    (["--trace", "{trace}", "--intensity-column", "co2"], "no column 'co2' for the intensity"),
    (["--trace", "{trace}", "--deadline-hours", "100"], "less than the 100 h deadline"),
    (["--trace", "{trace}", "--format", "xml"], "--format must be one of table, json"),
    (["--trace", "{trace}", "--mean-rho", "0.2"], "mean_rho must be in [rho_min=0.4, 1]"),
    (["--trace", "{trace}", "--noise", "-1"], "--noise must be a non-negative fraction"),
    (["--trace", "{trace}", "--epoch-time-error", "1"], "--epoch-time-error must be a fraction in [0, 1)"),
    (["--trace", "{trace}", "--epochs", "0"], "epochs must be a positive number"),
    (["--trace", "{trace}", "--budget-g", "5", "--may-pause"], "--budget-g is for jobs that may not pause"),
    (["--trace", "{trace}", "--plot", "{missing_dir}/x.png"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, extra, message):
    names = {"missing": str(tmp_path / "nope.csv"), "trace": str(_trace_file(tmp_path, [100] * 30)),
             "missing_dir": str(tmp_path / "nodir")}
    result = runner.invoke(app, ["backtest", *[arg.format(**names) for arg in extra]])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_plan_command_against_a_trace_provider(tmp_path):
    values = [400, 380, 120, 100, 90, 300, 420, 410] * 4
    path = _trace_file(tmp_path, values)
    result = runner.invoke(app, ["plan", "--provider", f"trace:{path}", "--epochs", "3", "--epoch-minutes", "60",
                                 "--deadline", "8h", "--mean-rho", "0.6", "--may-pause", "--format", "json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["feasible"] and plan["mean_rho"] == pytest.approx(0.6)
    assert plan["running_s"] == pytest.approx(3 * 0.6 * 3600)
    carbon = plan["expected_carbon_g"]
    assert carbon["planner"] < carbon["shift"] < carbon["now-full"]
    assert carbon["planner"] < carbon["now-constant"]
    # 1.8 h of running goes into the 90 and 100 gCO2e/kWh hours (the current hour holds 400).
    assert {s["intensity_g_per_kwh"] for s in plan["segments"]} == {90, 100}

    table = runner.invoke(app, ["plan", "--provider", f"trace:{path}", "--deadline", "8h", "--epochs", "3",
                                "--epoch-minutes", "60", "--plot", str(tmp_path / "plan.png")])
    assert table.exit_code == 0, table.output
    assert "expected planner" in table.stdout and (tmp_path / "plan.png").stat().st_size > 0


def test_plan_command_bad_deadline_is_one_line_exit_2():
    result = runner.invoke(app, ["plan", "--provider", "trace", "--deadline", "tomorrow"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --deadline 'tomorrow' is neither a duration (30s, 90m, 8h, 2d, 1h30m, "
                                     "PT8H) nor an ISO 8601 time (e.g. 2026-03-01T18:00Z; no offset means UTC) or unix "
                                     "seconds; a plain number is hours")


def test_plan_command_with_measured_epoch_times_mixes_the_hull_levels(tmp_path):
    path = _trace_file(tmp_path, [400, 380, 120, 100, 90, 300, 420, 410] * 4)
    # 0.8 takes longer than the chord from 0.6 to 1.0 allows: mean ρ 0.7 is fastest as a 0.6/1.0 mix.
    measured = [arg for point in ("0.4:16", "0.6:18", "0.8:26", "1:30") for arg in ("--measured-epoch", point)]
    result = runner.invoke(app, ["plan", "--provider", f"trace:{path}", "--epochs", "4", "--deadline", "8h",
                                 "--mean-rho", "0.7", "--may-pause", *measured, "--format", "json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert {s["rho"] for s in plan["segments"]} == {0.6, 1.0}
    assert plan["mean_rho"] == pytest.approx(0.7)
    assert plan["running_s"] == pytest.approx((3 * 18 + 1 * 30) * 60)  # 3 epochs at 0.6, 1 at 1.0
    assert plan["job"]["measured_epoch_s"][0] == [0.4, 960.0]


def test_plan_command_with_measured_power_per_rho_prefers_the_rho_with_less_energy_per_epoch(tmp_path):
    path = _trace_file(tmp_path, [400, 380, 120, 100, 90, 300, 420, 410] * 4)
    args = ["plan", "--provider", f"trace:{path}", "--epochs", "2", "--epoch-minutes", "60", "--deadline", "16h",
            "--rho-min", "0.5", "--may-pause", "--format", "json"]
    constant = json.loads(runner.invoke(app, args).stdout)
    assert {s["rho"] for s in constant["segments"]} == {0.5}  # same power at every ρ: the least running time
    # ρ 0.5 draws 450 W for half the time of ρ 1 at 200 W: 225 vs 200 W·h per epoch.
    result = runner.invoke(app, [*args, "--measured-power", "0.5:450", "--measured-power", "1:200"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert {s["rho"] for s in plan["segments"]} == {1.0} and plan["job"]["measured_power_w"] == [[0.5, 450.0], [1.0, 200.0]]
    bad = runner.invoke(app, [*args, "--measured-power", "0.5:lots", "--measured-power", "1:200"])
    assert bad.exit_code == 2 and bad.stderr.strip() == "error: --measured-power '0.5:lots' is not RHO:WATTS (e.g. 0.5:280)"


def test_plan_command_budget_mode_prices_each_rho_at_its_measured_power(tmp_path):
    path = _trace_file(tmp_path, [200] * 32)
    args = ["plan", "--provider", f"trace:{path}", "--epochs", "2", "--epoch-minutes", "60", "--deadline", "16h",
            "--rho-min", "0.5", "--budget-g", "60", "--power-w", "200", "--format", "json"]
    # 200 W at every ρ: 60 g at 200 gCO2e/kWh buy 1.5 h of running, two epochs at ρ 0.75.
    at_one_power = json.loads(runner.invoke(app, args).stdout)
    assert at_one_power["mean_rho"] == pytest.approx(0.75) and at_one_power["expected_carbon_g"]["planner"] == pytest.approx(60)
    # Measured, ρ 0.5 draws 250 W: an epoch costs 25 g at ρ 0.5 and 40 g at ρ 1, so 60 g buy
    # 2/3 epoch at ρ 1 and 4/3 at ρ 0.5 (the same two epochs at ρ 0.75 would cost 65 g).
    result = runner.invoke(app, [*args, "--measured-power", "0.5:250", "--measured-power", "1:200"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["feasible"] and plan["mean_rho"] == pytest.approx(2 / 3)
    assert plan["expected_carbon_g"]["planner"] == pytest.approx(60.0)
    assert {s["rho"] for s in plan["segments"]} == {0.5, 1.0}


def test_plan_command_uses_the_daemon_configs_provider(tmp_path, monkeypatch):
    path = _trace_file(tmp_path, [300, 50] * 20)
    config = tmp_path / "carbonsched.toml"
    config.write_text(f'provider = "trace:{path}"\n')
    monkeypatch.setenv("CARBONSCHED_CONFIG", str(config))
    result = runner.invoke(app, ["plan", "--epochs", "1", "--epoch-minutes", "60", "--deadline", "4h", "--may-pause",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["provider"] == f"trace:{path}"
    assert {s["intensity_g_per_kwh"] for s in plan["segments"]} == {50}

    config.write_text("provider = 7\n")
    bad = runner.invoke(app, ["plan", "--config", str(config)])
    assert bad.exit_code == 2 and bad.stderr.strip() == f"error: {config}: provider: must be a non-empty string"


# ---- planner-receding: the daemon's re-planning, simulated ---------------------------------------------------------


def _hourly_series(values) -> Series:
    return Series(tuple(3600.0 * i for i in range(len(values))), tuple(float(v) for v in values), 3600.0 * len(values))


def _daily(valley) -> list[float]:
    """Three days of hourly values: dirty (400–470) except a clean valley at hours 3–8 of each day."""
    day = [400 + 10 * (h % 8) for h in range(24)]
    for offset, value in enumerate(valley):
        day[3 + offset] = value
    return day * 3


def test_receding_with_a_perfect_forecast_is_the_planner_and_the_oracle_while_the_guard_stays_out():
    # The valley (hours 3–8) is cleanest early and ends 15 h before each deadline (submissions at hours
    # 0 and 12 of each day), so the guard never fires and the margin never binds: re-planning the optimal plan's
    # rest on the truth then keeps it, slot by slot (one epoch ends inside a slot, so the learned epoch
    # time and the open epoch's share are exercised too).
    series = _hourly_series(_daily([90, 60, 75, 120, 80, 200]))
    job = Job(epochs=4, deadline_s=24 * 3600, rho_min=0.4, mean_rho=0.7, may_pause=True)
    cost = CostModel(epoch_s_at_full=3600, running_power_w=250)
    result = run_backtest(series, job, cost, every_s=12 * 3600, noise=0.0, seed=0, make_steps_rho=_constant_rho(0.7))
    assert result.submissions == 5 and result.receding_at == (0, 1, 2, 3, 4)
    for receding, planner, oracle in zip(result.outcomes["planner-receding"], result.outcomes["planner"],
                                         result.outcomes["oracle"]):
        assert receding.carbon_g == pytest.approx(oracle.carbon_g, rel=1e-9)
        assert planner.carbon_g == pytest.approx(oracle.carbon_g, rel=1e-9)
        assert receding.mean_rho == pytest.approx(0.7, rel=1e-9) and receding.met_deadline
    assert abs(result.receding_regret["max"]) < 1e-9


def test_the_floor_guard_keeps_the_optimal_late_plan_and_the_full_quality_guard_pays_for_it():
    # The cleanest hours are the last ones before the deadline: the optimal plan waits for them. The
    # floor guard (the default) stays out while the work left fits at the floor, so re-planning keeps
    # that plan. The opt-in full-quality guard will not let the ρ-1 need of the work left plus 10 % of
    # the job's ρ-1 time exceed the time left, so it runs the job early at the highest ρ that fits:
    # more carbon, a mean ρ above the floor.
    values = [300.0] * 8 + [40.0] * 4 + [300.0] * 12
    truth, truth_from = _hourly_truth(values)
    job = Job(epochs=4, deadline_s=12 * 3600, rho_min=0.4, mean_rho=0.7, may_pause=True)
    cost = CostModel(epoch_s_at_full=3600, running_power_w=250)
    oracle = strategies.planned(job, cost, truth[:12], margin_share=0.0)
    assert {s.intensity_g_per_kwh for s in oracle.segments} == {40.0}
    floor = execute_receding(job, 3600, cost, truth, truth_from, interval_s=3600)
    assert floor.guarded_s == 0 and floor.finish_s <= job.deadline_s
    assert floor.carbon_g == pytest.approx(oracle.expected_carbon_g, rel=1e-9)
    assert floor.mean_rho == pytest.approx(0.7, rel=1e-9)
    full = execute_receding(job, 3600, cost, truth, truth_from, interval_s=3600,
                            settings=PlanningSettings(guard="full"))
    assert full.guarded_s > 0 and full.finish_s <= job.deadline_s
    assert full.mean_rho > 0.7 + 0.04
    assert full.carbon_g > oracle.expected_carbon_g * 1.05


def _hourly_truth(values):
    """Hourly slots of ``values`` and the perfect forecast from any moment (``ForecastAt``)."""
    series = _hourly_series(values)
    return series.slots(0.0, series.end_s), lambda now_s, horizon_s: series.slots(now_s, now_s + horizon_s)


def test_receding_learns_a_slower_epoch_time_and_meets_the_deadline_the_open_loop_plan_misses():
    # The cleanest hour now, then clean hours 7–11, cleaner towards a 12 h deadline; epochs really take 1.4x the
    # estimate. The plan runs 4.2 h (hour 0 and hours 7–11); the open loop does 4.3 of its 6 epochs in them
    # and the rest after the plan's end, past the deadline. The receding run ends its first epoch in hour 0,
    # learns the epoch time from it and runs earlier.
    values = [30.0] + [300.0] * 6 + [48.0, 46.0, 44.0, 42.0, 40.0] + [300.0] * 12
    truth, truth_from = _hourly_truth(values)
    job = Job(epochs=6, deadline_s=12 * 3600, rho_min=0.5, mean_rho=0.7, may_pause=True)
    estimate = CostModel(epoch_s_at_full=3600, running_power_w=250)
    true_cost = true_cost_model(estimate, 1.4)
    plan = strategies.planned(job, estimate, truth[:12])
    open_loop = execute_open_loop(job, true_cost, plan.segments, truth)
    assert plan.finish_s <= job.deadline_s and open_loop.finish_s > job.deadline_s
    receding = execute_receding(job, 3600, true_cost, truth, truth_from, interval_s=3600)
    assert receding.finish_s <= job.deadline_s
    assert receding.mean_rho >= 0.7 - 1e-9
    # With the epoch time learned from the first epoch, the re-plan starts the rest early enough.
    assert receding.replans > 1 and receding.segments[1].start_s < plan.segments[1].start_s


def test_epoch_time_error_makes_the_open_loop_planner_miss_deadlines_the_receding_one_meets():
    result = run_backtest(_bundled_series(), JOB, COST, every_s=6 * 3600, noise=0.0, seed=3,
                          make_steps_rho=_constant_rho(0.7), epoch_time_error=0.3)
    assert result.summaries["planner-receding"].deadline_met_share == 1
    assert result.summaries["planner"].deadline_met_share < 1
    assert result.summaries["planner-receding"].rho_floor_met_share == 1
    factors = [epoch_time_factor(0.3, 3, index) for index in range(result.submissions)]
    assert min(factors) >= 0.7 and max(factors) <= 1.3 and len(set(factors)) == len(factors)
    assert factors == [epoch_time_factor(0.3, 3, index) for index in range(result.submissions)]
    with pytest.raises(PlanningInputError, match="epoch-time error"):
        epoch_time_factor(1.5, 0, 0)
