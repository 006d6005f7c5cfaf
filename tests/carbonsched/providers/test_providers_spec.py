"""Spec parsing and build-time errors: one line, naming the bad part."""

import math

import pytest

from carbonsched.providers import DEFAULT_PROVIDER_SPEC, ProviderSpecError, build_provider
from carbonsched.providers.spec import parse_specs
from carbonsched.providers.static import load_energy_mix


def test_chain_of_three_parses_kinds_zones_and_options():
    specs = parse_specs("electricitymaps:DE?emission_factor_type=direct&disable_estimations=true, ukgrid:region=13,static:fra")
    assert [(s.kind, s.zone) for s in specs] == [("electricitymaps", "DE"), ("ukgrid", "region=13"), ("static", "fra")]
    assert specs[0].params == {"emission_factor_type": "direct", "disable_estimations": "true"}
    assert specs[0].flag("disable_estimations", False) is True


@pytest.mark.parametrize(
    "spec, names",
    [
        ("", "empty provider spec"),
        ("static:FRA,,trace", "provider #2"),
        ("nosuch:XX", "'nosuch'"),
        ("static", "static needs an ISO"),
        ("static:FR", "static:FR"),
        ("watttime", "watttime needs a region"),
        ("electricitymaps", "needs a zone"),
        ("electricitymaps:DE?lat=1&lon=2", "not both"),
        ("electricitymaps?lat=91&lon=2", "lat must be"),
        ("electricitymaps:DE?emission_factor_type=average", "emission_factor_type"),
        ("electricitymaps:DE?disable_estimations=maybe", "disable_estimations='maybe'"),
        ("ukgrid:region=0", "1 to 17"),
        ("ukgrid:postcode=RG10 1AA", "outward code"),
        ("ukgrid:london", "region=<1-17>"),
        ("trace?speedup=-3", "speedup"),
        ("trace?speedup=fast", "speedup='fast'"),
        ("trace?speed=2", "unknown option 'speed'"),
        ("static:FRA?base_url=http://x", "unknown option 'base_url'"),
        ("ukgrid?read_timeout_s=0", "read_timeout_s='0'"),
        ("ukgrid?forecast=true&forecast=false", "given twice"),
        ("ukgrid?forecast", "key=value"),
        ("ukgrid?base_url=ftp://x", "must start with http"),
        ("electricitymaps:DE?cooldown_s=0", "cooldown_s='0' is not a positive number"),
        ("electricitymaps:DE?cooldown_s=soon", "cooldown_s='soon'"),
        ("ukgrid?max_cooldown_s=-1", "max_cooldown_s='-1'"),
        ("ukgrid?max_age_s=inf", "max_age_s='inf'"),
        ("watttime:CAISO_NORTH?max_age_s=nan", "max_age_s='nan'"),
        ("ukgrid?cooldown_s=60&max_cooldown_s=10", "max_cooldown_s='10' is less than cooldown_s='60'"),
        ("ukgrid?cooldown=10", "unknown option 'cooldown'"),
        ("static:DEU?cooldown_s=10", "unknown option 'cooldown_s'"),
        ("trace?max_age_s=10", "unknown option 'max_age_s'"),
        ("static:XYZ", "unknown country code 'XYZ'"),
        ("trace:/nonexistent/trace.csv", "/nonexistent/trace.csv"),
    ],
)
def test_bad_spec_raises_one_line_error_naming_the_part(spec, names):
    with pytest.raises(ProviderSpecError) as info:
        build_provider(spec, env={})
    message = str(info.value)
    assert names in message
    assert "\n" not in message


def test_cache_keys_parse_per_provider_in_a_chain():
    specs = parse_specs("electricitymaps:DE?cooldown_s=10&max_age_s=900,ukgrid?max_cooldown_s=2.5,static:DEU")
    assert specs[0].params == {"cooldown_s": "10", "max_age_s": "900"}
    assert specs[0].number("cooldown_s", None) == 10.0 and specs[0].number("max_age_s", None) == 900.0
    assert specs[1].number("max_cooldown_s", None) == 2.5 and specs[1].number("cooldown_s", None) is None


def test_bad_cache_key_in_a_chain_names_that_member_and_key():
    with pytest.raises(ProviderSpecError) as info:
        parse_specs("ukgrid?cooldown_s=10,electricitymaps:DE?max_age_s=-900,static:DEU")
    assert str(info.value) == "provider spec 'electricitymaps:DE?max_age_s=-900': max_age_s='-900' is not a positive number"


def test_missing_credentials_name_env_var_and_systemd_credential():
    with pytest.raises(ProviderSpecError, match="ELECTRICITYMAPS_TOKEN.*electricitymaps_token"):
        build_provider("electricitymaps:DE", env={})
    with pytest.raises(ProviderSpecError, match="WATTTIME_PASSWORD.*watttime_password"):
        build_provider("watttime:CAISO_NORTH", env={"WATTTIME_USERNAME": "someone"})


def test_unknown_country_suggests_codes_and_how_to_list_them():
    with pytest.raises(ProviderSpecError) as info:
        build_provider("static:FRX", env={})
    assert "FRA" in str(info.value)
    assert "python -m carbonsched.providers.static" in str(info.value)


def test_default_spec_is_the_bundled_trace_at_real_speed():
    provider = build_provider(DEFAULT_PROVIDER_SPEC, env={})
    assert DEFAULT_PROVIDER_SPEC == "trace"
    assert provider.name == "trace"
    reading = provider.current()
    assert reading.interval_s == 1800.0  # half-hourly trace at speedup 1
    assert provider.describe()["speedup"] == 1.0


def test_names_single_and_chain():
    assert build_provider("static:deu", env={}).name == "static:DEU"
    assert build_provider("trace?speedup=60,static:DEU", env={}).name == "chain(trace,static:DEU)"


def test_static_reads_codecarbon_value_without_network():
    provider = build_provider("static:FRA", env={})
    reading = provider.current()
    assert reading.intensity_g_per_kwh == pytest.approx(load_energy_mix()["FRA"]["carbon_intensity"])
    assert 20 < reading.intensity_g_per_kwh < 100  # France's grid is mostly nuclear
    assert math.isinf(reading.interval_s)
    assert (reading.provider, reading.zone, reading.signal) == ("static:FRA", "FRA", "average")
    assert provider.describe()["calls"] == 0
