"""The daemon's live state: the settings in force, the latest intensity reading, GPU power, ρ
decision and override, recent errors and the live energy and carbon counters.

The scheduler's threads and the socket handlers share one instance; every field is read and
written behind :attr:`RuntimeState.lock`, and every method returns copies or frozen values.
Nothing here reads or writes the store: callers do that before or after, never while the lock
is held, so a slow disk never delays a ρ answer.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from carbonsched.config import DaemonConfig
from carbonsched.store import J_PER_KWH
from carbonsched.times import iso_utc
from carbonsched.types import (
    Decision, EnergyReading, ForecastPoint, IntensityReading, Signals, finite_or_none, utcnow,
)

log = logging.getLogger("carbonsched.daemon")

MAX_RECENT_ERRORS = 20


class StateLock:
    """A non-reentrant lock that can tell whether the calling thread holds it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    def __enter__(self) -> "StateLock":
        self._lock.acquire()
        self._owner = threading.get_ident()
        return self

    def __exit__(self, *exc: object) -> None:
        self._owner = None
        self._lock.release()

    def held_by_current_thread(self) -> bool:
        return self._owner == threading.get_ident()


@dataclass(frozen=True)
class Settings:
    """What a reload replaces as one: the config, the policy and the intensity provider."""

    config: DaemonConfig
    policy: Any
    provider: Any


@dataclass(frozen=True)
class Override:
    """An admin's fixed ρ, until ``expires_at`` (None: until cleared)."""

    rho: float
    set_at: datetime
    expires_at: datetime | None
    uid: int

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at

    def to_dict(self) -> dict[str, Any]:
        return {"rho": self.rho, "set_at": iso_utc(self.set_at), "expires_at": iso_utc(self.expires_at), "uid": self.uid}


@dataclass(frozen=True)
class DecisionRecord:
    """A policy decision with the inputs it was made from and until when it holds."""

    decision: Decision
    decided_at: datetime
    valid_until: datetime
    reading: IntensityReading | None
    gpu_power_w: float | None
    plan: Any = None  # a deadline job's carbonsched.planning.job_planner.JobPlanDecision, else None


@dataclass
class JobCounters:
    """A running job's live values: its labels, the ρ of its latest epoch and its counters since
    it started (energy J and carbon gCO2e as the live split attributes them; avoided carbon,
    gCO2e, as :func:`carbonsched.reporting.accounting.recorded_epoch_savings` defines it, per ended epoch)."""

    model: str
    scheme: str
    energy_j: float = 0.0
    carbon_g: float = 0.0
    carbon_avoided_g: float = 0.0
    rho_asked: float | None = None
    rho_effective: float | None = None


def start_of_utc_day(now: datetime) -> datetime:
    return now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class PolicyInputs:
    """A policy's inputs at one instant: for the node and for each running job."""

    policy: Any
    reading: IntensityReading | None
    node: Signals
    jobs: dict[str, Signals]

    def with_history(self, history: tuple[ForecastPoint, ...]) -> PolicyInputs:
        """The same inputs with ``history`` (past readings, oldest first) in every Signals."""
        return replace(self, node=replace(self.node, history=history),
                       jobs={job_id: replace(signals, history=history) for job_id, signals in self.jobs.items()})


@dataclass(frozen=True)
class StateView:
    """A consistent copy of the state for status replies and metrics."""

    reading: IntensityReading | None
    reading_error: str | None
    gpu_power_w: float | None
    decision: DecisionRecord | None
    job_decisions: dict[str, DecisionRecord]
    override: Override | None  # None also when it has expired
    errors: list[dict[str, Any]]
    carbon_today_g: float
    jobs_counted: int
    energy_totals_j: dict[tuple[str, str], float]
    carbon_total_g: float
    carbon_avoided_g: dict[str, float]  # savings label ("modelled", "measured") -> gCO2e
    jobs: dict[str, JobCounters]
    reload_error: str | None
    last_reload_at: datetime | None


