"""Replay a long intensity trace, submit the same job every K hours, and compare strategies.

Pure functions: the caller reads the trace and the steps policy. For each submission at trace
offset ``t0`` (every ``every_s`` while the deadline still lies inside the trace):

- the *truth* is the trace from ``t0`` on, as slots at the trace's own step(s), and the true epoch
  time: the estimate times :func:`epoch_time_factor` (1 unless ``epoch_time_error`` is given);
- the *forecast* comes from a :data:`ForecastSource`: :func:`iid_forecasts` (every slot after the
  current one times ``1 + noise · N(0, 1)``, a fresh draw at every ask, from the submission's own
  stream :func:`carbonsched.planning.forecast_noise.seeded_rng` ``(seed, submission index)``),
  :func:`model_forecasts` (errors that grow with lead and agree between issues,
  :mod:`carbonsched.planning.noise_model`) or :func:`vintage_forecasts` (forecasts as they were
  issued, :mod:`carbonsched.planning.vintages`); the current slot is always measured, so exact;
- ``shift``, ``planner`` and ``planner-no-margin`` plan once, at submission, on the forecast and the
  estimated epoch time; ``oracle`` (the optimum every regret is measured against) on the truth and
  the true epoch time, with no margin; ``steps`` reacts to the truth epoch by epoch; ``now-full``
  and ``now-constant`` just run; every plan is then executed unchanged on the true epoch time
  (:func:`~carbonsched.planning.closed_loop.execute_open_loop`) and its carbon counted on the truth
  (running plus idle power while paused);
- ``planner-receding`` re-plans at every slot boundary with the daemon's decision
  (:func:`~carbonsched.planning.closed_loop.execute_receding`, with the daemon's
  :class:`~carbonsched.planning.receding.PlanningSettings`) on the forecast of that moment (its
  first re-plan sees ``planner``'s forecast).

Per strategy: carbon relative to ``now-full`` per submission (mean, 10th and 90th percentile), the
share of submissions that finished by the deadline and that met the mean-ρ floor, the mean ρ, and
its regret against the oracle and against ``now-constant`` (per submission: mean, p90, max; total:
Σ strategy / Σ reference − 1). Forecast error changes where a plan runs, never how long, so an
executed plan finishes when planned whatever the noise; what threatens a deadline is an epoch that
takes longer than estimated. So each strategy also reports the share that would still finish by
the deadline if every epoch took ``SLOWER_SHARE`` longer and the missing work ran right after the
plan's end (no re-plan; for ``planner-receding`` a second receding run with epochs that much
slower). The margin's cost: Σ planner / Σ planner-no-margin − 1.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import random
from dataclasses import dataclass
from typing import Callable, Sequence

from carbonsched.planning.forecast_noise import perturbed, seeded_rng
from carbonsched.planning import strategies
from carbonsched.planning.closed_loop import Execution, ForecastAt, execute_open_loop, execute_receding
from carbonsched.planning.noise_model import LeadNoiseModel
from carbonsched.planning.margin import MARGIN_SHARE
from carbonsched.planning.model import CostModel, Job, PlanningInputError, Slot
from carbonsched.planning.planner import Plan, clip_slots
from carbonsched.planning.receding import PlanningSettings
from carbonsched.planning.series import Series
from carbonsched.planning.strategies import RECEDING
from carbonsched.planning.vintages import Vintages, vintage_forecast_at

SLOWER_SHARE = 0.1


@dataclass(frozen=True)
class Outcome:
    """One strategy on one submission, executed on the truth."""

    carbon_g: float
    met_deadline: bool
    met_floor: bool
    mean_rho: float
    met_deadline_if_slower: bool | None  # epochs SLOWER_SHARE longer than estimated (None: not simulated)


@dataclass(frozen=True)
class StrategySummary:
    carbon_g_mean: float
    carbon_vs_now_full_mean: float
    carbon_vs_now_full_p10: float
    carbon_vs_now_full_p90: float
    deadline_met_share: float
    deadline_met_if_slower_share: float | None
    rho_floor_met_share: float
    mean_rho: float


@dataclass(frozen=True)
class BacktestResult:
    submissions: int
    submitted_at_s: tuple[float, ...]
    outcomes: dict[str, tuple[Outcome, ...]]
    summaries: dict[str, StrategySummary]
    # The planner's regret against the oracle (None when the planner did not run).
    regret_mean: float | None
    regret_p90: float | None
    regret_max: float | None
    regret_total: float | None  # Σ planner / Σ oracle − 1
    margin_carbon_cost: float | None  # Σ planner / Σ planner-no-margin − 1 (None unless both ran)
    receding_at: tuple[int, ...]  # the submissions planner-receding was simulated on
    receding_regret: dict[str, float]  # planner-receding vs oracle: mean, p90, max, total
    receding_vs_planner: float | None  # Σ planner-receding / Σ planner − 1 over those submissions
    # Every strategy against the oracle and against now-constant, per submission: mean, p90, max, total.
    regrets: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    vs_now_constant: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        document: dict = {
            "submissions": self.submissions,
            "strategies": {name: vars(summary) for name, summary in self.summaries.items()},
            "regret_vs_oracle": self.regrets,
            "vs_now_constant": self.vs_now_constant,
        }
        if self.regret_mean is not None:
            document["planner_regret_vs_oracle"] = {"mean": self.regret_mean, "p90": self.regret_p90,
                                                    "max": self.regret_max, "total": self.regret_total}
        if self.margin_carbon_cost is not None:
            with_margin, without = self.summaries["planner"], self.summaries["planner-no-margin"]
            document["margin"] = {
                "share": MARGIN_SHARE, "slower_share": SLOWER_SHARE, "carbon_cost": self.margin_carbon_cost,
                "deadline_met_share": with_margin.deadline_met_share,
                "deadline_met_share_without": without.deadline_met_share,
                "deadline_met_if_slower_share": with_margin.deadline_met_if_slower_share,
                "deadline_met_if_slower_share_without": without.deadline_met_if_slower_share}
        if self.receding_at:
            document["planner_receding"] = {"submissions": len(self.receding_at),
                                            "regret_vs_oracle": self.receding_regret,
                                            "carbon_vs_planner": self.receding_vs_planner}
        return document


def noisy_forecast(truth: Sequence[Slot], noise: float, rng: random.Random) -> list[Slot]:
    """``truth`` with every slot after the first scaled by ``1 + noise · N(0, 1)``, clipped at 0."""
    if noise < 0 or not math.isfinite(noise):
        raise PlanningInputError(f"noise must be a non-negative fraction, got {noise!r}")
    if noise == 0:
        return list(truth)
    return [truth[0]] + [Slot(slot.start_s, slot.end_s, perturbed(slot.intensity_g_per_kwh, noise, rng))
                         for slot in truth[1:]]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def true_cost_model(cost: CostModel, factor: float) -> CostModel:
    """``cost`` with every epoch ``factor`` times as long (power unchanged)."""
    return dataclasses.replace(cost, epoch_s_at_full=cost.epoch_s_at_full * factor,
                               epoch_time_points=tuple((rho, s * factor) for rho, s in cost.epoch_time_points))


def epoch_time_factor(error: float, seed: int, index: int) -> float:
    """The true over the estimated epoch time of submission ``index``: uniform in [1 − error, 1 + error], seeded."""
    if error < 0 or not math.isfinite(error) or error >= 1:
        raise PlanningInputError(f"epoch-time error must be a fraction in [0, 1), got {error!r}")
    if error == 0:
        return 1.0
    return random.Random(f"epoch-time {seed} {index}").uniform(1 - error, 1 + error)


ForecastSource = Callable[[int, float], ForecastAt]
"""(submission index, submission offset s) → the :data:`ForecastAt` that submission's planners see."""


