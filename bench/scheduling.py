"""Benchmark: the daemon's own closed loop against the oracle and the simple baselines, on three
generated grid shapes, with perfect and realistic forecasts and wrong epoch-time estimates.

The job: 12 epochs of 30 min at ρ 1, deadline 24 h after submission, ρ in [0.4, 1], mean ρ at least
0.7, may pause, 300 W running and 0 W paused; submitted every 2 h across each trace (metrics and
strategies are those of ``carbonsched backtest``, :mod:`carbonsched.planning.backtest`).

Traces (:mod:`carbonsched.planning.synthetic_grids`, 28 days, seed 3): ``flat`` (a nuclear/hydro
grid at 19-120 g), ``solar`` (deep midday dips, 150-600 g; its step changes from 30 to 15 min after
14 days, as real exports do) and ``windy`` (multi-day weather fronts, 40-350 g).

Forecasts: perfect; and "realistic": :data:`~carbonsched.planning.noise_model.UK_LIKE`, errors that
grow with lead (MAPE about 10 % at 1 h, 13 % at 1-6 h, 16 % at 6-24 h, 18 % at 24-48 h, the
published GB figures), correlated across slots (φ 0.8) and consistent between successive issues,
seeds 1 and 2. Epoch-time error: the true epoch time is the estimate times a seeded factor uniform
in [0.7, 1.3] per submission, under the realistic forecast.

``planner-receding`` is the daemon's decision (:func:`carbonsched.planning.receding.decide`) re-run
at every trace step: the floor guard, the held plan, the wider margin until an epoch has ended and,
in the realistic rows, the forecast priced at its expected value under the error model the daemon is
configured with (``[planning] forecast_error``). The "before" column runs the same closed loop with
the rule it replaced: the deadline guard on the work left at ρ 1 (``guard = "full"``) and the
forecast at face value. The oracle has a perfect forecast, the true epoch times and no margin.
"""

from __future__ import annotations

import time

from bench.common import RESULTS, cpu_with_children_s, run_section, table, write_section
from carbonsched.planning import CostModel, Job
from carbonsched.planning.backtest import BacktestResult, iid_forecasts, model_forecasts, run_backtest
from carbonsched.planning.noise_model import UK_LIKE
from carbonsched.planning.receding import PlanningSettings
from carbonsched.planning.series import Series
from carbonsched.planning.strategies import RECEDING
from carbonsched.planning.synthetic_grids import KINDS, generate, to_csv
from carbonsched.commands.plan_cmds import policy_rho_factory

JOB = Job(epochs=12, deadline_s=24 * 3600, rho_min=0.4, mean_rho=0.7, may_pause=True)
COST = CostModel(epoch_s_at_full=30 * 60, running_power_w=300.0, idle_power_w=0.0)
EVERY_S = 2 * 3600
DAYS = 28
TRACE_SEED = 3
NOISE_SEEDS = (1, 2)
EPOCH_TIME_ERROR = 0.3
BEFORE = PlanningSettings(guard="full")
STRATEGIES_RUN = ("now-constant", "steps", "planner", RECEDING, "planner-no-margin")


def generated_series(kind: str, days: int) -> Series:
    """The benchmark's trace of ``kind`` (written next to the results for ``carbonsched backtest --trace``)."""
    samples = generate(kind, days=days, seed=TRACE_SEED, step_change_at_s=days / 2 * 86400 if kind == "solar" else None)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"scheduling_{kind}_trace.csv").write_text(
        to_csv(samples, f"SYNTHETIC: carbonsched.planning.synthetic_grids.generate({kind!r}, days={days}, "
                        f"seed={TRACE_SEED})"))
    start = samples[0][0]
    offsets = tuple((at - start).total_seconds() for at, _ in samples)
    return Series(offsets, tuple(value for _, value in samples), offsets[-1] + (offsets[-1] - offsets[-2]),
                  start.timestamp())


def _pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%"


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def regret(results: list[BacktestResult], name: str) -> float:
    """Σ strategy / Σ oracle − 1, averaged over ``results`` (one per forecast seed)."""
    return mean(r.regrets[name]["total"] for r in results)


def _case(series: Series, forecast: str, seed: int, error: float, settings: PlanningSettings,
          names: tuple[str, ...] = STRATEGIES_RUN) -> BacktestResult:
    forecasts = (iid_forecasts(series, JOB.deadline_s, 0.0, seed) if forecast == "perfect"
                 else model_forecasts(series, JOB.deadline_s, UK_LIKE, seed))
    return run_backtest(series, JOB, COST, every_s=EVERY_S, noise=0.0, seed=seed,
                        make_steps_rho=policy_rho_factory(None, series), epoch_time_error=error, strategies_run=names,
                        forecasts=forecasts, settings=settings, workers=2)


