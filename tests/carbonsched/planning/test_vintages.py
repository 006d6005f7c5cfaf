"""Forecasts as they were issued: reading the files (WattTime's and the generic layout, named columns,
bad rows), the lookup that never looks ahead, the backtest's forecast from them (measured current
slot, the daemon's fill beyond the horizon from past readings only), and a vintages file as a
provider's ``forecast_file=`` (the provider and ``carbonsched plan``)."""

from __future__ import annotations

import json
import logging
import os
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carbonsched.cli import app as carbonsched_app
from carbonsched.planning.series import Series
from carbonsched.planning.vintages import (
    Vintage,
    Vintages,
    VintagesFormatError,
    is_vintages_file,
    load_vintages,
    vintage_forecast_at,
)
from carbonsched.providers import build_provider
from provider_server import NOW, FakeClock

HOUR_S = 3600.0
START = datetime(2025, 6, 2, tzinfo=timezone.utc)


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, timezone.utc).isoformat()


def write_vintages(path: Path, vintages: Vintages, header: str = "issued_at,target_start,forecast_g_per_kwh") -> Path:
    """A generic-layout vintages file of ``vintages`` (ISO timestamps with offsets)."""
    rows = [f"{_iso(v.issued_s)},{_iso(t)},{value!r}" for v in vintages.issues for t, value in v.points]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _half_hourly_truth(values: list[float], origin: datetime = START) -> Series:
    return Series(tuple(i * 1800.0 for i in range(len(values))), tuple(values), len(values) * 1800.0,
                  origin.timestamp())


# --- reading --------------------------------------------------------------------------------------------------


def test_watttime_layout_with_unix_and_iso_timestamps_in_any_order(tmp_path):
    issued = START.timestamp()
    path = tmp_path / "wt.csv"
    path.write_text("# WattTime historical forecast\n"
                    "generated_at,point_time,value,version\n"
                    f"{_iso(issued + 300)},{_iso(issued + 600)},410,3.0\n"
                    f"{int(issued)},{int(issued + 300)},402,3.0\n"
                    f"{START.replace(tzinfo=None).isoformat()},{_iso(issued)},400,3.0\n"  # naive: UTC
                    f"{_iso(issued + 300)},{_iso(issued + 900)},,3.0\n"  # a missing point
                    f"{_iso(issued + 300)},{_iso(issued + 300)},405,3.0\n")
    vintages = load_vintages(path)
    assert is_vintages_file(path) and not is_vintages_file(tmp_path / "absent.csv")
    assert vintages.issued_s == (issued, issued + 300)
    first, second = vintages.issues
    assert first.points == ((issued, 400.0), (issued + 300, 402.0))
    assert second.points == ((issued + 300, 405.0), (issued + 600, 410.0))
    assert second.horizon_end_s == issued + 900  # the last point holds for the spacing before it


def test_generic_layout_and_named_columns(tmp_path):
    trace_file = tmp_path / "trace.csv"
    trace_file.write_text("\ufeff# a plain forecast\ntimestamp,intensity_g_per_kwh\n2025-06-02T00:00Z,1\n")
    assert not is_vintages_file(trace_file)
    issued = START.timestamp()
    generic = tmp_path / "generic.csv"
    generic.write_text("Issued_At , Target_Start, Forecast (gCO2e/kWh)\n"
                       f"{_iso(issued)},{_iso(issued + 1800)},210.5\n")
    assert load_vintages(generic).issues[0].points == ((issued + 1800, 210.5),)
    named = tmp_path / "named.csv"
    named.write_text("made,for,guess,forecast_low\n"
                     f"{_iso(issued)},{_iso(issued + 3600)},199,150\n")
    loaded = load_vintages(named, issued_column="made", target_column="for", forecast_column="guess")
    assert loaded.issues[0].points == ((issued + 3600, 199.0),)


