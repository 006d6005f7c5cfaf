"""Forecasts as they were issued ("vintages"), and what a planner saw of them at a given moment.

A vintages file is a long CSV: one row per (issue time, target time, forecast value in gCO2e/kWh).
Two layouts are recognised by their column names (case and surrounding spaces ignored):

- WattTime's historical forecasts: ``generated_at,point_time,value``;
- a generic one: ``issued_at,target_start,forecast...`` (the one column whose name starts with
  ``forecast``, e.g. ``forecast_g_per_kwh``).

``issued_column=``, ``target_column=``, ``forecast_column=`` name other columns. Timestamps are
parsed as trace files' are (:mod:`carbonsched.times`: ISO 8601 with or
without an offset, naive = UTC, or unix seconds); rows may come in any order; an empty forecast
cell is a missing point. Every problem raises :class:`VintagesFormatError` naming file, line and field.

:func:`vintage_forecast_at` replays them in a backtest: at each planning moment the planner gets
the newest issue at or before that moment, never a later one, turned into slots as the daemon does.
(This module reads a file, unlike the rest of the package: the parsing is the trace reader's.)
"""

from __future__ import annotations

import bisect
import csv
import functools
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from carbonsched.planning.closed_loop import ForecastAt
from carbonsched.planning.job_planner import planning_slots
from carbonsched.planning.forecast import DAY_S, DEFAULT_STEP_S, HISTORY_DAYS, ReadingHistory
from carbonsched.planning.model import Slot
from carbonsched.planning.series import Series
from carbonsched.providers.trace import (
    TraceFormatError,
    normalise_column_name,
    parse_value,
    pick_column,
    read_csv_rows,
    timestamp_cell,
)
from carbonsched.types import ForecastPoint

ISSUED_COLUMN_NAMES = ("generated_at", "issued_at")
TARGET_COLUMN_NAMES = ("point_time", "target_start")
FORECAST_COLUMN_NAMES = ("value",)
GENERIC_HEADER = "issued_at,target_start,forecast_g_per_kwh"
MIN_WINDOW_S = 1e-3  # a planning moment at the deadline still gets one (tiny) slot


class VintagesFormatError(ValueError):
    """A vintages file is unusable; the message names the file, the line and the field."""


@dataclass(frozen=True)
class Vintage:
    """One issue of a forecast: when it was issued and its points (target unix s, gCO2e/kWh), sorted."""

    issued_s: float
    points: tuple[tuple[float, float], ...]

    @property
    def horizon_end_s(self) -> float:
        """Unix seconds where the forecast ends: the last point holds for the spacing before it
        (:data:`~carbonsched.planning.forecast.DEFAULT_STEP_S` when there is one point)."""
        last = self.points[-1][0]
        return last + (last - self.points[-2][0] if len(self.points) > 1 else DEFAULT_STEP_S)

    @functools.cached_property
    def forecast_points(self) -> tuple[ForecastPoint, ...]:
        """The points as the providers give them (aware UTC timestamps)."""
        return tuple(ForecastPoint(datetime.fromtimestamp(target_s, timezone.utc), value)
                     for target_s, value in self.points)


@dataclass(frozen=True)
class Vintages:
    """Every issue of a forecast, oldest first."""

    issues: tuple[Vintage, ...]
    path: str = ""
    issued_s: tuple[float, ...] = field(init=False)  # sorted unix seconds of the issues

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.issues, key=lambda vintage: vintage.issued_s))
        object.__setattr__(self, "issues", ordered)
        object.__setattr__(self, "issued_s", tuple(vintage.issued_s for vintage in ordered))

    def newest_at(self, now_s: float) -> Vintage | None:
        """The newest issue at or before ``now_s`` (unix seconds), never one issued after it; None before the first."""
        index = bisect.bisect_right(self.issued_s, now_s) - 1
        return self.issues[index] if index >= 0 else None


def the_forecast_column(names: list[str]) -> int | None:
    """The one column whose (normalised) name starts with "forecast"."""
    candidates = [i for i, name in enumerate(names) if name.startswith("forecast")]
    return candidates[0] if len(candidates) == 1 else None


def is_vintages_file(path: str | Path) -> bool:
    """Whether the file's header has an issue-time column (``generated_at`` or ``issued_at``); False
    when it cannot be read (the caller's own loader then reports why)."""
    try:
        with open(path, encoding="utf-8-sig") as lines:
            header_text = next((line for line in lines if line.strip() and not line.lstrip().startswith("#")), "")
    except (OSError, UnicodeDecodeError):
        return False
    header = next(csv.reader([header_text]), [])
    return any(normalise_column_name(cell) in ISSUED_COLUMN_NAMES for cell in header)


