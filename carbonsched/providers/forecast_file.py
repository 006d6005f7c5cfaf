"""A forecast read from a CSV file, in place of (or in addition to) a provider's own forecast.

``forecast_file=PATH`` on any provider spec (``electricitymaps:DE?forecast_file=/var/lib/fc.csv``):
the reading keeps the provider's current value, and its forecast becomes the file's points after
now. The file is a trace file (:func:`carbonsched.providers.trace.load_trace`: the same column names
are recognised, ISO 8601 timestamps, those without an offset are UTC, gCO2e/kWh), with absolute
timestamps: each row is the forecast value from its timestamp until the next row's.

The file may instead hold forecasts as they were issued (a vintages file,
:func:`carbonsched.planning.vintages.load_vintages`, recognised by an ``issued_at`` or
``generated_at`` column): then the forecast is the newest issue at or before now, its points after now.

The file is re-read whenever its modification time or size changes, so an external forecaster may
rewrite it at any time (write a temporary file and rename it over the old one, so a half-written file
is never read). A file that cannot be used (missing, unreadable, a bad row, or no point after now)
(or, for a vintages file, no issue yet) is logged once per version of the file, one line naming the
file, line and field; the provider's
own forecast (or none) is used meanwhile. Nothing here raises on a bad file.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from carbonsched.providers.base import Clock, IntensityProvider, default_clock
from carbonsched.providers.cache import CachedProvider
from carbonsched.providers.trace import Trace, TraceFormatError, load_trace
from carbonsched.types import ForecastPoint, IntensityReading

if TYPE_CHECKING:
    from carbonsched.planning.vintages import Vintages

log = logging.getLogger("carbonsched.providers")


@dataclass(frozen=True)
class _Version:
    mtime_ns: int
    size: int


class ForecastFile:
    """The points of one forecast file, re-read when the file changes; never raises on a bad file."""

    def __init__(self, path: str | Path, *, owner: str) -> None:
        self.path = Path(path).expanduser().absolute()
        self.owner = owner  # the provider name log lines start with
        self.error: str | None = None
        self.loads = 0
        self._trace: Trace | None = None
        self._vintages: Vintages | None = None
        self._version: _Version | None = None
        self._logged: tuple[_Version | None, str] | None = None

    def points_after(self, now: datetime) -> tuple[ForecastPoint, ...] | None:
        """The file's points after ``now`` (of a vintages file: the newest issue at or before ``now``);
        None when the file is unusable (the reason is in ``error``)."""
        self._refresh()
        if self._vintages is not None:
            return self._vintage_points_after(now)
        if self._trace is None:
            return None
        points = tuple(ForecastPoint(ts, value) for ts, value in zip(self._trace.timestamps, self._trace.values_g_per_kwh)
                       if ts > now)
        if not points:
            self._fail(f"{self.path}: no forecast point after now (the last is "
                       f"{self._trace.timestamps[-1].isoformat()}); waiting for the file to be rewritten")
            return None
        self.error = None
        return points

    def _vintage_points_after(self, now: datetime) -> tuple[ForecastPoint, ...] | None:
        assert self._vintages is not None
        vintage = self._vintages.newest_at(now.timestamp())
        if vintage is None:
            first = datetime.fromtimestamp(self._vintages.issued_s[0], timezone.utc)
            self._fail(f"{self.path}: no forecast issued at or before now (the first is issued {first.isoformat()})")
            return None
        points = tuple(point for point in vintage.forecast_points if point.timestamp > now)
        if not points:
            issued = datetime.fromtimestamp(vintage.issued_s, timezone.utc)
            self._fail(f"{self.path}: the newest issue (at {issued.isoformat()}) has no point after now; waiting for "
                       "the file to be rewritten")
            return None
        self.error = None
        return points

    def hours_after(self, now: datetime) -> float | None:
        """How far the file's forecast reaches beyond ``now``, in hours (its last point lasts one step)."""
        if self._vintages is not None:
            vintage = self._vintages.newest_at(now.timestamp())
            return None if vintage is None else max(0.0, (vintage.horizon_end_s - now.timestamp()) / 3600)
        if self._trace is None:
            return None
        last = self._trace.timestamps[-1]
        end_s = (last - now).total_seconds() + self._trace.step_s
        return max(0.0, end_s / 3600)

    def _refresh(self) -> None:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            self._trace, self._vintages, self._version = None, None, None
            self._fail(f"{self.path}: cannot read the forecast file: {exc.strerror or exc}")
            return
        version = _Version(stat.st_mtime_ns, stat.st_size)
        if version == self._version:
            return
        # Imported here: the planning modules read their files with the trace reader of this package.
        from carbonsched.planning.vintages import VintagesFormatError, is_vintages_file, load_vintages

        self._version = version
        self._trace, self._vintages = None, None
        try:
            if is_vintages_file(self.path):
                self._vintages = load_vintages(self.path)
            else:
                self._trace = load_trace(self.path)
        except (TraceFormatError, VintagesFormatError) as exc:
            self._fail(str(exc))
            return
        except (ValueError, OverflowError, csv.Error) as exc:  # e.g. a timestamp at the end of the calendar
            self._fail(f"{self.path}: unusable forecast file: {exc}")
            return
        self.loads += 1
        self.error, self._logged = None, None
        if self._vintages is not None:
            log.info("%s: forecast file %s loaded: %d issues from %s", self.owner, self.path,
                     len(self._vintages.issued_s),
                     datetime.fromtimestamp(self._vintages.issued_s[0], timezone.utc).isoformat())
        else:
            log.info("%s: forecast file %s loaded: %d points from %s", self.owner, self.path,
                     len(self._trace.timestamps), self._trace.timestamps[0].isoformat())

    def _fail(self, message: str) -> None:
        self.error = message
        if self._logged != (self._version, message):  # once per version of the file and problem
            self._logged = (self._version, message)
            log.warning("%s: forecast_file unusable, the provider's own forecast is used: %s", self.owner, message)


class ForecastFileProvider(IntensityProvider):
    """Wraps a fallback-chain member: its readings, with the forecast taken from a :class:`ForecastFile`.

    It sits outside the cache, so a cached reading gets the file's current forecast at every ask.
    """

    def __init__(self, inner: CachedProvider, path: str | Path, *, clock: Clock = default_clock) -> None:
        self.inner = inner
        self.name, self.kind, self.zone = inner.name, inner.kind, inner.zone
        self.file = ForecastFile(path, owner=inner.name)
        self.clock = clock

    @property
    def local(self) -> bool:
        return self.inner.local

    def __repr__(self) -> str:
        return f"ForecastFileProvider({self.inner!r}, {str(self.file.path)!r})"

    def _overlay(self, reading: IntensityReading) -> IntensityReading:
        points = self.file.points_after(self.clock())
        return reading if points is None else replace(reading, forecast=points)

    def current(self) -> IntensityReading:
        return self._overlay(self.inner.current())

    def last_reading(self) -> IntensityReading | None:
        reading = self.inner.last_reading()
        return None if reading is None else self._overlay(reading)

    def describe(self) -> dict:
        described = self.inner.describe()
        now = self.clock()
        usable = self.file.points_after(now) is not None
        return {
            **described,
            "forecast_file": str(self.file.path),
            "forecast_file_error": self.file.error,
            "forecast_source": f"file {self.file.path}" if usable else described.get("forecast_source"),
            "forecast_hours": round(self.file.hours_after(now) or 0.0, 2) if usable else described.get("forecast_hours"),
        }
