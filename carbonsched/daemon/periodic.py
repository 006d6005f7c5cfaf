"""The daemon's periodic work, run by APScheduler's pool: poll the grid intensity, sample power,
decide ρ, prune old samples and close the jobs whose processes died. Each step records what it
learnt in the store and in the runtime state.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from copy import deepcopy
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from carbonsched.reporting.accounting import (
    epoch_energy, job_pids, job_windows, measured_j_per_flop, recorded_epoch_savings, sample_job_energy_j,
)
from carbonsched.planning.job_planner import JobPlanner, reading_history
from carbonsched.daemon.processes import process_alive
from carbonsched.daemon.runtime_state import DecisionRecord, JobCounters, PolicyInputs, RuntimeState, start_of_utc_day
from carbonsched.slurm.release import PauseReleaser
from carbonsched.store import Row, Store
from carbonsched.times import iso_utc
from carbonsched.types import (
    Decision, EnergyReading, IntensityReading, ProviderError, Signals, finite_or_none, utcnow,
)

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

    from carbonsched.policies import Policy
    from carbonsched.power import NodeEnergyMeter

log = logging.getLogger("carbonsched.daemon")

PRUNE_INTERVAL_S = 3600.0
RECOVERY_TICK_S = 0.5  # after a restart, how often a few more running jobs' counters are restored
RECOVERY_JOBS_PER_TICK = 4
CHECK_JOBS_PER_TICK = 8  # jobs whose processes died that one check_jobs tick closes
HEARTBEAT_S = 2.0  # how often the run records that it is alive (bounds what a kill -9 leaves unknown)


class PeriodicWork:
    def __init__(self, state: RuntimeState, store: Store, meter: NodeEnergyMeter | None):
        self.state = state
        self.store = store
        self.meter = meter
        self._meter_lock = threading.Lock()
        self._decide_lock = threading.Lock()
        self._job_policies: dict[str, Any] = {}  # job_id -> its copy of the policy; under _decide_lock
        self._policy_copied: Any = None  # the policy those copies were made from
        self.job_planner = JobPlanner()  # deadline jobs: plans, and the pauses their trainers report
        self.run_started_s: float | None = None  # this daemon run's start (unix s), once begin_run() recorded it
        self._recovery: deque[str | None] = deque()  # running jobs whose counters are still to restore (None: today's carbon)
        self._recovery_lock = threading.Lock()
        self._recovery_j_per_flop: dict[str, float | None] = {}  # model -> measured J/FLOP, for one recovery
        self.pause_releaser = PauseReleaser()  # Slurm jobs requeued for a long pause

    # -- scheduling ----------------------------------------------------------------------------

    def schedule(self, scheduler: BackgroundScheduler, watchdog: Callable[[], None], watchdog_interval_s: float | None) -> None:
        """(Re)register every periodic job on ``scheduler`` with the configured intervals."""
        intervals = self.state.settings.config.intervals
        now = datetime.now(timezone.utc)
        jobs: list[tuple[str, Callable[[], Any], float | None]] = [
            ("poll_intensity", self.poll_intensity, intervals.poll_intensity_s),
            ("sample_power", self.sample_power, intervals.sample_power_s if self.meter is not None else None),
            ("decide", self.decide, intervals.decide_s),
            ("prune", self.prune, PRUNE_INTERVAL_S),
            ("check_jobs", self.check_jobs, intervals.check_jobs_s),
            ("heartbeat", self.heartbeat, HEARTBEAT_S),
            ("recover_counters", self.recover_counters, RECOVERY_TICK_S),
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

    def _guarded(self, where: str, func: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                func()
            except Exception as exc:
                log.exception("%s failed", where)
                self.state.record_error(where, f"{type(exc).__name__}: {exc}")

        return run

    # -- the daemon's run -------------------------------------------------------------------------

    def begin_run(self) -> None:
        """Record this daemon run in the store (and give a killed previous run its stop)."""
        self.run_started_s = utcnow().timestamp()
        self.store.start_daemon_run(self.run_started_s)

    def heartbeat(self) -> None:
        if self.run_started_s is not None:
            self.store.daemon_alive(self.run_started_s, utcnow().timestamp())

    def end_run(self) -> None:
        if self.run_started_s is not None:
            self.store.end_daemon_run(self.run_started_s, utcnow().timestamp())

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
        """Today's carbon and each running job's counters so far, from the store, restored now
        (all at once; the daemon restores them in the background, see queue_counter_recovery)."""
        self.queue_counter_recovery()
        while self.recover_counters():
            pass

    def queue_counter_recovery(self) -> None:
        """After a restart, restore today's carbon and the running jobs' counters from the store in
        the background: :meth:`recover_counters` (a scheduled tick) does a few jobs at a time, so
        the socket answers at once however much the store holds."""
        with self._recovery_lock:
            self.state.begin_restore()
            self._recovery = deque([None, *(job["job_id"] for job in self.store.jobs(status="running"))])
            self._recovery_j_per_flop = {}

    def recover_counters(self, max_jobs: int = RECOVERY_JOBS_PER_TICK) -> bool:
        """Restore up to ``max_jobs`` queued jobs' counters (and, first, today's carbon) as they
        stood when this run started: a job's energy and carbon are its ended epochs' plus its open
        epochs' up to then, its avoided carbon its ended epochs' savings, its ρ its latest epoch's.
        The run counts what comes after live. True while some are left."""
        with self._recovery_lock:
            until = utcnow() if self.run_started_s is None else datetime.fromtimestamp(self.run_started_s, timezone.utc)
            for _ in range(max_jobs):
                if not self._recovery:
                    break
                job_id = self._recovery.popleft()
                if job_id is None:
                    _energy_j, today_g = self.store.energy_and_carbon(start_of_utc_day(until), until)
                    self.state.restore_carbon_today(until, today_g or 0.0)
                    continue
                job = self.store.job(job_id)
                if job is not None and job["status"] == "running":
                    self.state.restore_job_counters(job_id, self._stored_counters(job, until.timestamp()))
            if not self._recovery:
                self.state.end_restore()
            return bool(self._recovery)

    def _stored_counters(self, job: Row, until_s: float) -> JobCounters:
        counters = JobCounters(model=job["model"], scheme=job["scheme"])
        if job["model"] not in self._recovery_j_per_flop:
            self._recovery_j_per_flop[job["model"]] = measured_j_per_flop(self.store, job["model"])
        j_per_flop = self._recovery_j_per_flop[job["model"]]
        for epoch in self.store.epochs(job["job_id"]):
            if epoch["ended_at"] is not None:
                counters.energy_j += epoch["energy_j"] or 0.0
                counters.carbon_g += epoch["carbon_g"] or 0.0
                savings = recorded_epoch_savings(self.store, epoch, j_per_flop=j_per_flop)
                counters.carbon_avoided_g += (savings.saved_g or 0.0) if savings is not None else 0.0
            elif epoch["started_at"] is not None and epoch["started_at"] < until_s:
                end_s, _stopped = self.last_evidence_s(epoch["started_at"], until_s)
                energy = epoch_energy(self.store, job, epoch["started_at"], end_s, now_s=until_s)
                counters.energy_j += energy.energy_j
                counters.carbon_g += energy.carbon_g or 0.0
            counters.rho_asked, counters.rho_effective = epoch["rho_asked"], epoch["rho_effective"]
        return counters

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
            if inputs.reading is not None:
                inputs = inputs.with_history(reading_history(self.store, inputs.reading, now.timestamp()).as_points())
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

    def _planned_records(self, running_jobs: list[Row], inputs: PolicyInputs) -> dict[str, DecisionRecord]:
        """Deadline jobs get their plan's ρ or pause instead of the policy's ρ."""
        signals = inputs.node
        interval_s = self.state.settings.config.intervals.decide_s
        try:
            plans = self.job_planner.plan_running_jobs(self.store, running_jobs, signals.now, inputs.reading, interval_s,
                                                       self.state.settings.config.planning)
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

    def _job_policies_for(self, policy: Policy, running: list[str]) -> dict[str, Policy]:
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

    def _decision_record(self, policy: Policy, signals: Signals, reading: IntensityReading | None) -> DecisionRecord:
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

    def check_jobs(self, max_jobs: int = CHECK_JOBS_PER_TICK) -> None:
        """A running job whose processes are all gone (killed, crashed, OOM) without job.end is
        marked failed, and its open epoch is closed (see close_open_epochs), so it stops
        taking a share of the node's CPU/RAM energy from the jobs that run after it. Only jobs
        whose pids this daemon can see (same pid namespace) are checked; at most ``max_jobs`` are
        closed per tick (after a restart many may be waiting), the next tick goes on."""
        closed = 0
        for job in self.store.jobs(status="running"):
            pids = job_pids(job)
            if not job.get("pids_local") or any(process_alive(p) for p in pids):
                continue
            if closed == max_jobs:
                return
            closed += 1
            self.close_open_epochs(job, "check_jobs")
            self.store.end_job(job["job_id"], "failed", utcnow())
            self.state.job_ended(job["job_id"])
            log.warning(
                "job %s: its processes (%s) are gone without job.end; marked failed",
                job["job_id"], ", ".join(str(p) for p in sorted(pids)),
            )

    def close_open_epochs(
        self, job: Row, closed_by: str, *, keep_epoch: int | None = None, not_after_s: float | None = None,
    ) -> None:
        """End the job's epochs that started but never reported their end (all but ``keep_epoch``),
        so none stays open beside the job's later epochs and none is nobody's once the job stops.
        Each ends at the last evidence the daemon has of it: the first daemon stop since it
        started (the daemon knows nothing after that), else now or ``not_after_s`` (where the
        job's next epoch began). Its energy is measured up to there, and ``extra`` says the end
        was inferred (``end_inferred``) and by what (``closed_by``)."""
        unfinished = [
            e for e in self.store.epochs(job["job_id"])
            if e["ended_at"] is None and e["started_at"] is not None and e["epoch"] != keep_epoch
        ]
        if not unfinished:
            return
        self.sample_power_now()
        now_s = utcnow().timestamp()
        evidence_s = now_s if not_after_s is None else min(now_s, not_after_s)
        for epoch in unfinished:
            end_s, stopped = self.last_evidence_s(epoch["started_at"], evidence_s)
            energy = epoch_energy(self.store, job, epoch["started_at"], end_s, now_s=now_s)
            self.store.end_epoch(
                job["job_id"], epoch["epoch"], ended_at=end_s,
                extra={**epoch["extra"], "closed_by": closed_by, "end_inferred": "daemon stopped" if stopped else closed_by},
                **energy.epoch_columns(),
            )

    def last_evidence_s(self, started_s: float, evidence_s: float) -> tuple[float, bool]:
        """The latest instant (unix s) the daemon knows an epoch open since ``started_s`` was in
        progress, given later evidence at ``evidence_s``: the stop of the daemon run it started
        under, if that run is over and stopped first; True when it is that stop."""
        before_run = self.run_started_s if self.run_started_s is not None else evidence_s
        stop_s = self.store.daemon_stop_after(started_s, before_run=before_run)
        if stop_s is not None and stop_s <= evidence_s:
            return max(started_s, stop_s), True
        return max(started_s, evidence_s), False
