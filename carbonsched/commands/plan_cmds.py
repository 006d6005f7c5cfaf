"""`carbonsched plan` (a job's plan against the live forecast) and `carbonsched backtest` (strategies over a trace)."""

from __future__ import annotations

import bisect
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer

from carbonsched.commands.daemon_cmds import CONFIG_ENV
from carbonsched.planning import CostModel, Job, Plan, PlanningInputError, Slot
from carbonsched.planning import strategies
from carbonsched.planning.receding import SWITCH_SHARE as SWITCH_SHARE_DEFAULT
from carbonsched.planning.series import Series
from carbonsched.planning.model import DEFAULT_RUNNING_POWER_W
from carbonsched.times import iso_utc, parse_deadline_s, parse_instant_s
from carbonsched.types import IntensityReading

EXIT_BAD_INPUT = 2
FORMATS = ("table", "json")

Epochs = typer.Option(12.0, "--epochs", help="Epochs of work left (may be fractional).")
EpochMinutes = typer.Option(30.0, "--epoch-minutes", help="Minutes one epoch takes at ρ 1.")
MeanRho = typer.Option(None, "--mean-rho", help="Floor on the mean ρ over the job (quality guard; default rho-min).")
RhoMin = typer.Option(0.4, "--rho-min", help="Lowest ρ any epoch may get.")
MayPause = typer.Option(False, "--may-pause", help="The job may pause between steps and resume later.")
BudgetG = typer.Option(None, "--budget-g", help="Carbon budget, gCO2e, for a job that may not pause: most ρ within it.")
PowerW = typer.Option(DEFAULT_RUNNING_POWER_W, "--power-w", help="Power while running, W.")
IdlePowerW = typer.Option(0.0, "--idle-power-w", help="Power while paused, W (0: the job releases its GPU).")
MeasuredEpochs = typer.Option([], "--measured-epoch", help="Measured epoch time as RHO:MINUTES (repeat; at least "
                                                           "two). Default: epoch-minutes x ρ.")
MeasuredPower = typer.Option([], "--measured-power", help="Measured running power as RHO:WATTS (repeat; at least "
                                                           "two). Default: --power-w at every ρ.")
Format = typer.Option("table", "--format", help="table | json")
PlotFile = typer.Option(None, "--plot", help="Also write a PNG plot to this file.")


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def parse_measured_epoch(text: str) -> tuple[float, float]:
    """``RHO:MINUTES`` → (ρ, seconds); ValueError naming the option otherwise."""
    rho, minutes = _rho_pair(text, "--measured-epoch", "RHO:MINUTES (e.g. 0.5:16)")
    return rho, minutes * 60


def parse_measured_power(text: str) -> tuple[float, float]:
    """``RHO:WATTS`` → (ρ, W); ValueError naming the option otherwise."""
    return _rho_pair(text, "--measured-power", "RHO:WATTS (e.g. 0.5:280)")


def _rho_pair(text: str, option: str, form: str) -> tuple[float, float]:
    rho_text, _, value_text = text.partition(":")
    try:
        return float(rho_text), float(value_text)
    except ValueError:
        raise ValueError(f"{option} {text!r} is not {form}") from None


def job_and_cost(epochs: float, epoch_minutes: float, deadline_s: float, rho_min: float, mean_rho: Optional[float],
                  may_pause: bool, budget_g: Optional[float], power_w: float, idle_power_w: float,
                  measured: list[str], measured_power: list[str]) -> tuple[Job, CostModel]:
    if budget_g is not None and may_pause:
        fail("--budget-g is for jobs that may not pause; drop --may-pause or --budget-g")
    try:
        points = tuple(parse_measured_epoch(text) for text in measured)
        power = tuple(parse_measured_power(text) for text in measured_power)
        job = Job(epochs=epochs, deadline_s=deadline_s, rho_min=rho_min, mean_rho=mean_rho, may_pause=may_pause,
                  carbon_budget_g=budget_g)
        cost = CostModel(epoch_s_at_full=epoch_minutes * 60, running_power_w=power_w, idle_power_w=idle_power_w,
                         epoch_time_points=points, power_points=power)
    except ValueError as exc:  # PlanningInputError included
        fail(str(exc))
    return job, cost


