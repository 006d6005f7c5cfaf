"""Least-carbon running seconds per slot and ρ level when running power depends on ρ. Pure.

The problem (a linear program): seconds ``x[s, r]`` running at level ``r`` in slot ``s`` of
length ``L_s`` and intensity ``I_s``, where a level has epoch time ``t_r``, running power ``P_r``
and ρ ``r``; minimise ``Σ x·P_r·I_s`` subject to ``Σ_r x[s, r] <= L_s`` (a slot holds its length),
``Σ x/t_r = E`` (the epochs) and ``Σ x·r/t_r >= F·E`` (the mean-ρ floor ``F``).

A job that may not pause runs from the start without a break: for each slot ``k`` the run may end
in, slots before ``k`` must be full (``Σ_r x[s, r] = L_s``) and slot ``k`` holds at most its length;
the least of these LPs is the plan. Each is solved as below, with no "paused" point in the hull of
a slot that must be full.

The solution. Put a price ``μ >= 0`` on the floor: every second at level ``r`` in slot ``s`` then
costs ``c = P_r·I_s − μ·r/t_r`` and does ``w = 1/t_r`` epochs. Within one slot, the cheapest way
to do any amount of work is on the lower convex hull of the points ``(w, c)`` and the origin
(paused); across slots, the problem is a fractional knapsack over those hull edges, exact by
taking edges in order of cost per epoch until ``E`` epochs are done (the edges of one slot come
in increasing order, as the hull is convex). The floor's work rises with ``μ``; bisection finds
the ``μ`` at which it crosses ``F·E``, and mixing the solutions just below and just above meets
the floor exactly. Both are optimal for that ``μ`` and the mix is feasible, so it is optimal for
the LP (Lagrangian duality). With constant power the levels reduce to CarbonScaler's greedy; the
ρ mix and slot order then decouple, which :mod:`carbonsched.planning.planner` uses directly.

Idle power while paused is handled as there: for each possible finishing slot, earlier slots cost
``(P_r − P_idle)·I_s`` per running second (running displaces idle draw) plus the idle carbon of
all of them, the finishing slot ``P_r·I_s``; the cheapest finishing slot wins.

The budget mode is the same LP turned around: a job that may not pause maximises its quality
``Σ x·q_r/t_r`` (``q_r`` = q(ρ) per epoch, ρ by default: the training work) subject to the
epochs, running without a break, and ``Σ x·P_r·I_s <= B``. The same priced greedy solves it: as
``μ`` grows, its solutions trace the (carbon, quality) frontier, both rising. The most quality any
plan reaches, with the least carbon among such plans, is the floor problem above with the floor
at that quality; if it is within ``B`` it is the answer. Otherwise bisection finds the ``μ`` at
which carbon crosses ``B``, and the mix of the two solutions around it spends exactly ``B``: both
minimise ``carbon − μ·quality``, so no plan within ``B`` has more quality (Lagrangian duality
again, with ``1/μ`` the price of a gram). For each slot the run could end in, as above; the most
quality wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from carbonsched.planning.model import JOULES_PER_KWH, Slot

BISECTION_STEPS = 200
PRICE_GROWTH_STEPS = 80  # μ grows fourfold per step until the condition holds
RELATIVE_WIDTH = 1e-13
RELATIVE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class RhoLevel:
    """One ρ an epoch may run at: its epoch time (s), running power (W) and the quality one epoch
    at it adds (q(ρ); None: ρ itself, the training work in full-epoch equivalents)."""

    rho: float
    epoch_s: float
    power_w: float
    quality: float | None = None

    @property
    def value(self) -> float:
        """Quality per epoch at this level."""
        return self.rho if self.quality is None else self.quality


Fill = dict[int, dict[float, float]]  # slot index -> {ρ: running seconds}


@dataclass(frozen=True)
class _Solution:
    fill: Fill
    cost_g: float
    quality: float  # Σ value·epochs (Σ ρ·epochs unless the levels carry a quality)


def least_carbon_fill(slots: Sequence[Slot], levels: Sequence[RhoLevel], epochs: float, rho_floor: float,
                      idle_power_w: float = 0.0, *, may_pause: bool = True) -> Fill | None:
    """Running seconds per slot and ρ of the least-carbon plan; None when the work and floor do not fit.
    A job that may not pause runs from the first slot without a break (see the module docstring)."""
    if not may_pause:
        return _continuous_fill(slots, levels, epochs, rho_floor)
    finishes = range(len(slots)) if idle_power_w > 0 else [len(slots) - 1]
    best: tuple[float, Fill] | None = None
    idle_before_g = 0.0
    for finish in finishes:
        def rate_g_per_s(index: int, level: RhoLevel, finish: int = finish) -> float:
            power_w = level.power_w if index == finish else level.power_w - idle_power_w
            return power_w * slots[index].intensity_g_per_kwh / JOULES_PER_KWH

        solution = _solve(slots[: finish + 1], levels, epochs, rho_floor * epochs, rate_g_per_s)
        if solution is not None:
            total_g = idle_before_g + solution.cost_g
            if best is None or total_g < best[0] * (1 - RELATIVE_TOLERANCE):
                best = (total_g, solution.fill)
        idle_before_g += idle_power_w * slots[finish].intensity_g_per_kwh * slots[finish].length_s / JOULES_PER_KWH
    return best[1] if best else None


def most_quality_fill(slots: Sequence[Slot], levels: Sequence[RhoLevel], epochs: float, budget_g: float) -> Fill | None:
    """Running seconds per slot and ρ doing ``epochs`` from the first slot without a break, with the
    most quality (Σ value per epoch) whose carbon stays within ``budget_g``; None when even the
    least-carbon run exceeds it or the epochs do not fit (see the module docstring)."""
    best: _Solution | None = None
    for last in _run_ends(slots, levels, epochs):
        solution = _solve_within(slots[: last + 1], levels, epochs, budget_g, _running_rate(slots), full=last)
        if solution is None or best is None:
            best = best or solution
            continue
        margin = RELATIVE_TOLERANCE * max(1.0, abs(best.quality))
        if solution.quality > best.quality + margin or (
                solution.quality >= best.quality - margin and solution.cost_g < best.cost_g * (1 - RELATIVE_TOLERANCE)):
            best = solution
    return best.fill if best else None


def _continuous_fill(slots: Sequence[Slot], levels: Sequence[RhoLevel], epochs: float, rho_floor: float) -> Fill | None:
    """Without pausing: for each slot the run could end in, every earlier slot runs throughout."""
    best: _Solution | None = None
    for last in _run_ends(slots, levels, epochs):
        solution = _solve(slots[: last + 1], levels, epochs, rho_floor * epochs, _running_rate(slots), full=last)
        if solution is not None and (best is None or solution.cost_g < best.cost_g * (1 - RELATIVE_TOLERANCE)):
            best = solution
    return best.fill if best else None


def _run_ends(slots: Sequence[Slot], levels: Sequence[RhoLevel], epochs: float) -> list[int]:
    """Slots a run of ``epochs`` from the first slot, without a break, can end in."""
    slowest_s, fastest_s = max(level.epoch_s for level in levels), min(level.epoch_s for level in levels)
    return [last for last, slot in enumerate(slots)
            if slot.end_s >= epochs * fastest_s * (1 - RELATIVE_TOLERANCE) and slot.start_s <= epochs * slowest_s]


def _running_rate(slots: Sequence[Slot]) -> Callable[[int, RhoLevel], float]:
    def rate_g_per_s(index: int, level: RhoLevel) -> float:
        return level.power_w * slots[index].intensity_g_per_kwh / JOULES_PER_KWH

    return rate_g_per_s


RateFunction = Callable[[int, RhoLevel], float]


def _solve(slots: Sequence[Slot], levels: Sequence[RhoLevel], epochs: float, quality_needed: float,
           rate_g_per_s: RateFunction, full: int = 0) -> _Solution | None:
    """Least carbon with quality >= ``quality_needed`` (the first ``full`` slots run throughout),
    by bisection on the quality's price."""
    rates = [[rate_g_per_s(index, level) for level in levels] for index in range(len(slots))]

    def evaluate(mu: float) -> _Solution | None:
        return _greedy(slots, levels, rates, epochs, mu, full)

    def reached(solution: _Solution) -> bool:
        return solution.quality >= quality_needed - RELATIVE_TOLERANCE * abs(quality_needed)

    low = evaluate(0.0)
    if low is None or reached(low):
        return low
    crossing = _price_crossing(evaluate, reached, low, _price_scale(rates, levels))
    if crossing is None:
        return None
    low, high = crossing
    return _mix(low, high, high.quality - quality_needed, high.quality - low.quality)