def iid_forecasts(series: Series, deadline_s: float, noise: float, seed: int) -> ForecastSource:
    """Every slot after the current one times ``1 + noise · N(0, 1)``, a fresh draw at every ask, from
    the submission's own stream (see the module docstring)."""
    if noise < 0 or not math.isfinite(noise):
        raise PlanningInputError(f"noise must be a non-negative fraction, got {noise!r}")
    return lambda index, start_s: _receding_forecast(series, start_s, deadline_s, noise, seeded_rng(seed, index))


def model_forecasts(series: Series, deadline_s: float, model: LeadNoiseModel, seed: int) -> ForecastSource:
    """Errors that grow with lead and correlate across slots and issues
    (:class:`~carbonsched.planning.noise_model.LeadNoiseModel`); one forecast per issue instant,
    the same for every submission that asks at that instant."""
    return lambda index, start_s: model.forecast_at(series, start_s, deadline_s, seed, 0)


def vintage_forecasts(series: Series, deadline_s: float, vintages: Vintages) -> ForecastSource:
    """The newest forecast issued at or before each planning moment
    (:func:`~carbonsched.planning.vintages.vintage_forecast_at`)."""
    return lambda index, start_s: vintage_forecast_at(vintages, series, start_s, deadline_s)


@dataclass(frozen=True)
class _Setup:
    series: Series
    job: Job
    cost: CostModel
    names: tuple[str, ...]
    forecasts: ForecastSource
    make_steps_rho: Callable[[float], strategies.RhoForIntensity]
    epoch_time_error: float
    seed: int
    receding_every: int
    interval_s: float
    settings: PlanningSettings
    receding_if_slower: bool


