"""Backtest of a set of deadline jobs sharing a partition of ``gpus`` GPUs (one GPU per job, every
job may pause), replayed over a trace with a perfect forecast. Pure, no I/O but reading the jobs file.

Strategies, each priced at the trace's true intensity:

``independent``  each job planned alone at its arrival (:func:`~carbonsched.planning.strategies.planned`),
                 blind to the others; Slurm then runs, every ``STEP_S``, the jobs that want to run
                 (their plan says run, or they are behind it) oldest first, at most ``gpus`` at a
                 time: the overflow waits in the queue, into dirtier hours or past its deadline.
``joint``        :func:`~carbonsched.planning.capacity.plan_jointly` over every job that has
                 arrived, re-planned with the work left at each arrival (what the daemon would do
                 at each ``carbonsched sbatch``); never more than ``gpus`` at a time.
``joint-known``  the same planner once, with every arrival known in advance (a job still waits
                 for its arrival): the offline optimum it reaches, checked against
``lp``           scipy's LP of the same problem (:func:`lp_optimum_g`), when scipy is installed.

Jobs file (CSV with a header): ``arrival_h`` (hours from the trace's start), ``epochs``,
``epoch_minutes`` (at ρ 1), ``deadline_h`` (hours after arrival), optional ``mean_rho``,
``rho_min`` and ``power_w`` (default 300). A bad row is one :class:`JobsFileError` naming the file,
line and field.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from carbonsched.planning import strategies
from carbonsched.planning.capacity import (
    EPSILON_S, CapacityJob, job_power_w, max_concurrent, plan_jointly, split_slots,
)
from carbonsched.planning.model import DEFAULT_RUNNING_POWER_W, CostModel, Job, PlanningInputError, Slot, carbon_g
from carbonsched.planning.planner import fastest_mix, running_s_of
from carbonsched.planning.series import Series

STEP_S = 60.0
HOUR_S = 3600.0
REQUIRED_COLUMNS = ("arrival_h", "epochs", "epoch_minutes", "deadline_h")
OPTIONAL_COLUMNS = ("mean_rho", "rho_min", "power_w")

__all__ = ["JobOutcome", "JobSetResult", "JobsFileError", "load_jobs", "lp_optimum_g", "run_jobset_backtest"]


class JobsFileError(ValueError):
    """The jobs file cannot be used; the message names the file, line and field."""


def load_jobs(path: Path) -> list[CapacityJob]:
    """The jobs of a jobs file (see the module docstring), named ``job1``, ``job2``... by row."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JobsFileError(f"{path}: {exc.strerror or exc}") from None
    reader = csv.DictReader(line for line in text.splitlines() if line.strip() and not line.startswith("#"))
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise JobsFileError(f"{path}: missing column(s) {', '.join(missing)} (header: {', '.join(reader.fieldnames or [])})")
    jobs = []
    for number, row in enumerate(reader, start=1):
        line = reader.line_num
        values = {}
        for column in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
            raw = (row.get(column) or "").strip()
            if not raw:
                if column in REQUIRED_COLUMNS:
                    raise JobsFileError(f"{path}:{line}: field {column!r} is empty")
                continue
            try:
                values[column] = float(raw)
            except ValueError:
                raise JobsFileError(f"{path}:{line}: field {column!r}: {raw!r} is not a number") from None
            if not math.isfinite(values[column]):
                raise JobsFileError(f"{path}:{line}: field {column!r}: {raw!r} is not a finite number")
        if values["arrival_h"] < 0:
            raise JobsFileError(f"{path}:{line}: field 'arrival_h' must not be negative")
        try:
            mean_rho = values.get("mean_rho")
            job = Job(epochs=values["epochs"], deadline_s=values["deadline_h"] * HOUR_S,
                      rho_min=values.get("rho_min", mean_rho or 1.0), mean_rho=mean_rho, may_pause=True)
            cost = CostModel(epoch_s_at_full=values["epoch_minutes"] * 60,
                             running_power_w=values.get("power_w", DEFAULT_RUNNING_POWER_W))
        except PlanningInputError as exc:
            raise JobsFileError(f"{path}:{line}: {exc}") from None
        jobs.append(CapacityJob(f"job{number}", values["arrival_h"] * HOUR_S, job, cost))
    if not jobs:
        raise JobsFileError(f"{path}: no jobs")
    return jobs


@dataclass(frozen=True)
class JobOutcome:
    carbon_g: float
    finish_s: float  # seconds from the trace's start
    deadline_met: bool


