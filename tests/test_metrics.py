"""Prometheus metrics of a real daemon, fetched over HTTP."""

import re
import urllib.request

from daemon_helpers import DaemonProcess, short_dir, wait_until
from proc_helpers import free_port


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        return reply.read().decode()


def _energy_counted(port: int) -> bool:
    """The HTTP server starts just after the socket, and energy needs two meter polls."""
    try:
        text = _scrape(port)
    except OSError:
        return False
    return bool(_value(text, r'carbonsched_energy_joules_total\{device="cpu",source="[a-z_]+"\}'))


def _value(text: str, pattern: str) -> float | None:
    match = re.search(rf"^{pattern} (\S+)$", text, re.M)
    return None if match is None else float(match.group(1))


def test_metrics_endpoint_serves_intensity_rho_energy_and_jobs():
    port = free_port()
    with short_dir() as d:
        daemon = DaemonProcess(d, "--metrics-port", str(port)).wait_ready()
        try:
            assert wait_until(lambda: _energy_counted(port), 10)
            assert daemon.conn().ask(op="job.start", model="m", scheme="green", pid=123, job_id="j")["ok"]
            text = _scrape(port)
            log = daemon.log()
        finally:
            assert daemon.stop() == 0
    assert 100 <= _value(text, "carbonsched_intensity_g_per_kwh") <= 450
    assert 0 < _value(text, "carbonsched_rho") <= 1
    assert _value(text, "carbonsched_jobs_running") == 1.0
    assert _value(text, r'carbonsched_energy_joules_total\{device="cpu",source="[a-z_]+"\}') > 0
    assert _value(text, r'carbonsched_energy_joules_total\{device="ram",source="[a-z_]+"\}') > 0
    assert "# TYPE carbonsched_energy_joules_total counter" in text
    assert f"metrics on http://127.0.0.1:{port}/metrics" in log  # loopback unless configured otherwise
