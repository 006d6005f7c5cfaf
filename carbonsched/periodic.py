"""The daemon's periodic work, run by APScheduler's pool: poll the grid intensity, sample power,
decide ρ, prune old samples and close the jobs whose processes died. Each step records what it
learnt in the store and in the runtime state.
"""

from __future__ import annotations

import logging
import threading
from copy import deepcopy
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from carbonsched.accounting import (
    epoch_energy, job_pids, job_windows, measured_j_per_flop, recorded_epoch_savings, sample_job_energy_j,
)
from carbonsched.job_planning import JobPlanner
from carbonsched.processes import process_alive
from carbonsched.runtime_state import DecisionRecord, JobCounters, PolicyInputs, RuntimeState, start_of_utc_day
from carbonsched.slurm_release import PauseReleaser
from carbonsched.store import Store
from carbonsched.types import (
    Decision, EnergyReading, IntensityReading, ProviderError, Signals, finite_or_none, iso_utc, utcnow,
)

log = logging.getLogger("carbonsched.daemon")

PRUNE_INTERVAL_S = 3600.0


class PeriodicWork:
    def __init__(self, state: RuntimeState, store: Store, meter: Any):
        self.state = state
        self.store = store
        self.meter = meter
        self._meter_lock = threading.Lock()
        self._decide_lock = threading.Lock()
        self._job_policies: dict[str, Any] = {}  # job_id -> its copy of the policy; under _decide_lock
        self._policy_copied: Any = None  # the policy those copies were made from
        self.job_planner = JobPlanner()  # deadline jobs: plans, and the pauses their trainers report
        self.pause_releaser = PauseReleaser()  # Slurm jobs requeued for a long pause

    # -- scheduling ----------------------------------------------------------------------------

    def schedule(self, scheduler: Any, watchdog: Callable[[], None], watchdog_interval_s: float | None) -> None:
        """(Re)register every periodic job on ``scheduler`` with the configured intervals."""
        intervals = self.state.settings.config.intervals
        now = datetime.now(timezone.utc)
        jobs: list[tuple[str, Callable[[], Any], float | None]] = [
            ("poll_intensity", self.poll_intensity, intervals.poll_intensity_s),
            ("sample_power", self.sample_power, intervals.sample_power_s if self.meter is not None else None),
            ("decide", self.decide, intervals.decide_s),
            ("prune", self.prune, PRUNE_INTERVAL_S),
            ("check_jobs", self.check_jobs, intervals.check_jobs_s),
            ("watchdog", watchdog, watchdog_interval_s),
        ]
        for job_id, func, seconds in jobs:
            if scheduler.get_job(job_id) is not None:
                scheduler.remove_job(job_id)
            if seconds:
                first = now if job_id != "decide" else now + timedelta(seconds=seconds)
                scheduler.add_job(
                    self._guarded(job_id, func), "interval", seconds=seconds, id=job_id,
                    next_run_time=first, misfire_grace_time=max(1, int(seconds)),
                )

    def _guarded(self, where: str, func: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                func()
            except Exception as exc:
                log.exception("%s failed", where)
                self.state.record_error(where, f"{type(exc).__name__}: {exc}")

        return run

    # -- poll ----------------------------------------------------------------------------------

    def poll_intensity(self) -> None:
        provider = self.state.settings.provider
        try:
            reading = provider.current()
        except ProviderError as exc:
            self.state.set_reading_error(str(exc))
            self.state.record_error("intensity", str(exc))
            return
        if not isinstance(reading, IntensityReading) or finite_or_none(reading.intensity_g_per_kwh) is None:
            self.state.record_error("intensity", f"provider {getattr(provider, 'name', '?')} returned an unusable reading")
            return
        previous = self.state.set_reading(reading)
        if self.store.add_intensity(reading):
            log.info("intensity %.1f gCO2e/kWh (%s, %s)", reading.intensity_g_per_kwh, reading.provider, iso_utc(reading.timestamp))
        if previous is None or previous.intensity_g_per_kwh != reading.intensity_g_per_kwh:
            self.decide()

    def sample_power(self) -> None:
        with self._meter_lock:
            if self.meter is None:
                return
            readings = self.meter.poll()
            gpu_power_w = self.meter.gpu_power_w()
        self.store.add_energy(readings)
        self.state.add_energy(readings, gpu_power_w, self._job_energy_j(readings))

    def _job_energy_j(self, readings: list[EnergyReading]) -> dict[str, float]:
        """Each job's share (J) of ``readings``, by the epoch windows open while they were taken."""
        if not readings:
            return {}
        samples = [
            {"start": r.start.timestamp(), "end": r.end.timestamp(), "device": r.device, "energy_j": r.energy_j, "pids": r.pids}
            for r in readings
        ]
        start_s, end_s = min(s["start"] for s in samples), max(s["end"] for s in samples)
        return sample_job_energy_j(samples, job_windows(self.store, start_s, end_s, now_s=end_s))

    def sample_power_now(self) -> None:
        """Meter up to this instant (the energy so far belongs to an epoch about to end)."""
        try:
            self.sample_power()
        except Exception as exc:
            self.state.record_error("sample_power", f"{type(exc).__name__}: {exc}")

    def close_meter(self) -> None:
        with self._meter_lock:
            if self.meter is not None and hasattr(self.meter, "close"):
                try:
                    self.meter.close()
                except Exception as exc:
                    log.warning("closing the energy meter: %s", exc)

    def start_carbon_counters(self) -> None:
        """Today's carbon and each running job's counters so far, from the store (after a
        restart): a job's energy and carbon are its ended epochs' plus its open epochs' up to
        now, its avoided carbon its ended epochs' savings, its ρ its latest epoch's."""
        now = utcnow()
        _energy_j, today_g = self.store.energy_and_carbon(start_of_utc_day(now), now)
        jobs = {}
        for job in self.store.jobs(status="running"):
            counters = JobCounters(model=job["model"], scheme=job["scheme"])
            j_per_flop = measured_j_per_flop(self.store, job["model"])
            for epoch in self.store.epochs(job["job_id"]):
                if epoch["ended_at"] is not None:
                    counters.energy_j += epoch["energy_j"] or 0.0
                    counters.carbon_g += epoch["carbon_g"] or 0.0
                    savings = recorded_epoch_savings(self.store, epoch, j_per_flop=j_per_flop)
                    counters.carbon_avoided_g += (savings.saved_g or 0.0) if savings is not None else 0.0
                elif epoch["started_at"] is not None:
                    energy = epoch_energy(self.store, job, epoch["started_at"], now.timestamp())
                    counters.energy_j += energy.energy_j
                    counters.carbon_g += energy.carbon_g or 0.0
                counters.rho_asked, counters.rho_effective = epoch["rho_asked"], epoch["rho_effective"]
            jobs[job["job_id"]] = counters
        self.state.start_carbon_counters(now, today_g or 0.0, jobs)

    # -- decide --------------------------------------------------------------------------------

    def decide(self) -> DecisionRecord:
        """Ask the policy for ρ now, for the node and for each running job (from its own carbon
        so far), and record the node's. Policies keep hysteresis state, so only this method
        calls decide(), on one copy of the policy per job; the socket answers from the results."""
        with self._decide_lock:
            now = utcnow()
            running_jobs = self.store.jobs(status="running")
            running = [job["job_id"] for job in running_jobs]
            inputs = self.state.policy_inputs(now, running)
            job_policies = self._job_policies_for(inputs.policy, running)
            node = self._decision_record(inputs.policy, inputs.node, inputs.reading)
            jobs = {}
            for job_id, policy in job_policies.items():
                try:
                    jobs[job_id] = self._decision_record(policy, inputs.jobs[job_id], inputs.reading)
                except Exception as exc:  # the job gets the node's ρ
                    self.state.record_error("decide", f"job {job_id}: {type(exc).__name__}: {exc}")
            jobs.update(self._planned_records(running_jobs, inputs))
            previous = self.state.set_decisions(node, jobs)
            signals = inputs.node
            self.store.add_decision(now, node.decision, intensity_g_per_kwh=signals.intensity_g_per_kwh, gpu_power_w=signals.gpu_power_w)
            if previous is None or previous.decision.rho != node.decision.rho:
                log.info("rho %.3f (%s: %s)", node.decision.rho, node.decision.policy, node.decision.reason)
            return node

    def _planned_records(self, running_jobs: list[dict[str, Any]], inputs: PolicyInputs) -> dict[str, DecisionRecord]:
        """Deadline jobs get their plan's ρ or pause instead of the policy's ρ."""
        signals = inputs.node
        interval_s = self.state.settings.config.intervals.decide_s
        try:
            plans = self.job_planner.plan_running_jobs(self.store, running_jobs, signals.now, inputs.reading, interval_s)
        except Exception as exc:  # the jobs keep their policy's ρ
            self.state.record_error("plan", f"{type(exc).__name__}: {exc}")
            return {}
        try:
            self.pause_releaser.consider(running_jobs, {job_id: plan.pause_until_s for job_id, plan in plans.items()})
        except Exception as exc:  # the jobs pause in place
            self.state.record_error("slurm", f"{type(exc).__name__}: {exc}")
        return {
            job_id: DecisionRecord(
                decision=Decision(rho=plan.rho, reason=plan.reason, policy="planner"), decided_at=signals.now,
                valid_until=signals.now + timedelta(seconds=interval_s), reading=inputs.reading,
                gpu_power_w=signals.gpu_power_w, plan=plan,
            )
            for job_id, plan in plans.items()
        }

    def _job_policies_for(self, policy: Any, running: list[str]) -> dict[str, Any]:
        """One policy per running job, each a copy of the node's (with its hysteresis and
        dwell history) when the job is first seen or the policy was reloaded."""
        if policy is not self._policy_copied:
            self._job_policies, self._policy_copied = {}, policy
        kept = {}
        for job_id in running:
            copy = self._job_policies.get(job_id)
            if copy is None:
                try:
                    copy = deepcopy(policy)
                except Exception as exc:
                    self.state.record_error("decide", f"policy cannot be copied for job {job_id}: {type(exc).__name__}: {exc}")
                    continue
            kept[job_id] = copy
        self._job_policies = kept
        return kept

    def _decision_record(self, policy: Any, signals: Signals, reading: IntensityReading | None) -> DecisionRecord:
        decision = policy.decide(signals)
        rho = finite_or_none(decision.rho)
        if rho is None or not 0.0 < rho <= 1.0:
            raise ValueError(f"policy {getattr(policy, 'name', '?')} returned rho={decision.rho!r}")
        return DecisionRecord(
            decision=decision,
            decided_at=signals.now,
            valid_until=signals.now + timedelta(seconds=self.state.settings.config.intervals.decide_s),
            reading=reading,
            gpu_power_w=signals.gpu_power_w,
        )

    # -- housekeeping --------------------------------------------------------------------------

    def prune(self) -> None:
        retention_days = self.state.settings.config.retention_days
        removed = self.store.prune(retention_days, utcnow())
        if removed:
            log.info("pruned %d samples older than %g days", removed, retention_days)

    def check_jobs(self) -> None:
        """A running job whose processes are all gone (killed, crashed, OOM) without job.end is
        marked failed, and its open epoch is closed with the energy used up to now, so it stops
        taking a share of the node's CPU/RAM energy from the jobs that run after it. Only jobs
        whose pids this daemon can see (same pid namespace) are checked."""
        for job in self.store.jobs(status="running"):
            pids = job_pids(job)
            if not job.get("pids_local") or any(process_alive(p) for p in pids):
                continue
            self.close_open_epochs(job, "check_jobs")
            self.store.end_job(job["job_id"], "failed", utcnow())
            self.state.job_ended(job["job_id"])
            log.warning(
                "job %s: its processes (%s) are gone without job.end; marked failed",
                job["job_id"], ", ".join(str(p) for p in sorted(pids)),
            )

    def close_open_epochs(self, job: dict[str, Any], closed_by: str) -> None:
        """End the job's epochs that started but never reported their end, with the energy used
        up to now (else it would be nobody's once the job is no longer running)."""
        unfinished = [e for e in self.store.epochs(job["job_id"]) if e["ended_at"] is None and e["started_at"] is not None]
        if not unfinished:
            return
        self.sample_power_now()
        now = utcnow()
        for epoch in unfinished:
            energy = epoch_energy(self.store, job, epoch["started_at"], now.timestamp())
            self.store.end_epoch(
                job["job_id"], epoch["epoch"], ended_at=now, extra={**epoch["extra"], "closed_by": closed_by},
                **energy.epoch_columns(),
            )
