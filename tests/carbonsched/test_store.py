"""Store on real SQLite files: migrations, durability across processes, retention, report queries."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone

import pytest

from carbonsched.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreError
from carbonsched.types import Decision, EnergyReading, IntensityReading

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def reading(minutes: float, value: float, zone: str | None = "DE") -> IntensityReading:
    ts = T0 + timedelta(minutes=minutes)
    return IntensityReading(value, ts, "trace", "average", ts, zone=zone)


def energy(start_min: float, end_min: float, joules: float, device: str = "gpu:0") -> EnergyReading:
    return EnergyReading(device, joules, T0 + timedelta(minutes=start_min), T0 + timedelta(minutes=end_min), "nvml_counter", 100.0, (42,))


def test_new_file_gets_latest_schema_in_wal_mode(tmp_path):
    with Store(tmp_path / "s.sqlite3") as store:
        assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    db = sqlite3.connect(tmp_path / "s.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"intensity_samples", "energy_samples", "decisions", "jobs", "epochs"} <= tables


def test_old_file_is_migrated_forward_keeping_rows(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    db.execute("INSERT INTO jobs (job_id, model, scheme, started_at) VALUES ('j1', 'opt', 'greentrainer', 1.0)")
    db.execute("INSERT INTO epochs (job_id, epoch, rho_asked) VALUES ('j1', 0, 0.5)")
    db.commit()
    db.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        epoch = store.epochs("j1")[0]
        assert epoch["rho_asked"] == 0.5 and epoch["energy_j"] is None and epoch["carbon_g"] is None


def test_file_from_a_newer_version_is_refused_untouched(tmp_path):
    path = tmp_path / "new.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 5


def test_not_a_database_is_a_store_error(tmp_path):
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        Store(path)


def test_intensity_samples_are_deduplicated_per_provider_zone_and_time(tmp_path):
    with Store(tmp_path / "s.sqlite3") as store:
        assert store.add_intensity(reading(0, 300))
        assert not store.add_intensity(reading(0, 300))
        assert store.add_intensity(reading(0, 300, zone=None))  # no zone is another key
        assert not store.add_intensity(reading(0, 300, zone=None))  # NULL zone still deduplicated
        assert store.add_intensity(reading(5, 250))
        window = store.intensity_samples(T0, T0 + timedelta(minutes=10))
        assert [r["intensity_g_per_kwh"] for r in window] == [300, 300, 250]


def test_jobs_and_epochs_round_trip_and_queries(tmp_path):
    with Store(tmp_path / "s.sqlite3") as store:
        assert store.start_job("j1", model="opt-125m", scheme="greentrainer", pid=10, uid=1000, devices=["gpu:0"], started_at=T0)
        assert not store.start_job("j1", model="x", scheme="y", pid=1, uid=1, started_at=T0)
        store.start_job("j2", model="gpt2", scheme="full", pid=11, uid=1000, started_at=T0 + timedelta(hours=1))
        store.start_epoch("j1", 0, rho_asked=0.5, rho_effective=None, started_at=T0)
        store.end_epoch("j1", 0, ended_at=T0 + timedelta(minutes=30), extra={"note": "ok"},
                        rho_asked=0.5, rho_effective=0.48, flops_forward=1e12, flops_backward=1.5e12,
                        flops_full=3e12, wall_s=1800.0, train_loss=2.5, val_loss=None)
        # An epoch whose start was never reported gets its start from wall_s.
        store.end_epoch("j1", 1, ended_at=T0 + timedelta(minutes=60), rho_asked=0.5, rho_effective=0.5, wall_s=600.0)
        store.end_job("j1", "completed", T0 + timedelta(hours=2))

        job = store.job("j1")
        assert job["status"] == "completed" and job["devices"] == ["gpu:0"] and job["uid"] == 1000
        assert [j["job_id"] for j in store.jobs(status="running")] == ["j2"]
        assert [j["job_id"] for j in store.jobs(since=T0 + timedelta(minutes=30))] == ["j2"]
        e0, e1 = store.epochs("j1")
        assert e0["rho_effective"] == 0.48 and e0["flops_backward"] == 1.5e12 and e0["extra"] == {"note": "ok"}
        assert e0["started_at"] == T0.timestamp() and e0["val_loss"] is None
        assert e1["started_at"] == (T0 + timedelta(minutes=50)).timestamp()
        with pytest.raises(TypeError):
            store.end_epoch("j1", 2, ended_at=T0, bogus=1.0)
        assert store.resume_job("j1") and store.job("j1")["status"] == "running"


def test_energy_and_carbon_prorate_overlap_and_use_the_intensity_in_force(tmp_path):
    with Store(tmp_path / "s.sqlite3") as store:
        store.add_intensity(reading(0, 360.0))
        store.add_intensity(reading(10, 720.0))
        store.add_energy([energy(0, 10, 3.6e6), energy(10, 20, 3.6e6), energy(0, 10, 7.2e6, device="cpu")])
        energy_j, carbon_g = store.energy_and_carbon(T0 + timedelta(minutes=5), T0 + timedelta(minutes=20), devices=["gpu:0"])
        assert energy_j == pytest.approx(1.8e6 + 3.6e6)
        assert carbon_g == pytest.approx(0.5 * 360.0 + 1.0 * 720.0)
        all_j, _ = store.energy_and_carbon(T0, T0 + timedelta(minutes=20))
        assert all_j == pytest.approx(3.6e6 * 2 + 7.2e6)
        rows = store.energy_samples(T0, T0 + timedelta(minutes=30), devices=["gpu:0"])
        assert [r["pids"] for r in rows] == [[42], [42]]


def test_retention_prunes_samples_and_decisions_but_keeps_jobs_and_epochs(tmp_path):
    with Store(tmp_path / "s.sqlite3") as store:
        old, recent = -40 * 24 * 60, -1 * 24 * 60
        store.add_intensity(reading(old, 100))
        store.add_intensity(reading(recent, 200))
        store.add_energy([energy(old, old + 1, 5.0), energy(recent, recent + 1, 6.0)])
        store.add_decision(T0 + timedelta(minutes=old), Decision(0.5, "r", "p"), intensity_g_per_kwh=100, gpu_power_w=None)
        store.add_decision(T0 + timedelta(minutes=recent), Decision(0.7, "r", "p"), intensity_g_per_kwh=200, gpu_power_w=float("nan"))
        store.start_job("old", model="m", scheme="s", pid=1, uid=0, started_at=T0 + timedelta(minutes=old))
        store.end_epoch("old", 0, ended_at=T0 + timedelta(minutes=old), rho_asked=1.0, rho_effective=1.0)
        assert store.prune(30, T0) == 3
        far = (T0 - timedelta(days=100), T0)
        assert [r["intensity_g_per_kwh"] for r in store.intensity_samples(*far)] == [200]
        assert [r["energy_j"] for r in store.energy_samples(*far)] == [6.0]
        decisions = store.decisions(*far)
        assert [d["rho"] for d in decisions] == [0.7] and decisions[0]["gpu_power_w"] is None
        assert store.job("old") is not None and len(store.epochs("old")) == 1


@pytest.mark.slow
def test_acknowledged_rows_survive_kill_9(tmp_path):
    """A writer process is SIGKILLed right after reporting its writes; all are readable after."""
    path = tmp_path / "s.sqlite3"
    script = textwrap.dedent(f"""
        import sys, time
        from carbonsched.store import Store
        store = Store({str(path)!r})
        for i in range(50):
            store.start_job(f"job{{i}}", model="m", scheme="s", pid=1, uid=0, started_at=float(i))
        print("written", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    with Store(path) as store:
        assert len(store.jobs()) == 50