def load_vintages(path: str | Path, *, issued_column: str | None = None, target_column: str | None = None,
                  forecast_column: str | None = None) -> Vintages:
    """Parse a vintages CSV (see the module docstring); raise :class:`VintagesFormatError` naming file,
    line and field."""
    path = Path(path)
    try:
        return _parse(path, issued_column, target_column, forecast_column)
    except TraceFormatError as exc:
        raise VintagesFormatError(str(exc)) from None


def _parse(path: Path, issued_column: str | None, target_column: str | None,
           forecast_column: str | None) -> Vintages:
    rows = read_csv_rows(path, "vintages file", GENERIC_HEADER)
    header_line, header = rows[0]
    issued_index = pick_column(path, header_line, header, issued_column, ISSUED_COLUMN_NAMES, "issue time",
                               "issued_column")
    target_index = pick_column(path, header_line, header, target_column, TARGET_COLUMN_NAMES, "target time",
                               "target_column")
    value_index = pick_column(path, header_line, header, forecast_column, FORECAST_COLUMN_NAMES, "forecast",
                              "forecast_column", fallback=the_forecast_column)
    issued_name, target_name, value_name = (header[i].strip() for i in (issued_index, target_index, value_index))
    by_issue: dict[float, dict[float, float]] = {}
    for number, cells in rows[1:]:
        if len(cells) != len(header):
            raise VintagesFormatError(f"{path}:{number}: expected {len(header)} fields, got {len(cells)}")
        if not cells[value_index].strip():
            continue  # a missing point
        issued_s = timestamp_cell(path, number, issued_name, cells[issued_index])[0].timestamp()
        target_s = timestamp_cell(path, number, target_name, cells[target_index])[0].timestamp()
        value = parse_value(path, number, value_name, cells[value_index])
        points = by_issue.setdefault(issued_s, {})
        if target_s in points:
            raise VintagesFormatError(f"{path}:{number}: field {target_name}: {cells[target_index].strip()!r} appears "
                                      f"twice for the issue at {cells[issued_index].strip()!r}")
        points[target_s] = value
    if not by_issue:
        raise VintagesFormatError(f"{path}: no forecast rows after the header")
    return Vintages(tuple(Vintage(issued_s, tuple(sorted(points.items()))) for issued_s, points in by_issue.items()),
                    str(path))


def history_before(truth: Series, offset_s: float) -> ReadingHistory:
    """The truth's readings (unix s, gCO2e/kWh) in the :data:`HISTORY_DAYS` days before ``offset_s``, strictly."""
    low = bisect.bisect_left(truth.offsets_s, offset_s - HISTORY_DAYS * DAY_S)
    high = bisect.bisect_left(truth.offsets_s, offset_s)
    return ReadingHistory([(truth.origin_s + truth.offsets_s[i], truth.values_g_per_kwh[i]) for i in range(low, high)])


def vintage_forecast_at(vintages: Vintages, truth: Series, submission_offset_s: float, deadline_s: float) -> ForecastAt:
    """What the backtest gives a planner at each planning moment, from the forecasts as issued.

    At ``now_s`` seconds after the submission (at ``submission_offset_s`` into ``truth``), slots
    from that moment to ``min(moment + horizon_s, submission + deadline_s)``, times relative to the
    moment, as the daemon builds them (:func:`carbonsched.planning.job_planner.planning_slots`): the current
    slot is the truth's value then (measured), then the points of the newest vintage issued at or
    before the moment (:func:`~carbonsched.planning.forecast.slots_from_forecast`), and beyond that
    vintage's horizon the same time of day on previous days
    (:func:`~carbonsched.planning.forecast.fill_beyond_forecast`) from the truth's readings strictly
    before the moment (:func:`history_before`), so no future value leaks in. Before the first
    issue, the current value held to the end, as the daemon does without a forecast or history.
    """

    def forecast_at(now_s: float, horizon_s: float) -> list[Slot]:
        moment_s = submission_offset_s + now_s
        length_s = max(min(now_s + horizon_s, deadline_s) - now_s, MIN_WINDOW_S)
        current = truth.value_at(moment_s)
        unix_now_s = truth.origin_s + moment_s
        vintage = vintages.newest_at(unix_now_s)
        if vintage is None:
            return [Slot(0.0, length_s, current)]
        covered = vintage.horizon_end_s >= unix_now_s + length_s and vintage.points[-1][0] > unix_now_s
        history = None if covered else history_before(truth, moment_s)
        return planning_slots(datetime.fromtimestamp(unix_now_s, timezone.utc), current, vintage.forecast_points,
                              length_s, history)

    return forecast_at


__all__ = ["Vintage", "Vintages", "VintagesFormatError", "history_before", "is_vintages_file", "load_vintages",
           "the_forecast_column", "vintage_forecast_at"]
