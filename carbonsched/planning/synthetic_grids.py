"""Seeded synthetic grid intensity traces of three real shapes, for tests and benchmarks. Pure.

Each kind copies the shape of a class of real grids, not any one data set:

``flat``    a low-carbon, nuclear/hydro-dominated grid: 20-120 gCO2e/kWh, a weak evening peak and
            slow day-to-day drift (the shape of France's 2020 trace, which sits at 19-116 g).
``solar``   a grid with much solar and fossil backup: 150-600 g, a deep midday dip and an evening
            peak, cloudy days with a shallower dip (a German-like shape).
``windy``   a wind-heavy grid: 40-350 g, weather fronts lasting one to three days dominate, a
            mild daily shape on top (a British-like shape).

Real exports change their step size (a year at 60 min, then 30 or 15 min); ``step_change_at_s``
switches from ``step_min`` to ``step_min / 2`` at that offset, so consumers meet a trace whose step
changes. Values are in gCO2e/kWh; times are UTC ``datetime`` objects.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

KINDS = ("flat", "solar", "windy")
DEFAULT_START = datetime(2025, 2, 3, tzinfo=timezone.utc)  # a Monday


@dataclass(frozen=True)
class GridShape:
    """Parameters of one kind of grid (all gCO2e/kWh unless named otherwise)."""

    base: float
    evening_peak: float  # cosine amplitude, maximum at 19:00
    midday_dip: float  # Gaussian dip at 13:00, 3 h wide, scaled by the day's sunshine (0..1)
    weather_sd: float  # stationary standard deviation of the hourly AR(1) "weather"
    weather_phi: float  # hourly AR(1) coefficient (0.97: fronts of about a day and a half)
    jitter_sd: float  # independent noise per sample
    low: float
    high: float


SHAPES = {
    "flat": GridShape(base=60.0, evening_peak=18.0, midday_dip=8.0, weather_sd=15.0, weather_phi=0.99,
                      jitter_sd=3.0, low=19.0, high=120.0),
    "solar": GridShape(base=420.0, evening_peak=50.0, midday_dip=170.0, weather_sd=60.0, weather_phi=0.97,
                       jitter_sd=8.0, low=150.0, high=600.0),
    "windy": GridShape(base=190.0, evening_peak=30.0, midday_dip=15.0, weather_sd=75.0, weather_phi=0.985,
                       jitter_sd=6.0, low=40.0, high=350.0),
}


def generate(kind: str, *, days: int = 28, step_min: int = 30, seed: int = 0, start: datetime = DEFAULT_START,
             step_change_at_s: float | None = None) -> list[tuple[datetime, float]]:
    """``days`` of ``kind`` samples (see the module docstring), ``step_min`` apart (``step_min / 2``
    from ``step_change_at_s`` on, when given)."""
    if kind not in SHAPES:
        raise ValueError(f"unknown grid kind {kind!r}; choose one of {', '.join(KINDS)}")
    if days <= 0 or step_min <= 0:
        raise ValueError(f"days and step_min must be positive, got {days!r} and {step_min!r}")
    shape = SHAPES[kind]
    rng = random.Random(f"{kind} {seed}")
    hours = days * 24
    weather = [rng.gauss(0.0, shape.weather_sd)]
    innovation_sd = shape.weather_sd * math.sqrt(1 - shape.weather_phi ** 2)
    for _ in range(hours + 1):
        weather.append(shape.weather_phi * weather[-1] + rng.gauss(0.0, innovation_sd))
    sunshine = [rng.uniform(0.3, 1.0) for _ in range(days + 1)]
    samples: list[tuple[datetime, float]] = []
    offset_s, end_s = 0.0, days * 86400.0
    while offset_s < end_s - 1e-9:
        at = start + timedelta(seconds=offset_s)
        hour = at.hour + at.minute / 60 + at.second / 3600
        day = int(offset_s // 86400)
        daily = (shape.evening_peak * math.cos(2 * math.pi * (hour - 19) / 24)
                 - shape.midday_dip * sunshine[day] * math.exp(-((hour - 13) / 3) ** 2))
        position_h = offset_s / 3600
        low = int(position_h)
        front = weather[low] + (weather[low + 1] - weather[low]) * (position_h - low)
        value = shape.base + daily + front + rng.gauss(0.0, shape.jitter_sd)
        samples.append((at, min(shape.high, max(shape.low, value))))
        step = step_min if step_change_at_s is None or offset_s < step_change_at_s else step_min / 2
        offset_s += step * 60
    return samples


def to_csv(samples: list[tuple[datetime, float]], comment: str = "") -> str:
    """The samples as a trace CSV ``carbonsched backtest --trace`` and the trace provider read."""
    lines = [f"# {comment}"] if comment else []
    lines.append("timestamp,intensity_g_per_kwh")
    lines += [f"{at.strftime('%Y-%m-%dT%H:%M:%SZ')},{value:.1f}" for at, value in samples]
    return "\n".join(lines) + "\n"


__all__ = ["DEFAULT_START", "KINDS", "SHAPES", "GridShape", "generate", "to_csv"]
