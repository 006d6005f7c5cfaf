"""A forecast read from a CSV file, in place of (or in addition to) a provider's own forecast.

``forecast_file=PATH`` on any provider spec (``electricitymaps:DE?forecast_file=/var/lib/fc.csv``):
the reading keeps the provider's current value, and its forecast becomes the file's points after
now. The file is read by :func:`carbonsched.providers.forecast_csv.read_forecast_csv`: absolute
timestamps, each row the forecast value (gCO2e/kWh) from its timestamp until the next row's, or
forecasts as they were issued (a vintages file, recognised by an ``issued_at`` or ``generated_at``
column): then the forecast is the newest issue at or before now, its points after now.

The file is re-read whenever its modification time or size changes, so an external forecaster may
rewrite it at any time (write a temporary file and rename it over the old one, so a half-written file
is never read). A file that cannot be used (missing, unreadable, a bad row, or no point after now)
(or, for a vintages file, no issue yet) is logged once per version of the file, one line naming the
file, line and field; the provider's
own forecast (or none) is used meanwhile. Nothing here raises on a bad file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from carbonsched.providers.base import Clock, IntensityProvider, default_clock
from carbonsched.providers.cache import CachedProvider
from carbonsched.providers.forecast_csv import ForecastCsv, ForecastFileError, read_forecast_csv
from carbonsched.times import iso_utc
from carbonsched.types import ForecastPoint, IntensityReading

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
        self._contents: ForecastCsv | None = None
        self._version: _Version | None = None
        self._logged: tuple[_Version | None, str] | None = None

    def points_after(self, now: datetime) -> tuple[ForecastPoint, ...] | None:
        """The file's points after ``now`` (of a vintages file: the newest issue at or before ``now``);
        None when the file is unusable (the reason is in ``error``)."""
        self._refresh()
        contents = self._contents
        if contents is None:
            return None
        known = contents.known_at(now)
        if known is None:
            assert contents.vintages is not None
            self._fail(f"{self.path}: no forecast issued at or before now (the first is issued "
                       f"{iso_utc(contents.vintages.issued_s[0])})")
            return None
        points = tuple(point for point in known if point.timestamp > now)
        if not points:
            if contents.vintages is not None:
                issued_s = contents.vintages.newest_at(now.timestamp()).issued_s
                self._fail(f"{self.path}: the newest issue (at {iso_utc(issued_s)}) has no point after now; "
                           "waiting for the file to be rewritten")
            elif known:
                self._fail(f"{self.path}: no forecast point after now (the last is {iso_utc(known[-1].timestamp)}); "
                           "waiting for the file to be rewritten")
            else:
                self._fail(f"{self.path}: no forecast points; waiting for the file to be rewritten")
            return None
        self.error = None
        return points

    def hours_after(self, now: datetime) -> float | None:
        """How far the file's forecast reaches beyond ``now``, in hours (its last point lasts one step)."""
        contents = self._contents
        if contents is None:
            return None
        if contents.vintages is not None:
            vintage = contents.vintages.newest_at(now.timestamp())
            return None if vintage is None else max(0.0, (vintage.horizon_end_s - now.timestamp()) / 3600)
        if not contents.points:
            return None
        end_s = (contents.points[-1].timestamp - now).total_seconds() + contents.step_s
        return max(0.0, end_s / 3600)

    def _refresh(self) -> None:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            self._contents, self._version = None, None
            self._fail(f"{self.path}: cannot read the forecast file: {exc.strerror or exc}")
            return
        version = _Version(stat.st_mtime_ns, stat.st_size)
        if version == self._version:
            return
        self._version = version
        try:
            self._contents = read_forecast_csv(self.path)
        except ForecastFileError as exc:
            self._contents = None
            self._fail(str(exc))
            return
        self.loads += 1
        self.error, self._logged = None, None
        if self._contents.vintages is not None:
            log.info("%s: forecast file %s loaded: %d issues from %s", self.owner, self.path,
                     len(self._contents.vintages.issued_s), iso_utc(self._contents.vintages.issued_s[0]))
        else:
            points = self._contents.points
            log.info("%s: forecast file %s loaded: %d points from %s", self.owner, self.path, len(points),
                     iso_utc(points[0].timestamp) if points else "-")

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
