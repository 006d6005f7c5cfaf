"""What a restarted daemon knows of its previous runs, and recovery work done a bounded amount per
tick (real store files; the periodic work driven by hand)."""

from __future__ import annotations

import subprocess
import sys

from carbonsched.config import DaemonConfig
from carbonsched.daemon.periodic import PeriodicWork
from carbonsched.daemon.runtime_state import RuntimeState, Settings
from carbonsched.store import Store
from carbonsched.types import EnergyReading, utcnow


def _reading(start_s: float, end_s: float, energy_j: float) -> EnergyReading:
    from datetime import datetime, timezone

    return EnergyReading(start=datetime.fromtimestamp(start_s, timezone.utc), end=datetime.fromtimestamp(end_s, timezone.utc),
                         device="cpu", energy_j=energy_j, source="test", power_w=None, pids=())


def test_a_killed_run_stops_at_its_last_sign_of_life_and_a_stopped_run_at_its_stop(tmp_path):
    with Store(tmp_path / "s.sqlite3") as store:
        store.start_daemon_run(100.0)
        store.daemon_alive(100.0, 105.0)
        store.add_energy([_reading(104.0, 107.5, 10.0)])  # written after the last heartbeat, then kill -9
        store.start_daemon_run(200.0)
        assert store.daemon_stop_after(101.0, before_run=200.0) == 107.5
        assert store.daemon_stop_after(108.0, before_run=200.0) == 108.0  # opened under that run, after its last sign
        assert store.daemon_stop_after(201.0, before_run=200.0) is None  # the current run is in force
        store.end_daemon_run(200.0, 250.0)
        store.start_daemon_run(300.0)
        assert store.daemon_stop_after(201.0, before_run=300.0) == 250.0
        assert store.daemon_stop_after(50.0, before_run=300.0) is None  # before any recorded run


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _work_with_dead_jobs(tmp_path, count: int) -> tuple[PeriodicWork, Store]:
    store = Store(tmp_path / "s.sqlite3")
    now_s, pid = utcnow().timestamp(), _dead_pid()
    for k in range(count):
        store.start_job(f"dead-{k}", model="m", scheme="green", pid=pid, uid=0, started_at=now_s - 60, pids_local=True)
        store.start_epoch(f"dead-{k}", 0, rho_asked=0.5, rho_effective=None, started_at=now_s - 50)
    state = RuntimeState(Settings(config=DaemonConfig(state_dir=tmp_path), policy=None, provider=None))
    return PeriodicWork(state, store, meter=None), store


def test_check_jobs_closes_a_bounded_number_of_dead_jobs_per_tick(tmp_path):
    work, store = _work_with_dead_jobs(tmp_path, 7)
    with store:
        work.check_jobs(max_jobs=3)
        assert len(store.jobs(status="failed")) == 3
        work.check_jobs(max_jobs=3)
        work.check_jobs(max_jobs=3)
        failed = store.jobs(status="failed")
        assert len(failed) == 7 and not store.jobs(status="running")
        assert all(store.epochs(job["job_id"])[0]["extra"]["end_inferred"] == "check_jobs" for job in failed)


def test_counters_are_restored_a_few_jobs_per_tick_and_an_ended_job_stays_ended(tmp_path):
    work, store = _work_with_dead_jobs(tmp_path, 5)
    with store:
        work.queue_counter_recovery()
        assert work.recover_counters(max_jobs=3)  # today's carbon and two jobs; three jobs left
        assert set(work.state.view(utcnow()).jobs) == {"dead-0", "dead-1"}
        work.state.job_ended("dead-3")
        assert not work.recover_counters(max_jobs=3)
        assert set(work.state.view(utcnow()).jobs) == {"dead-0", "dead-1", "dead-2", "dead-4"}
        assert not work.recover_counters(max_jobs=3)
