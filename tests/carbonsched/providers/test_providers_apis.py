"""Each network provider against the local server speaking its real JSON shapes."""

import pytest

from carbonsched.providers import build_provider
from carbonsched.types import ProviderError
from provider_server import EM_TOKEN, WT_PASSWORD, WT_USERNAME, fake_clock, provider_env, provider_server  # noqa: F401


def build(server, clock, spec, **env):
    return build_provider(spec, env=provider_env(server, **env), clock=clock, sleep=clock.sleep)


def test_electricitymaps_latest_and_forecast(provider_server, fake_clock):
    provider_server.em_estimated = True
    reading = build(provider_server, fake_clock, "electricitymaps:DE?emission_factor_type=direct&disable_estimations=true").current()
    assert (reading.intensity_g_per_kwh, reading.signal, reading.interval_s, reading.estimated) == (302, "average", 3600, True)
    assert reading.timestamp.isoformat() == "2026-10-18T02:00:00+00:00"
    assert [p.intensity_g_per_kwh for p in reading.forecast[:2]] == [250, 255] and len(reading.forecast) == 24
    latest = next(h for h in provider_server.hits if h.path.endswith("/latest"))
    assert latest.headers["auth-token"] == EM_TOKEN
    assert latest.query == {"zone": "DE", "emissionFactorType": "direct", "disableEstimations": "true"}


def test_electricitymaps_token_from_systemd_credential_and_lat_lon(provider_server, fake_clock, tmp_path):
    (tmp_path / "electricitymaps_token").write_text(EM_TOKEN + "\n")
    env = {"CARBONSCHED_ELECTRICITYMAPS_URL": provider_server.url, "CREDENTIALS_DIRECTORY": str(tmp_path)}
    provider = build_provider("electricitymaps?lat=48.1&lon=11.6&forecast=false", env=env, clock=fake_clock)
    assert provider.current().intensity_g_per_kwh == 302
    assert provider_server.hits[-1].query == {"lat": "48.1", "lon": "11.6"}


def test_electricitymaps_forecast_denied_is_not_asked_again(provider_server, fake_clock):
    from provider_server import Reply

    provider_server.queue("/v3/carbon-intensity/forecast", Reply(403, {"error": "plan"}))
    provider = build(provider_server, fake_clock, "electricitymaps:DE")
    assert provider.current().forecast == ()
    fake_clock.advance(3600)
    assert provider.current().intensity_g_per_kwh == 302
    assert provider_server.count("/v3/carbon-intensity/forecast") == 1
    assert provider.describe()["forecast_unavailable"] == "HTTP 403"


def test_electricitymaps_wrong_token_is_a_clear_error(provider_server, fake_clock):
    with pytest.raises(ProviderError, match="HTTP 401"):
        build(provider_server, fake_clock, "electricitymaps:DE", ELECTRICITYMAPS_TOKEN="wrong-token").current()


def test_watttime_converts_lbs_per_mwh_and_reuses_its_token(provider_server, fake_clock):
    provider = build(provider_server, fake_clock, "watttime:CAISO_NORTH")
    reading = provider.current()
    assert reading.intensity_g_per_kwh == pytest.approx(453.592)
    assert (reading.signal, reading.interval_s, reading.zone) == ("marginal", 300, "CAISO_NORTH")
    assert reading.forecast[0] == reading.forecast[0].__class__(reading.timestamp, reading.intensity_g_per_kwh)
    assert reading.forecast[1].intensity_g_per_kwh == pytest.approx(1001 * 0.453592)
    fake_clock.advance(300)
    provider.current()
    assert provider_server.wt_logins == 1 and provider_server.count("/v3/forecast") == 2
    forecast_hit = provider_server.hits[-1]
    assert forecast_hit.query == {"region": "CAISO_NORTH", "signal_type": "co2_moer"}


def test_watttime_logs_in_again_once_on_401(provider_server, fake_clock):
    provider = build(provider_server, fake_clock, "watttime:CAISO_NORTH")
    provider.current()
    provider_server.expire_watttime_tokens()
    fake_clock.advance(300)
    assert provider.current().intensity_g_per_kwh == pytest.approx(453.592)
    assert provider_server.wt_logins == 2


def test_watttime_persistent_401_fails_after_one_relogin(provider_server, fake_clock):
    from provider_server import Reply

    provider_server.queue("/v3/forecast", Reply(401, {"error": "no"}), Reply(401, {"error": "no"}))
    with pytest.raises(ProviderError, match="HTTP 401"):
        build(provider_server, fake_clock, "watttime:CAISO_NORTH").current()
    assert provider_server.wt_logins == 2 and provider_server.count("/v3/forecast") == 2


def test_watttime_refuses_unknown_units_and_bad_login(provider_server, fake_clock):
    provider_server.wt_units = "percentile"
    with pytest.raises(ProviderError, match="unknown units 'percentile'"):
        build(provider_server, fake_clock, "watttime:CAISO_NORTH").current()
    with pytest.raises(ProviderError, match="login refused"):
        build(provider_server, fake_clock, "watttime:CAISO_NORTH", WATTTIME_PASSWORD="nope").current()