@dataclass(frozen=True)
class JobSetResult:
    """Per strategy: each job's outcome, the total carbon and the most jobs running at once."""

    gpus: int
    outcomes: dict[str, dict[str, JobOutcome]]
    max_running: dict[str, int]
    lp_g: float | None
    note: str = ""

    def total_g(self, strategy: str) -> float:
        return sum(o.carbon_g for o in self.outcomes[strategy].values())

    def deadlines_met(self, strategy: str) -> int:
        return sum(o.deadline_met for o in self.outcomes[strategy].values())

    def to_json(self) -> dict:
        rows = {name: {"carbon_g": self.total_g(name), "deadlines_met": self.deadlines_met(name),
                       "jobs": len(jobs), "max_running": self.max_running[name]}
                for name, jobs in self.outcomes.items()}
        return {"gpus": self.gpus, "strategies": rows, "lp_g": self.lp_g, "note": self.note}


def _need_s(j: CapacityJob) -> float:
    return running_s_of(fastest_mix(j.job, j.cost), j.cost)


def _deadline_abs_s(j: CapacityJob) -> float:
    return j.arrival_s + j.job.deadline_s


def _horizon_s(jobs: Sequence[CapacityJob], series: Series) -> float:
    return min(series.end_s, max(_deadline_abs_s(j) for j in jobs) + sum(_need_s(j) for j in jobs))


def _carbon_g(series: Series, power_w: float, start_s: float, end_s: float) -> float:
    return sum(carbon_g(power_w, s.intensity_g_per_kwh, s.length_s) for s in series.slots(start_s, end_s))


def _independent(jobs: Sequence[CapacityJob], series: Series, gpus: int) -> tuple[dict[str, JobOutcome], int]:
    """Each job's own plan, run through a FIFO queue of ``gpus`` (see the module docstring)."""
    horizon_s = _horizon_s(jobs, series)
    planned = {}
    for j in jobs:
        plan = strategies.planned(j.job, j.cost, series.slots(j.arrival_s, min(horizon_s, _deadline_abs_s(j))))
        planned[j.name] = [(j.arrival_s + s.start_s, j.arrival_s + s.end_s) for s in plan.segments]
    need = {j.name: _need_s(j) for j in jobs}
    power = {j.name: job_power_w(j.job, j.cost) for j in jobs}
    done = {j.name: 0.0 for j in jobs}
    carbon = {j.name: 0.0 for j in jobs}
    finish: dict[str, float] = {}
    order = sorted(jobs, key=lambda j: (j.arrival_s, j.name))
    peak, t = 0, min(j.arrival_s for j in jobs)
    while len(finish) < len(jobs) and t < series.end_s:
        step = min(STEP_S, series.end_s - t)
        wanting = [j for j in order if j.name not in finish and j.arrival_s <= t + EPSILON_S
                   and _planned_by(planned[j.name], t + step) > done[j.name] + EPSILON_S]
        running = wanting[:gpus]
        peak = max(peak, len(running))
        for j in running:
            run_s = min(step, need[j.name] - done[j.name])
            carbon[j.name] += _carbon_g(series, power[j.name], t, t + run_s)
            done[j.name] += run_s
            if done[j.name] >= need[j.name] - EPSILON_S:
                finish[j.name] = t + run_s
        t += step
    outcomes = {j.name: JobOutcome(carbon[j.name], finish.get(j.name, math.inf),
                                   finish.get(j.name, math.inf) <= _deadline_abs_s(j) + 1e-6) for j in jobs}
    return outcomes, peak


def _planned_by(segments: Sequence[tuple[float, float]], at_s: float) -> float:
    """Running seconds a plan has done by ``at_s`` (its segments, absolute seconds)."""
    return sum(max(0.0, min(end, at_s) - start) for start, end in segments)


def _joint_outcomes(jobs: Sequence[CapacityJob], plans: dict, series: Series) -> dict[str, JobOutcome]:
    outcomes = {}
    for j in jobs:
        segments = plans[j.name]
        power_w = job_power_w(j.job, j.cost)
        job_g = sum(_carbon_g(series, power_w, start, end) for start, end in segments)
        finish_s = max(end for _, end in segments)
        outcomes[j.name] = JobOutcome(job_g, finish_s, finish_s <= _deadline_abs_s(j) + 1e-6)
    return outcomes


def _joint_known(jobs: Sequence[CapacityJob], series: Series, gpus: int) -> tuple[dict[str, JobOutcome], int]:
    joint = plan_jointly(jobs, series.slots(0.0, _horizon_s(jobs, series)), gpus)
    segments = {name: [(s.start_s, s.end_s) for s in plan.segments] for name, plan in joint.plans.items()}
    return _joint_outcomes(jobs, segments, series), max_concurrent(list(joint.plans.values()))


