"""Replay of a carbon-intensity trace from a CSV file, for demos and tests without network.

File format: a header ``timestamp,intensity_g_per_kwh``, then one row per sample with an ISO 8601
UTC timestamp and a value in gCO2e/kWh, timestamps strictly increasing. Lines starting with ``#``
and blank lines are ignored. Each sample holds until the next one (step function); the last one
holds for the same length as the one before it.

Replay: the wall time since the provider was created, multiplied by ``speedup``, is the offset
into the trace, which loops at its end. The reading's ``timestamp`` and ``interval_s`` are in wall
time (so ages mean what they say at any speed-up); ``detail["trace_time"]`` is the sample's own
timestamp. The forecast is the next 24 h of trace time, mapped to wall time.
"""

from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path

from carbonsched.providers.base import (
    MAX_PLAUSIBLE_G_PER_KWH,
    Clock,
    IntensityProvider,
    ProviderSpecError,
    default_clock,
)
from carbonsched.types import ForecastPoint, IntensityReading

HEADER = ("timestamp", "intensity_g_per_kwh")
FORECAST_HORIZON_S = 24 * 3600.0


class TraceFormatError(ProviderSpecError):
    """A trace file row is unusable; the message names the file, the line and the field."""


@dataclass(frozen=True)
class Trace:
    path: str
    timestamps: tuple[datetime, ...]
    values_g_per_kwh: tuple[float, ...]
    offsets_s: tuple[float, ...]  # seconds from the first timestamp
    duration_s: float


def bundled_trace_path() -> Path:
    return Path(str(resources.files("carbonsched").joinpath("data/synthetic_trace.csv")))


def load_trace(path: str | Path) -> Trace:
    """Parse and validate a trace CSV; raise TraceFormatError naming file, line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceFormatError(f"trace: cannot read {path}: {exc.strerror or exc}") from None
    rows = [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not rows:
        raise TraceFormatError(f"{path}: empty trace (expected header {','.join(HEADER)})")
    header_line, header = rows[0]
    if tuple(cell.strip() for cell in header.split(",")) != HEADER:
        raise TraceFormatError(f"{path}:{header_line}: header must be {','.join(HEADER)}, got {header.strip()!r}")
    timestamps: list[datetime] = []
    values: list[float] = []
    for number, line in rows[1:]:
        cells = next(csv.reader([line]))
        if len(cells) != 2:
            raise TraceFormatError(f"{path}:{number}: expected 2 fields, got {len(cells)}")
        timestamps.append(_parse_timestamp(path, number, cells[0]))
        values.append(_parse_value(path, number, cells[1]))
        if len(timestamps) > 1 and timestamps[-1] <= timestamps[-2]:
            raise TraceFormatError(f"{path}:{number}: field timestamp: {cells[0].strip()!r} is not after the previous row")
    if len(timestamps) < 2:
        raise TraceFormatError(f"{path}: a trace needs at least 2 rows, got {len(timestamps)}")
    start = timestamps[0]
    offsets = tuple((ts - start).total_seconds() for ts in timestamps)
    duration_s = offsets[-1] + (offsets[-1] - offsets[-2])
    return Trace(str(path), tuple(timestamps), tuple(values), offsets, duration_s)


def _parse_timestamp(path: Path, line: int, text: str) -> datetime:
    cleaned = text.strip()
    try:
        parsed = datetime.fromisoformat(cleaned[:-1] + "+00:00" if cleaned.endswith("Z") else cleaned)
    except ValueError:
        raise TraceFormatError(f"{path}:{line}: field timestamp: {cleaned!r} is not ISO 8601") from None
    if parsed.tzinfo is None:
        raise TraceFormatError(f"{path}:{line}: field timestamp: {cleaned!r} has no UTC offset (add Z)")
    return parsed.astimezone(timezone.utc)


def _parse_value(path: Path, line: int, text: str) -> float:
    cleaned = text.strip()
    try:
        value = float(cleaned)
    except ValueError:
        raise TraceFormatError(f"{path}:{line}: field intensity_g_per_kwh: {cleaned!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or value > MAX_PLAUSIBLE_G_PER_KWH:
        raise TraceFormatError(
            f"{path}:{line}: field intensity_g_per_kwh: impossible value {cleaned!r} "
            f"(expected 0..{MAX_PLAUSIBLE_G_PER_KWH:g} gCO2e/kWh)"
        )
    return value


class TraceProvider(IntensityProvider):
    kind = "trace"
    local = True

    def __init__(self, path: str | Path | None = None, *, speedup: float = 1.0, clock: Clock = default_clock) -> None:
        if not (math.isfinite(speedup) and speedup > 0):
            raise ProviderSpecError(f"trace: speedup must be a positive number, got {speedup!r}")
        self.trace = load_trace(path if path is not None else bundled_trace_path())
        self.name = f"trace:{path}" if path is not None else "trace"
        self.zone = None
        self.speedup = speedup
        self.clock = clock
        self.started_at = clock()
        self.calls = 0

    def __repr__(self) -> str:
        return f"TraceProvider({self.name!r}, speedup={self.speedup})"

    def current(self) -> IntensityReading:
        self.calls += 1
        now = self.clock()
        trace = self.trace
        elapsed_trace_s = (now - self.started_at).total_seconds() * self.speedup
        loop, offset_s = divmod(elapsed_trace_s, trace.duration_s)
        index = bisect.bisect_right(trace.offsets_s, offset_s) - 1
        sample_start_s = trace.offsets_s[index]
        wall_start = now - timedelta(seconds=(offset_s - sample_start_s) / self.speedup)
        return IntensityReading(
            intensity_g_per_kwh=trace.values_g_per_kwh[index],
            timestamp=wall_start,
            provider=self.name,
            signal="average",
            fetched_at=now,
            zone=None,
            interval_s=self._sample_length_s(index) / self.speedup,
            estimated=False,
            forecast=self._forecast(index, wall_start),
            detail={"trace_time": trace.timestamps[index].isoformat(), "loop": int(loop), "speedup": self.speedup},
        )

    def _sample_length_s(self, index: int) -> float:
        offsets = self.trace.offsets_s
        end = offsets[index + 1] if index + 1 < len(offsets) else self.trace.duration_s
        return end - offsets[index]

    def _forecast(self, index: int, wall_start: datetime) -> tuple[ForecastPoint, ...]:
        """Samples after the current one whose start lies within the next 24 h of trace time."""
        trace, count = self.trace, len(self.trace.values_g_per_kwh)
        points: list[ForecastPoint] = []
        ahead_s = self._sample_length_s(index)
        step = 1
        while ahead_s < FORECAST_HORIZON_S:  # ends: every sample has a positive length
            following = (index + step) % count
            points.append(ForecastPoint(
                timestamp=wall_start + timedelta(seconds=ahead_s / self.speedup),
                intensity_g_per_kwh=trace.values_g_per_kwh[following],
            ))
            ahead_s += self._sample_length_s(following)
            step += 1
        return tuple(points)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "signal": "average",
            "path": self.trace.path,
            "speedup": self.speedup,
            "samples": len(self.trace.values_g_per_kwh),
            "trace_duration_s": self.trace.duration_s,
            "calls": self.calls,
        }
