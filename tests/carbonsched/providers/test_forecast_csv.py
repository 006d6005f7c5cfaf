"""One reader for "a forecast in a CSV" (carbonsched.providers.forecast_csv): every layout the policy
command and the providers' forecast_file accept, read the same way by both, and bad files refused in
one line naming the file, the line and the field."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carbonsched.cli import app
from carbonsched.providers import build_provider
from carbonsched.providers.forecast_csv import ForecastFileError, read_forecast_csv
from provider_server import NOW, FakeClock

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2025, 3, 1, 13, tzinfo=timezone.utc)
HOURLY = [(T0 + timedelta(hours=h), g) for h, g in enumerate((100.0, 200.0, 300.0))]

ACCEPTED = {
    "plain rows, no header": "2025-03-01T13:00:00Z,100\n2025-03-01T14:00:00Z,200\n2025-03-01T15:00:00Z,300\n",
    "plain rows in any order": "2025-03-01T15:00Z,300\n2025-03-01T13:00Z,100\n2025-03-01T14:00Z,200\n",
    "a header of other names: the first two columns": "when,gCO2\n2025-03-01T13:00,100\n2025-03-01T14:00,200\n"
                                                        "2025-03-01T15:00,300\n",
    "the trace header": "timestamp,intensity_g_per_kwh\n2025-03-01T13:00:00+00:00,100\n2025-03-01T14:00:00+00:00,200\n"
                        "2025-03-01T15:00:00+00:00,300\n",
    "an Electricity Maps export, comments, a missing point, unix seconds":
        "# exported\nDatetime (UTC),Zone,Carbon Intensity gCO2eq/kWh (direct),Carbon Intensity gCO2eq/kWh (LCA)\n"
        f"{T0.timestamp():.0f},DE,100,150\n\n2025-03-01T13:30:00Z,DE,,160\n"
        f"{T0.timestamp() + 3600:.0f},DE,200,250\n{T0.timestamp() + 7200:.0f},DE,300,350\n",
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_every_accepted_layout_reads_as_the_same_points(tmp_path, name):
    path = tmp_path / "f.csv"
    path.write_text(ACCEPTED[name], encoding="utf-8")
    forecast = read_forecast_csv(path)
    assert [(p.timestamp, p.intensity_g_per_kwh) for p in forecast.points] == HOURLY
    assert forecast.step_s == 3600 and forecast.known_at(T0) == forecast.points and forecast.vintages is None


def test_an_empty_file_is_no_forecast_and_a_vintages_file_gives_the_issue_known_at_a_time(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("# nothing yet\n\n", encoding="utf-8")
    assert read_forecast_csv(empty).points == ()
    vintages = tmp_path / "v.csv"
    vintages.write_text("issued_at,target_start,forecast_g_per_kwh\n"
                        "2025-03-01T12:00Z,2025-03-01T13:00Z,110\n2025-03-01T12:00Z,2025-03-01T14:00Z,210\n"
                        "2025-03-01T13:00Z,2025-03-01T14:00Z,200\n", encoding="utf-8")
    forecast = read_forecast_csv(vintages)
    assert forecast.known_at(T0 - timedelta(hours=2)) is None
    assert [p.intensity_g_per_kwh for p in forecast.known_at(T0 - timedelta(minutes=30))] == [110, 210]
    assert [p.intensity_g_per_kwh for p in forecast.known_at(T0)] == [200]


@pytest.mark.parametrize("body, expected", [
    ("2025-03-01T13:00Z,100\nyesterday,200\n", "f.csv:2: field timestamp: 'yesterday' is not an ISO 8601 time"),
    ("2025-03-01T13:00Z,100\n2025-03-01T14:00Z,lots\n", "f.csv:2: field intensity_g_per_kwh: 'lots' is not a number"),
    ("2025-03-01T13:00Z,-4\n", "f.csv:1: field intensity_g_per_kwh: impossible value '-4'"),
    ("2025-03-01T13:00Z,100\n2025-03-01T14:00,200\n", "f.csv:2: field timestamp: has no UTC offset while other rows"),
    ("t,v\n2025-03-01T14:00Z,100\n2025-03-01T13:00Z,90\n2025-03-01T14:00Z,200\n",
     "f.csv:4: field t: the same time as line 2"),
    ("only\n2025-03-01T13:00Z\n", "f.csv:1: expected 'timestamp,intensity_g_per_kwh'"),
    ("2025-03-01T13:00Z,100\n2025-03-01T14:00Z\n", "f.csv:2: expected at least 2 fields, got 1"),
])
def test_bad_files_are_one_line_naming_file_line_and_field(tmp_path, body, expected):
    path = tmp_path / "f.csv"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ForecastFileError) as caught:
        read_forecast_csv(path)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_a_provider_s_forecast_file_takes_plain_rows_as_the_policy_command_does(tmp_path):
    clock = FakeClock()
    hour = NOW.replace(minute=0, second=0, microsecond=0)
    path = tmp_path / "fc.csv"
    path.write_text("".join(f"{(hour + timedelta(hours=h)).isoformat()},{v}\n" for h, v in ((2, 90), (1, 120))))
    provider = build_provider(f"static:DEU?forecast_file={path}", env={}, clock=clock)
    assert [(p.timestamp, p.intensity_g_per_kwh) for p in provider.current().forecast] == \
        [(hour + timedelta(hours=1), 120), (hour + timedelta(hours=2), 90)]
    assert provider.describe()["forecast_file_error"] is None


def test_the_policy_command_reads_an_export_and_a_vintages_file_as_the_provider_does(tmp_path):
    export = tmp_path / "export.csv"
    export.write_text(ACCEPTED["an Electricity Maps export, comments, a missing point, unix seconds"], encoding="utf-8")
    vintages = tmp_path / "v.csv"
    vintages.write_text("generated_at,point_time,value\n" + "".join(
        f"2025-03-01T12:00Z,{t.isoformat()},{g}\n" for t, g in HOURLY), encoding="utf-8")
    answers = []
    for forecast in (export, vintages):
        result = CliRunner().invoke(app, ["policy", "explain", str(REPO / "policies" / "forecast.toml"),
                                          "--intensity", "200", "--forecast-file", str(forecast),
                                          "--now", "2025-03-01T12:30:00Z", "--json"])
        assert result.exit_code == 0, result.output
        answers.append(json.loads(result.stdout)["rho"])
    assert answers[0] == answers[1]
    early = CliRunner().invoke(app, ["policy", "explain", str(REPO / "policies" / "forecast.toml"), "--intensity", "200",
                                     "--forecast-file", str(vintages), "--now", "2025-03-01T11:00:00Z"])
    assert early.exit_code == 2 and "no forecast issued at or before 2025-03-01T11:00:00+00:00" in early.stderr
