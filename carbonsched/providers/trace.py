"""Replay of a carbon-intensity trace from a CSV file, for demos, backtests and tests without network.

File format: a header row, then one row per sample: a timestamp and a value in gCO2e/kWh, timestamps
strictly increasing. Lines starting with ``#`` and blank lines are ignored. The columns are found by
name (case and surrounding spaces ignored), so exports can be used as they are:

- time: ``timestamp``, ``time``, ``datetime``, ``Datetime (UTC)``, ``date``, ``datetime_utc``,
  ``point_time``, ``from``, ``period_start``;
- intensity: ``intensity_g_per_kwh``, ``carbon_intensity``, ``carbon intensity``, ``intensity``,
  ``moer``, else the one column whose name contains "intensity". An Electricity Maps export has a
  direct and a life-cycle column: the one whose name says "direct" is used.

``time_column=`` / ``intensity_column=`` (spec options, or arguments of :func:`load_trace`) name
them explicitly. Timestamps are ISO 8601 or unix seconds; ISO ones without a UTC offset are UTC (a
file that mixes naive and offset timestamps is refused). A row with an empty intensity is a missing sample. Any regular step works (5, 15,
30, 60 min...): the step is the most common spacing (the shorter on a tie), and every longer spacing is reported as a gap
(``Trace.gaps``), during which the previous value holds. Each sample holds until the next one (step
function); the last one holds for one step.

Replay: the wall time since the provider was created, multiplied by ``speedup``, is the offset
into the trace, which loops at its end. The reading's ``timestamp`` and ``interval_s`` are in wall
time (so ages mean what they say at any speed-up); ``detail["trace_time"]`` is the sample's own
timestamp. The forecast is the samples after the current one that start within the next
``forecast_hours`` (default 24, at most 720) of trace time, mapped to wall time.

Forecast noise (``forecast_noise=0.1&forecast_seed=7``): every forecast sample is the true one times
``1 + noise · N(0, 1)``, clipped at 0 (:mod:`carbonsched.planning.forecast_noise`, the backtest's model). The
error of a sample is drawn from the seed and the sample's position in the replay (loops counted), so
the same future sample has the same error at every ask and re-plans see a steady forecast, as with a
real forecaster; it does not shrink as the sample approaches. The current value is the true one.

Lead-time noise (``noise_model=/path/model.json&forecast_seed=7``, instead of ``forecast_noise``):
the error model of :mod:`carbonsched.planning.noise_model` (the backtest's), in trace time (the
trace's timestamps, each loop one trace duration later): an issue now errs more the further ahead
the sample, its errors are correlated across samples, and the error of a sample shrinks as it
approaches, consistently between asks. The model file is read once, when the spec is built.
"""

from __future__ import annotations

import bisect
import collections
import csv
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Callable

from carbonsched.planning.forecast_noise import LogErrorModel, perturbed, seeded_rng
from carbonsched.providers.base import (
    MAX_PLAUSIBLE_G_PER_KWH,
    Clock,
    IntensityProvider,
    ProviderSpecError,
    default_clock,
)
from carbonsched.providers.declaration import BuildContext, DoctorNote, ProviderKind, ProviderSpec
from carbonsched.times import TimeFormatError, iso_utc, parse_instant_and_offset
from carbonsched.types import ForecastPoint, IntensityReading

HEADER = ("timestamp", "intensity_g_per_kwh")
TIME_COLUMN_NAMES = ("timestamp", "time", "datetime", "datetime (utc)", "date", "datetime_utc", "point_time", "from",
                     "period_start")
INTENSITY_COLUMN_NAMES = ("intensity_g_per_kwh", "carbon_intensity", "carbon intensity", "intensity", "moer")
DEFAULT_FORECAST_HOURS = 24.0
MAX_FORECAST_HOURS = 720.0  # 30 days: far beyond any real forecast, and a bounded list per reading


class TraceFormatError(ProviderSpecError):
    """A trace file row is unusable; the message names the file, the line and the field."""