def main(quick: bool = False) -> list[str]:
    started, cpu_started = time.perf_counter(), cpu_with_children_s()
    days = 4 if quick else DAYS
    seeds = NOISE_SEEDS[:1] if quick else NOISE_SEEDS
    cases = [("perfect", 0.0)] + [("realistic", 0.0)] + [("realistic", EPOCH_TIME_ERROR)]
    rows, rows_goal = [], []
    for kind in KINDS:
        series = generated_series(kind, days)
        for forecast, error in cases:
            case_seeds = (0,) if forecast == "perfect" else seeds
            aware = PlanningSettings(forecast_error=None if forecast == "perfect" else UK_LIKE)
            now = [_case(series, forecast, seed, error, aware) for seed in case_seeds]
            before = [_case(series, forecast, seed, error, BEFORE, ("now-constant", RECEDING)) for seed in case_seeds]
            label = f"{forecast}{f', epoch time ±{error:.0%}' if error else ''}"
            rows.append([kind, label,
                         _pct(mean(r.summaries["now-constant"].carbon_vs_now_full_mean for r in now)),
                         _pct(mean(r.summaries["steps"].carbon_vs_now_full_mean for r in now)),
                         _pct(mean(r.summaries["oracle"].carbon_vs_now_full_mean for r in now)),
                         _pct(regret(now, "planner"), 2), _pct(regret(before, RECEDING), 2),
                         _pct(regret(now, RECEDING), 2),
                         _pct(min(r.summaries[RECEDING].deadline_met_share for r in now)),
                         _pct(min(r.summaries[RECEDING].deadline_met_share for r in before))])
            rows_goal.append([kind, label,
                              _pct(mean(r.vs_now_constant[RECEDING]["total"] for r in now), 1),
                              _pct(max(r.vs_now_constant[RECEDING]["p90"] for r in now), 2),
                              _pct(max(r.vs_now_constant[RECEDING]["p90"] for r in before), 2),
                              _pct(max(r.vs_now_constant[RECEDING]["max"] for r in now), 1),
                              f"{mean(r.summaries[RECEDING].mean_rho for r in now):.3f}",
                              f"{mean(r.summaries[RECEDING].mean_rho for r in before):.3f}"])
    cpu_s, wall_s = cpu_with_children_s() - cpu_started, time.perf_counter() - started
    lines = ["## 9. Scheduling: the daemon's closed loop against the oracle and the baselines",
             "",
             f"From `bench/scheduling.py` ({'quick: 4 days, one seed' if quick else f'{DAYS} days, seeds 1 and 2 for the realistic forecast'}). "
             f"Job: {JOB.epochs:g} epochs x {COST.epoch_s_at_full / 60:g} min at ρ 1, deadline {JOB.deadline_s / 3600:g} h, "
             f"ρ in [{JOB.rho_min:g}, 1], mean ρ >= {JOB.rho_floor:g}, may pause, {COST.running_power_w:g} W running, "
             f"0 W paused; submitted every {EVERY_S / 3600:g} h. Traces generated by "
             "`carbonsched.planning.synthetic_grids` (flat 19-120 g, solar 150-600 g with its step changing from 30 to "
             "15 min half way, windy 40-350 g; written to `bench/results/scheduling_<kind>_trace.csv`). Realistic "
             "forecast: the `UK_LIKE` error model (MAPE ~10 % at 1 h, 13 % 1-6 h, 16 % 6-24 h, 18 % 24-48 h; "
             "correlated across slots and between issues). Regret: Σ strategy / Σ oracle − 1, the oracle having a "
             "perfect forecast, the true epoch times and no margin. `planner-receding` is the daemon's decision "
             "re-run at every trace step; 'before' is the same loop with the deadline guard on the work left at "
             "ρ 1 and the forecast at face value (the rule this version replaced).",
             "",
             "Carbon (share of running now at ρ 1) and regret against the oracle:",
             ""]
    lines += table(["trace", "forecast", "now-constant", "steps (default policy)", "oracle", "regret: planner",
                    "receding before", "receding now", "deadline met: now", "before"], rows)
    lines += ["", "Against running at the floor now without a daemon (`now-constant`), per submission:", ""]
    lines += table(["trace", "forecast", "receding vs now-constant (Σ)", "p90: now", "p90: before",
                    "worst submission", "mean ρ: now", "before"], rows_goal)
    lines += ["", f"Section time: {cpu_s:.0f} CPU-s (this process and its worker processes), {wall_s:.0f} s wall."]
    write_section("scheduling", lines)
    return lines


if __name__ == "__main__":
    run_section(main)
