"""Write carbonsched/data/synthetic_trace.csv: 7 days of half-hourly, made-up grid carbon intensity.

The shape imitates a solar-heavy grid: lowest around 13:00 UTC, highest around 01:00 UTC, spanning
roughly 120-420 gCO2e/kWh, with a slow day-to-day drift (weather) and small noise. The output is
deterministic (fixed seed), so re-running the script reproduces the committed file byte for byte.

Usage: python scripts/make_synthetic_trace.py [OUTPUT.csv]
"""

from __future__ import annotations

import math
import random
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

START = datetime(2025, 1, 6, tzinfo=timezone.utc)  # a Monday
STEP = timedelta(minutes=30)
DAYS = 7
SEED = 20250106
MIDPOINT_G_PER_KWH = 270.0
DAILY_SWING_G_PER_KWH = 135.0
LOWEST_HOUR_UTC = 13.0
DRIFT_G_PER_KWH = 12.0
NOISE_G_PER_KWH = 6.0
FLOOR_G_PER_KWH, CEILING_G_PER_KWH = 120.0, 420.0
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "carbonsched" / "data" / "synthetic_trace.csv"


def synthetic_rows(seed: int = SEED) -> list[tuple[datetime, float]]:
    rng = random.Random(seed)
    drift_by_day = [rng.uniform(-DRIFT_G_PER_KWH, DRIFT_G_PER_KWH) for _ in range(DAYS + 1)]
    rows = []
    for step in range(DAYS * 24 * 2):
        when = START + step * STEP
        hour = when.hour + when.minute / 60
        day_fraction = (when - START).total_seconds() / 86400
        day = int(day_fraction)
        # Interpolate the drift between days so midnight has no jump.
        drift = drift_by_day[day] + (drift_by_day[day + 1] - drift_by_day[day]) * (day_fraction - day)
        daily = -DAILY_SWING_G_PER_KWH * math.cos(2 * math.pi * (hour - LOWEST_HOUR_UTC) / 24)
        value = MIDPOINT_G_PER_KWH + daily + drift + rng.gauss(0, NOISE_G_PER_KWH)
        rows.append((when, round(min(CEILING_G_PER_KWH, max(FLOOR_G_PER_KWH, value)), 1)))
    return rows


def render(rows: list[tuple[datetime, float]]) -> str:
    lines = [
        "# SYNTHETIC data, not measurements: made by scripts/make_synthetic_trace.py "
        f"(seed {SEED}) for demos and tests.",
        "timestamp,intensity_g_per_kwh",
    ]
    lines += [f"{when.strftime('%Y-%m-%dT%H:%M:%SZ')},{value:.1f}" for when, value in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    output = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUTPUT
    output.write_text(render(synthetic_rows()), encoding="utf-8")
    print(f"wrote {output}")


if __name__ == "__main__":
    main(sys.argv)
