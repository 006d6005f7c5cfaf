"""The built-in policy kinds: constant, steps, linear, forecast and budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from carbonsched.policies.base import Policy, Target, fmt_g, fmt_rho
from carbonsched.policies.fields import FieldReader
from carbonsched.types import Signals


class ConstantPolicy(Policy):
    """``rho``: the same ρ whatever the grid does. ``fallback_rho`` defaults to ``rho``."""

    kind = "constant"

    def configure(self, reader: FieldReader) -> None:
        self.rho = self.read_rho(reader, "rho") or 1.0

    def default_fallback_rho(self) -> float:
        return self.rho

    def target(self, intensity_g_per_kwh: float, signals: Signals) -> Target:
        return Target(self.rho, f"constant ρ {fmt_rho(self.rho)}")


@dataclass(frozen=True)
class Step:
    """ρ for intensities below ``below_g_per_kwh`` (None: every intensity, the catch-all)."""

    below_g_per_kwh: float | None
    rho: float


class StepsPolicy(Policy):
    """``[[steps]]`` tables with ``below`` (gCO2e/kWh) and ``rho``, ordered by increasing ``below``.

    The first step whose ``below`` exceeds the intensity wins. The last step may omit ``below``
    (catch-all); without one, intensities at or above the last ``below`` get the last step's ρ.
    """

    kind = "steps"

    def configure(self, reader: FieldReader) -> None:
        self.steps: list[Step] = []
        step_readers = reader.tables_field("steps") or []
        previous_below: float | None = None
        for i, step in enumerate(step_readers):
            is_last = i == len(step_readers) - 1
            if not is_last and not step.has("below"):
                step.problem("below", "required on every step but the last (the last may omit it as catch-all)")
            below = step.number("below", default=None, low=0.0, low_open=True)
            if below is not None and previous_below is not None and below <= previous_below:
                step.problem("below", f"steps must be ordered by increasing 'below': {fmt_g(below)} "
                                      f"is not above the previous step's {fmt_g(previous_below)}")
            if below is not None:
                previous_below = below
            rho = self.read_rho(step, "rho")
            self.steps.append(Step(below, rho if rho is not None else 1.0))

    def target(self, intensity_g_per_kwh: float, signals: Signals) -> Target:
        for i, step in enumerate(self.steps):
            if step.below_g_per_kwh is None:
                return Target(step.rho, f"intensity {fmt_g(intensity_g_per_kwh)} gCO2e/kWh, catch-all "
                                        f"steps[{i}] → ρ {fmt_rho(step.rho)}")
            if intensity_g_per_kwh < step.below_g_per_kwh:
                return Target(step.rho, f"intensity {fmt_g(intensity_g_per_kwh)} < {fmt_g(step.below_g_per_kwh)} "
                                        f"gCO2e/kWh (steps[{i}]) → ρ {fmt_rho(step.rho)}")
        last = self.steps[-1]
        return Target(last.rho, f"intensity {fmt_g(intensity_g_per_kwh)} gCO2e/kWh is not below any step; "
                                f"last step's ρ {fmt_rho(last.rho)}")

    def intensity_breakpoints_g_per_kwh(self, signals: Signals) -> Sequence[float]:
        return [s.below_g_per_kwh for s in self.steps if s.below_g_per_kwh is not None]


class LinearPolicy(Policy):
    """ρ interpolated linearly from ``rho_at_low`` at ``low_g_per_kwh`` to ``rho_at_high`` at
    ``high_g_per_kwh``; held at the end value outside that range."""

    kind = "linear"
    rho_is_continuous = True

    def configure(self, reader: FieldReader) -> None:
        self.low_g_per_kwh = reader.number("low_g_per_kwh", low=0.0)
        self.high_g_per_kwh = reader.number("high_g_per_kwh", low=0.0)
        if (self.low_g_per_kwh is not None and self.high_g_per_kwh is not None
                and self.high_g_per_kwh <= self.low_g_per_kwh):
            reader.problem("high_g_per_kwh", f"must be above low_g_per_kwh ({fmt_g(self.low_g_per_kwh)}), "
                                             f"got {fmt_g(self.high_g_per_kwh)}")
        self.rho_at_low = self.read_rho(reader, "rho_at_low")
        self.rho_at_high = self.read_rho(reader, "rho_at_high")

    def target(self, intensity_g_per_kwh: float, signals: Signals) -> Target:
        low, high = self.low_g_per_kwh, self.high_g_per_kwh
        fraction = min(1.0, max(0.0, (intensity_g_per_kwh - low) / (high - low)))
        rho = self.rho_at_low + (self.rho_at_high - self.rho_at_low) * fraction
        where = ("at or below low" if fraction == 0.0 else "at or above high" if fraction == 1.0
                 else f"{fraction:.0%} of the way from {fmt_g(low)} to {fmt_g(high)}")
        return Target(rho, f"intensity {fmt_g(intensity_g_per_kwh)} gCO2e/kWh is {where} → ρ {fmt_rho(rho)}",
                      (f"ρ runs from {fmt_rho(self.rho_at_low)} at {fmt_g(low)} to {fmt_rho(self.rho_at_high)} "
                       f"at {fmt_g(high)} gCO2e/kWh",))

    def intensity_breakpoints_g_per_kwh(self, signals: Signals) -> Sequence[float]:
        return [self.low_g_per_kwh, self.high_g_per_kwh]


class ForecastPolicy(Policy):
    """ρ by where the current intensity ranks among the forecast values in the next ``window_h``,
    or, with ``history_days`` set and too little forecast, among the past readings of that many days.

    Window: forecast points with ``now <= timestamp < now + window_h``; history: past readings with
    ``now - history_days <= timestamp <= now``. Rank: 0 at or below the lowest value, 1 at or above
    the highest, linear between neighbouring sorted values. ρ runs linearly from ``rho_at_lowest``
    (rank 0) to ``rho_at_highest`` (rank 1). Fewer than two values in both → ``fallback_rho``.
    Ranks are relative, so the same file works on a grid at 20-120 gCO2e/kWh and one at 150-600.
    """

    kind = "forecast"
    rho_is_continuous = True

    def configure(self, reader: FieldReader) -> None:
        self.window_h = reader.number("window_h", default=24.0, low=0.0, low_open=True)
        self.history_days = reader.number("history_days", default=None, low=0.0, low_open=True)
        self.rho_at_lowest = self.read_rho(reader, "rho_at_lowest")
        self.rho_at_highest = self.read_rho(reader, "rho_at_highest")

    def _forecast_g_per_kwh(self, signals: Signals) -> list[float]:
        end = signals.now + timedelta(hours=self.window_h)
        return sorted(p.intensity_g_per_kwh for p in signals.forecast if signals.now <= p.timestamp < end)

    def _history_g_per_kwh(self, signals: Signals) -> list[float]:
        if self.history_days is None:
            return []
        start = signals.now - timedelta(days=self.history_days)
        return sorted(p.intensity_g_per_kwh for p in signals.history if start <= p.timestamp <= signals.now)

    def _ranked_against(self, signals: Signals) -> tuple[list[float], str]:
        """The sorted values the intensity is ranked among, and what they are."""
        forecast = self._forecast_g_per_kwh(signals)
        if len(forecast) >= 2 or self.history_days is None:
            return forecast, f"next {fmt_g(self.window_h)} h forecast"
        return self._history_g_per_kwh(signals), f"last {fmt_g(self.history_days)} days' readings"

    def target(self, intensity_g_per_kwh: float, signals: Signals) -> Target:
        values, what = self._ranked_against(signals)
        if len(values) < 2:
            rho = self.fallback_rho
            looked_at = f"{len(self._forecast_g_per_kwh(signals))} points in the next {fmt_g(self.window_h)} h"
            if self.history_days is not None:
                looked_at += f", {len(values)} readings in the last {fmt_g(self.history_days)} days"
            return Target(rho, f"no usable forecast ({looked_at}, need 2): fallback_rho {fmt_rho(rho)}")
        rank = _rank(intensity_g_per_kwh, values)
        rho = self.rho_at_lowest + (self.rho_at_highest - self.rho_at_lowest) * rank
        return Target(rho, f"intensity {fmt_g(intensity_g_per_kwh)} gCO2e/kWh ranks at {rank:.0%} of the "
                           f"{what} → ρ {fmt_rho(rho)}",
                      (f"{what}: {len(values)} values, {fmt_g(values[0])}–{fmt_g(values[-1])} gCO2e/kWh",))

    def intensity_breakpoints_g_per_kwh(self, signals: Signals) -> Sequence[float]:
        return self._ranked_against(signals)[0]


def _rank(value: float, sorted_values: list[float]) -> float:
    if value <= sorted_values[0]:
        return 0.0
    if value >= sorted_values[-1]:
        return 1.0
    for i in range(len(sorted_values) - 1):
        low, high = sorted_values[i], sorted_values[i + 1]
        if low <= value < high:
            return (i + (value - low) / (high - low)) / (len(sorted_values) - 1)
    return 1.0


class BudgetPolicy(Policy):
    """A carbon budget per UTC day (``budget_g_per_day``) and/or per job (``budget_g_per_job``).

    Rule: with ``used`` the largest used/budget fraction among the configured budgets whose usage
    is known, ρ = 1 − (1 − rho_min) × used, so ρ falls linearly from 1 (nothing used) to rho_min
    (budget spent) and stays at rho_min beyond. Usage unknown for every budget → ρ 1.
    """

    kind = "budget"

    def configure(self, reader: FieldReader) -> None:
        self.budget_g_per_day = reader.number("budget_g_per_day", default=None, low=0.0, low_open=True)
        self.budget_g_per_job = reader.number("budget_g_per_job", default=None, low=0.0, low_open=True)
        if not reader.has("budget_g_per_day") and not reader.has("budget_g_per_job"):
            reader.problem("budget_g_per_day", "set budget_g_per_day, budget_g_per_job or both")

    def target(self, intensity_g_per_kwh: float, signals: Signals) -> Target:
        known: list[tuple[float, str]] = []
        unknown: list[str] = []
        for budget_g, used_g, label in ((self.budget_g_per_day, signals.carbon_used_today_g, "today"),
                                        (self.budget_g_per_job, signals.carbon_used_job_g, "this job")):
            if budget_g is None:
                continue
            if used_g is None:
                unknown.append(f"carbon used {label} unknown")
            else:
                known.append((used_g / budget_g, f"{fmt_g(round(used_g, 1))} of {fmt_g(budget_g)} g used {label}"))
        if not known:
            return Target(1.0, "; ".join(unknown) + ": ρ 1.00")
        fraction, label = max(known)
        rho = max(self.rho_min, 1.0 - (1.0 - self.rho_min) * fraction)
        reason = f"{label} ({fraction:.0%}) → ρ {fmt_rho(rho)}"
        return Target(rho, reason + "".join(f"; {u}" for u in unknown))