@dataclass(frozen=True)
class TraceGap:
    """Samples missing from ``start`` (UTC) for ``missing_s`` seconds; the previous value holds."""

    start: datetime
    missing_s: float


@dataclass(frozen=True)
class Trace:
    path: str
    timestamps: tuple[datetime, ...]
    values_g_per_kwh: tuple[float, ...]
    offsets_s: tuple[float, ...]  # seconds from the first timestamp
    duration_s: float
    step_s: float = 0.0  # the regular spacing of the samples
    gaps: tuple[TraceGap, ...] = ()
    time_column: str = HEADER[0]
    intensity_column: str = HEADER[1]

    def gap_summary(self) -> str:
        """One line: how many gaps and the longest, or "no gaps"."""
        if not self.gaps:
            return "no gaps"
        longest = max(self.gaps, key=lambda gap: gap.missing_s)
        return (f"{len(self.gaps)} gap{'s' if len(self.gaps) > 1 else ''} in the samples, longest "
                f"{longest.missing_s / 3600:g} h from {iso_utc(longest.start)}")


def bundled_trace_path() -> Path:
    return Path(str(resources.files("carbonsched").joinpath("data/synthetic_trace.csv")))


def normalise_column_name(name: str) -> str:
    """A header cell as compared: no BOM, lower case, surrounding spaces dropped, inner runs of spaces as one."""
    return " ".join(name.replace("\ufeff", "").strip().lower().split())


def the_intensity_column(names: list[str]) -> int | None:
    """The one column whose name contains "intensity" (or of several, the one that says "direct")."""
    candidates = [i for i, name in enumerate(names) if "intensity" in name]
    direct = [i for i in candidates if "direct" in names[i]]
    if len(candidates) == 1 or len(direct) == 1:
        return (direct or candidates)[0]
    return None


def pick_column(path: Path, line: int, header: list[str], wanted: str | None, known: tuple[str, ...], what: str,
                option: str, *, fallback: Callable[[list[str]], int | None] | None = None) -> int:
    """The index of the ``what`` column in ``header``: the one named ``wanted`` if given, else the first of
    the ``known`` names present, else what ``fallback`` (given the normalised names) picks; raise
    TraceFormatError naming the file, the header line and the option that names a column."""
    names = [normalise_column_name(cell) for cell in header]
    if wanted is not None:
        if normalise_column_name(wanted) not in names:
            raise TraceFormatError(f"{path}:{line}: header: no column {wanted!r} for the {what} "
                                   f"(columns: {', '.join(repr(c.strip()) for c in header)})")
        return names.index(normalise_column_name(wanted))
    for name in known:
        if name in names:
            return names.index(name)
    picked = fallback(names) if fallback is not None else None
    if picked is not None:
        return picked
    raise TraceFormatError(f"{path}:{line}: header: no {what} column among "
                           f"{', '.join(repr(c.strip()) for c in header)} (name one with ?{option}=)")


