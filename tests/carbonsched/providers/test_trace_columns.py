"""Trace files as exports have them: column names, naive timestamps, steps, gaps, explicit columns."""

from datetime import datetime, timedelta, timezone

import pytest

from carbonsched.providers import ProviderSpecError, build_provider
from carbonsched.providers.trace import load_trace
from provider_server import FakeClock

EM_EXPORT = (
    "Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
    "Carbon Intensity gCO₂eq/kWh (Life cycle),Data Source\n"
    "2025-01-01 00:00:00,Germany,Germany,DE,350.5,410.0,src\n"
    "2025-01-01 01:00:00,Germany,Germany,DE,340.0,400.0,src\n"
    "2025-01-01 02:00:00,Germany,Germany,DE,300.0,360.0,src\n"
)


def _write(tmp_path, body: str, name: str = "t.csv"):
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def test_electricity_maps_export_uses_the_direct_column_and_naive_times_as_utc(tmp_path):
    trace = load_trace(_write(tmp_path, EM_EXPORT))
    assert trace.values_g_per_kwh == (350.5, 340.0, 300.0)
    assert trace.timestamps[0] == datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert (trace.time_column, trace.intensity_column) == ("Datetime (UTC)", "Carbon Intensity gCO₂eq/kWh (direct)")
    assert trace.step_s == 3600 and trace.gaps == () and trace.duration_s == 3 * 3600


def test_spec_options_name_the_columns(tmp_path):
    path = _write(tmp_path, EM_EXPORT)
    clock = FakeClock()
    provider = build_provider(f"trace:{path}?intensity_column=Carbon Intensity gCO₂eq/kWh (Life cycle)"
                              "&time_column=datetime (utc)", env={}, clock=clock)
    assert provider.current().intensity_g_per_kwh == 410.0


@pytest.mark.parametrize("header", ["Time,Carbon Intensity", "timestamp,intensity", "datetime,carbon_intensity",
                                    "\ufeffTimestamp , Intensity_g_per_kwh", "point_time,moer", "from,intensity_gco2"])
def test_common_column_names_are_recognised(tmp_path, header):
    body = f"{header}\n2025-01-01T00:00:00Z,100\n2025-01-01T00:05:00Z,120\n"
    trace = load_trace(_write(tmp_path, body))
    assert trace.values_g_per_kwh == (100, 120) and trace.step_s == 300


@pytest.mark.parametrize("minutes", [5, 15, 30, 60])
def test_any_regular_step_and_missing_rows_are_reported_as_gaps(tmp_path, minutes):
    start = datetime(2025, 3, 1, tzinfo=timezone.utc)
    kept = [i for i in range(20) if i not in (5, 6, 7, 12)]
    rows = [f"{(start + timedelta(minutes=minutes * i)).isoformat()},{100 + i}" for i in kept]
    body = "timestamp,intensity_g_per_kwh\n" + "\n".join(rows) + "\n"
    trace = load_trace(_write(tmp_path, body))
    assert trace.step_s == minutes * 60
    assert [(g.start, g.missing_s) for g in trace.gaps] == [
        (start + timedelta(minutes=minutes * 5), 3 * minutes * 60), (start + timedelta(minutes=minutes * 12), minutes * 60)]
    assert trace.gap_summary().startswith("2 gaps in the samples, longest")


def test_empty_intensity_cells_are_missing_samples(tmp_path):
    body = "time,intensity\n2025-01-01T00:00Z,1\n2025-01-01T01:00Z,\n2025-01-01T02:00Z,3\n2025-01-01T03:00Z,4\n"
    trace = load_trace(_write(tmp_path, body))
    assert trace.values_g_per_kwh == (1, 3, 4) and len(trace.gaps) == 1 and trace.gaps[0].missing_s == 3600


@pytest.mark.parametrize("body, spec_options, expected", [
    ("time,value\n2025-01-01T00:00:00Z,1\n", "", "t.csv:1: header: no intensity column among 'time', 'value' "
                                                "(name one with ?intensity_column=)"),
    ("when,intensity\n2025-01-01T00:00:00Z,1\n", "", "t.csv:1: header: no time column"),
    ("time,a intensity,b intensity\n2025-01-01T00:00:00Z,1,2\n", "", "no intensity column"),
    (EM_EXPORT, "?intensity_column=co2", "t.csv:1: header: no column 'co2' for the intensity"),
    ("time,intensity\n2025-01-01T00:00:00,1\n2025-01-01T01:00:00Z,2\n", "", "t.csv:2: field time: has no UTC offset"),
    ("Time,Carbon Intensity\n2025-01-01T00:00:00Z,lots\n", "", "t.csv:2: field Carbon Intensity: 'lots' is not a number"),
])
def test_bad_files_say_what_and_where_in_one_line(tmp_path, body, spec_options, expected):
    path = _write(tmp_path, body)
    with pytest.raises(ProviderSpecError) as info:
        build_provider(f"trace:{path}{spec_options}", env={})
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_unix_seconds_are_timestamps_and_never_naive(tmp_path):
    trace = load_trace(_write(tmp_path, "timestamp,intensity_g_per_kwh\n1735689600,100\n2025-01-01T00:30:00Z,90\n"
                                        "1735693200.0,80\n"))
    assert trace.timestamps == tuple(datetime(2025, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=m)
                                     for m in (0, 30, 60))
    with pytest.raises(ProviderSpecError, match="t.csv:3: field timestamp: 'soon' is not an ISO 8601 time"):
        load_trace(_write(tmp_path, "timestamp,intensity_g_per_kwh\n1735689600,100\nsoon,90\n"))
