"""Shared HTTP policy, exercised through real providers against the local fake server."""

import base64
import logging
import math
import socket
from datetime import timedelta
from email.utils import format_datetime

import pytest

from carbonsched.providers import build_provider
from carbonsched.types import ProviderError
from provider_server import EM_TOKEN, WT_PASSWORD, WT_USERNAME, FakeClock, Reply, fake_clock, provider_env, provider_server  # noqa: F401

LATEST = "/v3/carbon-intensity/latest"


def em(server, clock, spec="electricitymaps:DE?forecast=false", **extra):
    return build_provider(spec, env=provider_env(server, **extra), clock=clock, sleep=clock.sleep)


def test_5xx_is_retried_with_growing_jittered_backoff_then_succeeds(provider_server, fake_clock):
    provider_server.queue(LATEST, Reply(503), Reply(500))
    reading = em(provider_server, fake_clock).current()
    assert reading.intensity_g_per_kwh == 302
    assert provider_server.count(LATEST) == 3
    first, second = fake_clock.sleeps
    assert 0 <= first <= 0.5 and 0 <= second <= 1.0


def test_gives_up_after_three_tries(provider_server, fake_clock):
    provider_server.queue(LATEST, Reply(500), Reply(502), Reply(500), Reply(500))
    with pytest.raises(ProviderError, match="gave up after 3 tries"):
        em(provider_server, fake_clock).current()
    assert provider_server.count(LATEST) == 3


def test_4xx_is_not_retried(provider_server, fake_clock):
    provider_server.queue(LATEST, Reply(400, {"error": "bad zone"}))
    with pytest.raises(ProviderError, match="HTTP 400"):
        em(provider_server, fake_clock).current()
    assert provider_server.count(LATEST) == 1


@pytest.mark.parametrize("header_kind", ["seconds", "http-date"])
def test_429_raises_with_retry_after_and_no_call_before_then(provider_server, fake_clock, header_kind):
    value = "120" if header_kind == "seconds" else format_datetime(fake_clock.now + timedelta(seconds=120), usegmt=True)
    provider_server.queue(LATEST, Reply(429, {"error": "Too many requests"}, headers={"Retry-After": value}))
    provider = em(provider_server, fake_clock)
    with pytest.raises(ProviderError) as info:
        provider.current()
    assert info.value.retry_after_s == pytest.approx(120, abs=1)
    for _ in range(3):
        fake_clock.advance(30)
        with pytest.raises(ProviderError) as again:
            provider.current()
        assert again.value.retry_after_s is not None and again.value.retry_after_s <= 90
    assert provider_server.count(LATEST) == 1
    fake_clock.advance(31)
    assert provider.current().intensity_g_per_kwh == 302
    assert provider_server.count(LATEST) == 2


@pytest.mark.parametrize("body", ["<html>Bad gateway</html>", '{"carbonIntensity": 30', ""])
def test_malformed_json_is_a_provider_error(provider_server, fake_clock, body):
    provider_server.queue(LATEST, Reply(200, body))
    with pytest.raises(ProviderError, match="malformed JSON"):
        em(provider_server, fake_clock).current()


@pytest.mark.parametrize("value", [-1, math.nan, math.inf, 5001, "302", None, True])
def test_impossible_values_are_refused(provider_server, fake_clock, value):
    provider_server.em_value_g_per_kwh = value
    with pytest.raises(ProviderError, match="impossible value|no carbonIntensity"):
        em(provider_server, fake_clock).current()


def test_read_timeout_is_configurable_and_retried(provider_server, fake_clock):
    provider_server.queue(LATEST, Reply(delay_s=0.4), Reply(delay_s=0.4))
    provider = em(provider_server, fake_clock, spec="electricitymaps:DE?forecast=false&read_timeout_s=0.1&max_tries=2")
    with pytest.raises(ProviderError, match="timeout calling"):
        provider.current()
    assert provider_server.count(LATEST) == 2


def test_connection_refused_is_a_provider_error(fake_clock):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = build_provider(
        f"ukgrid?base_url=http://127.0.0.1:{port}&forecast=false", env={}, clock=fake_clock, sleep=fake_clock.sleep
    )
    with pytest.raises(ProviderError, match="connection error"):
        provider.current()
    assert len(fake_clock.sleeps) == 2


def test_secrets_never_reach_errors_describe_or_logs(provider_server, fake_clock, caplog):
    caplog.set_level(logging.DEBUG)
    basic = base64.b64encode(f"{WT_USERNAME}:{WT_PASSWORD}".encode()).decode()
    secrets = [EM_TOKEN, WT_USERNAME, WT_PASSWORD, basic, "wt-token-SEKRET"]
    messages = []
    provider_server.queue(LATEST, Reply(500, echo_auth=True), Reply(500, echo_auth=True), Reply(401, echo_auth=True))
    provider_server.queue("/v3/forecast", Reply(404, echo_auth=True))
    provider_server.queue("/login", Reply(200, echo_auth=True), Reply(400, echo_auth=True))
    for spec in ("electricitymaps:DE", "watttime:CAISO_NORTH", "watttime:CAISO_NORTH", "watttime:CAISO_NORTH"):
        provider = build_provider(spec, env=provider_env(provider_server), clock=fake_clock, sleep=fake_clock.sleep)
        with pytest.raises(ProviderError) as info:
            provider.current()
        messages += [str(info.value), repr(info.value), repr(provider), str(provider.describe())]
    assert any("request_headers" in m for m in messages)  # the echoed bodies did reach the messages…
    text = "\n".join(messages + [r.getMessage() for r in caplog.records])
    for secret in secrets:
        assert secret not in text  # …but with the credentials replaced
    assert "***" in text