def _joint_online(jobs: Sequence[CapacityJob], series: Series, gpus: int) -> tuple[dict[str, JobOutcome], int]:
    """Re-planned at each arrival with the work left of every job that has arrived."""
    horizon_s = _horizon_s(jobs, series)
    arrivals = sorted({j.arrival_s for j in jobs})
    need = {j.name: _need_s(j) for j in jobs}
    done = {j.name: 0.0 for j in jobs}
    ran: dict[str, list[tuple[float, float]]] = {j.name: [] for j in jobs}
    executed = []
    for index, now_s in enumerate(arrivals):
        until_s = arrivals[index + 1] if index + 1 < len(arrivals) else horizon_s
        present = []
        for j in jobs:
            left_s = need[j.name] - done[j.name]
            if j.arrival_s > now_s + EPSILON_S or left_s <= EPSILON_S:
                continue
            share = left_s / need[j.name]
            deadline_s = max(EPSILON_S, _deadline_abs_s(j) - now_s)
            present.append(CapacityJob(j.name, now_s, replace(j.job, epochs=j.job.epochs * share, deadline_s=deadline_s),
                                       j.cost))
        if not present:
            continue
        joint = plan_jointly(present, series.slots(0.0, horizon_s), gpus)
        for name, plan in joint.plans.items():
            for s in plan.segments:
                start, end = s.start_s, min(s.end_s, until_s)
                if end > start + EPSILON_S and start < until_s:
                    ran[name].append((start, end))
                    done[name] += end - start
            executed.append(replace(plan, segments=tuple(s for s in plan.segments if s.start_s < until_s)))
    return _joint_outcomes(jobs, ran, series), max_concurrent(executed)


def lp_optimum_g(jobs: Sequence[CapacityJob], slots: Sequence[Slot], gpus: int) -> float | None:
    """The least carbon (g) of running every job's need in its window with at most ``gpus`` at a
    time, by scipy's LP over seconds per (job, slot); None when infeasible. Needs scipy."""
    from scipy.optimize import linprog

    slots = split_slots(slots, [t for j in jobs for t in (j.arrival_s, *j.window(slots))])
    variables, costs = [], []
    for j_index, j in enumerate(jobs):
        start_s, end_s = j.window(slots)
        power_w = job_power_w(j.job, j.cost)
        for s_index, slot in enumerate(slots):
            if slot.start_s >= start_s - 1e-9 and slot.end_s <= end_s + 1e-9:
                variables.append((j_index, s_index))
                costs.append(carbon_g(power_w, slot.intensity_g_per_kwh, 1.0))
    if not variables:
        return None
    a_eq = [[1.0 if v[0] == j_index else 0.0 for v in variables] for j_index in range(len(jobs))]
    b_eq = [_need_s(j) for j in jobs]
    a_ub = [[1.0 if v[1] == s_index else 0.0 for v in variables] for s_index in range(len(slots))]
    b_ub = [gpus * slot.length_s for slot in slots]
    bounds = [(0, slots[s].length_s) for _, s in variables]
    result = linprog(costs, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs")
    return float(result.fun) if result.status == 0 else None


def run_jobset_backtest(jobs: Sequence[CapacityJob], series: Series, gpus: int) -> JobSetResult:
    """Every strategy of the module docstring over ``jobs`` on ``series``."""
    if not (isinstance(gpus, int) and gpus >= 1):
        raise PlanningInputError(f"--gpus must be a positive whole number, got {gpus!r}")
    late = [j.name for j in jobs if _deadline_abs_s(j) > series.end_s]
    if late:
        raise PlanningInputError(f"the trace ends before the deadline of {', '.join(late)}")
    outcomes, peaks = {}, {}
    outcomes["independent"], peaks["independent"] = _independent(jobs, series, gpus)
    outcomes["joint"], peaks["joint"] = _joint_online(jobs, series, gpus)
    outcomes["joint-known"], peaks["joint-known"] = _joint_known(jobs, series, gpus)
    note = ""
    try:
        lp_g = lp_optimum_g(jobs, series.slots(0.0, _horizon_s(jobs, series)), gpus)
        if lp_g is None:
            note = "the LP has no solution: the jobs do not all fit before their deadlines"
    except ImportError:
        lp_g, note = None, "scipy is not installed: no LP optimum (pip install scipy)"
    return JobSetResult(gpus, outcomes, peaks, lp_g, note)