def read_csv_rows(path: Path, what: str, expected_header: str, *, may_be_empty: bool = False
                  ) -> list[tuple[int, list[str]]]:
    """The rows of a CSV file as (line number, cells), the header first, without blank and ``#`` lines;
    raise TraceFormatError when the file cannot be read or (unless ``may_be_empty``) has no rows
    (``what``: "trace", ...)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceFormatError(f"{what}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    rows = [(number, next(csv.reader([line])))
            for number, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not rows and not may_be_empty:
        raise TraceFormatError(f"{path}: empty {what} (expected a header such as {expected_header})")
    return rows


def load_trace(path: str | Path, *, time_column: str | None = None, intensity_column: str | None = None) -> Trace:
    """Parse and validate a trace CSV; raise TraceFormatError naming file, line and field."""
    path = Path(path)
    rows = read_csv_rows(path, "trace", ",".join(HEADER))
    header_line, header = rows[0]
    time_index = pick_column(path, header_line, header, time_column, TIME_COLUMN_NAMES, "time", "time_column")
    value_index = pick_column(path, header_line, header, intensity_column, INTENSITY_COLUMN_NAMES, "intensity",
                              "intensity_column", fallback=the_intensity_column)
    time_name, value_name = header[time_index].strip(), header[value_index].strip()
    timestamps: list[datetime] = []
    values: list[float] = []
    offset_check = OffsetMixCheck(path, time_name)
    for number, cells in rows[1:]:
        if len(cells) != len(header):
            raise TraceFormatError(f"{path}:{number}: expected {len(header)} fields, got {len(cells)}")
        if not cells[value_index].strip():
            continue  # a missing sample: shows up as a gap
        stamp, has_offset = timestamp_cell(path, number, time_name, cells[time_index])
        offset_check.add(number, has_offset)
        timestamps.append(stamp)
        values.append(parse_value(path, number, value_name, cells[value_index]))
        if len(timestamps) > 1 and timestamps[-1] <= timestamps[-2]:
            raise TraceFormatError(f"{path}:{number}: field {time_name}: {cells[time_index].strip()!r} is not after "
                                   "the previous row")
    if len(timestamps) < 2:
        raise TraceFormatError(f"{path}: a trace needs at least 2 rows, got {len(timestamps)}")
    start = timestamps[0]
    offsets = tuple((ts - start).total_seconds() for ts in timestamps)
    spacings = [b - a for a, b in zip(offsets, offsets[1:])]
    counts = collections.Counter(spacings)
    step_s = regular_step_s(spacings)
    gaps = tuple(TraceGap(timestamps[i] + timedelta(seconds=local_s), spacing - local_s)
                 for i, spacing, local_s in _gap_spacings(spacings, step_s))
    last_step_s = spacings[-1] if spacings[-1] in counts and counts[spacings[-1]] > 1 else step_s
    return Trace(str(path), tuple(timestamps), tuple(values), offsets, offsets[-1] + last_step_s, step_s, gaps,
                 time_name, value_name)


def regular_step_s(spacings: list[float]) -> float:
    """The regular step of samples with these spacings (s): the most common one, the shorter on a tie."""
    counts = collections.Counter(spacings)
    return min(counts, key=lambda spacing: (-counts[spacing], spacing))


RUN_OF_A_STEP = 3  # equal spacings in a row that make a regular step rather than gaps


def _gap_spacings(spacings: list[float], step_s: float) -> list[tuple[int, float, float]]:
    """(index, spacing, the regular step there) of each spacing that is a gap: longer than a
    neighbouring spacing and not part of a run of ``RUN_OF_A_STEP`` equal ones (so a trace whose step
    changes, from 30 to 15 min say, has no gaps for it; a lone sample missing in either part is one)."""
    in_run = [False] * len(spacings)
    start = 0
    for index in range(1, len(spacings) + 1):
        if index == len(spacings) or spacings[index] != spacings[start]:
            if index - start >= RUN_OF_A_STEP:
                in_run[start:index] = [True] * (index - start)
            start = index
    gaps = []
    for index, spacing in enumerate(spacings):
        neighbours = [spacings[j] for j in (index - 1, index + 1) if 0 <= j < len(spacings)]
        local_s = min([*neighbours, step_s]) if len(spacings) < RUN_OF_A_STEP else min(neighbours or [step_s])
        if not in_run[index] and spacing > local_s * (1 + 1e-9):
            gaps.append((index, spacing, local_s))
    return gaps


def timestamp_cell(path: Path, line: int, column: str, text: str) -> tuple[datetime, bool]:
    """The cell's instant (:func:`carbonsched.times.parse_instant_and_offset`) as aware UTC, and whether
    it gave its offset; TraceFormatError naming file, line and field otherwise."""
    try:
        return parse_instant_and_offset(text.strip(), f"{path}:{line}: field {column}:")
    except TimeFormatError as exc:
        raise TraceFormatError(str(exc)) from None


class OffsetMixCheck:
    """Refuses a file whose timestamps mix with and without a UTC offset: naive ones are taken as UTC, so a
    mix is most likely local times by mistake. The error names the first line without one."""

    def __init__(self, path: Path, column: str) -> None:
        self.path, self.column = path, column
        self.first_naive_line: int | None = None
        self.offset_seen = False

    def add(self, line: int, has_offset: bool) -> None:
        """Note one row's timestamp; TraceFormatError once both kinds have been seen."""
        self.offset_seen = self.offset_seen or has_offset
        if not has_offset and self.first_naive_line is None:
            self.first_naive_line = line
        if self.first_naive_line is not None and self.offset_seen:
            raise TraceFormatError(f"{self.path}:{self.first_naive_line}: field {self.column}: has no UTC offset "
                                   "while other rows have one (write all timestamps with an offset, or none)")