def _check_choices(fmt: str, plot: Optional[Path]) -> None:
    from carbonsched.reporting.energy_report import ReportPathError, check_output_file

    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if plot is not None:
        try:
            check_output_file(plot, "--plot")
        except ReportPathError as exc:
            fail(str(exc))


def job_line(job: Job, cost: CostModel) -> str:
    pause = "may pause" if job.may_pause else "no pausing"
    budget = f", budget {job.carbon_budget_g:g} gCO2e" if job.carbon_budget_g is not None else ""
    running = (f"{cost.running_power_w:g} W" if not cost.power_points
               else "W by ρ " + ", ".join(f"{rho:g}:{watts:g}" for rho, watts in cost.power_points))
    return (f"job: {job.epochs:g} epochs x {cost.epoch_s_at_full / 60:g} min at ρ 1, deadline {job.deadline_s / 3600:g} h, "
            f"ρ in [{job.rho_min:g}, 1], mean ρ >= {job.rho_floor:g}, {pause}{budget}; "
            f"{running} running, {cost.idle_power_w:g} W paused")


def job_json(job: Job, cost: CostModel) -> dict:
    return {"epochs": job.epochs, "epoch_s_at_full": cost.epoch_s_at_full,
            "measured_epoch_s": [[rho, seconds] for rho, seconds in cost.epoch_time_points],
            "measured_power_w": [[rho, watts] for rho, watts in cost.power_points], "deadline_s": job.deadline_s,
            "rho_min": job.rho_min, "mean_rho": job.rho_floor, "may_pause": job.may_pause,
            "carbon_budget_g": job.carbon_budget_g, "running_power_w": cost.running_power_w,
            "idle_power_w": cost.idle_power_w}


# ---- plan ----------------------------------------------------------------------------------------


def deadline_from_now_s(text: str, now: datetime) -> float:
    """``--deadline`` of ``plan`` and ``sbatch`` in seconds from ``now``: a duration (a plain number is
    hours) or an instant, as :func:`carbonsched.times.parse_deadline_s` reads them."""
    now_s = now.timestamp()
    return parse_deadline_s(text, "--deadline", now_s, bare_unit_s=3600.0) - now_s


def provider_spec(provider: Optional[str], config_file: Optional[Path]) -> str:
    """``provider``, else the provider of the daemon config ``config_file``, else the default spec."""
    from carbonsched.config import ConfigError, DaemonConfig, load_config
    from carbonsched.providers import DEFAULT_PROVIDER_SPEC

    if provider:
        return provider
    try:
        config = load_config(config_file) if config_file is not None else DaemonConfig()
    except ConfigError as exc:
        fail(str(exc))
    return config.provider or DEFAULT_PROVIDER_SPEC


def forecast_slots(provider: Optional[str], config_file: Optional[Path], now: datetime,
                   horizon_s: float) -> tuple[IntensityReading, list[Slot], list[str]]:
    """The provider's reading (``--provider``, else the daemon config's), its forecast as planning
    slots up to ``horizon_s`` seconds from ``now``, and notes on what the forecast does not cover.
    A bad spec exits 2, a provider with no answer exits 1."""
    from carbonsched.planning.forecast import slots_from_forecast
    from carbonsched.providers import ProviderSpecError, build_provider
    from carbonsched.types import ProviderError

    spec = provider_spec(provider, config_file)
    try:
        reading = build_provider(spec).current()
    except ProviderSpecError as exc:
        fail(str(exc))
    except ProviderError as exc:
        fail(f"no carbon intensity: {exc}", 1)
    slots = slots_from_forecast(now, reading.intensity_g_per_kwh, reading.forecast, horizon_s)
    notes = []
    if not reading.forecast:
        notes.append(f"{reading.provider} gives no forecast: the current value is assumed to hold to the deadline")
    elif slots[-1].end_s < horizon_s:
        notes.append(f"the forecast covers {slots[-1].end_s / 3600:.1f} h of the {horizon_s / 3600:g} h "
                     "to the deadline: planned within the forecast")
    return reading, slots, notes


def _slot_rows(plan: Plan, slots: list[Slot], now: datetime) -> list[str]:
    rows = [f"{'slot (UTC)':<17} {'gCO2e/kWh':>9} {'run min':>8}  ρ"]
    for slot in slots:
        pieces = [s for s in plan.segments if slot.start_s <= s.start_s < slot.end_s]
        run_min = sum(s.length_s for s in pieces) / 60
        rho = "/".join(f"{s.rho:.2f}" for s in pieces) if pieces else "pause"
        start = (now + timedelta(seconds=slot.start_s)).strftime("%Y-%m-%d %H:%M")
        rows.append(f"{start:<17} {slot.intensity_g_per_kwh:>9.1f} {run_min:>8.1f}  {rho}")
    return rows


