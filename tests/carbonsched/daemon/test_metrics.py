"""Prometheus metrics of a real daemon, fetched over HTTP: the node's series, a running job's
series, and avoided carbon equal to what `carbonsched report` says the epoch saved."""

import os
import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from carbonsched.config import DaemonConfig
from carbonsched.daemon.metrics import METRICS, DaemonCollector
from carbonsched.paths import store_path
from carbonsched.reporting.energy_report import build_report
from carbonsched.daemon.runtime_state import RuntimeState, Settings
from carbonsched.store import Store
from daemon_helpers import DaemonProcess, short_dir, wait_until
from proc_helpers import free_port

pytestmark = pytest.mark.slow

JOB = 'job_id="j",model="m",scheme="green"'


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        return reply.read().decode()


def _scrape_or_empty(port: int) -> str:
    """The HTTP server starts just after the socket."""
    try:
        return _scrape(port)
    except OSError:
        return ""


def _value(text: str, pattern: str) -> float | None:
    match = re.search(rf"^{pattern} (\S+)$", text, re.M)
    return None if match is None else float(match.group(1))


def test_metrics_endpoint_serves_node_and_job_series_and_avoided_carbon():
    port = free_port()
    with short_dir() as d:
        daemon = DaemonProcess(d, "--metrics-port", str(port)).wait_ready()
        try:
            # energy needs two meter polls
            assert wait_until(lambda: _value(_scrape_or_empty(port), r'carbonsched_energy_joules_total\{device="cpu",source="[a-z_]+"\}'), 10)
            conn = daemon.conn()
            assert conn.ask(op="job.start", model="m", scheme="green", pid=os.getpid(), job_id="j")["ok"]
            assert conn.ask(op="epoch.start", job_id="j", epoch=0, rho_asked=0.6)["ok"]
            assert wait_until(lambda: (_value(_scrape(port), rf"carbonsched_job_carbon_grams_total\{{{JOB}\}}") or 0) > 0, 10)
            running = _scrape(port)
            ended = conn.ask(op="epoch.end", job_id="j", epoch=0, rho_asked=0.6, rho_effective=0.5,
                             flops_forward=1e12, flops_backward=0.5e12, flops_full=3e12)
            assert ended["ok"], ended
            after_epoch = _scrape(port)
            assert conn.ask(op="job.end", job_id="j", status="completed")["ok"]
            after_job = _scrape(port)
            log = daemon.log()
        finally:
            assert daemon.stop() == 0
        report = build_report(Store(store_path(daemon.state_dir)), job_id="j")

    intensity = r'carbonsched_grid_intensity_grams_per_kwh\{provider="trace",signal="average",zone="[^"]*"\}'
    assert 100 <= _value(running, intensity) <= 450
    assert 0 <= _value(running, r'carbonsched_grid_intensity_age_seconds\{provider="trace"\}') < 7200
    assert 0 < _value(running, "carbonsched_rho") <= 1
    assert _value(running, "carbonsched_jobs_running") == 1.0
    assert _value(running, r'carbonsched_energy_joules_total\{device="ram",source="[a-z_]+"\}') > 0
    assert _value(running, "carbonsched_carbon_grams_total") >= _value(running, rf"carbonsched_job_carbon_grams_total\{{{JOB}\}}")
    assert _value(running, rf"carbonsched_job_rho_asked\{{{JOB}\}}") == 0.6
    assert _value(running, rf"carbonsched_job_rho_effective\{{{JOB}\}}") is None  # not known before the epoch ends
    assert 0 < _value(running, rf"carbonsched_job_rho\{{{JOB}\}}") <= 1
    assert _value(running, rf"carbonsched_job_energy_joules_total\{{{JOB}\}}") > 0

    assert _value(after_epoch, rf"carbonsched_job_rho_effective\{{{JOB}\}}") == 0.5
    saved_g = report[0].epochs[0].saved_g
    assert report[0].epochs[0].saved_label == "modelled" and saved_g > 0
    assert _value(after_epoch, rf"carbonsched_job_carbon_avoided_grams_total\{{{JOB}\}}") == pytest.approx(saved_g)
    assert ended["savings"]["saved_g"] == pytest.approx(saved_g)

    assert "job_id=" not in after_job  # per-job series exist while the job runs
    assert _value(after_job, 'carbonsched_carbon_avoided_grams_total{basis="modelled"}') == pytest.approx(saved_g)
    assert _value(after_job, 'carbonsched_carbon_avoided_grams_total{basis="measured"}') == 0.0
    assert "# TYPE carbonsched_energy_joules_total counter" in after_job
    assert f"metrics on http://127.0.0.1:{port}/metrics" in log  # loopback unless configured otherwise


def test_every_documented_metric_is_what_the_endpoint_declares():
    """The table in docs/service.md comes from METRICS; the families a scrape declares must match it."""
    registry = CollectorRegistry()
    registry.register(DaemonCollector(RuntimeState(Settings(config=DaemonConfig(), policy=None, provider=None))))
    declared = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        declared[family.name + ("_total" if family.type == "counter" else "")] = family.type
    assert declared == {spec.name: spec.kind for spec in METRICS}
    for spec in METRICS:
        assert re.fullmatch(r"carbonsched_[a-z_]+", spec.name)
        assert spec.name.endswith("_total") == (spec.kind == "counter")


def test_the_service_page_table_lists_every_metric_with_type_unit_and_labels():
    page = (Path(__file__).resolve().parents[3] / "docs" / "service.md").read_text()
    rows = [line.strip("|").split("|") for line in page.splitlines() if line.startswith("| `carbonsched_")]
    table = [(name.strip().strip("`"), kind.strip(), unit.strip(), labels.strip()) for name, kind, unit, labels, _what in rows]
    assert table == [(m.name, m.kind, m.unit, ", ".join(m.labels) or "—") for m in METRICS]