def run_backtest(series: Series, job: Job, cost: CostModel, *, every_s: float, noise: float, seed: int,
                 make_steps_rho: Callable[[float], strategies.RhoForIntensity], epoch_time_error: float = 0.0,
                 receding_every: int = 1, strategies_run: Sequence[str] = strategies.STRATEGIES,
                 forecasts: ForecastSource | None = None, workers: int = 1,
                 progress: Callable[[int, int], None] | None = None,
                 settings: PlanningSettings = PlanningSettings(), receding_if_slower: bool = True) -> BacktestResult:
    """Submit ``job`` at offsets 0, every_s, ... of ``series`` and run every strategy (see module doc).

    ``make_steps_rho(t0)`` returns a fresh reactive ρ function for the submission at offset ``t0``.
    ``epoch_time_error``: the true epoch time is the estimate times :func:`epoch_time_factor`.
    ``receding_every``: simulate ``planner-receding`` on every n-th submission only.
    ``strategies_run``: the strategies to simulate; ``now-full`` (the baseline) and ``oracle`` (the
    optimum regrets are measured against) always run. ``forecasts``: what the planners see
    (default :func:`iid_forecasts` with ``noise``). ``workers`` > 1 splits the submissions over that
    many forked processes (results are identical to one). ``progress(done, total)`` is called as
    submissions finish. ``settings``: ``planner-receding``'s, as the daemon's ``[planning]``
    (:func:`~carbonsched.planning.receding.decide`). ``receding_if_slower``:
    run ``planner-receding`` a second time with epochs ``SLOWER_SHARE`` slower (doubles its cost);
    without it its "met if slower" share is None.
    """
    if not (math.isfinite(every_s) and every_s > 0):
        raise PlanningInputError(f"the submission interval must be positive seconds, got {every_s!r}")
    if receding_every < 1:
        raise PlanningInputError(f"receding_every must be a positive count, got {receding_every!r}")
    unknown = [name for name in strategies_run if name not in strategies.STRATEGIES]
    if unknown:
        raise PlanningInputError(f"unknown strategy {unknown[0]!r}; known: {', '.join(strategies.STRATEGIES)}")
    epoch_time_factor(epoch_time_error, seed, 0)
    starts: list[float] = []
    t0 = series.offsets_s[0]
    while t0 + job.deadline_s <= series.end_s + 1e-9:
        starts.append(t0)
        t0 += every_s
    if not starts:
        span_h = (series.end_s - series.offsets_s[0]) / 3600
        raise PlanningInputError(f"the trace covers {span_h:g} h, less than the {job.deadline_s / 3600:g} h deadline: "
                                 "no submission fits")
    wanted = {*strategies_run, "now-full", "oracle"}
    names = tuple(name for name in strategies.STRATEGIES if name in wanted)
    setup = _Setup(series, job, cost, names, forecasts or iid_forecasts(series, job.deadline_s, noise, seed),
                   make_steps_rho, epoch_time_error, seed, receding_every, max(series.step_sizes_s()), settings,
                   receding_if_slower)
    per_submission = _run_all(setup, starts, workers, progress)
    outcomes = {name: tuple(results[name] for results in per_submission if name in results) for name in names}
    receding_at = tuple(i for i, results in enumerate(per_submission) if RECEDING in results)
    return _summarise(tuple(starts), outcomes, receding_at)


