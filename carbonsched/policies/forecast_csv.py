"""Reading a forecast from a CSV file: ``timestamp,intensity_g_per_kwh`` rows, header optional.

Timestamps are read by :mod:`carbonsched.times` (ISO 8601, no offset means UTC, or unix seconds).
"""

from __future__ import annotations

import csv
from pathlib import Path

from carbonsched.times import TimeFormatError, parse_instant
from carbonsched.types import ForecastPoint


class ForecastFileError(ValueError):
    """The forecast file cannot be used; the message names the file (and line when it applies)."""


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
            timestamp = parse_instant(row[0], f"{path}:{line_number}: timestamp")
        except TimeFormatError as exc:
            raise ForecastFileError(str(exc)) from None
        points.append(ForecastPoint(timestamp, intensity_g_per_kwh))
    return tuple(sorted(points, key=lambda p: p.timestamp))
