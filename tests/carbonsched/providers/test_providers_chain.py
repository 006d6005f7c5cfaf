"""Cache (one upstream call per data interval), error cool-down, fallback chain and stale values."""

from datetime import datetime

import pytest

from carbonsched.providers import ReadingCache, build_provider
from carbonsched.types import ProviderError
from provider_server import Reply, fake_clock, provider_env, provider_server  # noqa: F401

LATEST = "/v3/carbon-intensity/latest"


def build(server, clock, spec, **kwargs):
    return build_provider(spec, env=provider_env(server), clock=clock, sleep=clock.sleep, **kwargs)


@pytest.mark.parametrize("spec, path, max_calls", [
    ("electricitymaps:DE", LATEST, 24),
    ("ukgrid", "/intensity", 48),
    ("watttime:CAISO_NORTH", "/v3/forecast", 288),
])
def test_polling_every_minute_for_a_day_calls_upstream_once_per_interval(provider_server, fake_clock, spec, path, max_calls):
    provider = build(provider_server, fake_clock, spec)
    for _ in range(24 * 60):
        provider.current()
        fake_clock.advance(60)
    assert provider_server.count(path) == max_calls
    assert provider.describe()["cache"]["hits"] == 24 * 60 - max_calls


def test_cache_is_keyed_by_provider_and_zone_and_shareable(provider_server, fake_clock):
    cache = ReadingCache()
    build(provider_server, fake_clock, "electricitymaps:DE", cache=cache).current()
    build(provider_server, fake_clock, "electricitymaps:DE", cache=cache).current()  # e.g. after a reload
    build(provider_server, fake_clock, "electricitymaps:FR", cache=cache).current()
    assert [h.query["zone"] for h in provider_server.hits if h.path == LATEST] == ["DE", "FR"]
    assert len(cache) == 2


def test_chain_falls_back_cools_down_and_returns_to_the_primary(provider_server, fake_clock):
    provider_server.queue(LATEST, *[Reply(500)] * 3)
    chain = build(provider_server, fake_clock, "electricitymaps:DE?forecast=false,static:DEU")
    assert chain.name == "chain(electricitymaps:DE,static:DEU)"
    reading = chain.current()
    assert reading.provider == "static:DEU"
    calls_after_failure = provider_server.count(LATEST)
    fake_clock.advance(10)  # within the cool-down: the dead primary is not asked
    assert chain.current().provider == "static:DEU"
    assert provider_server.count(LATEST) == calls_after_failure
    status = chain.describe()
    assert status["members"][0]["last_error"].startswith("HTTP 500") and status["answered_by"] == "static:DEU"
    fake_clock.advance(30)  # cool-down over, primary healthy again
    assert chain.current().provider == "electricitymaps:DE"
    assert chain.describe()["members"][0]["consecutive_failures"] == 0


def test_cool_down_grows_with_consecutive_failures_and_respects_retry_after(provider_server, fake_clock):
    provider_server.queue(LATEST, *[Reply(500)] * 6, Reply(429, headers={"Retry-After": "600"}))
    chain = build(provider_server, fake_clock, "electricitymaps:DE?forecast=false,static:DEU")
    chain.current()
    fake_clock.advance(31)
    chain.current()  # second failure: 60 s cool-down
    fake_clock.advance(31)
    chain.current()
    assert provider_server.count(LATEST) == 6
    fake_clock.advance(30)
    chain.current()  # 429: cool-down is the Retry-After, not 120 s
    fake_clock.advance(300)
    chain.current()
    assert provider_server.count(LATEST) == 7
    fake_clock.advance(301)
    assert chain.current().provider == "electricitymaps:DE"


def test_all_failing_serves_the_last_value_marked_stale(provider_server, fake_clock):
    chain = build(provider_server, fake_clock, "electricitymaps:DE?forecast=false,ukgrid?forecast=false")
    fresh = chain.current()
    fake_clock.advance(2 * 3600)
    provider_server.queue(LATEST, *[Reply(503)] * 3)
    provider_server.queue("/intensity", *[Reply(200, "not json")])
    stale = chain.current()
    assert stale.detail["stale"] is True and len(stale.detail["errors"]) == 2
    assert (stale.provider, stale.intensity_g_per_kwh, stale.fetched_at) == ("electricitymaps:DE", 302, fresh.fetched_at)
    assert stale.age_s(fake_clock.now) == pytest.approx(2 * 3600 + 600, abs=2)  # plus the backoff sleeps
    assert chain.describe()["stale_served"] == 1


