"""Turning a provider's reading and forecast into planning slots. Pure, no I/O."""

from __future__ import annotations

import bisect
from datetime import datetime, timezone
from typing import Sequence

from carbonsched.planning.model import Slot
from carbonsched.types import ForecastPoint

DEFAULT_STEP_S = 1800.0


def slots_from_forecast(now: datetime, current_g_per_kwh: float, forecast: Sequence[ForecastPoint],
                        horizon_s: float) -> list[Slot]:
    """Slots from ``now`` (time 0) up to ``horizon_s`` at most.

    The measured value holds until the first forecast point after ``now``; each point holds until
    the next, the last for the spacing before it. With no forecast the measured value is assumed to
    hold up to the horizon; otherwise the slots end where the forecast ends.
    """
    ahead = sorted((p for p in forecast if p.timestamp > now), key=lambda p: p.timestamp)
    if not ahead:
        return [Slot(0.0, horizon_s, current_g_per_kwh)]
    starts = [(p.timestamp - now).total_seconds() for p in ahead]
    spacing = starts[-1] - starts[-2] if len(starts) > 1 else DEFAULT_STEP_S
    bounds = [0.0] + starts + [starts[-1] + spacing]
    values = [current_g_per_kwh] + [p.intensity_g_per_kwh for p in ahead]
    slots = []
    for start, end, value in zip(bounds, bounds[1:], values):
        if start >= horizon_s:
            break
        slots.append(Slot(start, min(end, horizon_s), value))
    return slots


DAY_S = 86400.0
HISTORY_DAYS = 7


class ReadingHistory:
    """Past readings (unix seconds, gCO2e/kWh), for the same time of day on previous days."""

    def __init__(self, readings: Sequence[tuple[float, float]]) -> None:
        ordered = sorted(readings)
        self.times_s = [ts for ts, _ in ordered]
        self.values = [value for _, value in ordered]

    def as_points(self) -> tuple[ForecastPoint, ...]:
        """The readings as points (UTC timestamps), oldest first, as policies get them in ``Signals.history``."""
        return tuple(ForecastPoint(datetime.fromtimestamp(ts, timezone.utc), value)
                     for ts, value in zip(self.times_s, self.values))

    def same_time_of_day_mean(self, start_s: float, end_s: float, days: int = HISTORY_DAYS) -> float | None:
        """Mean over the previous ``days`` days of each day's mean reading in ``[start_s, end_s)``
        shifted back by whole days (unix seconds); None when none of those days has a reading."""
        day_means = []
        for day in range(1, days + 1):
            low = bisect.bisect_left(self.times_s, start_s - day * DAY_S)
            high = bisect.bisect_left(self.times_s, end_s - day * DAY_S)
            if high > low:
                day_means.append(sum(self.values[low:high]) / (high - low))
        return sum(day_means) / len(day_means) if day_means else None


def fill_beyond_forecast(slots: Sequence[Slot], horizon_s: float, now_s: float, history: ReadingHistory,
                         step_s: float) -> list[Slot]:
    """``slots`` continued to ``horizon_s`` in ``step_s`` slots, each the mean of the readings at the
    same time of day over the previous days (:meth:`ReadingHistory.same_time_of_day_mean`), or the
    last slot's value where there are none. With no history for any of them, the last value holds
    in one slot to the horizon."""
    slots = list(slots)
    last_g_per_kwh = slots[-1].intensity_g_per_kwh
    filled, any_history = [], False
    start = slots[-1].end_s
    while start < horizon_s - 1e-9:
        end = min(start + step_s, horizon_s)
        mean = history.same_time_of_day_mean(now_s + start, now_s + end)
        any_history = any_history or mean is not None
        filled.append(Slot(start, end, last_g_per_kwh if mean is None else mean))
        start = end
    if not filled:
        return slots
    if not any_history:
        return slots + [Slot(slots[-1].end_s, horizon_s, last_g_per_kwh)]
    return slots + filled