def plan(
    epochs: float = Epochs,
    epoch_minutes: float = EpochMinutes,
    deadline: str = typer.Option("24h", "--deadline", help="A duration from now (24h, 90m, 1h30m, PT8H; a plain number is hours) or an ISO 8601 time (UTC unless an offset is given)."),
    mean_rho: Optional[float] = MeanRho,
    rho_min: float = RhoMin,
    may_pause: bool = MayPause,
    budget_g: Optional[float] = BudgetG,
    power_w: float = PowerW,
    idle_power_w: float = IdlePowerW,
    measured_epoch: list[str] = MeasuredEpochs,
    measured_power: list[str] = MeasuredPower,
    provider: Optional[str] = typer.Option(None, "--provider", help="Provider spec (default: the daemon config's)."),
    config_file: Optional[Path] = typer.Option(None, "--config", envvar=CONFIG_ENV,
                                               help="Daemon TOML config (its provider is used)."),
    fmt: str = Format,
    plot: Optional[Path] = PlotFile,
) -> None:
    """The plan for a job you describe against the provider's forecast: when to run, at which ρ, and the gCO2e."""
    from carbonsched.types import utcnow

    _check_choices(fmt, plot)
    now = utcnow()
    try:
        deadline_s = deadline_from_now_s(deadline, now)
    except ValueError as exc:
        fail(str(exc))
    job, cost = job_and_cost(epochs, epoch_minutes, deadline_s, rho_min, mean_rho, may_pause, budget_g, power_w,
                              idle_power_w, measured_epoch, measured_power)
    reading, slots, notes = forecast_slots(provider, config_file, now, job.deadline_s)
    result = strategies.planned(job, cost, slots)
    if result.note:
        notes.append(result.note)
    from carbonsched.reporting.plan_notes import slot_notes

    notes += slot_notes(result, slots, now)
    compared = {"now-full": strategies.now_full(job, cost, slots), "now-constant": strategies.now_constant(job, cost, slots),
                "shift": strategies.shift(job, cost, slots), "planner": result}
    carbon_g = {name: p.expected_carbon_g for name, p in compared.items()}
    finish = now + timedelta(seconds=result.finish_s)
    if fmt == "json":
        typer.echo(json.dumps({
            "provider": reading.provider, "now": iso_utc(now), "job": job_json(job, cost),
            "feasible": result.feasible, "notes": notes, "finish": iso_utc(finish), "mean_rho": result.mean_rho,
            "running_s": result.running_s, "paused_s": result.paused_s,
            "segments": [{"start": iso_utc(now + timedelta(seconds=s.start_s)),
                          "end": iso_utc(now + timedelta(seconds=s.end_s)), "rho": s.rho,
                          "intensity_g_per_kwh": s.intensity_g_per_kwh} for s in result.segments],
            "expected_carbon_g": carbon_g,
        }, ensure_ascii=False, indent=2))
    else:
        lines = [f"provider {reading.provider}, now {now.strftime('%Y-%m-%d %H:%M')} UTC", job_line(job, cost), ""]
        lines += _slot_rows(result, slots, now) + [""]
        lines.append(f"finish {finish.strftime('%Y-%m-%d %H:%M')} UTC, mean ρ {result.mean_rho:.3f}, running "
                     f"{result.running_s / 3600:.2f} h, paused {result.paused_s / 3600:.2f} h")
        base = carbon_g["now-full"]
        for name, grams in carbon_g.items():
            share = f" ({grams / base:.1%} of now-full)" if base > 0 else ""
            lines.append(f"expected {name:<13} {grams:10.2f} gCO2e{share}")
        lines += [f"note: {n}" for n in notes]
        typer.echo("\n".join(lines))
    if plot is not None:
        from carbonsched.reporting.plan_plot import plot_plan

        plot_plan(result, slots, now, carbon_g, plot)
        typer.echo(f"plot written to {plot}", err=fmt == "json")


# ---- backtest ------------------------------------------------------------------------------------