class RuntimeState:
    def __init__(self, settings: Settings):
        self.lock = StateLock()
        self._settings = settings
        self._reading: IntensityReading | None = None
        self._reading_error: str | None = None
        self._last_poll_at: datetime | None = None
        self._gpu_power_w: float | None = None
        self._decision: DecisionRecord | None = None
        self._job_decisions: dict[str, DecisionRecord] = {}
        self._override: Override | None = None
        self._errors: deque[dict[str, Any]] = deque(maxlen=MAX_RECENT_ERRORS)
        self._reload_error: str | None = None
        self._last_reload_at: datetime | None = None
        self._carbon_day: datetime | None = None
        self._carbon_today_g = 0.0
        self._carbon_total_g = 0.0
        self._carbon_avoided_g: dict[str, float] = {}
        self._jobs: dict[str, JobCounters] = {}
        self._ended_job_ids: set[str] | None = None  # while counters are being restored: jobs ended meanwhile
        self._energy_totals_j: dict[tuple[str, str], float] = {}

    # -- settings ------------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        with self.lock:
            return self._settings

    def install(self, settings: Settings) -> None:
        """The settings the daemon starts with."""
        with self.lock:
            self._settings = settings

    def apply_reload(self, settings: Settings) -> bool:
        """Put reloaded settings in force; True when the scheduling intervals changed."""
        with self.lock:
            intervals_changed = settings.config.intervals != self._settings.config.intervals
            self._settings = settings
            self._reload_error = None
            self._last_reload_at = utcnow()
            # A good reload answers the failed ones before it; other errors stay as they were.
            self._errors = deque((e for e in self._errors if e["where"] != "reload"), maxlen=MAX_RECENT_ERRORS)
        return intervals_changed

    def reload_failed(self, message: str) -> None:
        with self.lock:
            self._reload_error = message

    def reload_status(self) -> str | None:
        """The last reload's error while it is the latest word on reloading, else None."""
        with self.lock:
            return self._reload_error

    # -- errors --------------------------------------------------------------------------------

    def record_error(self, where: str, message: str) -> None:
        """Log an error and keep it among the recent ones `status` shows."""
        log.error("%s: %s", where, message)
        with self.lock:
            self._errors.append({"at": iso_utc(utcnow()), "where": where, "message": message})

    # -- intensity -----------------------------------------------------------------------------

    def set_reading(self, reading: IntensityReading) -> IntensityReading | None:
        """Keep a new reading; returns the one it replaces."""
        with self.lock:
            previous = self._reading
            self._reading, self._reading_error, self._last_poll_at = reading, None, utcnow()
        return previous

    def set_reading_error(self, message: str) -> None:
        with self.lock:
            self._reading_error = message

    # -- energy and carbon ---------------------------------------------------------------------

    def restore_carbon_today(self, until: datetime, today_g: float) -> None:
        """Add today's carbon (gCO2e) up to ``until`` as the store has it (after a restart; the live
        count covers what came after)."""
        with self.lock:
            if self._carbon_day is None:
                self._carbon_day = start_of_utc_day(until)
            if self._carbon_day == start_of_utc_day(until):
                self._carbon_today_g += today_g

    def begin_restore(self) -> None:
        """Counters are about to be restored from the store: remember the jobs that end meanwhile."""
        with self.lock:
            self._ended_job_ids = set()

    def end_restore(self) -> None:
        with self.lock:
            self._ended_job_ids = None

    def restore_job_counters(self, job_id: str, stored: JobCounters) -> None:
        """Add a running job's counters as the store has them (after a restart) to what the live
        count has seen since; a job that ended meanwhile stays ended."""
        with self.lock:
            job = self._jobs.get(job_id)
            if job is None:
                if self._ended_job_ids is None or job_id not in self._ended_job_ids:
                    self._jobs[job_id] = stored
                return
            job.energy_j += stored.energy_j
            job.carbon_g += stored.carbon_g
            job.carbon_avoided_g += stored.carbon_avoided_g
            if job.rho_asked is None:
                job.rho_asked, job.rho_effective = stored.rho_asked, stored.rho_effective

    def add_energy(
        self, readings: Iterable[EnergyReading], gpu_power_w: float | None, job_energy_j: Mapping[str, float]
    ) -> None:
        """Count a power sample: energy totals per device and source, and its carbon (at the
        latest intensity) for the node and for each job, from the job's share ``job_energy_j``
        (J, split as :func:`carbonsched.reporting.accounting.sample_job_energy_j` splits it)."""
        readings = list(readings)
        with self.lock:
            self._gpu_power_w = finite_or_none(gpu_power_w)
            for r in readings:
                key = (r.device, r.source)
                self._energy_totals_j[key] = self._energy_totals_j.get(key, 0.0) + r.energy_j
            for job_id, energy_j in job_energy_j.items():
                if job_id in self._jobs:
                    self._jobs[job_id].energy_j += energy_j
            intensity = self._reading.intensity_g_per_kwh if self._reading is not None else None
            self._roll_carbon_day(utcnow())
            if intensity is None:
                return
            carbon_g = sum(r.energy_j for r in readings) / J_PER_KWH * intensity
            self._carbon_today_g += carbon_g
            self._carbon_total_g += carbon_g
            for job_id, energy_j in job_energy_j.items():
                if job_id in self._jobs:
                    self._jobs[job_id].carbon_g += energy_j / J_PER_KWH * intensity

    def job_started(self, job_id: str, model: str, scheme: str) -> None:
        """Count the job from now (a resumed job keeps what it counted)."""
        with self.lock:
            self._jobs.setdefault(job_id, JobCounters(model=model, scheme=scheme))

    def epoch_started(self, job_id: str, rho_asked: float, rho_effective: float | None) -> None:
        with self.lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job.rho_asked, job.rho_effective = rho_asked, rho_effective

    def epoch_ended(
        self, job_id: str, rho_effective: float | None, carbon_avoided_g: float | None, savings_label: str | None
    ) -> None:
        """The epoch's achieved ρ and the carbon it avoided against full fine-tuning (gCO2e)."""
        with self.lock:
            job = self._jobs.get(job_id)
            if job is not None and rho_effective is not None:
                job.rho_effective = rho_effective
            if carbon_avoided_g is None or savings_label is None:
                return
            if job is not None:
                job.carbon_avoided_g += carbon_avoided_g
            self._carbon_avoided_g[savings_label] = self._carbon_avoided_g.get(savings_label, 0.0) + carbon_avoided_g

    def job_ended(self, job_id: str) -> float | None:
        """Stop counting the job; returns the carbon it used while counted (gCO2e)."""
        with self.lock:
            self._job_decisions.pop(job_id, None)
            if self._ended_job_ids is not None:
                self._ended_job_ids.add(job_id)
            job = self._jobs.pop(job_id, None)
            return job.carbon_g if job is not None else None

    def _job_carbon_g(self, job_id: str) -> float | None:
        job = self._jobs.get(job_id)
        return job.carbon_g if job is not None else None

    def _roll_carbon_day(self, now: datetime) -> None:
        day = start_of_utc_day(now)
        if self._carbon_day != day:
            self._carbon_day, self._carbon_today_g = day, 0.0

    # -- decisions -----------------------------------------------------------------------------

    def policy_inputs(self, now: datetime, running_job_ids: Iterable[str]) -> PolicyInputs:
        """What the policy decides from now: the node's signals (no job) and each running job's
        (its own carbon so far)."""
        with self.lock:
            reading, gpu_power_w = self._reading, self._gpu_power_w
            self._roll_carbon_day(now)
            node = Signals(
                now=now,
                intensity_g_per_kwh=reading.intensity_g_per_kwh if reading else None,
                signal=reading.signal if reading else None,
                forecast=reading.forecast if reading else (),
                gpu_power_w=gpu_power_w,
                carbon_used_today_g=self._carbon_today_g,
            )
            jobs = {
                job_id: replace(node, job_id=job_id, carbon_used_job_g=self._job_carbon_g(job_id))
                for job_id in running_job_ids
            }
            return PolicyInputs(policy=self._settings.policy, reading=reading, node=node, jobs=jobs)

    def set_decisions(self, node: DecisionRecord, jobs: Mapping[str, DecisionRecord]) -> DecisionRecord | None:
        """Keep the node's new decision and the running jobs' own; returns the node's previous."""
        with self.lock:
            previous, self._decision = self._decision, node
            self._job_decisions = dict(jobs)
        return previous

    def decision_and_override(self, job_id: str | None = None) -> tuple[DecisionRecord | None, Override | None]:
        """The decision for ``job_id`` (the node's until the job has its own) and the override."""
        with self.lock:
            record = self._job_decisions.get(job_id, self._decision) if job_id is not None else self._decision
            return record, self._override

    def set_override(self, rho: float | None, ttl_s: float | None, uid: int, now: datetime) -> Override | None:
        """Set (``rho``) or clear (None) the override; returns the one now in force."""
        with self.lock:
            if rho is None:
                self._override = None
            else:
                expires = now + timedelta(seconds=ttl_s) if ttl_s else None
                self._override = Override(rho=rho, set_at=now, expires_at=expires, uid=uid)
            return self._override

    # -- views ---------------------------------------------------------------------------------

    def view(self, now: datetime) -> StateView:
        with self.lock:
            override = self._override
            if override is not None and not override.active(now):
                override = None
            return StateView(
                reading=self._reading,
                reading_error=self._reading_error,
                gpu_power_w=self._gpu_power_w,
                decision=self._decision,
                job_decisions=dict(self._job_decisions),
                override=override,
                errors=list(self._errors),
                carbon_today_g=self._carbon_today_g,
                jobs_counted=len(self._jobs),
                energy_totals_j=dict(self._energy_totals_j),
                carbon_total_g=self._carbon_total_g,
                carbon_avoided_g=dict(self._carbon_avoided_g),
                jobs={job_id: replace(job) for job_id, job in self._jobs.items()},
                reload_error=self._reload_error,
                last_reload_at=self._last_reload_at,
            )