def _solve_within(slots: Sequence[Slot], levels: Sequence[RhoLevel], epochs: float, budget_g: float,
                  rate_g_per_s: RateFunction, full: int = 0) -> _Solution | None:
    """Most quality with carbon <= ``budget_g`` (the first ``full`` slots run throughout)."""
    rates = [[rate_g_per_s(index, level) for level in levels] for index in range(len(slots))]

    def evaluate(mu: float) -> _Solution | None:
        return _greedy(slots, levels, rates, epochs, mu, full)

    cheapest = evaluate(0.0)
    if cheapest is None or cheapest.cost_g > budget_g * (1 + RELATIVE_TOLERANCE):
        return None
    unpriced = _greedy(slots, levels, [[0.0] * len(levels) for _ in slots], epochs, 1.0, full)
    assert unpriced is not None  # same capacity as at μ = 0
    top_quality = unpriced.quality

    def reached(solution: _Solution) -> bool:  # over budget, or the most quality there is
        return (solution.cost_g > budget_g
                or solution.quality >= top_quality - RELATIVE_TOLERANCE * max(1.0, abs(top_quality)))

    if reached(cheapest):
        return cheapest
    crossing = _price_crossing(evaluate, reached, cheapest, _price_scale(rates, levels))
    assert crossing is not None  # a high enough price reaches the most quality
    low, high = crossing
    if high.cost_g <= budget_g:
        return high
    return _mix(low, high, high.cost_g - budget_g, high.cost_g - low.cost_g)


