"""The lead-time forecast-error model: its MAPE, the fit recovering known parameters from synthetic
vintages, seeded and consistent draws, the UK-like preset, model files, the trace provider's
``noise_model=`` and the ``forecast-error`` command."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from carbonsched.cli import app as carbonsched_app
from carbonsched.planning.noise_model import (
    UK_LIKE,
    LeadNoiseModel,
    NoiseModelError,
    fit_noise_model,
    load_noise_model,
    mape_by_lead,
)
from carbonsched.planning.series import Series
from carbonsched.providers import ProviderSpecError, build_provider
from provider_server import FakeClock
from test_vintages import write_vintages

HOUR_S = 3600.0
ORIGIN = datetime(2025, 1, 6, tzinfo=timezone.utc)
KNOWN = LeadNoiseModel(((HOUR_S, 0.08), (12 * HOUR_S, 0.2), (24 * HOUR_S, 0.25)), phi=0.7)


def _truth(days: int, step_s: float = 1800.0) -> Series:
    """A smooth daily shape (150-450 gCO2e/kWh), so the errors are the model's, not the trace's."""
    count = int(days * 86400 / step_s)
    values = tuple(300.0 + 150 * math.sin(2 * math.pi * i * step_s / 86400) for i in range(count))
    return Series(tuple(i * step_s for i in range(count)), values, count * step_s, ORIGIN.timestamp())


def test_mape_at_is_the_mean_absolute_percentage_error_of_the_log_normal_error():
    draws = np.random.default_rng(5).standard_normal(400_000)
    for lead_s in (1800.0, 6 * HOUR_S, 30 * HOUR_S):
        sigma = KNOWN.sigma_at(lead_s)
        assert KNOWN.mape_at(lead_s) == pytest.approx(np.mean(np.abs(np.exp(sigma * draws) - 1)), rel=0.01)
    assert KNOWN.mape_at(0.0) == 0.0 and KNOWN.sigma_at(48 * HOUR_S) == 0.25  # held after the last knot
    assert LeadNoiseModel(((HOUR_S, 0.3), (2 * HOUR_S, 0.1))).sigma_at(2 * HOUR_S) == 0.3  # made non-decreasing


def test_the_fit_recovers_sigma_and_phi_of_a_known_model():
    truth = _truth(90)
    vintages = KNOWN.synthetic_vintages(truth, 2 * HOUR_S, 24 * HOUR_S, seed=4)
    fitted = fit_noise_model(vintages, truth)
    for lead_s in (HOUR_S, 6 * HOUR_S, 12 * HOUR_S, 24 * HOUR_S):
        assert fitted.sigma_at(lead_s) == pytest.approx(KNOWN.sigma_at(lead_s), rel=0.06), lead_s
    assert abs(fitted.phi - KNOWN.phi) < 0.05
    uncorrelated = LeadNoiseModel(KNOWN.sigma_knots, phi=0.0)
    assert abs(fit_noise_model(uncorrelated.synthetic_vintages(truth, 2 * HOUR_S, 24 * HOUR_S, seed=4), truth).phi) < 0.05


def test_uk_like_errs_more_the_further_ahead_near_the_published_figures():
    leads = [h * HOUR_S for h in (0.5, 1, 3, 6, 12, 24, 36, 48)]
    assert all(a < b for a, b in zip(map(UK_LIKE.mape_at, leads), map(UK_LIKE.mape_at, leads[1:])))
    assert UK_LIKE.mape_at(HOUR_S) == pytest.approx(0.10, abs=0.002)
    truth = _truth(60)
    measured = mape_by_lead(UK_LIKE.synthetic_vintages(truth, 6 * HOUR_S, 48 * HOUR_S, seed=2), truth)
    assert list(measured) == ["0-1h", "1-6h", "6-24h", "24-48h"]
    assert all(a < b for a, b in zip(measured.values(), list(measured.values())[1:]))
    for bucket, published in (("1-6h", 0.13), ("6-24h", 0.16), ("24-48h", 0.18)):
        assert measured[bucket] == pytest.approx(published, abs=0.02), bucket


def test_same_seed_same_forecast_and_the_current_slot_is_exact():
    truth = _truth(4)
    forecast = UK_LIKE.forecast_at(truth, 6 * HOUR_S, 48 * HOUR_S, seed=3, stream=9)
    first = forecast(600.0, 24 * HOUR_S)
    assert first == forecast(600.0, 24 * HOUR_S)
    assert first == LeadNoiseModel.from_json(UK_LIKE.to_json()).forecast_at(truth, 6 * HOUR_S, 48 * HOUR_S, 3, 9)(
        600.0, 24 * HOUR_S)
    assert first[0].intensity_g_per_kwh == truth.value_at(6 * HOUR_S + 600.0)
    assert all(s.intensity_g_per_kwh != truth.value_at(6 * HOUR_S + 600 + s.start_s) for s in first[1:])
    assert [s.intensity_g_per_kwh for s in UK_LIKE.forecast_at(truth, 6 * HOUR_S, 48 * HOUR_S, 4, 9)(600.0, 24 * HOUR_S)
            ] != [s.intensity_g_per_kwh for s in first]
    assert [s.intensity_g_per_kwh for s in UK_LIKE.forecast_at(truth, 6 * HOUR_S, 48 * HOUR_S, 3, 8)(600.0, 24 * HOUR_S)
            ] != [s.intensity_g_per_kwh for s in first]
    # A shorter horizon is the same forecast, cut; the window ends at the deadline.
    assert [(s.start_s, s.intensity_g_per_kwh) for s in forecast(600.0, 6 * HOUR_S)] == \
        [(s.start_s, s.intensity_g_per_kwh) for s in first if s.start_s < 6 * HOUR_S]
    assert forecast(47 * HOUR_S, 24 * HOUR_S)[-1].end_s == pytest.approx(HOUR_S)


def test_successive_issues_revise_by_independent_news():
    """A martingale: the revision between an issue 24 h ahead and one 12 h ahead is uncorrelated with
    the later issue's error, and the two errors' variances are σ(24 h)² and σ(12 h)²."""
    targets = ORIGIN.timestamp() + np.arange(2000) * 86400.0  # one target a day: independent samples
    early = np.array([KNOWN.log_errors_at(t - 24 * HOUR_S, [t], 1, 0)[0] for t in targets])
    late = np.array([KNOWN.log_errors_at(t - 12 * HOUR_S, [t], 1, 0)[0] for t in targets])
    revision = early - late
    assert abs(np.corrcoef(revision, late)[0, 1]) < 0.07  # 3 standard errors of 2000 pairs
    assert np.std(early) == pytest.approx(0.25, rel=0.06) and np.std(late) == pytest.approx(0.2, rel=0.06)
    assert KNOWN.log_errors_at(targets[0] - 600, [targets[0]], 1, 0)[0] != 0.0  # the target's own cell arrived
    assert KNOWN.log_errors_at(targets[0], [targets[0] + 600], 1, 0)[0] == 0.0  # in the issue's own cell: exact


# --- model files ---------------------------------------------------------------------------------------------


def test_a_model_file_round_trips(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(UK_LIKE.to_json()))
    assert load_noise_model(path) == UK_LIKE


@pytest.mark.parametrize("text, words", [
    ('{"sigma_knots": [[3600, 0.1]], "phi": 1.5}', ["field phi", "1.5"]),
    ('{"sigma_knots": [[3600, 0.1], [1800, 0.2]]}', ["field sigma_knots[1]", "1800"]),
    ('{"sigma_knots": [[0, 0.1]]}', ["field sigma_knots[0]", "positive"]),
    ('{"sigma_knots": [[3600, "wide"]]}', ["field sigma_knots[0]", "wide"]),
    ('{"sigma_knots": [], "phi": 0.5}', ["field sigma_knots"]),
    ('{"sigma_knots": [[3600, 0.1]], "update_s": 0}', ["field update_s"]),
    ('{"sigma_knots": [[3600, 0.1]], "rho": 1}', ["field rho", "unknown"]),
    ('{"sigma_knots": [[3600, 0.1]],\n "phi": }', [":2: not JSON"]),
])
def test_a_bad_model_file_names_the_file_and_the_field(tmp_path, text, words):
    path = tmp_path / "model.json"
    path.write_text(text)
    with pytest.raises(NoiseModelError) as info:
        load_noise_model(path)
    assert str(info.value).startswith(str(path)) and all(w in str(info.value) for w in words), str(info.value)


# --- the trace provider ----------------------------------------------------------------------------------------


def _flat_trace(tmp_path: Path, hours: int = 96) -> Path:
    rows = [f"{(ORIGIN + timedelta(hours=h)).isoformat()},300" for h in range(hours)]
    path = tmp_path / "flat.csv"
    path.write_text("timestamp,intensity_g_per_kwh\n" + "\n".join(rows) + "\n")
    return path


def test_the_trace_provider_s_noise_model_is_the_backtest_s_model(tmp_path):
    trace = _flat_trace(tmp_path)
    model_path = tmp_path / "model.json"
    model_path.write_text(json.dumps(KNOWN.to_json()))
    clock = FakeClock()
    spec = f"trace:{trace}?noise_model={model_path}&forecast_seed=7&forecast_hours=48&speedup=3600"
    provider = build_provider(spec, env={}, clock=clock)
    reading = provider.current()
    assert reading.intensity_g_per_kwh == 300.0
    targets = [ORIGIN.timestamp() + h * HOUR_S for h in range(1, 48)]  # trace time: the replay starts at ORIGIN
    expected = 300.0 * np.exp(KNOWN.log_errors_at(ORIGIN.timestamp(), targets, 7, 0))
    assert [p.intensity_g_per_kwh for p in reading.forecast] == pytest.approx(expected.tolist(), rel=1e-12)
    assert [p.intensity_g_per_kwh for p in build_provider(spec, env={}, clock=clock).current().forecast] == \
        [p.intensity_g_per_kwh for p in reading.forecast]
    assert "noise model" in provider.describe()["forecast_source"]
    # Six trace hours later the issue is six hours on: the samples' errors are revised, as the model says.
    clock.advance(6)
    later = provider.current().forecast
    issued = ORIGIN.timestamp() + 6 * HOUR_S
    expected = 300.0 * np.exp(KNOWN.log_errors_at(issued, [issued + h * HOUR_S for h in range(1, 48)], 7, 0))
    assert [p.intensity_g_per_kwh for p in later] == pytest.approx(expected.tolist(), rel=1e-12)


@pytest.mark.parametrize("query, words", [
    ("noise_model={model}&forecast_noise=0.1", ["forecast_noise and noise_model"]),
    ("noise_model=%20", ["noise_model is empty"]),
    ("noise_model={bad}", ["{bad}", "field phi"]),
])
def test_bad_noise_model_specs_name_the_problem(tmp_path, query, words):
    model, bad = tmp_path / "model.json", tmp_path / "bad.json"
    model.write_text(json.dumps(KNOWN.to_json()))
    bad.write_text('{"sigma_knots": [[3600, 0.1]], "phi": 2}')
    with pytest.raises(ProviderSpecError) as info:
        build_provider(f"trace:{_flat_trace(tmp_path)}?" + query.format(model=model, bad=bad), env={})
    assert all(w.format(bad=bad) in str(info.value) for w in words), str(info.value)


# --- forecast-error ---------------------------------------------------------------------------------------------


def _files(tmp_path: Path) -> tuple[Path, Path]:
    truth = _truth(20)
    trace = tmp_path / "truth.csv"
    trace.write_text("timestamp,intensity_g_per_kwh\n" + "\n".join(
        f"{datetime.fromtimestamp(truth.origin_s + o, timezone.utc).isoformat()},{v!r}"
        for o, v in zip(truth.offsets_s, truth.values_g_per_kwh)) + "\n")
    forecasts = write_vintages(tmp_path / "issued.csv", UK_LIKE.synthetic_vintages(truth, 3 * HOUR_S, 48 * HOUR_S, 1))
    return forecasts, trace


def test_forecast_error_json_and_the_written_model(tmp_path):
    forecasts, trace = _files(tmp_path)
    out = tmp_path / "fitted.json"
    result = CliRunner().invoke(carbonsched_app, ["forecast-error", "--forecasts", str(forecasts), "--trace", str(trace),
                                                  "--format", "json", "--write-model", str(out)])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["issues"] == 160 and list(answer["mape_by_lead"]) == ["0-1h", "1-6h", "6-24h", "24-48h"]
    assert 0 < answer["mape_by_lead"]["0-1h"] < answer["mape_by_lead"]["24-48h"] < 0.5
    fitted = load_noise_model(out)
    assert answer["model"] == fitted.to_json() and 0.5 < fitted.phi < 0.99
    assert fitted.sigma_at(HOUR_S) < fitted.sigma_at(24 * HOUR_S)


def test_forecast_error_text_and_bad_input(tmp_path):
    forecasts, trace = _files(tmp_path)
    result = CliRunner().invoke(carbonsched_app, ["forecast-error", "--forecasts", str(forecasts), "--trace", str(trace)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"forecasts {forecasts}: 160 issues")
    assert [line.split()[0] for line in lines[3:7]] == ["0-1h", "1-6h", "6-24h", "24-48h"]
    assert "fitted model: update every 30 min, phi" in result.stdout
    forecasts.write_text(forecasts.read_text() + "2025-01-08T00:00:00Z,2025-01-08T01:00:00Z,none\n")
    bad = CliRunner().invoke(carbonsched_app, ["forecast-error", "--forecasts", str(forecasts), "--trace", str(trace)])
    assert bad.exit_code == 2 and "field forecast_g_per_kwh: 'none' is not a number" in bad.output
    usage = CliRunner().invoke(carbonsched_app, ["forecast-error", "--forecasts", str(forecasts), "--trace", str(trace),
                                                 "--format", "xml"])
    assert usage.exit_code == 2 and "--format" in usage.output