_SETUP: _Setup | None = None  # what forked workers simulate (inherited at fork, never pickled)


def _run_all(setup: _Setup, starts: Sequence[float], workers: int,
             progress: Callable[[int, int], None] | None) -> list[dict[str, Outcome]]:
    global _SETUP
    indexed = list(enumerate(starts))
    if workers <= 1 or len(starts) < 2 * workers or "fork" not in multiprocessing.get_all_start_methods():
        results = []
        for index, start_s in indexed:
            results.append(_simulate(setup, index, start_s))
            if progress:
                progress(index + 1, len(starts))
        return results
    _SETUP = setup
    try:
        chunks = [indexed[i::workers * 8] for i in range(workers * 8)]
        results: dict[int, dict[str, Outcome]] = {}
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for chunk_results in pool.imap_unordered(_simulate_chunk, chunks):
                results.update(chunk_results)
                if progress:
                    progress(len(results), len(starts))
        return [results[index] for index, _ in indexed]
    finally:
        _SETUP = None


def _simulate_chunk(chunk: Sequence[tuple[int, float]]) -> dict[int, dict[str, Outcome]]:
    assert _SETUP is not None
    return {index: _simulate(_SETUP, index, start_s) for index, start_s in chunk}


def _simulate(setup: _Setup, index: int, start_s: float) -> dict[str, Outcome]:
    """Every strategy of ``setup`` on the submission at ``start_s``, executed on the truth."""
    job, cost, names = setup.job, setup.cost, setup.names
    true_cost = true_cost_model(cost, epoch_time_factor(setup.epoch_time_error, setup.seed, index))
    # Long enough for every strategy, including a run from submission at the slowest ρ past the deadline.
    longest_s = max(job.deadline_s, job.epochs * max(c.epoch_s(rho) for rho in (job.rho_min, job.rho_floor, 1.0)
                                                     for c in (cost, true_cost)))
    truth = setup.series.slots(start_s, start_s + 2 * longest_s)
    window = clip_slots(truth, job.deadline_s)
    planned_ahead = {"shift", "planner", "planner-no-margin"} & set(names)
    forecast = setup.forecasts(index, start_s)(0.0, job.deadline_s) if planned_ahead else window
    builders: dict[str, Callable[[], Plan]] = {
        "now-full": lambda: strategies.now_full(job, cost, truth),
        "now-constant": lambda: strategies.now_constant(job, cost, truth),
        "shift": lambda: strategies.shift(job, cost, forecast),
        "steps": lambda: strategies.reactive(job, true_cost, truth, setup.make_steps_rho(start_s)),
        "planner": lambda: strategies.planned(job, cost, forecast),
        "planner-no-margin": lambda: strategies.planned(job, cost, forecast, margin_share=0.0),
        "oracle": lambda: strategies.planned(job, true_cost, window, margin_share=0.0),
    }
    results: dict[str, Outcome] = {}
    for name in names:
        if name == RECEDING:
            continue
        plan = builders[name]()
        executed = execute_open_loop(job, true_cost, plan.segments, truth)
        results[name] = _outcome(job, executed, strategies.met_deadline(plan, slower_share=SLOWER_SHARE))
    if RECEDING in names and index % setup.receding_every == 0:
        executed = execute_receding(job, cost.epoch_s_at_full, true_cost, truth, setup.forecasts(index, start_s),
                                    interval_s=setup.interval_s, settings=setup.settings)
        met_if_slower = None
        if setup.receding_if_slower:
            slower = execute_receding(job, cost.epoch_s_at_full, true_cost_model(true_cost, 1 + SLOWER_SHARE), truth,
                                      setup.forecasts(index, start_s), interval_s=setup.interval_s,
                                      settings=setup.settings)
            met_if_slower = strategies.finishes_by(slower.finish_s, job.deadline_s)
        results[RECEDING] = _outcome(job, executed, met_if_slower)
    return results


