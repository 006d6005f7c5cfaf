"""Carbon-optimal plans for one job over a forecast. Pure functions, no I/O.

Two modes (the job and cost model are in :mod:`carbonsched.planning.model`):

``plan_min_carbon``
    Least carbon subject to the deadline, ``rho_min <= ρ <= 1`` and the mean-ρ floor. First the
    fastest mix of ρ levels that meets the floor (lower convex hull of the (ρ, epoch seconds)
    points, evaluated at the floor: exact for the multiple-choice knapsack whose classes are the
    epochs and whose items are the ρ levels); then, for a pausable job, that running time goes into
    the cleanest slots before the deadline (fractional knapsack over slots sorted by intensity).
    With idle power, every possible finishing slot is tried, since paused seconds before the
    finish cost idle carbon. A job that may not pause runs from now without a break.
``plan_within_budget``
    For a job that may not pause: the most training work (Σ q(ρ) over epochs, q(ρ) = ρ unless a
    concave quality curve is given) whose carbon stays within ``carbon_budget_g``. Running from now
    without a break at one running power, carbon grows with the running time only, so the budget
    fixes the longest affordable run; the upper convex hull of the (epoch seconds, q) points spends
    it best. With power per ρ, see below.

With running power independent of ρ, which epoch runs in which slot changes no carbon; the plan
puts the higher ρ in the cleaner seconds, which is free. When the cost model has measured power
per ρ (``power_points`` that differ), the plan comes from
:func:`~carbonsched.planning.knapsack.least_carbon_fill` (least carbon) or
:func:`~carbonsched.planning.knapsack.most_quality_fill` (budget mode: an epoch at ρ in a slot of
intensity I costs P(ρ)·t(ρ)·I and adds q(ρ), so each running second at ρ adds q(ρ)/t(ρ) and costs
P(ρ)·I): exact over mixes of the candidate ρ (rho_min, 1, the measured ones and the quality
curve's breakpoints; between them time and energy per epoch are linear, so any ρ in between is
such a mix), tested against an LP solver, for jobs that may pause and jobs that may not. Plans are
fluid: a level change may fall inside an epoch (the trainer applies the ρ current when an epoch starts).

The daemon calls a planner again at every decision interval with the work left, the time left to
the deadline and the fresh forecast; :meth:`Plan.rho_at` is the answer for "now".
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Sequence

from carbonsched.planning.knapsack import Fill, RhoLevel, least_carbon_fill, lower_hull, most_quality_fill
from carbonsched.planning.model import CostModel, Job, PlanningInputError, Slot, carbon_g, check_slots

RELATIVE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Segment:
    """Running at ``rho`` over ``[start_s, end_s)``; ``intensity_g_per_kwh`` as planned (forecast)."""

    start_s: float
    end_s: float
    rho: float
    intensity_g_per_kwh: float

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class Level:
    """``epochs`` of the job at ``rho``."""

    rho: float
    epochs: float


@dataclass(frozen=True)
class Plan:
    """When the job runs, at which ρ, and what that costs under the forecast."""

    job: Job
    segments: tuple[Segment, ...]  # chronological; gaps between them are pauses
    levels: tuple[Level, ...]
    expected_carbon_g: float
    feasible: bool
    note: str = ""

    @property
    def finish_s(self) -> float:
        return self.segments[-1].end_s if self.segments else 0.0

    @property
    def running_s(self) -> float:
        return sum(s.length_s for s in self.segments)

    @property
    def paused_s(self) -> float:
        return self.finish_s - self.running_s

    @property
    def mean_rho(self) -> float:
        epochs = sum(level.epochs for level in self.levels)
        return sum(level.rho * level.epochs for level in self.levels) / epochs

    @property
    def work_full_epochs(self) -> float:
        """Σ ρ over epochs: training work in full-epoch equivalents."""
        return sum(level.rho * level.epochs for level in self.levels)

    def rho_at(self, at_s: float) -> float | None:
        """The ρ to run at ``at_s`` seconds from planning time; None: paused (or finished)."""
        for segment in self.segments:
            if segment.start_s <= at_s < segment.end_s:
                return segment.rho
        return None


# ---- step 1: the ρ mix ---------------------------------------------------------------------------


def _candidate_rhos(job: Job, cost: CostModel, extra: Sequence[float] = ()) -> list[float]:
    inside = {r for r in (*cost.measured_rhos(), *extra) if job.rho_min < r < 1}
    return sorted({job.rho_min, 1.0} | inside)


def _upper_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(x, -y) for x, y in lower_hull([(x, -y) for x, y in points])]


def _mix_at(hull: list[tuple[float, float]], x: float) -> tuple[tuple[float, float], tuple[float, float], float]:
    """The hull vertices around ``x`` and the weight of the left one (1.0 at a vertex)."""
    for left, right in zip(hull, hull[1:]):
        if left[0] <= x <= right[0]:
            weight = 1.0 if right[0] == left[0] else (right[0] - x) / (right[0] - left[0])
            return left, right, weight
    vertex = hull[0] if x <= hull[0][0] else hull[-1]
    return vertex, vertex, 1.0


def fastest_mix(job: Job, cost: CostModel) -> tuple[Level, ...]:
    """ρ levels (with epochs each) doing ``job.epochs`` in the least running time at mean ρ >= the floor."""
    if not cost.epoch_time_points:  # epoch time ∝ ρ: the floor itself is fastest
        return (Level(job.rho_floor, job.epochs),)
    rhos = _candidate_rhos(job, cost)
    hull = lower_hull([(rho, cost.epoch_s(rho)) for rho in rhos])
    floor = job.rho_floor
    options = [floor] + [rho for rho, _ in hull if rho > floor]

    def hull_time(rho: float) -> float:
        left, right, weight = _mix_at(hull, rho)
        return weight * left[1] + (1 - weight) * right[1]

    # Least time per epoch; among (near-)ties the higher ρ, which trains more for the same seconds.
    best = min(options, key=lambda rho: (round(hull_time(rho) / hull_time(options[0]), 12), -rho))
    left, right, weight = _mix_at(hull, best)
    if weight >= 1.0 - RELATIVE_TOLERANCE or math.isclose(cost.epoch_s(best), hull_time(best), rel_tol=RELATIVE_TOLERANCE):
        return (Level(best, job.epochs),)
    return tuple(level for level in (Level(right[0], job.epochs * (1 - weight)), Level(left[0], job.epochs * weight))
                 if level.epochs > 0)


def running_s_of(levels: Sequence[Level], cost: CostModel) -> float:
    """Seconds of running ``levels`` take (each level's epochs at its ρ)."""
    return sum(level.epochs * cost.epoch_s(level.rho) for level in levels)


# ---- step 2: placing the running time ------------------------------------------------------------


def clip_slots(slots: Sequence[Slot], end_s: float) -> list[Slot]:
    """The part of ``slots`` before ``end_s``."""
    return [Slot(s.start_s, min(s.end_s, end_s), s.intensity_g_per_kwh) for s in slots if s.start_s < end_s]


def _fill_by_rate(slots: Sequence[Slot], rate_by_index: dict[int, float], need_s: float) -> dict[int, float]:
    """Seconds to run in each slot: lowest rate (g/s) first, earlier first among equals."""
    chosen: dict[int, float] = {}
    for index in sorted(rate_by_index, key=lambda i: (rate_by_index[i], i)):
        if need_s <= 0:
            break
        take = min(slots[index].length_s, need_s)
        chosen[index] = take
        need_s -= take
    return chosen


def _placement(slots: Sequence[Slot], need_s: float, cost: CostModel) -> dict[int, float] | None:
    """Seconds per slot index minimising running plus idle carbon; None if ``need_s`` does not fit."""
    if need_s > sum(s.length_s for s in slots) * (1 + RELATIVE_TOLERANCE):
        return None
    if cost.idle_power_w == 0:
        return _fill_by_rate(slots, {i: s.intensity_g_per_kwh for i, s in enumerate(slots)}, need_s)
    best: tuple[float, dict[int, float]] | None = None
    idle_before_g = 0.0  # idle carbon if paused through every slot before the finishing slot
    capacity_s = 0.0
    for finish in range(len(slots)):
        capacity_s += slots[finish].length_s
        if capacity_s >= need_s * (1 - RELATIVE_TOLERANCE):
            # Running displaces idle draw before the finishing slot; in it, the job starts the slot
            # running and ends when done, so nothing idles there.
            fill = _best_fill_with_finish(slots, range(finish), finish, need_s, cost)
            total_g = idle_before_g + _fill_carbon_g(slots, fill, finish, cost)
            if best is None or total_g < best[0] * (1 - RELATIVE_TOLERANCE):
                best = (total_g, fill)
        idle_before_g += carbon_g(cost.idle_power_w, slots[finish].intensity_g_per_kwh, slots[finish].length_s)
    return best[1] if best else None


def _best_fill_with_finish(slots: Sequence[Slot], earlier: Sequence[int], finish: int, need_s: float,
                           cost: CostModel) -> dict[int, float]:
    """Cheapest fill when slot ``finish`` is the last: earlier slots cost (running − idle) power, it costs running."""
    rate = {i: (cost.running_power_w - cost.idle_power_w) * slots[i].intensity_g_per_kwh for i in earlier}
    rate[finish] = cost.running_power_w * slots[finish].intensity_g_per_kwh
    return _fill_by_rate(slots, rate, need_s)


def _fill_carbon_g(slots: Sequence[Slot], fill: dict[int, float], finish: int, cost: CostModel) -> float:
    total = 0.0
    for index, seconds in fill.items():
        power_w = cost.running_power_w if index == finish else cost.running_power_w - cost.idle_power_w
        total += carbon_g(power_w, slots[index].intensity_g_per_kwh, seconds)
    return total


def _segments(slots: Sequence[Slot], fill: dict[int, float], levels: Sequence[Level], cost: CostModel) -> tuple[Segment, ...]:
    """Runs at the start of each chosen slot; the highest ρ takes the cleanest seconds."""
    seconds_left = {level.rho: level.epochs * cost.epoch_s(level.rho) for level in levels}
    rhos = sorted(seconds_left, reverse=True)
    pieces: dict[int, list[tuple[float, float]]] = {}
    for index in sorted(fill, key=lambda i: (slots[i].intensity_g_per_kwh, i)):
        remaining = fill[index]
        for rho in rhos:
            take = min(remaining, seconds_left[rho])
            if take > 0:
                pieces.setdefault(index, []).append((rho, take))
                seconds_left[rho] -= take
                remaining -= take
        if remaining > 1e-9 * max(1.0, fill[index]):  # rounding: the last level absorbs it
            pieces.setdefault(index, []).append((rhos[-1], remaining))
    segments: list[Segment] = []
    for index in sorted(pieces):
        start = slots[index].start_s
        for rho, seconds in sorted(pieces[index], key=lambda p: -p[0]):
            segments.append(Segment(start, start + seconds, rho, slots[index].intensity_g_per_kwh))
            start += seconds
    return tuple(segments)


def expected_carbon_g(segments: Sequence[Segment], slots: Sequence[Slot], cost: CostModel) -> float:
    """Running carbon over ``segments`` plus idle carbon while paused before the finish, priced by ``slots``."""
    if not segments:
        return 0.0
    integral = IntensityIntegral(slots)
    running = sum(integral.between(s.start_s, s.end_s) for s in segments)
    paused = integral.between(0.0, segments[-1].end_s) - running
    if cost.power_varies:
        running_g = sum(carbon_g(cost.power_w(s.rho), 1.0, integral.between(s.start_s, s.end_s)) for s in segments)
    else:
        running_g = carbon_g(cost.running_power_w, 1.0, running)
    return running_g + carbon_g(cost.idle_power_w, 1.0, paused)


class IntensityIntegral:
    """∫ intensity dt over any interval of contiguous ``slots`` (gCO2e/kWh·s); beyond the last slot its value holds."""

    def __init__(self, slots: Sequence[Slot]) -> None:
        self.starts = [slot.start_s for slot in slots]
        self.values = [slot.intensity_g_per_kwh for slot in slots]
        self.cumulative = [0.0]
        for slot in slots:
            self.cumulative.append(self.cumulative[-1] + slot.intensity_g_per_kwh * slot.length_s)
        self.end_s = slots[-1].end_s if slots else 0.0

    def until(self, at_s: float) -> float:
        """∫ from the first slot's start to ``at_s``."""
        if at_s >= self.end_s:
            return self.cumulative[-1] + (at_s - self.end_s) * self.values[-1]
        index = bisect.bisect_right(self.starts, at_s) - 1
        if index < 0:
            return 0.0
        return self.cumulative[index] + (at_s - self.starts[index]) * self.values[index]

    def between(self, start_s: float, end_s: float) -> float:
        return self.until(end_s) - self.until(start_s) if end_s > start_s else 0.0


def energy_intensity_s(slots: Sequence[Slot], start_s: float, end_s: float) -> float:
    """∫ intensity dt over ``[start_s, end_s)`` in gCO2e/kWh·s; beyond the last slot its value holds."""
    return IntensityIntegral(slots).between(start_s, end_s)


# ---- the two modes -------------------------------------------------------------------------------


def plan_min_carbon(job: Job, cost: CostModel, slots: Sequence[Slot]) -> Plan:
    """Least-carbon plan meeting the deadline, the ρ bounds and the mean-ρ floor (see module doc)."""
    check_slots(slots)
    levels = fastest_mix(job, cost)
    need_s = running_s_of(levels, cost)
    window = clip_slots(slots, job.deadline_s)
    available_s = window[-1].end_s if window else 0.0
    if cost.power_varies and window:
        plan = _plan_power_by_rho(job, cost, window)
        if plan is not None:
            return plan
    fill = _placement(window, need_s, cost) if job.may_pause else _continuous_fill(window, need_s)
    if fill is None:
        continuous = _continuous_fill(slots, need_s, allow_overrun=True)
        segments = _segments(slots, continuous, levels, cost)
        note = (f"needs {need_s / 3600:.2f} h of running at mean ρ {job.rho_floor:.2f}, only "
                f"{available_s / 3600:.2f} h of forecast before the deadline: running now without pausing")
        return Plan(job, segments, levels, expected_carbon_g(segments, slots, cost), feasible=False, note=note)
    segments = _segments(window, fill, levels, cost)
    return Plan(job, segments, levels, expected_carbon_g(segments, window, cost), feasible=True)


def _plan_power_by_rho(job: Job, cost: CostModel, window: Sequence[Slot]) -> Plan | None:
    """The exact plan when running power depends on ρ (:mod:`carbonsched.planning.knapsack`)."""
    levels = [RhoLevel(rho, cost.epoch_s(rho), cost.power_w(rho)) for rho in _candidate_rhos(job, cost)]
    fill = least_carbon_fill(window, levels, job.epochs, job.rho_floor, cost.idle_power_w, may_pause=job.may_pause)
    return None if fill is None else _plan_from_fill(job, cost, window, fill)


def _plan_from_fill(job: Job, cost: CostModel, window: Sequence[Slot], fill: Fill) -> Plan:
    """The plan running ``fill`` (seconds per slot and ρ), the higher ρ first within a slot."""
    epochs_by_rho: dict[float, float] = {}
    segments: list[Segment] = []
    for index in sorted(fill):
        start = window[index].start_s
        for rho, seconds in sorted(fill[index].items(), reverse=True):
            epochs_by_rho[rho] = epochs_by_rho.get(rho, 0.0) + seconds / cost.epoch_s(rho)
            segments.append(Segment(start, start + seconds, rho, window[index].intensity_g_per_kwh))
            start += seconds
    levels_used = tuple(Level(rho, epochs) for rho, epochs in sorted(epochs_by_rho.items(), reverse=True) if epochs > 0)
    return Plan(job, tuple(segments), levels_used, expected_carbon_g(segments, window, cost), feasible=True)


def _continuous_fill(slots: Sequence[Slot], need_s: float, *, allow_overrun: bool = False) -> dict[int, float] | None:
    """Run from now without a break; beyond the last slot only with ``allow_overrun`` (it is stretched)."""
    fill: dict[int, float] = {}
    for index, slot in enumerate(slots):
        if need_s <= 1e-9:
            return fill
        take = need_s if allow_overrun and index == len(slots) - 1 else min(slot.length_s, need_s)
        fill[index] = take
        need_s -= take
    return fill if need_s <= 1e-9 * max(1.0, need_s) or allow_overrun else None


QualityCurve = Callable[[float], float]


def affordable_running_s(slots: Sequence[Slot], power_w: float, budget_g: float, limit_s: float) -> float:
    """The longest run from now (at most ``limit_s``) whose carbon stays within ``budget_g``."""
    spent_g = 0.0
    for slot in clip_slots(slots, limit_s):
        rate_g_per_s = carbon_g(power_w, slot.intensity_g_per_kwh, 1.0)
        slot_g = rate_g_per_s * slot.length_s
        if spent_g + slot_g > budget_g:
            return slot.start_s + ((budget_g - spent_g) / rate_g_per_s if rate_g_per_s > 0 else slot.length_s)
        spent_g += slot_g
    return min(limit_s, slots[-1].end_s)


def plan_within_budget(job: Job, cost: CostModel, slots: Sequence[Slot], quality: QualityCurve | None = None,
                       quality_rhos: Sequence[float] = ()) -> Plan:
    """Most training work (Σ quality(ρ) over epochs; default ρ) within ``job.carbon_budget_g``, no pausing.

    ``quality`` must be concave on [rho_min, 1] or be given as its breakpoints ``quality_rhos``
    (piecewise linear between them): the plan is exact over the candidate ρ values (rho_min, 1,
    the cost model's measured ρ and ``quality_rhos``). With measured power per ρ the plan may run
    a different ρ in each slot (the higher-power ones where it is cleaner), and ``quality`` is taken
    as linear between the candidates (a lower bound for a smooth concave curve given without its
    breakpoints); a budget too small for the epochs gives their least-carbon run, marked infeasible.
    """
    check_slots(slots)
    if job.carbon_budget_g is None:
        raise PlanningInputError("plan_within_budget needs the job's carbon budget")
    value = quality or (lambda rho: rho)
    rhos = _candidate_rhos(job, cost, quality_rhos)
    if cost.power_varies:
        return _budget_plan_power_by_rho(job, cost, slots, value, rhos)
    points = sorted({(cost.epoch_s(rho), value(rho)): rho for rho in rhos}.items())
    rho_of = dict(points)
    hull = _upper_hull([point for point, _ in points])
    running_s = affordable_running_s(slots, cost.running_power_w, job.carbon_budget_g, job.deadline_s)
    per_epoch_s = running_s / job.epochs
    fastest_s = min(t for t, _ in rho_of)
    if per_epoch_s < fastest_s * (1 - RELATIVE_TOLERANCE):
        slowest_fast = max((rho for (t, _), rho in rho_of.items() if t == fastest_s))
        levels: tuple[Level, ...] = (Level(slowest_fast, job.epochs),)
        feasible, note = False, (f"the budget {job.carbon_budget_g:g} g affords {running_s / 3600:.2f} h of running; "
                                 f"{job.epochs:g} epochs need at least {job.epochs * fastest_s / 3600:.2f} h")
    else:
        # Best value per epoch at an average epoch time <= per_epoch_s: a hull vertex or the hull at per_epoch_s.
        options = [per_epoch_s] + [t for t, _ in hull if t < per_epoch_s]
        best_t = max(options, key=lambda t: (_hull_value(hull, t), -t))
        levels = _levels_at(hull, rho_of, best_t, job, cost, value, rhos)
        feasible, note = True, ""
    need_s = running_s_of(levels, cost)
    if need_s > job.deadline_s * (1 + RELATIVE_TOLERANCE):
        feasible, note = False, note or f"{job.epochs:g} epochs need {need_s / 3600:.2f} h, more than the deadline allows"
    fill = _continuous_fill(slots, need_s, allow_overrun=True) or {}
    segments = _segments(slots, fill, levels, cost)
    return Plan(job, segments, levels, expected_carbon_g(segments, slots, cost), feasible, note)


def _budget_plan_power_by_rho(job: Job, cost: CostModel, slots: Sequence[Slot], value: QualityCurve,
                              rhos: Sequence[float]) -> Plan:
    """The budget mode when running power depends on ρ: carbon depends on which ρ runs in which
    slot, so the plan is the LP of :func:`~carbonsched.planning.knapsack.most_quality_fill`. When the
    budget cannot pay for the epochs, the least-carbon run of them, marked infeasible."""
    assert job.carbon_budget_g is not None
    window = clip_slots(slots, job.deadline_s)
    levels = [RhoLevel(rho, cost.epoch_s(rho), cost.power_w(rho), value(rho)) for rho in rhos]
    fill = most_quality_fill(window, levels, job.epochs, job.carbon_budget_g)
    if fill is not None:
        return _plan_from_fill(job, cost, window, fill)
    cheapest = plan_min_carbon(dataclasses.replace(job, mean_rho=None, may_pause=False), cost, slots)
    note = cheapest.note or (f"the budget {job.carbon_budget_g:g} g is less than the {cheapest.expected_carbon_g:.4g} g "
                             f"the least-carbon run of {job.epochs:g} epochs needs")
    return dataclasses.replace(cheapest, job=job, feasible=False, note=note)


def _hull_value(hull: list[tuple[float, float]], x: float) -> float:
    left, right, weight = _mix_at(hull, x)
    return weight * left[1] + (1 - weight) * right[1]


def _levels_at(hull: list[tuple[float, float]], rho_of: dict[tuple[float, float], float], epoch_s: float, job: Job,
               cost: CostModel, value: QualityCurve, rhos: Sequence[float]) -> tuple[Level, ...]:
    left, right, weight = _mix_at(hull, epoch_s)
    if weight >= 1.0 - RELATIVE_TOLERANCE:
        return (Level(rho_of[left], job.epochs),)
    rho_left, rho_right = rho_of[left], rho_of[right]
    # One ρ between two neighbouring candidates reaches the hull exactly (t and q both linear there).
    if abs(rhos.index(rho_left) - rhos.index(rho_right)) == 1:
        t_left, t_right = cost.epoch_s(rho_left), cost.epoch_s(rho_right)
        rho = rho_left + (rho_right - rho_left) * (epoch_s - t_left) / (t_right - t_left)
        return (Level(rho, job.epochs),)
    return tuple(level for level in (Level(rho_right, job.epochs * (1 - weight)), Level(rho_left, job.epochs * weight))
                 if level.epochs > 0)


__all__ = [
    "Level", "Plan", "QualityCurve", "Segment", "affordable_running_s", "clip_slots", "energy_intensity_s",
    "expected_carbon_g", "fastest_mix", "plan_min_carbon", "plan_within_budget", "running_s_of",
]
