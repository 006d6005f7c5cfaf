"""`carbonsched policy check|explain` through the real typer app, plus one real subprocess."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

from typer.testing import CliRunner

from carbonsched.cli import app

REPO = Path(__file__).resolve().parents[3]
STEPS = str(REPO / "policies" / "steps.toml")
runner = CliRunner()


def test_check_ok_files_prints_kind_per_file():
    files = [str(p) for p in sorted((REPO / "policies").glob("*.toml"))]
    result = runner.invoke(app, ["policy", "check", *files])
    assert result.exit_code == 0, result.output
    kinds = [tomllib.loads(Path(f).read_text())["kind"] for f in files]
    assert result.stdout.splitlines() == [f"ok {f} ({kind})" for f, kind in zip(files, kinds)]


def test_check_reports_every_problem_and_exits_1(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "steps"\nrho_min = 0\n[[steps]]\nbelow = 100\nrho = "high"\n', encoding="utf-8")
    result = runner.invoke(app, ["policy", "check", STEPS, str(bad)])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"ok {STEPS} (steps)",
        f"{bad}:2: field 'rho_min': must be a number in (0, 1], got 0",
        f"{bad}:5: field 'steps[0].rho': must be a number in (0, 1], got 'high'",
    ]


def test_missing_file_is_one_error_line_exit_2(tmp_path):
    missing = str(tmp_path / "nope.toml")
    for command in (["policy", "check", missing], ["policy", "explain", missing, "--intensity", "250"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2
        assert result.stderr == f"error: {missing}: cannot read: No such file or directory\n"
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_explain_json_with_forecast_file_and_gpu_power(tmp_path):
    forecast = tmp_path / "forecast.csv"
    forecast.write_text("timestamp,intensity_g_per_kwh\n" + "".join(
        f"2025-03-01T{h:02d}:00:00Z,{g}\n" for h, g in ((13, 100), (14, 200), (15, 300), (16, 400), (17, 500))),
        encoding="utf-8")
    result = runner.invoke(app, ["policy", "explain", str(REPO / "policies" / "forecast.toml"), "--intensity", "300",
                                 "--forecast-file", str(forecast), "--now", "2025-03-01T12:30:00Z",
                                 "--gpu-power-w", "300", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    # Rank 50 % → 0.7, then × 0.9 for GPU power above 250 W.
    assert payload["rho"] == 0.7 * 0.9 and payload["kind"] == "forecast"
    assert "ranks at 50%" in payload["reason"] and "300 W > 250 W" in payload["reason"]
    assert payload["explanation"][-1] == "=> ρ 0.63"


def test_explain_the_default_policy_with_a_history_file(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("timestamp,intensity_g_per_kwh\n" + "".join(
        f"2025-03-0{day}T12:00:00Z,{g}\n" for day, g in ((1, 20), (2, 40), (3, 60), (4, 80), (5, 100))),
        encoding="utf-8")
    result = runner.invoke(app, ["policy", "explain", str(REPO / "carbonsched" / "data" / "default_policy.toml"),
                                 "--intensity", "60", "--history-file", str(history), "--now", "2025-03-05T13:00:00Z"])
    assert result.exit_code == 0, result.output
    # 60 is the median of the last 7 days' readings: halfway from ρ 1 to ρ 0.5.
    assert result.stdout.splitlines()[0] == ("ρ 0.75  (intensity 60 gCO2e/kWh ranks at 50% of the last 7 days' "
                                             "readings → ρ 0.75)")


def test_explain_budget_and_unknown_intensity():
    budget = runner.invoke(app, ["policy", "explain", str(REPO / "policies" / "budget.toml"), "--intensity", "200",
                                 "--used-today-g", "1000"])
    assert budget.exit_code == 0 and budget.stdout.startswith("ρ 0.70")
    unknown = runner.invoke(app, ["policy", "explain", STEPS, "--unknown-intensity"])
    assert unknown.exit_code == 0 and unknown.stdout.startswith("ρ 0.40") and "intensity unknown" in unknown.stdout


def test_explain_bad_forecast_file_and_bad_policy(tmp_path):
    forecast = tmp_path / "f.csv"
    forecast.write_text("2025-03-01T13:00:00Z,100\nyesterday,200\n", encoding="utf-8")
    result = runner.invoke(app, ["policy", "explain", STEPS, "--intensity", "1", "--forecast-file", str(forecast)])
    assert result.exit_code == 2
    assert result.stderr == (f"error: {forecast}:2: field timestamp: 'yesterday' is not an ISO 8601 time "
                             "(e.g. 2026-03-01T18:00Z; no offset means UTC) or unix seconds\n")
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "constant"\nrho = 2\n', encoding="utf-8")
    result = runner.invoke(app, ["policy", "explain", str(bad), "--intensity", "1"])
    assert result.exit_code == 1 and result.stderr.startswith(f"{bad}:2: field 'rho': ")


def test_real_subprocess_explain_steps_at_250():
    result = subprocess.run([str(REPO / ".venv" / "bin" / "carbonsched"), "policy", "explain", "policies/steps.toml",
                             "--intensity", "250"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("ρ 0.70")
    assert "250 < 300 gCO2e/kWh" in result.stdout


def test_explain_without_intensity_takes_the_running_daemons_reading():
    from inprocess_daemon import inprocess_daemon

    with inprocess_daemon(provider="static:DEU") as running:
        socket_path = running.daemon.config.socket
        now = running.daemon.status()["intensity"]["intensity_g_per_kwh"]
        result = runner.invoke(app, ["policy", "explain", STEPS, "--socket", str(socket_path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["intensity_g_per_kwh"] == now and doc["intensity_from"].startswith(f"the daemon at {socket_path}")
    given = json.loads(runner.invoke(app, ["policy", "explain", STEPS, "--intensity", str(now), "--json"]).output)
    assert doc["rho"] == given["rho"] and given["intensity_from"] == "--intensity"


def test_explain_without_intensity_or_daemon_reads_the_provider(tmp_path):
    from carbonsched.providers import build_provider

    expected = build_provider("static:FRA").current().intensity_g_per_kwh
    config = tmp_path / "carbonsched.toml"
    config.write_text('provider = "static:FRA"\n', encoding="utf-8")
    result = runner.invoke(app, ["policy", "explain", STEPS, "--socket", str(tmp_path / "none.sock"),
                                 "--config", str(config)])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first == f"intensity {expected:g} gCO2e/kWh from provider static:FRA (no daemon answered)"
    assert f"intensity {expected:g}" in result.output.splitlines()[1]  # the ρ line decided on it


def test_explain_with_an_unreachable_provider_explains_the_unknown_case_and_a_bad_spec_is_exit_2(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = f"electricitymaps:DE?base_url=http://127.0.0.1:{port}&max_tries=1"
    result = runner.invoke(app, ["policy", "explain", STEPS, "--provider", spec], env={"ELECTRICITYMAPS_TOKEN": "t"})
    assert result.exit_code == 0, result.output
    first, decision = result.stdout.splitlines()[:2]
    assert first.startswith(f"intensity unknown (provider {spec} failed: ") and "intensity unknown" in decision

    bad = runner.invoke(app, ["policy", "explain", STEPS, "--provider", "static:XXX"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: static: unknown country code 'XXX'")
