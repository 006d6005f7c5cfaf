"""The Grafana dashboards under dashboards/ query only metrics a running daemon really exports:
the names come from scraping a real daemon's /metrics endpoint (over a fake NVML GPU and with a
job running an epoch, so the GPU and per-job series exist too), not from a list kept by hand."""

from __future__ import annotations

import copy
import json
import os
import re
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from carbonsched.config import DaemonConfig, Intervals
from carbonsched.daemon.lifecycle import Daemon
from carbonsched.daemon.metrics import METRICS
from carbonsched.power import NodeEnergyMeter
from daemon_helpers import LineConn, short_dir, wait_until
from fake_pynvml import FakeGpu, make_fake_nvml
from proc_helpers import free_port

DASHBOARDS = sorted((Path(__file__).resolve().parents[3] / "dashboards").glob("*.json"))
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless", "inf", "nan",
}
IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers that are not functions, keywords,
    label names (in {...} or by/on/... (...)), durations, Grafana variables or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables ($__rate_interval, ${instance})
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "", text)  # numbers, 3.6e6
    names = set()
    for match in IDENTIFIER.finditer(text):
        rest = text[match.end():].lstrip()
        if match.group() not in PROMQL_WORDS and not rest.startswith("("):
            names.add(match.group())
    return names


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable, rows' nested panels included."""
    found = []
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            found.append((f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)
            assert match, f"variable {variable['name']}: unexpected query {query!r}"
            found.append((f"variable {variable['name']}", match.group(1)))
    return found


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


@pytest.fixture(scope="module")
def exported_names() -> set[str]:
    """Sample names a daemon with a GPU, a job and a decision serves on /metrics."""
    port = free_port()
    with short_dir() as d:
        config = DaemonConfig(
            socket=d / "run" / "cs.sock", state_dir=d / "state", provider="trace?speedup=3600", metrics_port=port,
            intervals=Intervals(poll_intensity_s=0.2, sample_power_s=0.2, decide_s=0.2),
        )
        gpu = FakeGpu()
        daemon = Daemon(config, meter_factory=lambda: NodeEnergyMeter(make_fake_nvml([gpu])))
        daemon.start()
        try:
            conn = LineConn(config.socket)
            # A deadline job, so that the plan's series are exported too.
            assert conn.ask(op="job.start", model="m", scheme="green", pid=os.getpid(), job_id="j",
                            deadline=time.time() + 7200, epochs=2, epoch_seconds=600, may_pause=True)["ok"]
            assert conn.ask(op="epoch.start", job_id="j", epoch=0, rho_asked=0.6, rho_effective=0.58)["ok"]
            conn.close()

            def complete() -> bool:
                gpu.energy_mJ += 50_000
                try:
                    text = _scrape(port)
                except OSError:
                    return False
                return all(name in text for name in (
                    "carbonsched_rho ", "carbonsched_gpu_power_watts ", 'device="gpu:0"', "carbonsched_job_rho{",
                    "carbonsched_grid_intensity_age_seconds{", "carbonsched_job_planned_rho{",
                ))

            assert wait_until(complete, 30, interval_s=0.2)
            text = _scrape(port)
        finally:
            daemon.stop()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_the_node_dashboard_is_there():
    assert "carbonsched.json" in [p.name for p in DASHBOARDS]


def test_metric_name_extraction_finds_selectors_and_skips_the_rest():
    expr = ('sum by (instance, device) (rate(carbonsched_energy_joules_total{instance=~"$instance"}[$__rate_interval]))'
            " * on (instance) carbonsched_grid_intensity_grams_per_kwh / 3.6e6")
    assert metric_names_in(expr) == {"carbonsched_energy_joules_total", "carbonsched_grid_intensity_grams_per_kwh"}


def unknown_metrics(dashboard: dict, exported: set[str]) -> list[str]:
    """One line per query that selects a metric not in ``exported`` (or none at all)."""
    problems = []
    for where, expr in queries(dashboard):
        names = metric_names_in(expr)
        if not names:
            problems.append(f"{where}: no metric in {expr!r}")
        elif names - exported:
            problems.append(f"{where}: {sorted(names - exported)} not exported")
    return problems


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_uses_only_exported_metrics(path, exported_names):
    dashboard = json.loads(path.read_text())
    assert queries(dashboard), "no queries"
    assert unknown_metrics(dashboard, exported_names) == [], f"exported: {sorted(exported_names)}"


def test_a_query_of_a_name_the_daemon_does_not_export_is_caught(exported_names):
    dashboard = json.loads(DASHBOARDS[0].read_text())
    renamed = copy.deepcopy(dashboard)
    target = next(p for p in renamed["panels"] if p.get("title") == "GPU power")["targets"][0]
    target["expr"] = target["expr"].replace("carbonsched_gpu_power_watts", "carbonsched_gpu_power_w")
    assert unknown_metrics(renamed, exported_names) == [
        "panel 'GPU power' A: ['carbonsched_gpu_power_w'] not exported"
    ]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_shows_every_metric_the_daemon_documents(path, exported_names):
    used = set().union(*(metric_names_in(expr) for _, expr in queries(json.loads(path.read_text()))))
    documented = {spec.name for spec in METRICS}
    assert documented <= exported_names
    assert sorted(documented - used) == []


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_have_unique_ids_and_use_the_datasource_variable(path):
    dashboard = json.loads(path.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert any(v["name"] == "datasource" and v["type"] == "datasource" for v in dashboard["templating"]["list"])
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
