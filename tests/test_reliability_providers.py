"""Provider faults against a real daemon: the chain falls back, says so, and returns to the primary.

`carbonsched run --provider 'electricitymaps:DE?base_url=<fake>,static:DEU'` runs as a subprocess
with the token in its environment; the local fake server (tests/provider_server.py) speaks
Electricity Maps' JSON and injects: connection refused, timeout, HTTP 500, 429 with Retry-After,
malformed JSON, and impossible values (negative, NaN, absurdly large). For each fault the daemon
answers ρ from the static fallback, ``rho`` and ``status`` name the provider and the value's age,
the primary's error is visible in ``status``, and the primary is used again once it recovers.

Speed: the daemon is the real program; a ``sitecustomize`` on its PYTHONPATH only shortens two
timing constants (Electricity Maps' hourly freshness → 1 s, error cool-down 30 s → 0.5 s) so a
fault and its recovery take seconds, not hours.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from http.server import ThreadingHTTPServer
import threading

import pytest

from daemon_helpers import DaemonProcess, LineConn, short_dir, wait_until
from provider_server import EM_TOKEN, FakeProviderServer, Reply

LATEST = "/v3/carbon-intensity/latest"
PRIMARY, FALLBACK = "electricitymaps:DE", "static:DEU"

SITECUSTOMIZE = """\
import carbonsched.providers.cache as _cache
import carbonsched.providers.electricitymaps as _em

_em.INTERVAL_S = 1.0
_cache.CachedProvider.__init__.__kwdefaults__.update(error_cooldown_s=0.5, max_error_cooldown_s=1.0)
"""


def _rebind(server: FakeProviderServer, port: int) -> None:
    """Serve again on ``port`` after ``server_close()`` (the 'connection refused' fault ends)."""
    server._httpd = ThreadingHTTPServer(("127.0.0.1", port), server._handler_class())
    server._httpd.daemon_threads = True
    server._thread = threading.Thread(target=server._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    server._thread.start()


@pytest.fixture(scope="module")
def setup():
    with short_dir() as d, FakeProviderServer() as server:
        server.now = datetime.now(timezone.utc)
        shim = d / "shim"
        shim.mkdir()
        (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
        spec = (f"electricitymaps:DE?base_url={server.url}&max_tries=1&connect_timeout_s=0.5"
                f"&read_timeout_s=0.5&forecast=false,static:DEU")
        daemon = DaemonProcess(d, "--provider", spec, env={"ELECTRICITYMAPS_TOKEN": EM_TOKEN, "PYTHONPATH": str(shim)})
        daemon.wait_ready()
        try:
            yield daemon, server
        finally:
            daemon.stop()


def _rho(daemon) -> dict:
    conn = LineConn(daemon.socket)
    try:
        return conn.ask(op="rho")
    finally:
        conn.close()


def _status(daemon) -> dict:
    conn = LineConn(daemon.socket)
    try:
        return conn.ask(op="status")
    finally:
        conn.close()


def _primary_error(status: dict) -> str:
    return status["provider"]["members"][0]["last_error"] or ""


def _fault_and_recovery(daemon, expected_error: str, *, timeout_s: float = 10) -> dict:
    """Wait for the fallback to answer with the primary's error visible, then for the primary."""
    t0 = time.monotonic()
    assert wait_until(lambda: _rho(daemon)["provider"] == FALLBACK, timeout_s), (expected_error, daemon.log()[-3000:])
    fell_back_s = time.monotonic() - t0
    assert wait_until(lambda: expected_error in _primary_error(_status(daemon)), timeout_s), _primary_error(_status(daemon))
    rho, status = _rho(daemon), _status(daemon)
    assert rho["ok"] and 0 < rho["rho"] <= 1
    assert isinstance(rho["age_s"], float) and rho["age_s"] >= 0
    assert status["intensity"]["provider"] in (FALLBACK, PRIMARY)  # the poll may have recovered meanwhile
    assert isinstance(status["intensity"]["age_s"], float)
    return {"fell_back_s": fell_back_s, "rho": rho, "status": status}


def _recovered(daemon, timeout_s: float = 10) -> float:
    t0 = time.monotonic()
    assert wait_until(lambda: _rho(daemon)["provider"] == PRIMARY, timeout_s), daemon.log()[-3000:]
    return time.monotonic() - t0


def test_primary_answers_when_healthy(setup):
    daemon, server = setup
    assert wait_until(lambda: _rho(daemon)["provider"] == PRIMARY, 10), daemon.log()[-3000:]
    rho = _rho(daemon)
    assert rho["intensity_g_per_kwh"] == 302 and 0 <= rho["age_s"] < 3700
    status = _status(daemon)
    assert status["provider"]["answered_by"] == PRIMARY
    assert [m["name"] for m in status["provider"]["members"]] == [PRIMARY, FALLBACK]


def test_connection_refused(setup):
    daemon, server = setup
    port = server._httpd.server_address[1]
    server.stop()
    try:
        _fault_and_recovery(daemon, "connection error")
    finally:
        _rebind(server, port)
    _recovered(daemon)


def test_timeout(setup):
    daemon, server = setup
    server.queue(LATEST, Reply(delay_s=1.5), Reply(delay_s=1.5))
    _fault_and_recovery(daemon, "timeout")
    _recovered(daemon)


def test_http_500(setup):
    daemon, server = setup
    server.queue(LATEST, Reply(500, {"error": "boom"}), Reply(503, "Service Unavailable"))
    _fault_and_recovery(daemon, "HTTP 50")
    _recovered(daemon)


def test_429_with_retry_after_is_honoured(setup):
    daemon, server = setup
    server.queue(LATEST, Reply(429, {"error": "slow down"}, headers={"Retry-After": "3"}))
    result = _fault_and_recovery(daemon, "429")
    rate_limited_at = time.monotonic() - result["fell_back_s"]
    hits_after_429 = server.count(LATEST)
    recovered_s = _recovered(daemon, timeout_s=15)
    waited_s = time.monotonic() - rate_limited_at
    assert waited_s >= 2.5, f"primary asked again after {waited_s:.1f} s despite Retry-After: 3"
    assert server.count(LATEST) >= hits_after_429 + 1
    assert recovered_s >= 0


def test_malformed_json(setup):
    daemon, server = setup
    server.queue(LATEST, Reply(200, "{not json"), Reply(200, "<html>502 Bad Gateway</html>"))
    _fault_and_recovery(daemon, "malformed JSON")
    _recovered(daemon)


@pytest.mark.parametrize("value", [-5, 1e9, "NaN"])
def test_impossible_values(setup, value):
    daemon, server = setup
    if value == "NaN":  # raw JSON with a NaN literal, as a broken upstream might send
        hour = server.now.replace(minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        body = '{"zone": "DE", "carbonIntensity": NaN, "datetime": "%s", "isEstimated": false}' % hour
        server.queue(LATEST, *[Reply(200, body)] * 3)
    else:
        server.em_value_g_per_kwh = value
    try:
        result = _fault_and_recovery(daemon, "impossible value")
        assert result["rho"]["intensity_g_per_kwh"] != value
    finally:
        server.em_value_g_per_kwh = 302
    _recovered(daemon)
    assert _rho(daemon)["intensity_g_per_kwh"] == 302


def test_the_daemon_never_crashed(setup):
    daemon, server = setup
    assert daemon.proc.poll() is None
    assert _rho(daemon)["ok"]
    log = daemon.log()
    assert "Traceback" not in log, log[-3000:]
    assert EM_TOKEN not in log