def _price_scale(rates: list[list[float]], levels: Sequence[RhoLevel]) -> float:
    return max(max(row) for row in rates) * max(level.epoch_s for level in levels) + 1e-12


def _price_crossing(evaluate: Callable[[float], _Solution | None], reached: Callable[[_Solution], bool],
                    low: _Solution, scale: float) -> tuple[_Solution, _Solution] | None:
    """The greedy's solutions just below and at the least price ``μ`` where ``reached`` holds
    (``low``: the solution at μ = 0, which does not reach it). ``reached`` must switch once as μ
    grows; None when no price up to ``scale·4^PRICE_GROWTH_STEPS`` reaches it."""
    mu_low, mu_high, high = 0.0, scale, None
    for _ in range(PRICE_GROWTH_STEPS):
        high = evaluate(mu_high)
        assert high is not None  # same capacity as at μ = 0
        if reached(high):
            break
        mu_low, low, mu_high = mu_high, high, mu_high * 4
    else:
        return None
    for _ in range(BISECTION_STEPS):
        if mu_high - mu_low <= RELATIVE_WIDTH * mu_high:
            break
        middle = (mu_low + mu_high) / 2
        candidate = evaluate(middle)
        assert candidate is not None
        if reached(candidate):
            mu_high, high = middle, candidate
        else:
            mu_low, low = middle, candidate
    assert high is not None
    return low, high


