"""Reading "a forecast in a CSV", in every layout accepted: by a provider's ``forecast_file=`` and by
``carbonsched policy explain --forecast-file/--history-file``.

Blank lines and lines starting with ``#`` are skipped; the first remaining row tells the layout:

- a header with an issue-time column (``generated_at`` or ``issued_at``): forecasts as they were
  issued, a vintages file (:func:`carbonsched.planning.vintages.load_vintages`);
- a header naming a time and an intensity column as trace files do (``timestamp,intensity_g_per_kwh``,
  ``Datetime (UTC),Carbon Intensity``...; :func:`carbonsched.providers.trace.pick_column`), or a header
  naming neither (then the first two columns are the time and the intensity);
- no header (the first row's second cell is a number): ``timestamp,intensity_g_per_kwh`` rows.

Points are at absolute times, each holding until the next (the last for the file's regular step), in
gCO2e/kWh; rows may come in any order; an empty intensity cell is a missing point. Timestamps are read
by :mod:`carbonsched.times` (ISO 8601, naive = UTC, or unix seconds; a file mixing naive and offset
timestamps is refused, as trace files are). Every problem raises :class:`ForecastFileError`, one line
naming the file, the line and the field.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from carbonsched.planning.forecast import DEFAULT_STEP_S
from carbonsched.providers.trace import (
    HEADER,
    INTENSITY_COLUMN_NAMES,
    TIME_COLUMN_NAMES,
    OffsetMixCheck,
    TraceFormatError,
    parse_value,
    pick_column,
    read_csv_rows,
    regular_step_s,
    the_intensity_column,
    timestamp_cell,
)
from carbonsched.types import ForecastPoint

if TYPE_CHECKING:
    from carbonsched.planning.vintages import Vintages

class ForecastFileError(ValueError):
    """A forecast file cannot be used; the message names the file (and the line and field when it applies)."""


@dataclass(frozen=True)
class ForecastCsv:
    """A forecast file's contents: points at absolute times (sorted; the last holds for ``step_s``), or,
    from a vintages file, every issue of a forecast (``vintages``; then ``points`` is empty)."""

    path: str
    points: tuple[ForecastPoint, ...] = ()
    step_s: float = DEFAULT_STEP_S
    vintages: Vintages | None = None

    def known_at(self, now: datetime) -> tuple[ForecastPoint, ...] | None:
        """The forecast as known at ``now``: every point, or of a vintages file the newest issue at or
        before ``now`` (None before the first issue)."""
        if self.vintages is None:
            return self.points
        vintage = self.vintages.newest_at(now.timestamp())
        return None if vintage is None else vintage.forecast_points


def read_forecast_csv(path: str | Path) -> ForecastCsv:
    """The forecast in the CSV file at ``path`` (any layout of the module docstring); ForecastFileError
    naming file, line and field when it cannot be used."""
    # Imported here: the planning package reads its files with this package's trace reader.
    from carbonsched.planning.vintages import VintagesFormatError, is_vintages_file, load_vintages

    path = Path(path)
    try:
        if is_vintages_file(path):
            return ForecastCsv(str(path), vintages=load_vintages(path))
        return _read_points(path)
    except (TraceFormatError, VintagesFormatError) as exc:
        raise ForecastFileError(str(exc)) from None
    except (ValueError, OverflowError, csv.Error) as exc:  # e.g. a timestamp at the end of the calendar
        raise ForecastFileError(f"{path}: unusable forecast file: {exc}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _columns(path: Path, line: int, header: list[str]) -> tuple[int, int]:
    """(time, intensity) column indexes of a header: by name as in trace files, else the first two."""
    try:
        return (pick_column(path, line, header, None, TIME_COLUMN_NAMES, "time", "time_column"),
                pick_column(path, line, header, None, INTENSITY_COLUMN_NAMES, "intensity", "intensity_column",
                            fallback=the_intensity_column))
    except TraceFormatError:
        if len(header) < 2:
            raise TraceFormatError(f"{path}:{line}: expected 'timestamp,intensity_g_per_kwh', got {header!r}") from None
        return 0, 1


def _read_points(path: Path) -> ForecastCsv:
    rows = read_csv_rows(path, "forecast file", ",".join(HEADER), may_be_empty=True)
    if not rows:
        return ForecastCsv(str(path))
    first_line, first = rows[0]
    has_header = not (len(first) >= 2 and _is_number(first[1]))
    time_index, value_index = _columns(path, first_line, first) if has_header else (0, 1)
    time_name = first[time_index].strip() if has_header else HEADER[0]
    value_name = first[value_index].strip() if has_header else HEADER[1]
    stamped: list[tuple[datetime, int, float]] = []
    offset_check = OffsetMixCheck(path, time_name)
    for number, cells in rows[1:] if has_header else rows:
        if len(cells) <= max(time_index, value_index):
            raise TraceFormatError(f"{path}:{number}: expected at least {max(time_index, value_index) + 1} fields, "
                                   f"got {len(cells)}")
        if not cells[value_index].strip():
            continue  # a missing point
        stamp, has_offset = timestamp_cell(path, number, time_name, cells[time_index])
        offset_check.add(number, has_offset)
        stamped.append((stamp, number, parse_value(path, number, value_name, cells[value_index])))
    stamped.sort()
    for (earlier, earlier_line, _), (later, line, _) in zip(stamped, stamped[1:]):
        if later == earlier:
            raise TraceFormatError(f"{path}:{line}: field {time_name}: the same time as line {earlier_line}")
    points = tuple(ForecastPoint(stamp, value) for stamp, _, value in stamped)
    spacings = [(b.timestamp - a.timestamp).total_seconds() for a, b in zip(points, points[1:])]
    return ForecastCsv(str(path), points, regular_step_s(spacings) if spacings else DEFAULT_STEP_S)
