"""Executing a job on the true intensity and the true epoch time: open loop or re-planned. Pure.

Plans are fluid (a ρ may change inside an epoch); an epoch at ρ takes ``true_cost.epoch_s(ρ)``
seconds of running, so a piece of ``s`` seconds at ρ does ``s / true_cost.epoch_s(ρ)`` epochs.

:func:`execute_open_loop` runs a plan's segments unchanged (the backtest's ``planner``, ``shift``
...): it stops when the work is done, and work still left after the last segment runs right away
at that segment's ρ, without a pause (nobody re-plans it).

:func:`execute_receding` is the daemon's receding horizon: at every slot boundary of the truth it
rebuilds the job's progress from the epoch records and pause intervals the run has produced so far,
through :func:`~carbonsched.planning.receding.progress_from_records` (so the epoch time at ρ 1 is
learned from ended epochs exactly as the daemon learns it, and the open epoch's share is the
daemon's estimate), asks :func:`~carbonsched.planning.receding.decide` for a decision on the
forecast the caller gives for that moment, and runs the new plan's first slot (or the guard's ρ
for the slot), then repeats until the work is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from carbonsched.planning.model import CostModel, Job, Slot
from carbonsched.planning.planner import Segment, expected_carbon_g
from carbonsched.planning.receding import JobDeclaration, PlanningSettings, decide, progress_from_records
from carbonsched.planning.strategies import intensity_at

DONE_TOLERANCE_EPOCHS = 1e-9
MAX_REPLANS = 100_000

ForecastAt = Callable[[float, float], Sequence[Slot]]
"""(seconds since submission, horizon s) → planning slots from that moment, times relative to it."""


@dataclass(frozen=True)
class Execution:
    """What a job did on the truth: its running segments (times from submission) and the result."""

    segments: tuple[Segment, ...]
    carbon_g: float
    finish_s: float
    mean_rho: float  # Σ ρ over the epochs done / epochs
    replans: int = 0
    guarded_s: float = 0.0  # running time the deadline guard decided


@dataclass
class _Run:
    """The job as it runs: true progress, and the records a daemon would hold."""

    job: Job
    true_cost: CostModel
    truth: Sequence[Slot]
    done: float = 0.0
    rho_sum: float = 0.0
    at_s: float = 0.0
    segments: list[Segment] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)  # ended epochs, as the daemon stores them
    pauses: list[tuple[float, float]] = field(default_factory=list)
    open_start_s: float | None = None
    open_share: float = 0.0
    open_rho_share: float = 0.0
    open_energy_j: float = 0.0

    @property
    def finished(self) -> bool:
        return self.done >= self.job.epochs - DONE_TOLERANCE_EPOCHS

    def pause_until(self, until_s: float) -> None:
        if until_s > self.at_s:
            if self.pauses and abs(self.pauses[-1][1] - self.at_s) < 1e-9:  # one interval, as the store keeps it
                self.pauses[-1] = (self.pauses[-1][0], until_s)
            else:
                self.pauses.append((self.at_s, until_s))
            self.at_s = until_s

    def run(self, rho: float, seconds: float) -> None:
        """Run at ``rho`` for ``seconds`` from ``at_s`` (less if the work ends), closing epochs as they end."""
        epoch_s = self.true_cost.epoch_s(rho)
        power_w = self.true_cost.power_w(rho)
        while seconds > 1e-9 and not self.finished:
            if self.open_start_s is None:
                self.open_start_s = self.at_s
            to_epoch_end = 1.0 - self.open_share
            to_job_end = self.job.epochs - self.done
            share = min(seconds / epoch_s, to_epoch_end, to_job_end)
            length_s = share * epoch_s
            self._add_segment(rho, length_s)
            self.done += share
            self.rho_sum += share * rho
            self.open_share += share
            self.open_rho_share += share * rho
            self.open_energy_j += power_w * length_s
            self.at_s += length_s
            seconds -= length_s
            if self.open_share >= 1.0 - 1e-12:
                self.records.append({"started_at": self.open_start_s, "ended_at": self.at_s,
                                     "rho_effective": self.open_rho_share / self.open_share,
                                     "energy_j": self.open_energy_j})
                self.open_start_s, self.open_share, self.open_rho_share, self.open_energy_j = None, 0.0, 0.0, 0.0

    def run_to_end(self, rho: float) -> None:
        """Run at ``rho`` without a pause until the work is done."""
        self.run(rho, (self.job.epochs - self.done) * self.true_cost.epoch_s(rho) * (1 + 1e-9))

    def _add_segment(self, rho: float, length_s: float) -> None:
        last = self.segments[-1] if self.segments else None
        if last is not None and last.rho == rho and abs(last.end_s - self.at_s) < 1e-9:
            self.segments[-1] = Segment(last.start_s, self.at_s + length_s, rho, last.intensity_g_per_kwh)
        else:
            self.segments.append(Segment(self.at_s, self.at_s + length_s, rho, intensity_at(self.truth, self.at_s)))

    def epoch_records(self) -> list[dict]:
        """Ended epochs and the open one (its ρ so far as the ρ asked), as the daemon would read them."""
        if self.open_start_s is None:
            return self.records
        return [*self.records, {"started_at": self.open_start_s, "ended_at": None,
                                "rho_asked": self.open_rho_share / self.open_share}]

    def execution(self, replans: int = 0, guarded_s: float = 0.0) -> Execution:
        carbon = expected_carbon_g(self.segments, self.truth, self.true_cost)
        finish = self.segments[-1].end_s if self.segments else 0.0
        return Execution(tuple(self.segments), carbon, finish, self.rho_sum / self.job.epochs, replans, guarded_s)


def execute_open_loop(job: Job, true_cost: CostModel, segments: Sequence[Segment], truth: Sequence[Slot]) -> Execution:
    """Run ``segments`` (a plan's, times from submission) on the true epoch time; see the module docstring."""
    run = _Run(job, true_cost, truth)
    for segment in segments:
        if run.finished:
            break
        run.pause_until(segment.start_s)
        run.run(segment.rho, segment.length_s)
    if not run.finished:
        rho = segments[-1].rho if segments else 1.0
        run.run_to_end(rho)
    return run.execution()


def execute_receding(job: Job, estimated_epoch_s_at_full: float, true_cost: CostModel, truth: Sequence[Slot],
                     forecast_at: ForecastAt, *, interval_s: float,
                     settings: PlanningSettings = PlanningSettings()) -> Execution:
    """Re-plan at every slot boundary of ``truth`` with ``forecast_at`` and the daemon's decision
    (see the module docstring). ``estimated_epoch_s_at_full`` is the job's declared epoch time,
    used until its first epoch ends; ``interval_s`` is the decision interval the daemon's margin
    and guard use (the trace step here); ``settings`` as the daemon's ``[planning]`` (guard, switch
    share, forecast error) for :func:`~carbonsched.planning.receding.decide`, whose held plan is
    carried from one re-plan to the next."""
    declaration = JobDeclaration(deadline_s=job.deadline_s, epochs=job.epochs, epoch_seconds=estimated_epoch_s_at_full,
                                 rho_min=job.rho_min, mean_rho=job.mean_rho, may_pause=job.may_pause)
    run = _Run(job, true_cost, truth)
    index, replans, guarded_s = 0, 0, 0.0
    held = None
    while not run.finished and replans < MAX_REPLANS:
        while index < len(truth) and truth[index].end_s <= run.at_s + 1e-9:
            index += 1
        slot_end_s = truth[index].end_s if index < len(truth) else float("inf")
        progress = progress_from_records(declaration, run.epoch_records(), run.pauses, run.at_s)
        now_s = run.at_s
        current = truth[min(index, len(truth) - 1)].intensity_g_per_kwh
        decided = decide(declaration, progress, now_s, current, lambda horizon_s: forecast_at(now_s, horizon_s),
                         interval_s=interval_s, held=held, guard=settings.guard, switch_share=settings.switch_share,
                         forecast_error=settings.forecast_error)
        replans += 1
        if decided is None:  # the daemon's estimate says done while the truth is not: the policy would run it
            run.run_to_end(1.0)
            break
        decision, held = decided
        if held is None:  # the guard, or an infeasible plan: run now for the slot
            before = run.at_s
            run.run(decision.rho, slot_end_s - run.at_s)
            guarded_s += run.at_s - before
        else:
            for segment in held.plan.segments:
                start_s = now_s + segment.start_s
                if start_s >= slot_end_s - 1e-9 or run.finished:
                    break
                run.pause_until(start_s)
                run.run(segment.rho, min(now_s + segment.end_s, slot_end_s) - run.at_s)
        run.pause_until(slot_end_s if slot_end_s != float("inf") else run.at_s)
    return run.execution(replans, guarded_s)


__all__ = ["Execution", "ForecastAt", "execute_open_loop", "execute_receding"]
