"""Prometheus metrics of a running daemon: intensity, ρ, GPU power, energy, carbon and avoided
carbon, for the node and for each running job.

The collector reads the daemon's runtime state at scrape time (nothing is pushed); the HTTP
server is prometheus_client's, bound to 127.0.0.1 unless the config says otherwise. Names follow
Prometheus' base units (seconds, joules, grams; counters end in ``_total``) and Kepler's energy
names (``..._joules_total``). Per-job series carry ``job_id``, ``model`` and ``scheme`` and exist
for running jobs only, so their number stays bounded; the node's counters keep what ended jobs
added. :data:`METRICS` is the table the README documents.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator

from carbonsched.daemon.runtime_state import RuntimeState
from carbonsched.types import utcnow

log = logging.getLogger("carbonsched.metrics")

JOB_LABELS = ("job_id", "model", "scheme")


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as exposed (counters with their _total suffix)
    kind: str  # "gauge" or "counter"
    unit: str
    labels: tuple[str, ...]
    help: str


METRICS = (
    MetricSpec("carbonsched_rho", "gauge", "ratio (0, 1]", (), "FLOPs budget ρ the policy decided for the node"),
    MetricSpec("carbonsched_override_active", "gauge", "0 or 1", (), "1 while an admin override of ρ is in force"),
    MetricSpec("carbonsched_grid_intensity_grams_per_kwh", "gauge", "gCO2e/kWh", ("provider", "signal", "zone"),
               "latest grid carbon intensity; signal is average or marginal"),
    MetricSpec("carbonsched_grid_intensity_age_seconds", "gauge", "s", ("provider",),
               "age of that intensity value (now minus the time it is for)"),
    MetricSpec("carbonsched_gpu_power_watts", "gauge", "W", (), "latest total GPU power of the node"),
    MetricSpec("carbonsched_energy_joules_total", "counter", "J", ("device", "source"),
               "energy measured since the daemon started, per device (gpu:N, cpu, ram) and source"),
    MetricSpec("carbonsched_carbon_grams_total", "counter", "gCO2e", (),
               "carbon of that energy at the intensity in force when it was measured"),
    MetricSpec("carbonsched_carbon_today_grams", "gauge", "gCO2e", (), "the same since 00:00 UTC"),
    MetricSpec("carbonsched_carbon_avoided_grams_total", "counter", "gCO2e", ("basis",),
               "carbon avoided against full fine-tuning by the epochs ended since the daemon started; "
               "basis modelled or measured, as in `carbonsched report`"),
    MetricSpec("carbonsched_jobs_running", "gauge", "jobs", (), "training jobs registered and not ended"),
    MetricSpec("carbonsched_job_rho", "gauge", "ratio (0, 1]", JOB_LABELS, "ρ the policy decided for the job"),
    MetricSpec("carbonsched_job_rho_asked", "gauge", "ratio (0, 1]", JOB_LABELS,
               "ρ the job's latest epoch was selected under"),
    MetricSpec("carbonsched_job_rho_effective", "gauge", "ratio (0, 1]", JOB_LABELS,
               "FLOPs share the job's latest epoch achieved (its training-step FLOPs / full fine-tuning's)"),
    MetricSpec("carbonsched_job_energy_joules_total", "counter", "J", JOB_LABELS,
               "the job's share of the node's measured energy since it started"),
    MetricSpec("carbonsched_job_carbon_grams_total", "counter", "gCO2e", JOB_LABELS, "carbon of that energy"),
    MetricSpec("carbonsched_job_carbon_avoided_grams_total", "counter", "gCO2e", JOB_LABELS,
               "carbon the job's ended epochs avoided against full fine-tuning"),
    MetricSpec("carbonsched_job_planned_rho", "gauge", "ratio (0, 1]", JOB_LABELS,
               "deadline jobs: ρ the plan runs the job at now (or resumes it at after a pause)"),
    MetricSpec("carbonsched_job_paused", "gauge", "0 or 1", JOB_LABELS, "deadline jobs: 1 while the plan pauses the job"),
    MetricSpec("carbonsched_job_deadline_slack_seconds", "gauge", "s", JOB_LABELS,
               "deadline jobs: time to the deadline minus the running time the remaining work needs"),
    MetricSpec("carbonsched_job_work_remaining_epochs", "gauge", "epochs", JOB_LABELS,
               "deadline jobs: epochs still to train (the open one counted by its share done)"),
)
SPECS = {spec.name: spec for spec in METRICS}


def _family(name: str) -> Any:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    spec = SPECS[name]
    if spec.kind == "counter":  # prometheus_client adds the _total suffix itself
        return CounterMetricFamily(name.removesuffix("_total"), spec.help, labels=list(spec.labels))
    return GaugeMetricFamily(name, spec.help, labels=list(spec.labels))


class DaemonCollector:
    """Every metric of :data:`METRICS` from one consistent view of the runtime state."""

    def __init__(self, state: RuntimeState):
        self.state = state

    def collect(self) -> Iterator[Any]:
        now = utcnow()
        view = self.state.view(now)
        families = {spec.name: _family(spec.name) for spec in METRICS}

        def add(name: str, value: float | None, labels: tuple[str, ...] = ()) -> None:
            if value is not None:
                families[name].add_metric(list(labels), value)

        add("carbonsched_rho", view.decision.decision.rho if view.decision else None)
        add("carbonsched_override_active", float(view.override is not None))
        reading = view.reading
        if reading is not None:
            add("carbonsched_grid_intensity_grams_per_kwh", reading.intensity_g_per_kwh,
                  (reading.provider or "", reading.signal or "", reading.zone or ""))
            add("carbonsched_grid_intensity_age_seconds", reading.age_s(now), (reading.provider or "",))
        add("carbonsched_gpu_power_watts", view.gpu_power_w)
        for (device, source), joules in sorted(view.energy_totals_j.items()):
            add("carbonsched_energy_joules_total", joules, (device, source))
        add("carbonsched_carbon_grams_total", view.carbon_total_g)
        add("carbonsched_carbon_today_grams", view.carbon_today_g)
        for basis in ("modelled", "measured"):
            add("carbonsched_carbon_avoided_grams_total", view.carbon_avoided_g.get(basis, 0.0), (basis,))
        add("carbonsched_jobs_running", float(view.jobs_counted))
        for job_id, job in sorted(view.jobs.items()):
            labels = (job_id, job.model, job.scheme)
            record = view.job_decisions.get(job_id)
            add("carbonsched_job_rho", record.decision.rho if record else None, labels)
            add("carbonsched_job_rho_asked", job.rho_asked, labels)
            add("carbonsched_job_rho_effective", job.rho_effective, labels)
            add("carbonsched_job_energy_joules_total", job.energy_j, labels)
            add("carbonsched_job_carbon_grams_total", job.carbon_g, labels)
            add("carbonsched_job_carbon_avoided_grams_total", job.carbon_avoided_g, labels)
            plan = record.plan if record else None
            if plan is not None:
                add("carbonsched_job_planned_rho", plan.rho, labels)
                add("carbonsched_job_paused", float(plan.pause_until_s is not None), labels)
                add("carbonsched_job_deadline_slack_seconds", plan.slack_s, labels)
                add("carbonsched_job_work_remaining_epochs", plan.work_left_epochs, labels)
        yield from families.values()


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
