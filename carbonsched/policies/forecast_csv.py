"""Reading a forecast from a CSV file: ``timestamp,intensity_g_per_kwh`` rows, header optional.

Timestamps are ISO 8601; ones without a UTC offset are taken as UTC.
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path

from carbonsched.types import ForecastPoint


class ForecastFileError(ValueError):
    """The forecast file cannot be used; the message names the file (and line when it applies)."""


def parse_utc(text: str) -> datetime:
    """ISO 8601 → aware datetime; no offset means UTC. Raises ValueError."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def read_forecast_csv(path: str | Path) -> tuple[ForecastPoint, ...]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ForecastFileError(f"{path}: cannot read: {reason}") from err
    points: list[ForecastPoint] = []
    for line_number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 2:
            raise ForecastFileError(f"{path}:{line_number}: expected 'timestamp,intensity_g_per_kwh', got {row!r}")
        try:
            intensity_g_per_kwh = float(row[1])
        except ValueError:
            if not points and line_number == 1:
                continue  # header row
            raise ForecastFileError(f"{path}:{line_number}: intensity is not a number: {row[1]!r}") from None
        try:
            timestamp = parse_utc(row[0])
        except ValueError:
            raise ForecastFileError(f"{path}:{line_number}: timestamp is not ISO 8601: {row[0]!r}") from None
        points.append(ForecastPoint(timestamp, intensity_g_per_kwh))
    return tuple(sorted(points, key=lambda p: p.timestamp))