def _mix(low: _Solution, high: _Solution, low_share_numerator: float, denominator: float) -> _Solution:
    """``low`` and ``high`` mixed, ``low`` with share ``numerator / denominator`` (clamped to [0, 1])."""
    if denominator <= 0:
        return high
    weight = min(1.0, max(0.0, low_share_numerator / denominator))
    fill: Fill = {}
    for share, part in ((weight, low.fill), (1 - weight, high.fill)):
        for index, seconds_by_rho in part.items():
            for rho, seconds in seconds_by_rho.items():
                if share * seconds > 0:
                    slot_fill = fill.setdefault(index, {})
                    slot_fill[rho] = slot_fill.get(rho, 0.0) + share * seconds
    return _Solution(fill, weight * low.cost_g + (1 - weight) * high.cost_g,
                     weight * low.quality + (1 - weight) * high.quality)


def _greedy(slots: Sequence[Slot], levels: Sequence[RhoLevel], rates: list[list[float]], epochs: float,
            mu: float, full: int = 0) -> _Solution | None:
    """Least ``carbon − μ·quality`` doing exactly ``epochs``: hull edges of every slot by cost per epoch.
    The first ``full`` slots run throughout (no pausing: their hull has no "paused" point, and they
    start at its slowest vertex)."""
    edges = []  # (cost per epoch, slot, edge number, from vertex, to vertex)
    position: dict[int, tuple[tuple[float, float, int], tuple[float, float, int], float]] = {}
    need = epochs
    for index, slot in enumerate(slots):
        points = [(1.0 / level.epoch_s, rates[index][k] - mu * level.value / level.epoch_s, k)
                  for k, level in enumerate(levels)]
        hull = lower_hull(points if index < full else [(0.0, 0.0, -1)] + points)
        if index < full:
            position[index] = (hull[0], hull[0], 0.0)
            need -= slot.length_s * hull[0][0]
        for number, (a, b) in enumerate(zip(hull, hull[1:])):
            edges.append(((b[1] - a[1]) / (b[0] - a[0]), index, number, a, b))
    if need < -epochs * 1e-9:
        return None  # even the slowest ρ does more than the work in the slots that must run
    edges.sort(key=lambda edge: edge[:3])
    for _, index, _, a, b in edges:
        if need <= epochs * 1e-15:
            break
        capacity = slots[index].length_s * (b[0] - a[0])
        take = min(capacity, need)
        position[index] = (a, b, take / capacity)
        need -= take
    if need > epochs * 1e-9:
        return None
    fill: Fill = {}
    cost_g = quality = 0.0
    for index, (a, b, theta) in position.items():
        length = slots[index].length_s
        for vertex, share in ((a, 1 - theta), (b, theta)):
            if vertex[2] < 0 or share <= 0:
                continue
            level = levels[vertex[2]]
            seconds = length * share
            fill.setdefault(index, {})[level.rho] = fill.get(index, {}).get(level.rho, 0.0) + seconds
            cost_g += seconds * rates[index][vertex[2]]
            quality += seconds * level.value / level.epoch_s
    return _Solution(fill, cost_g, quality)


Point = TypeVar("Point", bound=tuple)


def lower_hull(points: Sequence[Point]) -> list[Point]:
    """Lower convex hull of ``points`` (x, y, ...) by x; of equal x only the lowest y (monotone chain)."""
    hull: list[Point] = []
    for point in sorted(points):
        if hull and point[0] == hull[-1][0]:
            continue  # sorted: the earlier one is lower
        while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (point[1] - hull[-2][1])
                                  - (hull[-1][1] - hull[-2][1]) * (point[0] - hull[-2][0])) <= 0:
            hull.pop()
        hull.append(point)
    return hull


__all__ = ["Fill", "RhoLevel", "least_carbon_fill", "lower_hull", "most_quality_fill"]