def policy_rho_factory(policy_file: Optional[Path], series: Series) -> Callable[[float], strategies.RhoForIntensity]:
    """For the backtest's reactive ``steps`` strategy: ``make(offset_s)`` gives, for the submission at
    trace offset ``offset_s``, a ρ function asking a fresh copy of the policy (``policy_file``, default
    the daemon's) with what a daemon would hand it at each epoch's start: the intensity, the forecast
    slots :func:`strategies.reactive` passes, and the trace's readings of the last ``HISTORY_DAYS``
    days as the history. Exits 2 when the policy file does not load."""
    from carbonsched.planning.forecast import DAY_S, HISTORY_DAYS
    from carbonsched.policies import PolicyFileError, PolicySource, default_policy_path, policy_from_source
    from carbonsched.types import ForecastPoint, Signals

    path = policy_file or default_policy_path()
    try:
        source = PolicySource.from_path(path)
        policy_from_source(source)
    except PolicyFileError as exc:
        fail(str(exc).replace("\n", "; "))

    def moment(offset_s: float) -> datetime:
        return datetime.fromtimestamp(series.origin_s + offset_s, timezone.utc)

    readings = [ForecastPoint(moment(at_s), value) for at_s, value in zip(series.offsets_s, series.values_g_per_kwh)]

    def make(offset_s: float) -> strategies.RhoForIntensity:
        policy = policy_from_source(source)  # fresh hysteresis and dwell state per submission

        def rho_for(intensity_g_per_kwh: float, at_s: float, forecast: Sequence[Slot]) -> float:
            now_s = offset_s + at_s
            first = bisect.bisect_left(series.offsets_s, now_s - HISTORY_DAYS * DAY_S)
            history = tuple(readings[first:bisect.bisect_right(series.offsets_s, now_s)])
            points = tuple(ForecastPoint(moment(offset_s + slot.start_s), slot.intensity_g_per_kwh)
                           for slot in forecast)
            return policy.decide(Signals(now=moment(now_s), intensity_g_per_kwh=intensity_g_per_kwh, signal="average",
                                         forecast=points, history=history)).rho

        return rho_for

    return make