def _outcome(job: Job, executed: Execution, met_if_slower: bool | None) -> Outcome:
    return Outcome(executed.carbon_g, strategies.finishes_by(executed.finish_s, job.deadline_s),
                   executed.mean_rho >= job.rho_floor - 1e-9, executed.mean_rho, met_if_slower)


def _receding_forecast(series: Series, start_s: float, deadline_s: float, noise: float,
                       rng: random.Random) -> ForecastAt:
    """What ``planner-receding`` sees at each re-plan: the truth from then to the deadline, the
    current slot exact and every later one with a fresh draw of the noise (see the module docstring)."""

    def forecast_at(now_s: float, horizon_s: float) -> list[Slot]:
        end_s = min(start_s + deadline_s, start_s + now_s + horizon_s)
        return noisy_forecast(series.slots(start_s + now_s, max(end_s, start_s + now_s + 1e-3)), noise, rng)

    return forecast_at


def _regrets(carbon: Sequence[float], oracle: Sequence[float]) -> dict[str, float]:
    """(strategy − oracle) / oracle per submission: mean, p90, max; total = Σ strategy / Σ oracle − 1."""
    regrets = [(c - o) / o if o > 0 else 0.0 for c, o in zip(carbon, oracle)]
    return {"mean": sum(regrets) / len(regrets), "p90": percentile(regrets, 90), "max": max(regrets),
            "total": sum(carbon) / sum(oracle) - 1 if sum(oracle) else 0.0}


def _summarise(starts: tuple[float, ...], outcomes: dict[str, tuple[Outcome, ...]],
               receding_at: tuple[int, ...]) -> BacktestResult:
    def subset(name: str, values: Sequence[float]) -> list[float]:
        """``values`` (one per submission) on the submissions ``name`` ran on."""
        return [values[i] for i in receding_at] if name == RECEDING else list(values)

    carbon = {name: [o.carbon_g for o in results] for name, results in outcomes.items()}
    summaries: dict[str, StrategySummary] = {}
    for name, results in outcomes.items():
        baseline = subset(name, carbon["now-full"])
        ratios = [o.carbon_g / b if b > 0 else 1.0 for o, b in zip(results, baseline)]
        count = len(results)
        summaries[name] = StrategySummary(
            carbon_g_mean=sum(o.carbon_g for o in results) / count,
            carbon_vs_now_full_mean=sum(ratios) / count,
            carbon_vs_now_full_p10=percentile(ratios, 10),
            carbon_vs_now_full_p90=percentile(ratios, 90),
            deadline_met_share=sum(o.met_deadline for o in results) / count,
            deadline_met_if_slower_share=(None if any(o.met_deadline_if_slower is None for o in results)
                                          else sum(bool(o.met_deadline_if_slower) for o in results) / count),
            rho_floor_met_share=sum(o.met_floor for o in results) / count,
            mean_rho=sum(o.mean_rho for o in results) / count,
        )
    regrets = {name: _regrets(values, subset(name, carbon["oracle"]))
               for name, values in carbon.items() if name != "oracle" and values}
    against_constant = ({name: _regrets(values, subset(name, carbon["now-constant"]))
                         for name, values in carbon.items() if name != "now-constant" and values}
                        if "now-constant" in carbon else {})
    planner = regrets.get("planner")
    margin_cost = None
    if "planner" in carbon and "planner-no-margin" in carbon and sum(carbon["planner-no-margin"]):
        margin_cost = sum(carbon["planner"]) / sum(carbon["planner-no-margin"]) - 1
    receding_vs_planner = None
    if RECEDING in carbon and "planner" in carbon and receding_at:
        receding_vs_planner = sum(carbon[RECEDING]) / sum(subset(RECEDING, carbon["planner"])) - 1
    return BacktestResult(
        len(starts), starts, outcomes, summaries,
        planner["mean"] if planner else None, planner["p90"] if planner else None,
        planner["max"] if planner else None, planner["total"] if planner else None, margin_cost, receding_at,
        regrets.get(RECEDING, {}), receding_vs_planner, regrets, against_constant)