def test_all_failing_without_history_lists_every_error(provider_server, fake_clock):
    provider_server.queue(LATEST, *[Reply(503)] * 3)
    provider_server.queue("/intensity", Reply(429, headers={"Retry-After": "90"}))
    chain = build(provider_server, fake_clock, "electricitymaps:DE?forecast=false,ukgrid?forecast=false")
    with pytest.raises(ProviderError) as info:
        chain.current()
    message = str(info.value)
    assert message.startswith("chain(electricitymaps:DE,ukgrid):")
    assert "electricitymaps:DE: HTTP 503" in message and "ukgrid: HTTP 429" in message


def test_single_provider_failure_raises_its_own_error(provider_server, fake_clock):
    provider_server.queue("/intensity", Reply(404, {"error": "gone"}))
    with pytest.raises(ProviderError, match=r"^ukgrid: HTTP 404"):
        build(provider_server, fake_clock, "ukgrid?forecast=false").current()


def test_configured_cool_down_and_ceiling_are_honoured_per_member(provider_server, fake_clock):
    provider_server.queue(LATEST, *[Reply(500)] * 3)
    chain = build(provider_server, fake_clock,
                  "electricitymaps:DE?forecast=false&max_tries=1&cooldown_s=5&max_cooldown_s=8,ukgrid?forecast=false")
    primary, fallback = chain.describe()["members"]
    assert (primary["cooldown_s"], primary["max_cooldown_s"]) == (5, 8)
    assert (fallback["cooldown_s"], fallback["max_cooldown_s"], fallback["max_age_s"]) == (30, 300, None)
    asked = []
    for step_s in (0, 4, 2, 7, 2, 7, 2):  # failures at t=0 (5 s), t=6 (10 s capped to 8) and t=15 (8 s)
        fake_clock.advance(step_s)
        answer = chain.current().provider
        asked.append(provider_server.count(LATEST))
        assert answer == ("electricitymaps:DE" if asked[-1] == 4 else "ukgrid")
    assert asked == [1, 1, 2, 2, 3, 3, 4]
    assert chain.describe()["members"][0]["consecutive_failures"] == 0


def test_retry_after_still_outlasts_a_short_configured_cool_down(provider_server, fake_clock):
    provider_server.queue(LATEST, Reply(429, headers={"Retry-After": "60"}))
    chain = build(provider_server, fake_clock, "electricitymaps:DE?forecast=false&cooldown_s=1,static:DEU")
    assert chain.current().provider == "static:DEU"
    fake_clock.advance(30)
    assert chain.current().provider == "static:DEU"
    assert provider_server.count(LATEST) == 1
    fake_clock.advance(31)
    assert chain.current().provider == "electricitymaps:DE"


def test_a_first_cool_down_above_the_default_ceiling_is_not_cut_short(provider_server, fake_clock):
    chain = build(provider_server, fake_clock, "ukgrid?cooldown_s=600")
    assert (chain.describe()["cooldown_s"], chain.describe()["max_cooldown_s"]) == (600, 600)


def test_max_age_replaces_the_data_interval_as_the_freshness_window(provider_server, fake_clock):
    provider = build(provider_server, fake_clock, "electricitymaps:DE?forecast=false&max_age_s=900")
    for _ in range(2 * 60):
        provider.current()
        fake_clock.advance(60)
    assert provider_server.count(LATEST) == 8  # every 15 min instead of every hour
    cache = provider.describe()["cache"]
    assert cache["hits"] == 2 * 60 - 8
    window = datetime.fromisoformat(cache["fresh_until"]) - datetime.fromisoformat(cache["fetched_at"])
    assert window.total_seconds() == 900