def backtest(
    trace: Path = typer.Option(..., "--trace", help="Intensity trace CSV (column names as in common exports)."),
    time_column: Optional[str] = typer.Option(None, "--time-column", help="Name of the time column."),
    intensity_column: Optional[str] = typer.Option(None, "--intensity-column", help="Name of the intensity column."),
    epochs: float = Epochs,
    epoch_minutes: float = EpochMinutes,
    deadline_hours: float = typer.Option(24.0, "--deadline-hours", help="Hours from submission to the deadline."),
    mean_rho: Optional[float] = MeanRho,
    rho_min: float = RhoMin,
    may_pause: bool = MayPause,
    budget_g: Optional[float] = BudgetG,
    noise: float = typer.Option(0.0, "--noise", help="Relative forecast error (0.1: 10 %), seeded, independent per "
                                                     "slot and ask (see --noise-model for a realistic one)."),
    noise_model: Optional[Path] = typer.Option(None, "--noise-model", help="Forecast errors from a model file "
                                               "(`carbonsched forecast-error --write-model`): growing with lead "
                                               "time, correlated across slots and issues."),
    forecasts_file: Optional[Path] = typer.Option(None, "--forecasts", help="Forecasts as they were issued: one row "
                                                  "per (issue time, target time, value); at each planning moment the "
                                                  "newest issue at or before it."),
    issued_column: Optional[str] = typer.Option(None, "--issued-column", help="--forecasts: the issue-time column."),
    target_column: Optional[str] = typer.Option(None, "--target-column", help="--forecasts: the target-time column."),
    forecast_column: Optional[str] = typer.Option(None, "--forecast-column", help="--forecasts: the value column."),
    every_hours: float = typer.Option(2.0, "--every-hours", help="Submit the job every this many hours of the trace."),
    seed: int = typer.Option(0, "--seed", help="Seed of the forecast noise."),
    epoch_time_error: float = typer.Option(0.0, "--epoch-time-error", help="The true epoch time is the estimate "
                                           "times a seeded factor, uniform in [1-E, 1+E] per submission."),
    start: Optional[str] = typer.Option(None, "--start", help="Cut the trace from this instant (ISO 8601 or unix s)."),
    end: Optional[str] = typer.Option(None, "--end", help="Cut the trace at this instant (ISO 8601 or unix s)."),
    strategy_names: Optional[str] = typer.Option(None, "--strategies", help="Comma-separated strategies to run "
                                                 "(now-full and oracle always run); default: all."),
    guard: str = typer.Option("floor", "--guard", help="planner-receding's deadline guard: floor | full."),
    switch_share: float = typer.Option(SWITCH_SHARE_DEFAULT, "--switch-share", help="planner-receding: a fresh plan "
                                       "replaces the one followed only when this much cheaper."),
    receding_if_slower: bool = typer.Option(False, "--receding-if-slower", help="Also run planner-receding with "
                                            "every epoch 10 % slower, for its 'met if slower' column (doubles its "
                                            "cost)."),
    planner_error_model: Optional[Path] = typer.Option(None, "--planner-error-model", help="planner-receding "
                                                       "prices each forecast slot at its expected value under this "
                                                       "error model, as a daemon with [planning] forecast_error "
                                                       "does (default: the --noise-model file, if given)."),
    workers: int = typer.Option(0, "--workers", help="Processes to spread the submissions over (0: one per CPU)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="A progress bar on stderr "
                                            "(default: when stderr is a terminal)."),
    power_w: float = PowerW,
    idle_power_w: float = IdlePowerW,
    measured_epoch: list[str] = MeasuredEpochs,
    measured_power: list[str] = MeasuredPower,
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="Policy for the reactive 'steps' strategy "
                                                                      "(default: the daemon's built-in one); at each "
                                                                      "epoch it sees the trace's next 24 h as the "
                                                                      "forecast and its last 7 days as the history."),
    fmt: str = Format,
    plot: Optional[Path] = PlotFile,
    jobs_file: Optional[Path] = typer.Option(None, "--jobs", help="Instead of one job: a CSV of jobs (arrival_h, "
                                             "epochs, epoch_minutes, deadline_h[, mean_rho, rho_min, power_w]) "
                                             "sharing --gpus GPUs, planned one by one, jointly and by the LP."),
    gpus: int = typer.Option(1, "--gpus", help="With --jobs: the partition's GPUs (one per job)."),
) -> None:
    """Replay a trace, submit the job every K hours, and compare now-full, now-constant, shift, steps, planner,
    planner-receding (re-planned every slot, as the daemon does) and oracle; with --jobs, a set of jobs sharing GPUs."""
    if jobs_file is not None:
        from carbonsched.commands.jobset_cmd import backtest_jobs

        _check_choices(fmt, None)
        if plot is not None:
            fail("--plot is for the single-job backtest")
        backtest_jobs(trace, jobs_file, gpus, fmt, time_column, intensity_column)
        return
    from carbonsched.planning.backtest import (
        SLOWER_SHARE, iid_forecasts, model_forecasts, run_backtest, vintage_forecasts,
    )
    from carbonsched.planning.noise_model import NoiseModelError, load_noise_model
    from carbonsched.planning.receding import GUARDS, PlanningSettings
    from carbonsched.planning.vintages import VintagesFormatError, load_vintages
    from carbonsched.providers.trace import TraceFormatError, load_trace

    _check_choices(fmt, plot)
    if not (math.isfinite(noise) and noise >= 0):
        fail(f"--noise must be a non-negative fraction, got {noise!r}")
    if sum(x is not None for x in (noise_model, forecasts_file)) + (noise > 0) > 1:
        fail("--noise, --noise-model and --forecasts are alternatives: give one")
    if not (math.isfinite(every_hours) and every_hours > 0):
        fail(f"--every-hours must be positive, got {every_hours!r}")
    if not (math.isfinite(epoch_time_error) and 0 <= epoch_time_error < 1):
        fail(f"--epoch-time-error must be a fraction in [0, 1), got {epoch_time_error!r}")
    if guard not in GUARDS:
        fail(f"--guard must be one of {', '.join(GUARDS)}, got {guard!r}")
    if not (math.isfinite(switch_share) and 0 <= switch_share < 1):
        fail(f"--switch-share must be a fraction in [0, 1), got {switch_share!r}")
    if workers < 0:
        fail(f"--workers must be 0 (one per CPU) or a positive count, got {workers}")
    names = strategies.STRATEGIES
    if strategy_names is not None:
        names = tuple(name.strip() for name in strategy_names.split(",") if name.strip())
        unknown = [name for name in names if name not in strategies.STRATEGIES]
        if unknown or not names:
            fail(f"--strategies: unknown strategy {unknown[0] if unknown else strategy_names!r}; "
                  f"known: {', '.join(strategies.STRATEGIES)}")
    window = []
    for option, text in (("--start", start), ("--end", end)):
        try:
            window.append(None if text is None else parse_instant_s(text, option))
        except ValueError as exc:
            fail(str(exc))
    job, cost = job_and_cost(epochs, epoch_minutes, deadline_hours * 3600, rho_min, mean_rho, may_pause, budget_g,
                              power_w, idle_power_w, measured_epoch, measured_power)
    try:
        loaded = load_trace(trace, time_column=time_column, intensity_column=intensity_column)
    except TraceFormatError as exc:
        fail(str(exc))
    series = Series(loaded.offsets_s, loaded.values_g_per_kwh, loaded.duration_s, loaded.timestamps[0].timestamp())
    if window != [None, None]:
        start_s, end_s = (None if at is None else at - series.origin_s for at in window)
        try:
            series = series.window(start_s, end_s)
        except ValueError as exc:
            fail(f"{trace}: --start/--end: {exc}")
    forecast_kind = f"forecast noise {noise:.0%} (seed {seed}), independent per slot"
    try:
        if noise_model is not None:
            model = load_noise_model(noise_model)
            forecasts = model_forecasts(series, job.deadline_s, model, seed)
            forecast_kind = f"forecast errors from {noise_model} (seed {seed})"
        elif forecasts_file is not None:
            vintages = load_vintages(forecasts_file, issued_column=issued_column, target_column=target_column,
                                     forecast_column=forecast_column)
            forecasts = vintage_forecasts(series, job.deadline_s, vintages)
            forecast_kind = f"forecasts as issued in {forecasts_file} ({len(vintages.issued_s)} issues)"
        else:
            forecasts = iid_forecasts(series, job.deadline_s, noise, seed)
        error_path = planner_error_model or noise_model
        settings = PlanningSettings(guard=guard, switch_share=switch_share,
                                    forecast_error=None if error_path is None else load_noise_model(error_path))
    except (NoiseModelError, VintagesFormatError) as exc:
        fail(str(exc))
    bar = _ProgressBar(enabled=sys.stderr.isatty() if progress is None else progress)
    try:
        result = run_backtest(series, job, cost, every_s=every_hours * 3600, noise=noise, seed=seed,
                              make_steps_rho=policy_rho_factory(policy_file, series),
                              epoch_time_error=epoch_time_error, strategies_run=names, forecasts=forecasts,
                              workers=workers or (os.cpu_count() or 1), progress=bar.update,
                              settings=settings, receding_if_slower=receding_if_slower)
    except PlanningInputError as exc:
        fail(f"{trace}: {exc}")
    finally:
        bar.close()
    steps = series.step_sizes_s()
    trace_info = {"path": str(trace), "samples": len(series.values_g_per_kwh), "step_s": loaded.step_s,
                  "step_sizes_s": list(steps), "step_changes": series.step_changes(),
                  "start": iso_utc(series.origin_s + series.offsets_s[0]),
                  "duration_s": series.end_s - series.offsets_s[0],
                  "time_column": loaded.time_column, "intensity_column": loaded.intensity_column,
                  "gaps": [{"start": iso_utc(g.start), "missing_s": g.missing_s} for g in loaded.gaps]}
    if fmt == "json":
        typer.echo(json.dumps({"trace": trace_info, "job": job_json(job, cost), "noise": noise, "seed": seed,
                               "forecasts": forecast_kind, "guard": guard, "switch_share": switch_share,
                               "planner_error_model": None if settings.forecast_error is None else
                               str(planner_error_model or noise_model),
                               "epoch_time_error": epoch_time_error, "every_s": every_hours * 3600,
                               **result.to_json()}, ensure_ascii=False, indent=2))
    else:
        typer.echo("\n".join(_backtest_lines(trace, loaded, series, result, job, cost, every_hours, forecast_kind,
                                               epoch_time_error, SLOWER_SHARE)))
    if plot is not None:
        from carbonsched.reporting.plan_plot import plot_backtest

        plot_backtest(result.summaries, f"{trace.name}: {result.submissions} submissions", plot)
        typer.echo(f"plot written to {plot}", err=fmt == "json")


