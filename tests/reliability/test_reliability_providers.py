"""Provider faults against a real daemon: the chain falls back, says so, and returns to the primary.

`carbonsched run --provider 'electricitymaps:DE?base_url=<fake>,static:DEU'` runs as a subprocess
with the token in its environment; the local fake server (tests/helpers/provider_server.py) speaks
Electricity Maps' JSON and injects: connection refused, timeout, HTTP 500, 429 with Retry-After,
malformed JSON, and impossible values (negative, NaN, absurdly large). For each fault the daemon
answers ρ from the static fallback, ``rho`` and ``status`` name the provider and the value's age,
the primary's error is visible in ``status``, and the primary is used again once it recovers.

Speed: the daemon is the real program, unpatched; the primary's spec keys shorten its freshness
window (``max_age_s=1`` instead of the hourly data interval) and its error cool-down
(``cooldown_s=0.5&max_cooldown_s=1`` instead of 30 s doubling to 300 s) so a fault and its
recovery take seconds, not hours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import datetime, timezone
from http.server import ThreadingHTTPServer
import threading

import pytest

from daemon_helpers import CARBONSCHED_BIN, DaemonProcess, LineConn, short_dir, wait_until
from provider_server import EM_TOKEN, FakeProviderServer, Reply

pytestmark = pytest.mark.slow

LATEST = "/v3/carbon-intensity/latest"
PRIMARY, FALLBACK = "electricitymaps:DE", "static:DEU"

FAST = {"max_age_s": 1.0, "cooldown_s": 0.5, "max_cooldown_s": 1.0}


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
        fast = "&".join(f"{key}={value:g}" for key, value in FAST.items())
        spec = (f"electricitymaps:DE?base_url={server.url}&max_tries=1&connect_timeout_s=0.5"
                f"&read_timeout_s=0.5&forecast=false&{fast},static:DEU")
        daemon = DaemonProcess(d, "--provider", spec, env={"ELECTRICITYMAPS_TOKEN": EM_TOKEN})
        daemon.wait_ready()
        try:
            yield daemon, server
        finally:
            daemon.stop()


def _ask(socket_path, op: str) -> dict:
    conn = LineConn(socket_path)
    try:
        return conn.ask(op=op)
    finally:
        conn.close()


def _rho(daemon) -> dict:
    return _ask(daemon.socket, "rho")


def _status(daemon) -> dict:
    return _ask(daemon.socket, "status")


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
    primary = status["provider"]["members"][0]
    assert {key: primary[key] for key in FAST} == FAST  # the spec keys reached the running daemon


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


BAD_CACHE_SPECS = {
    "ukgrid?cooldown_s=-2": "cooldown_s='-2' is not a positive number",
    "electricitymaps:DE?max_age_s=soon,static:DEU": "max_age_s='soon' is not a positive number",
    "ukgrid?cooldown_s=30&max_cooldown_s=5": "max_cooldown_s='5' is less than cooldown_s='30'",
}


@pytest.mark.parametrize("spec", list(BAD_CACHE_SPECS))
def test_a_bad_cache_key_stops_the_start_with_one_line_naming_spec_and_key(spec):
    part = spec.split(",")[0]
    with short_dir() as d:
        run = subprocess.run(
            [str(CARBONSCHED_BIN), "run", "--provider", spec, "--socket", str(d / "s.sock"), "--state-dir", str(d / "state")],
            capture_output=True, text=True, timeout=120, env={**os.environ, "ELECTRICITYMAPS_TOKEN": EM_TOKEN},
        )
        assert run.returncode != 0 and not (d / "s.sock").exists()
    output = run.stdout + run.stderr
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if BAD_CACHE_SPECS[spec] in line]
    assert len(lines) == 1 and f"provider spec {part!r}" in lines[0], output


def test_a_bad_cache_key_on_reload_keeps_the_running_provider():
    """Started from a config file (no --provider flag, so the file's spec is what a reload reads)."""
    with short_dir() as d:
        config, socket_path = d / "carbonsched.toml", d / "run" / "carbonsched.sock"
        config.write_text('provider = "static:DEU"\n')
        config.chmod(0o600)
        with (d / "daemon.log").open("wb") as log:
            proc = subprocess.Popen(
                [str(CARBONSCHED_BIN), "run", "--config", str(config), "--socket", str(socket_path),
                 "--state-dir", str(d / "state"), "--poll-intensity-s", "0.2"],
                stdout=log, stderr=subprocess.STDOUT,
            )
            try:
                assert wait_until(lambda: _answers(proc, socket_path), 60), (d / "daemon.log").read_text(errors="replace")
                config.write_text('provider = "ukgrid?cooldown_s=0,static:DEU"\n')
                proc.send_signal(signal.SIGHUP)
                assert wait_until(lambda: "cooldown_s" in (_ask(socket_path, "status")["reload_error"] or ""), 10), (
                    (d / "daemon.log").read_text(errors="replace"))
                status = _ask(socket_path, "status")
                assert "provider spec 'ukgrid?cooldown_s=0': cooldown_s='0' is not a positive number" in status["reload_error"]
                assert status["provider"]["name"] == "static:DEU" and proc.poll() is None
                assert _ask(socket_path, "rho")["provider"] == "static:DEU"
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        assert "Traceback" not in (d / "daemon.log").read_text(errors="replace")


def _answers(proc: subprocess.Popen, socket_path) -> bool:
    assert proc.poll() is None, f"daemon exited with {proc.returncode}"
    try:
        return _ask(socket_path, "ping").get("ok") is True
    except OSError:  # not listening yet
        return False
