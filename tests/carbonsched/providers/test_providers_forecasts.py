"""Forecasts from every provider: the trace's horizon and seeded noise, a CSV forecast file on any
provider (re-read when rewritten, a bad file logged and survived), spec checks, and describe()."""

from __future__ import annotations

import logging
import os
import statistics
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carbonsched.cli import app as carbonsched_app
from carbonsched.providers import ProviderSpecError, build_provider
from daemon_helpers import LineConn
from inprocess_daemon import inprocess_daemon
from provider_server import NOW, FakeClock, provider_env, provider_server  # noqa: F401

TRACE_HOURS = 96


def _flat_trace(tmp_path: Path, value: float = 300.0, hours: int = TRACE_HOURS) -> Path:
    """An hourly trace at one constant value, so every forecast difference is noise."""
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    rows = [f"{(start + timedelta(hours=h)).isoformat()},{value}" for h in range(hours)]
    path = tmp_path / "flat.csv"
    path.write_text("timestamp,intensity_g_per_kwh\n" + "\n".join(rows) + "\n")
    return path


def _forecast_csv(path: Path, start: datetime, values: list[float], *, header: str = "Datetime (UTC),Carbon Intensity",
                  naive: bool = True) -> Path:
    """A forecast file as a user might export it: hourly, naive timestamps (UTC)."""
    stamps = [(start + timedelta(hours=i)) for i in range(len(values))]
    text = [header] + [f"{(s.replace(tzinfo=None) if naive else s).isoformat()},{v}" for s, v in zip(stamps, values)]
    path.write_text("\n".join(text) + "\n")
    return path