def test_watttime_credentials_from_systemd_files(provider_server, fake_clock, tmp_path):
    (tmp_path / "watttime_username").write_text(WT_USERNAME)
    (tmp_path / "watttime_password").write_text(WT_PASSWORD)
    env = {"CARBONSCHED_WATTTIME_URL": provider_server.url, "CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert build_provider("watttime:CAISO_NORTH", env=env, clock=fake_clock).current().zone == "CAISO_NORTH"


def test_ukgrid_national_prefers_actual_then_falls_back_to_forecast(provider_server, fake_clock):
    reading = build(provider_server, fake_clock, "ukgrid").current()
    assert (reading.intensity_g_per_kwh, reading.estimated, reading.interval_s) == (149, False, 1800)
    assert reading.detail["index"] == "moderate" and len(reading.forecast) == 96  # 48 h by default
    assert provider_server.hits[-1].path == "/intensity/2026-10-18T02:00Z/fw48h"
    assert reading.forecast[-1].timestamp.isoformat() == "2026-10-20T01:30:00+00:00"
    provider_server.uk_actual = None
    reading = build(provider_server, fake_clock, "ukgrid?forecast=false").current()
    assert (reading.intensity_g_per_kwh, reading.estimated) == (156, True)


@pytest.mark.parametrize("spec, path, region", [
    ("ukgrid:region=13", "/regional/regionid/13", 13),
    ("ukgrid:postcode=rg10", "/regional/postcode/RG10", 12),
])
def test_ukgrid_regional_is_forecast_only(provider_server, fake_clock, spec, path, region):
    reading = build(provider_server, fake_clock, spec).current()
    assert (reading.intensity_g_per_kwh, reading.estimated, reading.detail["regionid"]) == (88, True, region)
    assert [p.intensity_g_per_kwh for p in reading.forecast[:2]] == [80, 81] and len(reading.forecast) == 96
    assert provider_server.hits[0].path == path
    where = path.removeprefix("/regional/")
    assert provider_server.hits[1].path == f"/regional/intensity/2026-10-18T02:00Z/fw48h/{where}"


@pytest.mark.parametrize("spec, path, half_hours", [
    ("ukgrid?forecast_hours=24", "/intensity/2026-10-18T02:00Z/fw24h", 48),
    ("ukgrid:region=13?forecast_hours=24", "/regional/intensity/2026-10-18T02:00Z/fw24h/regionid/13", 48),
    ("ukgrid:postcode=RG10?forecast_hours=48", "/regional/intensity/2026-10-18T02:00Z/fw48h/postcode/RG10", 96),
])
def test_ukgrid_forecast_hours_picks_the_forward_window(provider_server, fake_clock, spec, path, half_hours):
    provider = build(provider_server, fake_clock, spec)
    assert len(provider.current().forecast) == half_hours
    assert provider_server.hits[-1].path == path
    described = provider.describe()
    assert described["forecast_hours"] == half_hours // 2 and path.replace("2026-10-18T02:00Z", "{from}") in described["forecast_source"]


def test_electricitymaps_forecast_hours_is_sent_as_horizon_hours(provider_server, fake_clock):
    provider = build(provider_server, fake_clock, "electricitymaps:DE?forecast_hours=72")
    reading = provider.current()
    assert len(reading.forecast) == 72 and reading.forecast[-1].timestamp.isoformat() == "2026-10-21T02:00:00+00:00"
    forecast_hit = next(h for h in provider_server.hits if h.path.endswith("/forecast"))
    assert forecast_hit.query == {"zone": "DE", "horizonHours": "72"}
    latest_hit = next(h for h in provider_server.hits if h.path.endswith("/latest"))
    assert "horizonHours" not in latest_hit.query
    assert (provider.describe()["forecast_hours"], provider.describe()["forecast_source"]) == (
        72, "electricitymaps /v3/carbon-intensity/forecast")
    provider_server.hits.clear()
    build(provider_server, fake_clock, "electricitymaps:DE").current()  # no key: the API's default, not sent
    assert next(h for h in provider_server.hits if h.path.endswith("/forecast")).query == {"zone": "DE"}


def test_electricitymaps_horizon_beyond_the_plan_is_not_asked_again(provider_server, fake_clock):
    from provider_server import Reply

    provider_server.queue("/v3/carbon-intensity/forecast", Reply(403, {"error": "horizon not in your plan"}))
    provider = build(provider_server, fake_clock, "electricitymaps:DE?forecast_hours=48")
    reading = provider.current()
    assert reading.intensity_g_per_kwh == 302 and reading.forecast == ()
    fake_clock.advance(3600)
    provider.current()
    assert provider_server.count("/v3/carbon-intensity/forecast") == 1
    assert provider.describe()["forecast_unavailable"] == "HTTP 403" and provider.describe()["forecast_source"] is None


def test_watttime_forecast_hours_is_sent_as_horizon_hours(provider_server, fake_clock):
    provider = build(provider_server, fake_clock, "watttime:CAISO_NORTH?forecast_hours=48")
    reading = provider.current()
    assert len(reading.forecast) == 12 * 48
    assert provider_server.hits[-1].query == {"region": "CAISO_NORTH", "signal_type": "co2_moer", "horizon_hours": "48"}
    assert provider.describe()["forecast_hours"] == 48


def test_ukgrid_impossible_value(provider_server, fake_clock):
    provider_server.uk_actual = 9000
    with pytest.raises(ProviderError, match="impossible value"):
        build(provider_server, fake_clock, "ukgrid").current()
