"""The job and cost model every planner in this package works with. Pure values, no I/O.

Time is in seconds from *now* (the moment of planning), intensity in gCO2e/kWh, power in W,
carbon in gCO2e.

The job
-------
A job has ``epochs`` of work left (a real number: 3.5 means three and a half passes over the
training data), must finish by ``deadline_s``, and trains every epoch at some
``rho_min <= ρ <= 1``. GreenTrainer's ρ is the share of full fine-tuning's backward FLOPs an epoch
may spend, so **an epoch at ρ is one full pass over the data** that takes ``epoch_s(ρ)`` seconds
(``epoch_s_at_full · ρ`` in the linear model; measured points otherwise). Lowering ρ therefore
never skips data; it trains fewer tensors per step, which is where quality is lost. The quality
guard is ``mean_rho``: the epoch-weighted mean ρ over the job, ``Σ_e ρ_e / E``, must be at least
this floor (``None``: only ``rho_min``). ``Σ_e ρ_e`` is the job's *training work* in full-epoch
equivalents. ``may_pause`` says whether the job may stop between steps and resume later.

The cost
--------
While running the job draws ``running_power_w``, or, when measured at two or more ρ
(``power_points``), a power P(ρ) that depends on ρ; while paused (before it finishes) it draws
``idle_power_w`` (0 for a job that releases its GPU, the measured idle draw for one that keeps
it). Carbon = Σ over time of power × intensity × duration; an epoch at ρ run in a slot of
intensity I costs P(ρ)·t(ρ)·I.

Why this decomposes
-------------------
With running power independent of ρ, carbon depends on *how long* the job runs and *where in time*
those seconds fall, not on which epoch runs when. So the carbon-optimal plan for a pausable job is:
(1) the mix of ρ levels that does the E epochs in the least running time while meeting the mean-ρ
floor, (2) that running time placed in the cleanest slots before the deadline. Step (1) is a
multiple-choice knapsack with identical classes, solved exactly by taking the lower convex hull of
the (ρ, epoch time) points at the floor; step (2) is a fractional knapsack over slots sorted by
intensity (CarbonScaler's greedy, with ρ in place of replicas). Any other plan either runs longer
(more carbon in any slot order) or uses dirtier seconds. See :mod:`carbonsched.planning.planner`.

When power depends on ρ the two steps no longer separate: a slower ρ may use less energy per
epoch, and the higher-power seconds belong in the cleaner slots. The plan is then one linear
program over (slot, ρ level), solved exactly by :mod:`carbonsched.planning.knapsack`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

JOULES_PER_KWH = 3.6e6


DEFAULT_RUNNING_POWER_W = 300.0  # a job's running power when none is given or measured


class PlanningInputError(ValueError):
    """A job, cost model or forecast the planner cannot use; the message names the field."""


@dataclass(frozen=True)
class Job:
    """A job as declared at start: work left, deadline and the ρ bounds it accepts."""

    epochs: float
    deadline_s: float
    rho_min: float
    mean_rho: float | None = None
    may_pause: bool = False
    carbon_budget_g: float | None = None  # non-pausing jobs: maximise training work within this

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epochs) and self.epochs > 0):
            raise PlanningInputError(f"epochs must be a positive number, got {self.epochs!r}")
        if not (math.isfinite(self.deadline_s) and self.deadline_s > 0):
            raise PlanningInputError(f"deadline must be in the future, got {self.deadline_s!r} s from now")
        if not 0 < self.rho_min <= 1:
            raise PlanningInputError(f"rho_min must be in (0, 1], got {self.rho_min!r}")
        if self.mean_rho is not None and not self.rho_min <= self.mean_rho <= 1:
            raise PlanningInputError(f"mean_rho must be in [rho_min={self.rho_min:g}, 1], got {self.mean_rho!r}")
        if self.carbon_budget_g is not None and not (math.isfinite(self.carbon_budget_g) and self.carbon_budget_g > 0):
            raise PlanningInputError(f"carbon budget must be a positive number of gCO2e, got {self.carbon_budget_g!r}")

    @property
    def rho_floor(self) -> float:
        """The lowest mean ρ the job accepts."""
        return self.rho_min if self.mean_rho is None else max(self.rho_min, self.mean_rho)


def remaining_job(job: Job, *, epochs_done: float, rho_sum_done: float, elapsed_s: float) -> Job:
    """The job left after ``epochs_done`` epochs whose ρ summed to ``rho_sum_done``, ``elapsed_s`` later.

    This is what a re-plan at a decision interval starts from: the mean-ρ floor is carried over so
    that the whole job still meets it (raised when past epochs ran below it, lowered when above,
    kept within [rho_min, 1]; a floor that can no longer be met becomes 1, the best still possible).
    The deadline moves ``elapsed_s`` closer; a budget shrinks only through the caller.
    """
    left = job.epochs - epochs_done
    if left <= 0:
        raise PlanningInputError(f"no work left: {epochs_done:g} of {job.epochs:g} epochs done")
    mean_rho = job.mean_rho
    if mean_rho is not None:
        mean_rho = min(1.0, max(job.rho_min, (mean_rho * job.epochs - rho_sum_done) / left))
    return Job(epochs=left, deadline_s=job.deadline_s - elapsed_s, rho_min=job.rho_min, mean_rho=mean_rho,
               may_pause=job.may_pause, carbon_budget_g=job.carbon_budget_g)


@dataclass(frozen=True)
class CostModel:
    """Epoch time per ρ and power, defaults until the job's own records say otherwise.

    ``epoch_time_points``: measured ``(ρ, epoch seconds)`` pairs; between them the epoch time is
    interpolated linearly, outside them extrapolated from the nearest two. Empty: the linear model
    ``epoch_s_at_full · ρ``.

    ``power_points``: measured ``(ρ, running W)`` pairs (energy over running time of epochs at that
    ρ). Between them the *energy per epoch* ``P·t`` is interpolated linearly, so running at a ρ
    between two measured ones costs exactly what mixing epochs at those two costs; below and above
    them the nearest measured power holds. Empty: ``running_power_w`` at every ρ. ``idle_power_w``
    must not exceed the lowest running power.
    """

    epoch_s_at_full: float
    running_power_w: float
    idle_power_w: float = 0.0
    epoch_time_points: tuple[tuple[float, float], ...] = field(default=())
    power_points: tuple[tuple[float, float], ...] = field(default=())

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epoch_s_at_full) and self.epoch_s_at_full > 0):
            raise PlanningInputError(f"epoch time at ρ 1 must be positive seconds, got {self.epoch_s_at_full!r}")
        if not (math.isfinite(self.running_power_w) and self.running_power_w > 0):
            raise PlanningInputError(f"running power must be positive W, got {self.running_power_w!r}")
        points = _checked_points(self.epoch_time_points, "epoch_time_points", "seconds")
        object.__setattr__(self, "epoch_time_points", points)
        power = _checked_points(self.power_points, "power_points", "W")
        object.__setattr__(self, "power_points", power)
        lowest_w = min([self.running_power_w] if not power else [w for _, w in power])
        if not (math.isfinite(self.idle_power_w) and 0 <= self.idle_power_w <= lowest_w):
            raise PlanningInputError(f"idle power must be in [0, running power] W, got {self.idle_power_w!r}")

    def epoch_s(self, rho: float) -> float:
        """Seconds one epoch takes at ``rho``."""
        points = self.epoch_time_points
        if not points:
            return self.epoch_s_at_full * rho
        return max(1e-9, interpolate(points, rho))

    def measured_rhos(self) -> tuple[float, ...]:
        """ρ values with a measured epoch time or power: where time or energy per epoch may bend."""
        power = self.power_points if self.power_varies else ()
        return tuple(sorted({rho for rho, _ in (*self.epoch_time_points, *power)}))

    @property
    def power_varies(self) -> bool:
        """Whether the running power depends on ρ (measured points that differ)."""
        return len({watts for _, watts in self.power_points}) > 1

    def power_w(self, rho: float) -> float:
        """Running power at ``rho`` (see the class docstring)."""
        points = self.power_points
        if not points:
            return self.running_power_w
        if rho <= points[0][0]:
            return points[0][1]
        if rho >= points[-1][0]:
            return points[-1][1]
        energy = [(r, watts * self.epoch_s(r)) for r, watts in points]
        return interpolate(energy, rho) / self.epoch_s(rho)

    def epoch_energy_j(self, rho: float) -> float:
        """Joules one epoch at ``rho`` takes while running."""
        return self.power_w(rho) * self.epoch_s(rho)


def _checked_points(points: Sequence[tuple[float, float]], name: str, unit: str) -> tuple[tuple[float, float], ...]:
    ordered = sorted(points)
    if len(ordered) == 1:
        raise PlanningInputError(f"{name} needs at least two (ρ, {unit}) pairs")
    for (rho_a, _), (rho_b, _) in zip(ordered, ordered[1:]):
        if rho_a == rho_b:
            raise PlanningInputError(f"{name} has ρ {rho_a:g} twice")
    if any(not (0 < rho <= 1 and math.isfinite(value) and value > 0) for rho, value in ordered):
        raise PlanningInputError(f"{name} must be (ρ in (0, 1], positive {unit}) pairs")
    return tuple(ordered)


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float:
    """Piecewise-linear through sorted ``points``; linear extrapolation from the end pairs."""
    if len(points) == 1:
        return points[0][1]
    index = 1
    while index < len(points) - 1 and points[index][0] < x:
        index += 1
    (x0, y0), (x1, y1) = points[index - 1], points[index]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass(frozen=True)
class Slot:
    """``[start_s, end_s)`` from now, with one intensity (gCO2e/kWh) for all of it."""

    start_s: float
    end_s: float
    intensity_g_per_kwh: float

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s


def carbon_g(power_w: float, intensity_g_per_kwh: float, seconds: float) -> float:
    return power_w * seconds / JOULES_PER_KWH * intensity_g_per_kwh


def check_slots(slots: Sequence[Slot]) -> None:
    """Slots must be contiguous from 0, each with positive length and a usable intensity."""
    if not slots:
        raise PlanningInputError("no forecast slots to plan over")
    expected_start = 0.0
    for index, slot in enumerate(slots):
        if not math.isclose(slot.start_s, expected_start, abs_tol=1e-6):
            raise PlanningInputError(f"slot {index} starts at {slot.start_s:g} s, expected {expected_start:g} s (gap or overlap)")
        if not slot.length_s > 0:
            raise PlanningInputError(f"slot {index} has no length ({slot.start_s:g}..{slot.end_s:g} s)")
        if not (math.isfinite(slot.intensity_g_per_kwh) and slot.intensity_g_per_kwh >= 0):
            raise PlanningInputError(f"slot {index} intensity {slot.intensity_g_per_kwh!r} is not a non-negative number")
        expected_start = slot.end_s