class _ProgressBar:
    """Submissions done, on stderr, redrawn at most every 1 %."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.shown = -1
        self.started = time.monotonic()

    def update(self, done: int, total: int) -> None:
        percent = done * 100 // total
        if not self.enabled or percent == self.shown:
            return
        self.shown = percent
        filled = percent * 30 // 100
        elapsed = time.monotonic() - self.started
        sys.stderr.write(f"\rbacktest [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} submissions, "
                         f"{elapsed:.0f} s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.shown >= 0:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _backtest_lines(trace: Path, loaded: Any, series: Any, result: Any, job: Any, cost: Any, every_hours: float,
                    forecast_kind: str, epoch_time_error: float, slower_share: float) -> list[str]:
    steps = ", ".join(f"{step / 60:g} min" for step in series.step_sizes_s())
    changes = series.step_changes()
    change_text = ""
    if changes:
        first = changes[0]
        at = datetime.fromtimestamp(series.origin_s + first["at_s"], timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
        change_text = (f"; the step changes {len(changes)} time{'s' if len(changes) > 1 else ''}, first at {at} "
                       f"({first['from_s'] / 60:g} -> {first['to_s'] / 60:g} min)")
    lines = [f"trace {trace}: {len(series.values_g_per_kwh)} samples, steps {steps}{change_text}; "
             f"{loaded.gap_summary()}; {result.submissions} submissions every {every_hours:g} h",
             job_line(job, cost) + f"; {forecast_kind}"
             + (f"; true epoch time x U[{1 - epoch_time_error:g}, {1 + epoch_time_error:g}]" if epoch_time_error else ""),
             "",
             f"{'strategy':<17} {'carbon vs now-full':>18} {'p10':>7} {'p90':>7} {'regret':>7} {'deadline met':>12} "
             f"{'met if ' + format(slower_share, '.0%') + ' slower':>16} {'mean ρ':>7} {'floor met':>9} "
             f"{'mean gCO2e':>11}"]
    for name, s in result.summaries.items():
        regret = result.regrets.get(name, {}).get("total")
        lines.append(f"{name:<17} {s.carbon_vs_now_full_mean:>18.1%} {s.carbon_vs_now_full_p10:>7.1%} "
                     f"{s.carbon_vs_now_full_p90:>7.1%} {'' if regret is None else format(regret, '+.1%'):>7} "
                     f"{s.deadline_met_share:>12.0%} {_share(s.deadline_met_if_slower_share):>16} {s.mean_rho:>7.3f} "
                     f"{s.rho_floor_met_share:>9.0%} {s.carbon_g_mean:>11.2f}")
    lines += ["", "regret: Σ strategy / Σ oracle − 1 (the oracle: perfect forecast, true epoch times, no margin)"]
    if result.regret_mean is not None:
        lines.append(f"planner regret vs oracle: mean {result.regret_mean:.2%}, p90 {result.regret_p90:.2%}, "
                     f"max {result.regret_max:.2%}, total {result.regret_total:.2%}")
    if result.receding_at:
        receding = result.receding_regret
        line = (f"planner-receding regret vs oracle: mean {receding['mean']:.2%}, p90 {receding['p90']:.2%}, "
                f"max {receding['max']:.2%}, total {receding['total']:.2%}")
        if result.receding_vs_planner is not None:
            line += f"; {result.receding_vs_planner:+.2%} carbon vs planner"
        against = result.vs_now_constant.get("planner-receding")
        if against:
            line += f"; vs now-constant per submission: mean {against['mean']:+.2%}, p90 {against['p90']:+.2%}"
        lines.append(line)
    if result.margin_carbon_cost is not None:
        margin = result.to_json()["margin"]
        lines.append(f"the {margin['share']:.0%} margin costs {result.margin_carbon_cost:.2%} carbon; deadline met "
                     f"{margin['deadline_met_share']:.0%} with it, {margin['deadline_met_share_without']:.0%} without; "
                     f"with epochs {slower_share:.0%} slower than estimated {margin['deadline_met_if_slower_share']:.0%} "
                     f"with it, {margin['deadline_met_if_slower_share_without']:.0%} without")
    return lines


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
    app.command("backtest")(backtest)