def parse_value(path: Path, line: int, column: str, text: str) -> float:
    cleaned = text.strip()
    try:
        value = float(cleaned)
    except ValueError:
        raise TraceFormatError(f"{path}:{line}: field {column}: {cleaned!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or value > MAX_PLAUSIBLE_G_PER_KWH:
        raise TraceFormatError(
            f"{path}:{line}: field {column}: impossible value {cleaned!r} "
            f"(expected 0..{MAX_PLAUSIBLE_G_PER_KWH:g} gCO2e/kWh)"
        )
    return value


class TraceProvider(IntensityProvider):
    kind = "trace"
    local = True

    def __init__(self, path: str | Path | None = None, *, speedup: float = 1.0, clock: Clock = default_clock,
                 time_column: str | None = None, intensity_column: str | None = None,
                 forecast_hours: float = DEFAULT_FORECAST_HOURS, forecast_noise: float = 0.0,
                 forecast_seed: int = 0, noise_model: LogErrorModel | None = None, noise_model_path: str = "") -> None:
        if not (math.isfinite(speedup) and speedup > 0):
            raise ProviderSpecError(f"trace: speedup must be a positive number, got {speedup!r}")
        if not (math.isfinite(forecast_hours) and 0 < forecast_hours <= MAX_FORECAST_HOURS):
            raise ProviderSpecError(f"trace: forecast_hours must be a positive number up to {MAX_FORECAST_HOURS:g}, "
                                    f"got {forecast_hours!r}")
        if not (math.isfinite(forecast_noise) and forecast_noise >= 0):
            raise ProviderSpecError(f"trace: forecast_noise must be a non-negative fraction, got {forecast_noise!r}")
        if noise_model is not None and forecast_noise > 0:
            raise ProviderSpecError("trace: forecast_noise and noise_model are alternatives: give one")
        self.forecast_hours = forecast_hours
        self.forecast_noise = forecast_noise
        self.noise_model = noise_model
        self.noise_model_path = noise_model_path
        self.forecast_seed = forecast_seed
        self.trace = load_trace(path if path is not None else bundled_trace_path(), time_column=time_column,
                                intensity_column=intensity_column)
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
            forecast=self._forecast(int(loop) * len(trace.values_g_per_kwh) + index, wall_start, elapsed_trace_s),
            detail={"trace_time": iso_utc(trace.timestamps[index]), "loop": int(loop), "speedup": self.speedup},
        )

    def _sample_length_s(self, index: int) -> float:
        offsets = self.trace.offsets_s
        end = offsets[index + 1] if index + 1 < len(offsets) else self.trace.duration_s
        return end - offsets[index]

    def _forecast(self, position: int, wall_start: datetime, elapsed_trace_s: float) -> tuple[ForecastPoint, ...]:
        """Samples after the one at replay ``position`` (loops counted) whose start lies within the next
        ``forecast_hours`` of trace time, with the seeded noise of each sample's position, or the
        noise model's error for an issue now (trace time: the first timestamp plus ``elapsed_trace_s``)."""
        trace, count = self.trace, len(self.trace.values_g_per_kwh)
        points: list[ForecastPoint] = []
        targets_s: list[float] = []  # trace time of each point, loops counted (unix s)
        ahead_s = self._sample_length_s(position % count)
        step = 1
        while ahead_s < self.forecast_hours * 3600:  # ends: every sample has a positive length
            following = (position + step) % count
            value = trace.values_g_per_kwh[following]
            if self.forecast_noise > 0:
                value = perturbed(value, self.forecast_noise, seeded_rng(self.forecast_seed, position + step))
            points.append(ForecastPoint(
                timestamp=wall_start + timedelta(seconds=ahead_s / self.speedup),
                intensity_g_per_kwh=value,
            ))
            targets_s.append((position + step) // count * trace.duration_s + trace.offsets_s[following])
            ahead_s += self._sample_length_s(following)
            step += 1
        if self.noise_model is None or not points:
            return tuple(points)
        start_s = trace.timestamps[0].timestamp()
        errors = self.noise_model.log_errors_at(start_s + elapsed_trace_s, [start_s + t for t in targets_s],
                                                self.forecast_seed, 0)
        return tuple(ForecastPoint(p.timestamp, p.intensity_g_per_kwh * math.exp(error))
                     for p, error in zip(points, errors))

    def describe(self) -> dict:
        return {
            **super().describe(),
            "signal": "average",
            "path": self.trace.path,
            "speedup": self.speedup,
            "samples": len(self.trace.values_g_per_kwh),
            "trace_duration_s": self.trace.duration_s,
            "step_s": self.trace.step_s,
            "gaps": self.trace.gap_summary(),
            "forecast_source": "trace" + (f" with noise {self.forecast_noise:g} (seed {self.forecast_seed})"
                                          if self.forecast_noise > 0 else
                                          f" with noise model {self.noise_model_path} (seed {self.forecast_seed})"
                                          if self.noise_model is not None else ""),
            "forecast_hours": self.forecast_hours,
            "calls": self.calls,
        }


def spec_noise_model(spec: ProviderSpec) -> LogErrorModel | None:
    """The spec's ``noise_model=FILE.json``, read now; a bad file is a ProviderSpecError naming it and the field."""
    # Imported here: the planning modules read their files with the trace reader of this module.
    from carbonsched.planning.noise_model import NoiseModelError, load_noise_model

    path = spec.params.get("noise_model")
    if path is None:
        return None
    try:
        return load_noise_model(Path(path).expanduser())
    except NoiseModelError as exc:
        raise ProviderSpecError(f"provider spec {spec.text!r}: noise_model: {exc}") from None


def build(spec: ProviderSpec, context: BuildContext) -> TraceProvider:
    return TraceProvider(spec.zone, speedup=spec.number("speedup", 1.0) or 1.0, clock=context.clock,
                         time_column=spec.params.get("time_column"),
                         intensity_column=spec.params.get("intensity_column"),
                         forecast_hours=spec.number("forecast_hours", DEFAULT_FORECAST_HOURS) or DEFAULT_FORECAST_HOURS,
                         forecast_noise=spec.number("forecast_noise", 0.0, positive=False) or 0.0,
                         forecast_seed=int(spec.params.get("forecast_seed", "0")),
                         noise_model=spec_noise_model(spec), noise_model_path=spec.params.get("noise_model", ""))


def doctor_note(spec: ProviderSpec) -> DoctorNote:
    return DoctorNote(f"{spec.text!r} replays a recorded trace, not this node's grid",
                      "use a live provider for real runs, e.g. electricitymaps:<ZONE> or static:<ISO3>")


PROVIDER = ProviderKind(
    name="trace",
    build=build,
    usage="trace (the bundled synthetic trace, not this node's grid)",
    options=frozenset({"speedup", "time_column", "intensity_column", "forecast_noise", "forecast_seed", "noise_model"}),
    positive_options=frozenset({"speedup"}),
    forecast_hours=MAX_FORECAST_HOURS,
    doctor_note=doctor_note,
)
