"""Turning a provider's reading and forecast into planning slots. Pure, no I/O."""

from __future__ import annotations

from datetime import datetime
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
