"""Replay a long intensity trace, submit the same job every K hours, and compare strategies.

Pure functions: the caller reads the trace and the steps policy. For each submission at trace
offset ``t0`` (every ``every_s`` while the deadline still lies inside the trace):

- the *truth* is the trace from ``t0`` on, as slots at the trace's own step;
- the *forecast* is the truth up to the deadline with seeded noise: every slot after the current one
  is multiplied by ``1 + noise · N(0, 1)`` (independent per slot, clipped at 0); the current slot is
  measured, so it is exact. :func:`carbonsched.forecast_noise.seeded_rng` ``(seed, submission index)``
  draws it (the trace provider's ``forecast_noise`` uses the same model);
- ``shift``, ``planner`` and ``planner-no-margin`` plan on the forecast, ``oracle`` (the planner,
  margin included) on the truth, ``steps`` reacts to the truth epoch by epoch, ``now-full`` and
  ``now-constant`` just run; every plan is then executed unchanged and its carbon counted on the
  truth (running plus idle power while paused).

Per strategy: carbon relative to ``now-full`` per submission (mean, 10th and 90th percentile), the
share of submissions that finished by the deadline and that met the mean-ρ floor, and the mean ρ.
Forecast error changes where a plan runs, never how long it runs, so an executed plan finishes
when planned whatever the noise; what threatens a deadline is an epoch that takes longer than
estimated. So each strategy also reports the share that would still finish by the deadline if
every epoch took ``SLOWER_SHARE`` longer and the missing work ran right after the plan's end
(no re-plan). Planner regret: (planner − oracle) / oracle per submission. The margin's cost:
Σ planner / Σ planner-no-margin − 1.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

from carbonsched.forecast_noise import perturbed, seeded_rng
from carbonsched.planning import strategies
from carbonsched.planning.margin import MARGIN_SHARE
from carbonsched.planning.model import CostModel, Job, PlanningInputError, Slot
from carbonsched.planning.planner import Plan, expected_carbon_g

SLOWER_SHARE = 0.1


@dataclass(frozen=True)
class Series:
    """A step function: ``values[i]`` holds from ``offsets_s[i]`` to the next offset (the last to ``end_s``)."""

    offsets_s: tuple[float, ...]
    values_g_per_kwh: tuple[float, ...]
    end_s: float

    def slots(self, start_s: float, end_s: float) -> list[Slot]:
        """Slots over ``[start_s, end_s)`` (within the series), with times relative to ``start_s``."""
        slots: list[Slot] = []
        index = max(0, bisect.bisect_right(self.offsets_s, start_s) - 1)
        while index < len(self.offsets_s) and self.offsets_s[index] < end_s:
            finish = self.offsets_s[index + 1] if index + 1 < len(self.offsets_s) else self.end_s
            low, high = max(self.offsets_s[index], start_s), min(finish, end_s)
            if high > low:
                slots.append(Slot(low - start_s, high - start_s, self.values_g_per_kwh[index]))
            index += 1
        return slots


@dataclass(frozen=True)
class Outcome:
    """One strategy on one submission, executed on the truth."""

    carbon_g: float
    met_deadline: bool
    met_floor: bool
    mean_rho: float
    met_deadline_if_slower: bool  # epochs SLOWER_SHARE longer than estimated, the rest run at the end


@dataclass(frozen=True)
class StrategySummary:
    carbon_g_mean: float
    carbon_vs_now_full_mean: float
    carbon_vs_now_full_p10: float
    carbon_vs_now_full_p90: float
    deadline_met_share: float
    deadline_met_if_slower_share: float
    rho_floor_met_share: float
    mean_rho: float


@dataclass(frozen=True)
class BacktestResult:
    submissions: int
    submitted_at_s: tuple[float, ...]
    outcomes: dict[str, tuple[Outcome, ...]]
    summaries: dict[str, StrategySummary]
    regret_mean: float
    regret_p90: float
    regret_max: float
    regret_total: float  # Σ planner / Σ oracle − 1
    margin_carbon_cost: float  # Σ planner / Σ planner-no-margin − 1

    def to_json(self) -> dict:
        with_margin, without = self.summaries["planner"], self.summaries["planner-no-margin"]
        return {
            "submissions": self.submissions,
            "strategies": {name: vars(summary) for name, summary in self.summaries.items()},
            "planner_regret_vs_oracle": {"mean": self.regret_mean, "p90": self.regret_p90, "max": self.regret_max,
                                         "total": self.regret_total},
            "margin": {"share": MARGIN_SHARE, "slower_share": SLOWER_SHARE, "carbon_cost": self.margin_carbon_cost,
                       "deadline_met_share": with_margin.deadline_met_share,
                       "deadline_met_share_without": without.deadline_met_share,
                       "deadline_met_if_slower_share": with_margin.deadline_met_if_slower_share,
                       "deadline_met_if_slower_share_without": without.deadline_met_if_slower_share},
        }


def noisy_forecast(truth: Sequence[Slot], noise: float, rng: random.Random) -> list[Slot]:
    """``truth`` with every slot after the first scaled by ``1 + noise · N(0, 1)``, clipped at 0."""
    if noise < 0 or not math.isfinite(noise):
        raise PlanningInputError(f"noise must be a non-negative fraction, got {noise!r}")
    return [truth[0]] + [Slot(slot.start_s, slot.end_s, perturbed(slot.intensity_g_per_kwh, noise, rng))
                         for slot in truth[1:]]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run_backtest(series: Series, job: Job, cost: CostModel, *, every_s: float, noise: float, seed: int,
                 make_steps_rho: Callable[[float], strategies.RhoForIntensity]) -> BacktestResult:
    """Submit ``job`` at offsets 0, every_s, ... of ``series`` and run every strategy (see module doc).

    ``make_steps_rho(t0)`` returns a fresh reactive ρ function for the submission at offset ``t0``.
    """
    if not (math.isfinite(every_s) and every_s > 0):
        raise PlanningInputError(f"the submission interval must be positive seconds, got {every_s!r}")
    starts: list[float] = []
    t0 = series.offsets_s[0]
    while t0 + job.deadline_s <= series.end_s + 1e-9:
        starts.append(t0)
        t0 += every_s
    if not starts:
        span_h = (series.end_s - series.offsets_s[0]) / 3600
        raise PlanningInputError(f"the trace covers {span_h:g} h, less than the {job.deadline_s / 3600:g} h deadline: "
                                 "no submission fits")
    # Long enough for every strategy, including a run from submission at the slowest ρ past the deadline.
    longest_s = max(job.deadline_s, job.epochs * max(cost.epoch_s(rho) for rho in (job.rho_min, job.rho_floor, 1.0)))
    outcomes: dict[str, list[Outcome]] = {name: [] for name in strategies.STRATEGIES}
    for index, start_s in enumerate(starts):
        truth = series.slots(start_s, start_s + 2 * longest_s)
        window = [s for s in truth if s.start_s < job.deadline_s]
        window = [Slot(s.start_s, min(s.end_s, job.deadline_s), s.intensity_g_per_kwh) for s in window]
        forecast = noisy_forecast(window, noise, seeded_rng(seed, index))
        plans: dict[str, Plan] = {
            "now-full": strategies.now_full(job, cost, truth),
            "now-constant": strategies.now_constant(job, cost, truth),
            "shift": strategies.shift(job, cost, forecast),
            "steps": strategies.reactive(job, cost, truth, make_steps_rho(start_s)),
            "planner": strategies.planned(job, cost, forecast),
            "planner-no-margin": strategies.planned(job, cost, forecast, margin_share=0.0),
            "oracle": strategies.planned(job, cost, window),
        }
        for name, plan in plans.items():
            outcomes[name].append(Outcome(expected_carbon_g(plan.segments, truth, cost), strategies.met_deadline(plan),
                                          strategies.met_floor(plan), plan.mean_rho,
                                          strategies.met_deadline(plan, slower_share=SLOWER_SHARE)))
    return _summarise(tuple(starts), {name: tuple(values) for name, values in outcomes.items()})


def _summarise(starts: tuple[float, ...], outcomes: dict[str, tuple[Outcome, ...]]) -> BacktestResult:
    baseline = [o.carbon_g for o in outcomes["now-full"]]
    summaries: dict[str, StrategySummary] = {}
    for name, results in outcomes.items():
        ratios = [o.carbon_g / b if b > 0 else 1.0 for o, b in zip(results, baseline)]
        count = len(results)
        summaries[name] = StrategySummary(
            carbon_g_mean=sum(o.carbon_g for o in results) / count,
            carbon_vs_now_full_mean=sum(ratios) / count,
            carbon_vs_now_full_p10=percentile(ratios, 10),
            carbon_vs_now_full_p90=percentile(ratios, 90),
            deadline_met_share=sum(o.met_deadline for o in results) / count,
            deadline_met_if_slower_share=sum(o.met_deadline_if_slower for o in results) / count,
            rho_floor_met_share=sum(o.met_floor for o in results) / count,
            mean_rho=sum(o.mean_rho for o in results) / count,
        )
    planner = [o.carbon_g for o in outcomes["planner"]]
    oracle = [o.carbon_g for o in outcomes["oracle"]]
    regrets = [(p - o) / o if o > 0 else 0.0 for p, o in zip(planner, oracle)]
    no_margin = sum(o.carbon_g for o in outcomes["planner-no-margin"])
    return BacktestResult(len(starts), starts, outcomes, summaries, sum(regrets) / len(regrets),
                          percentile(regrets, 90), max(regrets), sum(planner) / sum(oracle) - 1 if sum(oracle) else 0.0,
                          sum(planner) / no_margin - 1 if no_margin else 0.0)
