"""Trace replay: the bundled synthetic week, time mapping, looping, forecast and file errors."""

import importlib.util
from datetime import timedelta
from pathlib import Path

import pytest

from carbonsched.providers import build_provider
from carbonsched.providers.trace import TraceFormatError, TraceProvider, bundled_trace_path, load_trace
from provider_server import FakeClock

REPO = Path(__file__).resolve().parents[3]


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_synthetic_trace", REPO / "scripts" / "make_synthetic_trace.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundled_trace_is_the_generators_output_and_says_it_is_synthetic():
    generator = _load_generator()
    text = bundled_trace_path().read_text()
    assert text == generator.render(generator.synthetic_rows())
    assert text.startswith("# SYNTHETIC")


def test_bundled_trace_has_a_week_with_a_clear_day_night_swing():
    trace = load_trace(bundled_trace_path())
    assert trace.duration_s == 7 * 24 * 3600
    assert len(trace.values_g_per_kwh) == 7 * 48
    assert 115 <= min(trace.values_g_per_kwh) and max(trace.values_g_per_kwh) <= 425
    by_hour = {h: [v for t, v in zip(trace.timestamps, trace.values_g_per_kwh) if t.hour == h] for h in (1, 13)}
    night, midday = sum(by_hour[1]) / 7, sum(by_hour[13]) / 7
    assert night - midday > 200


def _write(tmp_path, body: str) -> Path:
    path = tmp_path / "t.csv"
    path.write_text(body)
    return path


STEP_TRACE = """# comment lines are allowed
timestamp,intensity_g_per_kwh
2025-01-01T00:00:00Z,100

2025-01-01T01:00:00Z,200
2025-01-01T02:00:00+00:00,300
"""


def test_replay_is_a_step_function_mapped_by_speedup_and_loops(tmp_path):
    clock = FakeClock()
    provider = TraceProvider(_write(tmp_path, STEP_TRACE), speedup=60, clock=clock)
    start = clock.now
    seen = []
    for wall_s in (0, 59, 60, 119, 120, 179, 180, 240):  # one trace hour per wall minute; 3 h loop
        clock.now = start + timedelta(seconds=wall_s)
        seen.append(provider.current().intensity_g_per_kwh)
    assert seen == [100, 100, 200, 200, 300, 300, 100, 200]

    clock.now = start + timedelta(seconds=90)
    reading = provider.current()
    assert reading.timestamp == start + timedelta(seconds=60)  # wall time the sample began
    assert reading.interval_s == 60
    assert reading.age_s(clock.now) == 30
    assert reading.detail["trace_time"] == "2025-01-01T01:00:00+00:00"


def test_forecast_covers_the_next_24_trace_hours_across_the_loop(tmp_path):
    clock = FakeClock()
    provider = TraceProvider(_write(tmp_path, STEP_TRACE), speedup=3600, clock=clock)
    reading = provider.current()
    assert [p.intensity_g_per_kwh for p in reading.forecast[:4]] == [200, 300, 100, 200]
    assert len(reading.forecast) == 23  # samples starting within 24 h after the current one began
    assert reading.forecast[0].timestamp == clock.now + timedelta(seconds=1)
    assert all(b.timestamp > a.timestamp for a, b in zip(reading.forecast, reading.forecast[1:]))


HEADER = "timestamp,intensity_g_per_kwh\n"


@pytest.mark.parametrize(
    "body, line, field, detail",
    [
        ("time,value\n2025-01-01T00:00:00Z,1\n", 1, None,
         "header: no intensity column among 'time', 'value' (name one with ?intensity_column=)"),
        (HEADER + "2025-01-01T00:00:00Z,1\nyesterday,2\n", 3, "timestamp", "'yesterday' is not an ISO 8601 time"),
        (HEADER + "2025-01-01T00:00:00,1\n2025-01-01T01:00:00Z,2\n", 2, "timestamp",
         "has no UTC offset while other rows have one (write all timestamps with an offset, or none)"),
        (HEADER + "2025-01-01T00:00:00Z,lots\n2025-01-01T01:00:00Z,2\n", 2, "intensity_g_per_kwh", "'lots' is not a number"),
        (HEADER + "2025-01-01T00:00:00Z,1\n2025-01-01T01:00:00Z,-4\n", 3, "intensity_g_per_kwh", "impossible value '-4'"),
        (HEADER + "# a comment\n\n2025-01-01T00:00:00Z,nan\n2025-01-01T01:00:00Z,2\n", 4, "intensity_g_per_kwh",
         "impossible value 'nan'"),
        (HEADER + "2025-01-01T01:00:00Z,1\n2025-01-01T00:00:00Z,2\n", 3, "timestamp",
         "'2025-01-01T00:00:00Z' is not after the previous row"),
        (HEADER + "2025-01-01T00:00:00Z,1,extra\n", 2, None, "expected 2 fields, got 3"),
        (HEADER + "2025-01-01T00:00:00Z,1\n", None, None, "a trace needs at least 2 rows, got 1"),
    ],
    ids=["header", "not-iso", "no-offset", "not-a-number", "negative", "nan-after-comments", "not-increasing",
         "extra-field", "one-row"],
)
def test_bad_rows_name_file_line_and_field(tmp_path, body, line, field, detail):
    path = _write(tmp_path, body)
    with pytest.raises(TraceFormatError) as info:
        build_provider(f"trace:{path}", env={})
    where = f"{path}:{line}" if line is not None else f"{path}"
    what = f"field {field}: {detail}" if field is not None else detail
    message = str(info.value)
    assert type(info.value) is TraceFormatError
    assert message.startswith(f"{where}: {what}"), message
    assert "\n" not in message


def test_speedup_from_spec_reaches_the_provider():
    clock = FakeClock()
    provider = build_provider("trace?speedup=1800", env={}, clock=clock)
    first = provider.current().intensity_g_per_kwh
    clock.advance(1.0)  # one half-hour sample later in trace time
    second = provider.current()
    assert second.detail["trace_time"] == "2025-01-06T00:30:00+00:00"
    assert (first, second.intensity_g_per_kwh) == (399.3, 399.7)
