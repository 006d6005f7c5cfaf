"""Prometheus metrics of a running daemon: intensity, ρ, GPU power, energy counters, jobs.

The collector reads the daemon's runtime state at scrape time (nothing is pushed); the HTTP
server is prometheus_client's, bound to 127.0.0.1 unless the config says otherwise.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

from carbonsched.runtime_state import RuntimeState

log = logging.getLogger("carbonsched.metrics")


class DaemonCollector:
    """Gauges for the daemon's latest values; a counter of energy (J) per device and source."""

    def __init__(self, state: RuntimeState):
        self.state = state

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snapshot = self.state.metrics_snapshot()
        gauges = [
            ("carbonsched_rho", "Current FLOPs budget ρ decided by the policy (0-1]", snapshot["rho"]),
            ("carbonsched_override_active", "1 while an admin override of ρ is active", float(snapshot["override"])),
            ("carbonsched_intensity_g_per_kwh", "Latest grid carbon intensity, gCO2e/kWh", snapshot["intensity_g_per_kwh"]),
            ("carbonsched_gpu_power_w", "Latest total GPU power, W", snapshot["gpu_power_w"]),
            ("carbonsched_carbon_today_g", "Carbon of measured energy since 00:00 UTC, gCO2e", snapshot["carbon_today_g"]),
            ("carbonsched_jobs_running", "Training jobs registered and not ended", float(snapshot["jobs_running"])),
        ]
        for name, doc, value in gauges:
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=value)
        energy = CounterMetricFamily(
            "carbonsched_energy_joules", "Energy measured since the daemon started, J", labels=["device", "source"]
        )
        for (device, source), joules in sorted(snapshot["energy_j"].items()):
            energy.add_metric([device, source], joules)
        yield energy


def start_metrics_server(state: RuntimeState, addr: str, port: int) -> Any | None:
    """Serve /metrics on addr:port; returns the server (``shutdown()`` stops it) or None after
    recording why it could not start (the daemon keeps running without metrics)."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError as exc:
        state.record_error("metrics", f"prometheus_client missing: {exc}")
        return None
    registry = CollectorRegistry()
    registry.register(DaemonCollector(state))
    try:
        server, _thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        state.record_error("metrics", f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}")
        return None
    log.info("metrics on http://%s:%d/metrics", addr, port)
    return server