def _bump_mtime(path: Path, seconds: int) -> None:
    """Give a rewritten file a distinct modification time, whatever the file system's resolution."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 1_000_000_000))


# --- the trace provider ----------------------------------------------------------------------------------------


def test_trace_forecast_hours_sets_the_horizon(tmp_path):
    clock = FakeClock()
    trace = _flat_trace(tmp_path)
    assert len(build_provider(f"trace:{trace}", env={}, clock=clock).current().forecast) == 23
    provider = build_provider(f"trace:{trace}?forecast_hours=48", env={}, clock=clock)
    reading = provider.current()
    assert len(reading.forecast) == 47  # hourly samples starting within 48 h after the current one began
    assert reading.forecast[-1].timestamp == clock.now + timedelta(hours=47)
    assert provider.describe()["forecast_hours"] == 48 and provider.describe()["forecast_source"] == "trace"


def test_trace_noise_is_seeded_sized_and_leaves_the_current_value_true(tmp_path):
    clock = FakeClock()
    trace = _flat_trace(tmp_path)
    spec = f"trace:{trace}?forecast_noise=0.1&forecast_seed=7&forecast_hours=96"
    reading = build_provider(spec, env={}, clock=clock).current()
    assert reading.intensity_g_per_kwh == 300.0
    values = [p.intensity_g_per_kwh for p in reading.forecast]
    assert len(values) == 95 and len(set(values)) == 95  # every point has its own error
    relative = [v / 300.0 - 1 for v in values]
    assert abs(statistics.fmean(relative)) < 0.03  # mean 0: 3 standard errors of 95 draws of sd 0.1
    assert 0.07 < statistics.pstdev(relative) < 0.13  # sd 0.1, within the sampling spread of 95 draws
    # The same seed in a new provider gives the same forecast; another seed a different one.
    assert [p.intensity_g_per_kwh for p in build_provider(spec, env={}, clock=clock).current().forecast] == values
    other = build_provider(spec.replace("forecast_seed=7", "forecast_seed=8"), env={}, clock=clock).current()
    assert [p.intensity_g_per_kwh for p in other.forecast] != values
    # Without noise the forecast is the trace itself.
    assert {p.intensity_g_per_kwh for p in build_provider(f"trace:{trace}", env={}, clock=clock).current().forecast} == {300.0}


def test_trace_noise_keeps_each_future_sample_s_error_as_time_passes_and_across_loops(tmp_path):
    clock = FakeClock()
    trace = _flat_trace(tmp_path, hours=24)  # loops every trace day
    provider = build_provider(f"trace:{trace}?speedup=3600&forecast_noise=0.2&forecast_seed=3", env={}, clock=clock)
    first = {p.timestamp: p.intensity_g_per_kwh for p in provider.current().forecast}
    clock.advance(5)  # five trace hours later: the same wall-time slots, asked again
    later = provider.current()
    assert later.intensity_g_per_kwh == 300.0  # the slot that became current is exact
    again = {p.timestamp: p.intensity_g_per_kwh for p in later.forecast}
    shared = sorted(first.keys() & again.keys())
    assert len(shared) == 18 and all(first[t] == again[t] for t in shared)
    # The next loop's samples are other positions in the replay: other errors than this loop's.
    clock.advance(24)
    next_loop = provider.current()
    assert next_loop.detail["loop"] == 1
    assert [p.intensity_g_per_kwh for p in next_loop.forecast] != [p.intensity_g_per_kwh for p in later.forecast]


# --- a forecast file on any provider ---------------------------------------------------------------------------


def test_forecast_file_replaces_the_forecast_after_now_and_keeps_the_current_value(tmp_path):
    clock = FakeClock()
    start = NOW.replace(minute=0) - timedelta(hours=2)  # two points in the past, then the future
    path = _forecast_csv(tmp_path / "fc.csv", start, [500, 400, 300, 200, 100, 150])
    provider = build_provider(f"static:DEU?forecast_file={path}", env={}, clock=clock)
    reading = provider.current()
    assert reading.intensity_g_per_kwh == build_provider("static:DEU", env={}).current().intensity_g_per_kwh
    assert [(p.timestamp - NOW.replace(minute=0)).total_seconds() / 3600 for p in reading.forecast] == [1, 2, 3]
    assert [p.intensity_g_per_kwh for p in reading.forecast] == [200, 100, 150]
    described = provider.describe()
    assert described["forecast_source"] == f"file {path}" and described["forecast_file_error"] is None
    assert described["forecast_hours"] == pytest.approx((3 * 3600 + 3000) / 3600, abs=0.01)  # to the last point's end


def test_a_chain_describes_the_forecast_of_the_member_that_answered(tmp_path):
    path = _forecast_csv(tmp_path / "fc.csv", NOW.replace(minute=0) + timedelta(hours=1), [120, 110])
    chain = build_provider(f"static:DEU?forecast_file={path},trace?forecast_hours=12", env={}, clock=FakeClock())
    assert chain.describe()["forecast_source"] == f"file {path}"  # the primary, before any answer
    chain.current()
    assert (chain.describe()["forecast_source"], chain.describe()["members"][1]["forecast_hours"]) == (f"file {path}", 12)


def test_forecast_file_rewritten_gives_the_new_forecast_on_a_cached_network_reading(provider_server, tmp_path):
    clock = FakeClock()
    path = _forecast_csv(tmp_path / "fc.csv", NOW.replace(minute=0) + timedelta(hours=1), [120, 110, 100],
                         header="timestamp,intensity_g_per_kwh", naive=False)
    provider = build_provider(f"ukgrid?forecast_file={path}", env=provider_env(provider_server), clock=clock)
    assert [p.intensity_g_per_kwh for p in provider.current().forecast] == [120, 110, 100]
    calls = provider_server.count("/intensity")
    _forecast_csv(path, NOW.replace(minute=0) + timedelta(hours=1), [90, 80, 70, 60],
                  header="timestamp,intensity_g_per_kwh", naive=False)
    _bump_mtime(path, 1)
    clock.advance(60)
    reading = provider.current()
    assert provider_server.count("/intensity") == calls  # the reading came from the cache ...
    assert reading.intensity_g_per_kwh == 149 and [p.intensity_g_per_kwh for p in reading.forecast] == [90, 80, 70, 60]
    assert provider.members[0].file.loads == 2  # ... and the file was read again because it changed


def test_a_broken_forecast_file_is_logged_once_and_the_provider_s_own_forecast_is_used(tmp_path, caplog):
    clock = FakeClock()
    trace = _flat_trace(tmp_path, value=250.0)
    path = tmp_path / "fc.csv"
    path.write_text("timestamp,intensity_g_per_kwh\n2026-10-18T03:00:00Z,100\n2026-10-18T04:00:00Z,lots\n")
    provider = build_provider(f"trace:{trace}?forecast_file={path}", env={}, clock=clock)
    with caplog.at_level(logging.WARNING, logger="carbonsched.providers"):
        for _ in range(3):
            reading = provider.current()
            clock.advance(1)
    assert reading.forecast and {p.intensity_g_per_kwh for p in reading.forecast} == {250.0}  # the trace's own
    lines = [r.getMessage() for r in caplog.records if "forecast_file" in r.getMessage()]
    assert len(lines) == 1 and f"{path}:3: field intensity_g_per_kwh: 'lots' is not a number" in lines[0]
    assert "\n" not in lines[0]
    described = provider.describe()
    assert described["forecast_source"] == "trace" and "'lots' is not a number" in described["forecast_file_error"]

    # Fixed by the forecaster: used from the next ask on.
    _forecast_csv(path, NOW.replace(minute=0) + timedelta(hours=1), [40, 30], header="timestamp,intensity_g_per_kwh",
                  naive=False)
    _bump_mtime(path, 1)
    assert [p.intensity_g_per_kwh for p in provider.current().forecast] == [40, 30]

    # Deleted, then stale (every point in the past): logged, and the trace's forecast comes back.
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="carbonsched.providers"):
        assert {p.intensity_g_per_kwh for p in provider.current().forecast} == {250.0}
        _forecast_csv(path, NOW - timedelta(hours=5), [40, 30], header="timestamp,intensity_g_per_kwh", naive=False)
        assert {p.intensity_g_per_kwh for p in provider.current().forecast} == {250.0}
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot read the forecast file" in m for m in messages)
    assert any("no forecast point after now" in m for m in messages)


def test_a_forecast_file_missing_at_start_does_not_stop_the_provider(tmp_path):
    provider = build_provider(f"static:FRA?forecast_file={tmp_path / 'later.csv'}", env={}, clock=FakeClock())
    reading = provider.current()
    assert reading.forecast == () and reading.intensity_g_per_kwh > 0
    assert "cannot read the forecast file" in provider.describe()["forecast_file_error"]


def test_a_forecast_file_at_the_end_of_the_calendar_is_described_without_error(tmp_path):
    path = tmp_path / "fc.csv"
    path.write_text("timestamp,intensity_g_per_kwh\n9999-12-31T22:00:00Z,100\n9999-12-31T23:00:00Z,90\n")
    provider = build_provider(f"static:FRA?forecast_file={path}", env={}, clock=FakeClock())
    assert [p.intensity_g_per_kwh for p in provider.current().forecast] == [100, 90]
    assert provider.describe()["forecast_hours"] > 60_000_000  # to the end of 9999, in hours


# --- spec checks ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, names", [
    ("ukgrid?forecast_hours=36", ["forecast_hours='36'", "24|48", "ukgrid"]),
    ("electricitymaps:DE?forecast_hours=12", ["forecast_hours='12'", "6|24|48|72"]),
    ("watttime:CAISO_NORTH?forecast_hours=100", ["forecast_hours='100'", "1..72"]),
    ("watttime:CAISO_NORTH?forecast_hours=2.5", ["forecast_hours='2.5'"]),
    ("trace?forecast_hours=0", ["forecast_hours='0'", "positive"]),
    ("trace?forecast_hours=1000", ["forecast_hours='1000'", "more than 720"]),
    ("trace?forecast_noise=-0.1", ["forecast_noise='-0.1'", "non-negative"]),
    ("trace?forecast_noise=lots", ["forecast_noise='lots'"]),
    ("trace?forecast_seed=seven", ["forecast_seed='seven'", "integer"]),
    ("static:DEU?forecast_noise=0.1", ["unknown option 'forecast_noise'"]),
    ("static:DEU?forecast_file=%20", ["forecast_file is empty"]),
])
def test_bad_forecast_keys_name_the_key(spec, names):
    with pytest.raises(ProviderSpecError) as info:
        build_provider(spec, env={})
    assert all(name in str(info.value) for name in names), str(info.value)


def test_carbonsched_plan_exits_2_on_a_bad_forecast_key():
    result = CliRunner().invoke(carbonsched_app, ["plan", "--epochs", "1", "--epoch-minutes", "30", "--deadline", "4h",
                                                  "--provider", "trace?forecast_noise=-1"])
    assert result.exit_code == 2 and "forecast_noise='-1'" in result.output


# --- the noisy forecast reaches the daemon's planner -----------------------------------------------------------


def _planned_answer(spec: str) -> dict:
    """A real daemon on ``spec``: declare a pausable 30-minute job due in 12 h and return its ρ answer."""
    with inprocess_daemon(provider=spec) as running:
        conn = LineConn(running.daemon.config.socket)
        try:
            assert conn.ask(op="job.start", model="m", scheme="green", pid=os.getpid(), job_id="j",
                            deadline=time.time() + 12 * 3600, epochs=1, epoch_seconds=1800, may_pause=True)["ok"]
            return conn.ask(op="rho", job_id="j")
        finally:
            conn.close()


def test_a_daemon_on_a_noisy_trace_plans_on_the_noisy_forecast(tmp_path):
    trace = _flat_trace(tmp_path)  # 300 every hour: without noise no hour is cleaner than now
    noiseless = _planned_answer(f"trace:{trace}")
    assert noiseless["policy"] == "planner" and noiseless["pause_until"] is None

    noisy_spec = f"trace:{trace}?forecast_noise=0.1&forecast_seed=7"
    noisy = _planned_answer(noisy_spec)
    assert noisy["policy"] == "planner" and noisy["pause_until"] is not None
    # It waits for the cleanest hour of the noisy forecast that the plan may use (the deadline
    # less one decide interval of margin), which this provider, built alike, also shows.
    now = datetime.now(timezone.utc)
    forecast = build_provider(noisy_spec, env={}).current().forecast
    usable = [p for p in forecast if p.timestamp + timedelta(hours=1) <= now + timedelta(hours=11)]
    cleanest = min(usable, key=lambda p: p.intensity_g_per_kwh)
    assert cleanest.intensity_g_per_kwh < 300
    assert abs(noisy["pause_until"] - cleanest.timestamp.timestamp()) < 120