@pytest.mark.parametrize("text, line, words", [
    ("issued_at,target_start,forecast\n2025-06-02T00:00Z,2025-06-02T01:00Z,lots\n", 2, ["field forecast", "'lots'"]),
    ("issued_at,target_start,forecast\nyesterday,2025-06-02T01:00Z,3\n", 2, ["field issued_at", "'yesterday'"]),
    ("issued_at,target_start,forecast\n2025-06-02T00:00Z,soon,3\n", 2, ["field target_start", "'soon'"]),
    ("issued_at,target_start,forecast\n\n2025-06-02T00:00Z,2025-06-02T01:00Z\n", 3, ["expected 3 fields"]),
    ("issued_at,target_start,forecast\n2025-06-02T00:00Z,2025-06-02T01:00Z,-4\n", 2, ["field forecast", "'-4'"]),
    ("issued_at,target_start,forecast\n2025-06-02T00:00Z,2025-06-02T01:00Z,3\n"
     "2025-06-02T00:00Z,2025-06-02T01:00:00+00:00,4\n", 3, ["field target_start", "twice"]),
    ("issued_at,target_start,forecast_a,forecast_b\n", 1, ["header", "no forecast column", "forecast_column"]),
    ("issued_at,when,forecast\n", 1, ["header", "no target time column", "target_column"]),
])
def test_bad_rows_name_the_file_line_and_field(tmp_path, text, line, words):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(VintagesFormatError) as info:
        load_vintages(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in message
    assert message.startswith(f"{path}:{line}: ") and all(word in message for word in words), message


def test_an_empty_or_missing_file_is_named(tmp_path):
    for path, text in ((tmp_path / "empty.csv", "# nothing\n"), (tmp_path / "header.csv", "issued_at,target_start,forecast\n")):
        path.write_text(text)
        with pytest.raises(VintagesFormatError, match=str(path)):
            load_vintages(path)
    with pytest.raises(VintagesFormatError, match="cannot read"):
        load_vintages(tmp_path / "absent.csv")


# --- the lookup never looks ahead -------------------------------------------------------------------------------


def test_newest_at_is_the_newest_issue_at_or_before_the_moment():
    rng = random.Random(11)
    issued = sorted({START.timestamp() + rng.randrange(0, 400) * 300 for _ in range(60)})
    vintages = Vintages(tuple(Vintage(t, ((t + 600, 1.0),)) for t in reversed(issued)))  # given out of order
    assert list(vintages.issued_s) == issued
    moments = [rng.uniform(issued[0] - 3600, issued[-1] + 3600) for _ in range(2000)]
    moments += [t + d for t in issued for d in (-1e-3, 0.0, 1e-3)]
    for moment in moments:
        found = vintages.newest_at(moment)
        earlier = [t for t in issued if t <= moment]
        if not earlier:
            assert found is None
        else:
            assert found is not None and found.issued_s <= moment and found.issued_s == max(earlier)


def test_the_backtest_forecast_comes_from_the_newest_issue_before_each_moment():
    """Each issue forecasts its own number for every target: the slots after the current one show
    which issue the planner saw, at every moment of a submission."""
    truth = _half_hourly_truth([300.0] * 48 * 3)
    origin = truth.origin_s
    issues = tuple(Vintage(origin + k * 3 * HOUR_S + 600,  # issued at 00:10, 03:10, ... each 12 h ahead
                           tuple((origin + k * 3 * HOUR_S + h * 1800, 100.0 + k) for h in range(1, 25)))
                   for k in range(20))
    vintages = Vintages(issues)
    submission_s, deadline_s = 5 * HOUR_S, 30 * HOUR_S
    forecast_at = vintage_forecast_at(vintages, truth, submission_s, deadline_s)
    seen = set()
    for now_s in [i * 450.0 for i in range(int(deadline_s // 450) - 4)]:  # up to 30 min before the deadline
        slots = forecast_at(now_s, 6 * HOUR_S)
        moment_unix = origin + submission_s + now_s
        newest = max(v for v in vintages.issued_s if v <= moment_unix)
        assert slots[0].start_s == 0 and slots[0].intensity_g_per_kwh == 300.0  # measured, exact
        assert {s.intensity_g_per_kwh for s in slots[1:]} == {100.0 + vintages.issued_s.index(newest)}
        assert slots[-1].end_s == pytest.approx(min(6 * HOUR_S, deadline_s - now_s))
        seen.add(newest)
    assert len(seen) == 11  # the moments met every issue from 03:10 (the newest at submission) to 33:10


def test_before_the_first_issue_the_current_value_holds_to_the_deadline():
    truth = _half_hourly_truth([200.0, 250.0] * 48)
    later = Vintages((Vintage(truth.origin_s + 10 * HOUR_S, ((truth.origin_s + 11 * HOUR_S, 50.0),)),))
    slots = vintage_forecast_at(later, truth, 1800.0, 4 * HOUR_S)(600.0, 24 * HOUR_S)
    assert [(s.start_s, s.end_s, s.intensity_g_per_kwh) for s in slots] == [(0.0, 4 * HOUR_S - 600.0, 250.0)]


def test_beyond_the_issue_s_horizon_the_fill_uses_only_readings_before_the_moment():
    """Three days at 100 (first half of the day) / 400 (second half) give the same-time-of-day means;
    from the moment on the truth jumps to 900. A one-hour forecast is continued from the past days
    only, and changing the future truth changes nothing."""
    days = 3
    past = [100.0 if (i % 48) < 24 else 400.0 for i in range(days * 48)]
    truth = _half_hourly_truth(past + [900.0] * 96)
    other_future = _half_hourly_truth(past + [5.0] * 96)
    moment_s = days * 24 * HOUR_S  # midnight of the fourth day
    issued = truth.origin_s + moment_s - 60
    vintages = Vintages((Vintage(issued, ((issued + 1860, 120.0), (issued + 3660, 130.0))),))
    # 40 h ahead: a target after 24 h, shifted back a day, lies after the moment: no reading there may count.
    slots = vintage_forecast_at(vintages, truth, moment_s, 48 * HOUR_S)(0.0, 40 * HOUR_S)
    other = vintage_forecast_at(vintages, other_future, moment_s, 48 * HOUR_S)(0.0, 40 * HOUR_S)
    assert slots[1:] == other[1:] and len(slots) > 10
    assert (slots[0].intensity_g_per_kwh, other[0].intensity_g_per_kwh) == (900.0, 5.0)  # the current slot: measured
    assert [s.intensity_g_per_kwh for s in slots[1:3]] == [120.0, 130.0]
    filled = slots[3:]
    assert filled and slots[-1].end_s == pytest.approx(40 * HOUR_S)
    assert {s.intensity_g_per_kwh for s in filled} <= {100.0, 400.0}  # never a value from the moment on
    assert any(s.intensity_g_per_kwh == 400.0 for s in filled) and any(s.intensity_g_per_kwh == 100.0 for s in filled)


# --- a vintages file as a provider's forecast_file ------------------------------------------------------------


def _hourly_issues(first_issue: datetime, count: int, every_h: int, base: float) -> Vintages:
    """``count`` issues every ``every_h`` hours from ``first_issue``, each with 6 hourly points from
    the next whole hour; issue k forecasts ``base + k`` everywhere."""
    issues = []
    for k in range(count):
        issued = first_issue + timedelta(hours=k * every_h)
        top = issued.replace(minute=0, second=0) + timedelta(hours=1)
        issues.append(Vintage(issued.timestamp(), tuple(((top + timedelta(hours=h)).timestamp(), base + k)
                                                        for h in range(6))))
    return Vintages(tuple(issues))


def test_a_vintages_forecast_file_gives_the_newest_issue_at_or_before_now(tmp_path, caplog):
    clock = FakeClock()  # NOW = 02:10
    path = write_vintages(tmp_path / "issues.csv", _hourly_issues(NOW - timedelta(hours=5), 8, 2, 100.0))
    provider = build_provider(f"static:DEU?forecast_file={path}", env={}, clock=clock)
    reading = provider.current()
    # Issued 21:10, 23:10, 01:10, 03:10...: at 02:10 the newest is the third (k = 2, points 02:00-07:00);
    # 03:10's is unseen.
    assert {p.intensity_g_per_kwh for p in reading.forecast} == {102.0}
    assert all(p.timestamp > NOW for p in reading.forecast) and len(reading.forecast) == 5  # 03:00 .. 07:00
    described = provider.describe()
    assert described["forecast_source"] == f"file {path}" and described["forecast_file_error"] is None
    assert described["forecast_hours"] == pytest.approx((6 * 3600 - 600) / 3600, abs=0.01)  # to 08:00
    clock.advance(3600)  # 03:10: the fourth issue is out
    assert {p.intensity_g_per_kwh for p in provider.current().forecast} == {103.0}

    # Rewritten by the forecaster with a newer issue at 03:10: the new numbers from the next ask.
    write_vintages(path, _hourly_issues(NOW + timedelta(hours=1), 1, 1, 500.0))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert {p.intensity_g_per_kwh for p in provider.current().forecast} == {500.0}

    # Only issues after now: logged once, the provider's own forecast (none for static) is used.
    write_vintages(path, _hourly_issues(NOW + timedelta(hours=6), 2, 1, 7.0))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    with caplog.at_level(logging.WARNING, logger="carbonsched.providers"):
        for _ in range(3):
            assert provider.current().forecast == ()
    lines = [r.getMessage() for r in caplog.records if "forecast_file" in r.getMessage()]
    assert len(lines) == 1 and "no forecast issued at or before now" in lines[0] and str(path) in lines[0]


def test_a_bad_vintages_forecast_file_is_one_log_line_naming_line_and_field(tmp_path, caplog):
    path = tmp_path / "issues.csv"
    path.write_text("generated_at,point_time,value\n2026-10-18T01:00Z,2026-10-18T03:00Z,12\n"
                    "2026-10-18T01:00Z,2026-10-18T04:00Z,many\n")
    provider = build_provider(f"static:DEU?forecast_file={path}", env={}, clock=FakeClock())
    with caplog.at_level(logging.WARNING, logger="carbonsched.providers"):
        assert provider.current().forecast == () and provider.current().forecast == ()
    lines = [r.getMessage() for r in caplog.records if "forecast_file" in r.getMessage()]
    assert len(lines) == 1 and f"{path}:3: field value: 'many' is not a number" in lines[0]


def test_carbonsched_plan_plans_on_a_vintages_file(tmp_path):
    """The live plan against a vintages file issued an hour ago: it waits for the clean hours it forecasts."""
    now = datetime.now(timezone.utc)
    issued = now - timedelta(hours=1)
    top = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    values = [500.0, 500.0, 20.0, 20.0, 500.0, 500.0, 500.0, 500.0]
    vintages = Vintages((Vintage(issued.timestamp(), tuple(((top + timedelta(hours=h)).timestamp(), v)
                                                             for h, v in enumerate(values))),
                         Vintage((now + timedelta(hours=2)).timestamp(),
                                 (((top + timedelta(hours=5)).timestamp(), 1.0),))))  # later: unseen
    path = write_vintages(tmp_path / "issues.csv", vintages, header="generated_at,point_time,value")
    result = CliRunner().invoke(carbonsched_app, [
        "plan", "--epochs", "2", "--epoch-minutes", "30", "--deadline", "8h", "--may-pause", "--format", "json",
        "--provider", f"static:DEU?forecast_file={path}"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    starts = {datetime.fromisoformat(s["start"]) for s in answer["segments"]}
    clean = {top + timedelta(hours=2), top + timedelta(hours=3)}
    assert starts and all(any(c <= s < c + timedelta(hours=1) for c in clean) for s in starts)
    assert all(s["intensity_g_per_kwh"] == 20.0 for s in answer["segments"])
