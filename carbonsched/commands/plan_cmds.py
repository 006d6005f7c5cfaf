"""`carbonsched plan` (a job's plan against the live forecast) and `carbonsched backtest` (strategies over a trace)."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NoReturn, Optional

import typer

from carbonsched.commands.daemon_cmds import CONFIG_ENV
from carbonsched.planning import CostModel, Job, Plan, PlanningInputError, Slot
from carbonsched.planning import strategies
from carbonsched.planning.model import DEFAULT_RUNNING_POWER_W
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
    from carbonsched.report import ReportPathError, check_output_file

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


def parse_deadline(text: str, now: datetime) -> float:
    """Seconds from ``now``: ``24``/``24h`` hours, ``90m`` minutes, or an ISO time (no offset: UTC)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([hm]?)\s*", text)
    if match:
        return float(match.group(1)) * (60 if match.group(2) == "m" else 3600)
    cleaned = text.strip()
    try:
        at = datetime.fromisoformat(cleaned[:-1] + "+00:00" if cleaned.endswith("Z") else cleaned)
    except ValueError:
        raise ValueError(f"--deadline {text!r} is not hours (24, 24h), minutes (90m) or an ISO time") from None
    at = at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)
    return (at - now).total_seconds()


def provider_spec(provider: Optional[str], config_file: Optional[Path]) -> str:
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
    deadline: str = typer.Option("24h", "--deadline", help="Hours (24, 24h), minutes (90m) or an ISO time (UTC)."),
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
        deadline_s = parse_deadline(deadline, now)
    except ValueError as exc:
        fail(str(exc))
    job, cost = job_and_cost(epochs, epoch_minutes, deadline_s, rho_min, mean_rho, may_pause, budget_g, power_w,
                              idle_power_w, measured_epoch, measured_power)
    reading, slots, notes = forecast_slots(provider, config_file, now, job.deadline_s)
    result = strategies.planned(job, cost, slots)
    if result.note:
        notes.append(result.note)
    compared = {"now-full": strategies.now_full(job, cost, slots), "now-constant": strategies.now_constant(job, cost, slots),
                "shift": strategies.shift(job, cost, slots), "planner": result}
    carbon_g = {name: p.expected_carbon_g for name, p in compared.items()}
    finish = now + timedelta(seconds=result.finish_s)
    if fmt == "json":
        typer.echo(json.dumps({
            "provider": reading.provider, "now": now.isoformat(), "job": job_json(job, cost),
            "feasible": result.feasible, "notes": notes, "finish": finish.isoformat(), "mean_rho": result.mean_rho,
            "running_s": result.running_s, "paused_s": result.paused_s,
            "segments": [{"start": (now + timedelta(seconds=s.start_s)).isoformat(),
                          "end": (now + timedelta(seconds=s.end_s)).isoformat(), "rho": s.rho,
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
        from carbonsched.plan_plot import plot_plan

        plot_plan(result, slots, now, carbon_g, plot)
        typer.echo(f"plot written to {plot}", err=fmt == "json")


# ---- backtest ------------------------------------------------------------------------------------


def _steps_factory(policy_file: Optional[Path], trace_start: datetime):
    from carbonsched.policies import PolicyFileError, PolicySource, default_policy_path, policy_from_source
    from carbonsched.types import Signals

    path = policy_file or default_policy_path()
    try:
        source = PolicySource.from_path(path)
        policy_from_source(source)
    except PolicyFileError as exc:
        fail(str(exc).replace("\n", "; "))

    def make(offset_s: float):
        policy = policy_from_source(source)  # fresh hysteresis and dwell state per submission

        def rho_for(intensity_g_per_kwh: float, at_s: float) -> float:
            at = trace_start + timedelta(seconds=offset_s + at_s)
            return policy.decide(Signals(now=at, intensity_g_per_kwh=intensity_g_per_kwh, signal="average")).rho

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
    noise: float = typer.Option(0.0, "--noise", help="Relative forecast error (0.1: 10 %), seeded."),
    every_hours: float = typer.Option(2.0, "--every-hours", help="Submit the job every this many hours of the trace."),
    seed: int = typer.Option(0, "--seed", help="Seed of the forecast noise."),
    epoch_time_error: float = typer.Option(0.0, "--epoch-time-error", help="The true epoch time is the estimate "
                                           "times a seeded factor, uniform in [1-E, 1+E] per submission."),
    power_w: float = PowerW,
    idle_power_w: float = IdlePowerW,
    measured_epoch: list[str] = MeasuredEpochs,
    measured_power: list[str] = MeasuredPower,
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="Policy for the reactive 'steps' strategy "
                                                                      "(default: the daemon's built-in one)."),
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
    from carbonsched.planning.backtest import SLOWER_SHARE, run_backtest
    from carbonsched.planning.series import Series
    from carbonsched.providers.trace import TraceFormatError, load_trace

    _check_choices(fmt, plot)
    if not (math.isfinite(noise) and noise >= 0):
        fail(f"--noise must be a non-negative fraction, got {noise!r}")
    if not (math.isfinite(every_hours) and every_hours > 0):
        fail(f"--every-hours must be positive, got {every_hours!r}")
    if not (math.isfinite(epoch_time_error) and 0 <= epoch_time_error < 1):
        fail(f"--epoch-time-error must be a fraction in [0, 1), got {epoch_time_error!r}")
    job, cost = job_and_cost(epochs, epoch_minutes, deadline_hours * 3600, rho_min, mean_rho, may_pause, budget_g,
                              power_w, idle_power_w, measured_epoch, measured_power)
    try:
        loaded = load_trace(trace, time_column=time_column, intensity_column=intensity_column)
    except TraceFormatError as exc:
        fail(str(exc))
    series = Series(loaded.offsets_s, loaded.values_g_per_kwh, loaded.duration_s, loaded.timestamps[0].timestamp())
    try:
        result = run_backtest(series, job, cost, every_s=every_hours * 3600, noise=noise, seed=seed,
                              make_steps_rho=_steps_factory(policy_file, loaded.timestamps[0]),
                              epoch_time_error=epoch_time_error)
    except PlanningInputError as exc:
        fail(f"{trace}: {exc}")
    trace_info = {"path": str(trace), "samples": len(loaded.values_g_per_kwh), "step_s": loaded.step_s,
                  "start": loaded.timestamps[0].isoformat(), "duration_s": loaded.duration_s,
                  "time_column": loaded.time_column, "intensity_column": loaded.intensity_column,
                  "gaps": [{"start": g.start.isoformat(), "missing_s": g.missing_s} for g in loaded.gaps]}
    if fmt == "json":
        typer.echo(json.dumps({"trace": trace_info, "job": job_json(job, cost), "noise": noise, "seed": seed,
                               "epoch_time_error": epoch_time_error, "every_s": every_hours * 3600, **result.to_json()}, ensure_ascii=False, indent=2))
    else:
        slower_header = f"met if {SLOWER_SHARE:.0%} slower"
        lines = [f"trace {trace}: {len(loaded.values_g_per_kwh)} samples, step {loaded.step_s / 60:g} min, "
                 f"{loaded.gap_summary()}; {result.submissions} submissions every {every_hours:g} h",
                 job_line(job, cost) + f"; forecast noise {noise:.0%} (seed {seed})"
                 + (f"; true epoch time x U[{1 - epoch_time_error:g}, {1 + epoch_time_error:g}]"
                    if epoch_time_error else ""), "",
                 f"{'strategy':<17} {'carbon vs now-full':>18} {'p10':>7} {'p90':>7} {'deadline met':>12} "
                 f"{slower_header:>16} {'mean ρ':>7} {'floor met':>9} {'mean gCO2e':>11}"]
        for name, s in result.summaries.items():
            lines.append(f"{name:<17} {s.carbon_vs_now_full_mean:>18.1%} {s.carbon_vs_now_full_p10:>7.1%} "
                         f"{s.carbon_vs_now_full_p90:>7.1%} {s.deadline_met_share:>12.0%} "
                         f"{s.deadline_met_if_slower_share:>16.0%} {s.mean_rho:>7.3f} "
                         f"{s.rho_floor_met_share:>9.0%} {s.carbon_g_mean:>11.2f}")
        margin = result.to_json()["margin"]
        receding = result.receding_regret
        lines += ["", f"planner regret vs oracle: mean {result.regret_mean:.2%}, p90 {result.regret_p90:.2%}, "
                      f"max {result.regret_max:.2%}, total {result.regret_total:.2%}",
                  f"planner-receding regret vs oracle: mean {receding['mean']:.2%}, p90 {receding['p90']:.2%}, "
                  f"max {receding['max']:.2%}, total {receding['total']:.2%}; "
                  f"{result.receding_vs_planner:+.2%} carbon vs planner",
                  f"the {margin['share']:.0%} margin costs {result.margin_carbon_cost:.2%} carbon; deadline met "
                  f"{margin['deadline_met_share']:.0%} with it, {margin['deadline_met_share_without']:.0%} without; "
                  f"with epochs {SLOWER_SHARE:.0%} slower than estimated {margin['deadline_met_if_slower_share']:.0%} "
                  f"with it, {margin['deadline_met_if_slower_share_without']:.0%} without"]
        typer.echo("\n".join(lines))
    if plot is not None:
        from carbonsched.plan_plot import plot_backtest

        plot_backtest(result.summaries, f"{trace.name}: noise {noise:.0%}, {result.submissions} submissions", plot)
        typer.echo(f"plot written to {plot}", err=fmt == "json")


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
    app.command("backtest")(backtest)
