"""`carbonsched report --job`: did a deadline job's plan pay off? A real daemon in this process (real
socket, store, scheduler, fake NVML) replays a sped-up trace that is dirty for its first hours; a
pausable deadline job is planned to wait for the clean hours, pauses, then runs its epochs. The
report's numbers are checked against values computed here from the store's rows. Also: the store
migration that adds the plan records, on a file made by the previous schema."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from datetime import datetime, timezone

import pytest
from typer.testing import CliRunner

from carbonsched.cli import app
from carbonsched.config import Intervals
from carbonsched.store import MIGRATIONS, SCHEMA_VERSION, Store
from carbonsched.types import IntensityReading
from daemon_helpers import LineConn, wait_until
from inprocess_daemon import inprocess_daemon

DIRTY_G, CLEAN_G = 500.0, 40.0
DIRTY_HOURS, CLEAN_HOURS = 12, 36  # dirty long enough that a slow start still begins in them
SPEEDUP = 7200  # a trace hour lasts 0.5 s: the dirty hours 6 s
EPOCH_WALL_S = 0.3
RHO_MIN = 0.5
J_PER_KWH = 3.6e6


def write_trace(directory) -> str:
    path = directory / "trace.csv"
    values = [DIRTY_G] * DIRTY_HOURS + [CLEAN_G] * CLEAN_HOURS
    rows = "".join(f"2026-01-{1 + h // 24:02d}T{h % 24:02d}:00:00Z,{v}\n" for h, v in enumerate(values))
    path.write_text("timestamp,intensity_g_per_kwh\n" + rows)
    return str(path)


def ask(conn: LineConn, **request) -> dict:
    reply = conn.ask(**request)
    assert reply["ok"], reply
    return reply


def run_paused_then_two_epochs(running) -> None:
    """What a pausable trainer does: asks, waits out the planned pause, runs two epochs at the
    daemon's ρ (each takes EPOCH_WALL_S and draws 60 J on its GPU), ends."""
    daemon, gpu = running.daemon, running.gpus[0]
    conn = LineConn(daemon.config.socket)
    try:
        ask(conn, op="job.start", job_id="j", model="m", scheme="green", pid=os.getpid(), devices=["0"],
            deadline=time.time() + 120, epochs=2, epoch_seconds=EPOCH_WALL_S / RHO_MIN, rho_min=RHO_MIN,
            may_pause=True)
        daemon.work.sample_power()
        first = ask(conn, op="rho", job_id="j", paused=False)
        assert first["pause_until"] is not None, f"not paused in the dirty hours: {first}"
        ask(conn, op="rho", job_id="j", paused=True)

        def told_to_run() -> bool:
            daemon.work.poll_intensity()
            daemon.work.decide()
            return ask(conn, op="rho", job_id="j", paused=True)["pause_until"] is None

        assert wait_until(told_to_run, 60, 0.1)
        rho = ask(conn, op="rho", job_id="j", paused=False)["rho"]
        for epoch in (0, 1):
            daemon.work.sample_power()
            ask(conn, op="epoch.start", job_id="j", epoch=epoch, rho_asked=rho)
            began = time.time()
            assert wait_until(lambda: time.time() >= began + EPOCH_WALL_S, 10, 0.02)  # the epoch's work
            gpu.energy_mJ += 60_000
            daemon.work.sample_power()
            ask(conn, op="epoch.end", job_id="j", epoch=epoch, rho_asked=rho, rho_effective=rho)
        ask(conn, op="job.end", job_id="j", status="completed")
    finally:
        conn.close()


def intensity_integral(readings: list[tuple[float, float]], start_s: float, end_s: float) -> float:
    """∫ intensity dt (gCO2e/kWh·s) over [start_s, end_s): each reading holds until the next, the
    one in force at start_s (else the first) from start_s, the last one beyond."""
    in_force = [value for ts, value in readings if ts <= start_s]
    value = in_force[-1] if in_force else readings[0][1]
    total, at_s = 0.0, start_s
    for ts, next_value in readings:
        if ts <= start_s:
            continue
        if ts >= end_s:
            break
        total += value * (ts - at_s)
        at_s, value = ts, next_value
    return total + value * (end_s - at_s)


def test_report_compares_the_first_plan_and_the_real_run_with_running_at_once(tmp_path):
    intervals = Intervals(poll_intensity_s=3600, sample_power_s=3600, decide_s=1.0, check_jobs_s=3600)
    with inprocess_daemon(provider=f"trace:{write_trace(tmp_path)}?speedup={SPEEDUP}", intervals=intervals) as running:
        run_paused_then_two_epochs(running)
        state_dir = running.daemon.config.state_dir
        with running.store() as store:
            job, epochs, pauses = store.job("j"), store.epochs("j"), store.pauses("j")
            readings = [(row["ts"], row["intensity_g_per_kwh"]) for row in store.intensity_samples(0, 2e9)]
            planned = store.first_plan("j")
        table = CliRunner().invoke(app, ["report", "--state-dir", str(state_dir), "--job", "j"])
        as_json = CliRunner().invoke(app, ["report", "--state-dir", str(state_dir), "--job", "j", "--format", "json"])
    assert table.exit_code == 0 and as_json.exit_code == 0, table.output + as_json.output
    (report,) = json.loads(as_json.output)["jobs"]
    outcome = report["planning"]
    assert pauses and all(p["ended_at"] <= epochs[0]["started_at"] for p in pauses)

    # Independently from the rows: epoch time at ρ 1 and running power from the ended epochs.
    paused = [(p["started_at"], p["ended_at"]) for p in pauses]

    def running_s(e):
        overlap = sum(max(0.0, min(e["ended_at"], b) - max(e["started_at"], a)) for a, b in paused)
        return e["ended_at"] - e["started_at"] - overlap

    rho = epochs[0]["rho_effective"]
    assert rho == RHO_MIN and epochs[1]["rho_effective"] == rho
    epoch_s_at_full = sum(running_s(e) / e["rho_effective"] for e in epochs) / len(epochs)
    power_w = sum(e["energy_j"] for e in epochs) / sum(running_s(e) for e in epochs)
    actual_g = sum(e["carbon_g"] for e in epochs)
    start_s = job["started_at"]
    full_g = power_w * intensity_integral(readings, start_s, start_s + 2 * epoch_s_at_full) / J_PER_KWH
    floor_g = power_w * intensity_integral(readings, start_s, start_s + 2 * epoch_s_at_full * RHO_MIN) / J_PER_KWH
    assert outcome["actual_carbon_g"] == pytest.approx(actual_g, rel=1e-9)
    assert outcome["at_full"]["carbon_g"] == pytest.approx(full_g, rel=1e-9)
    assert outcome["at_floor"]["carbon_g"] == pytest.approx(floor_g, rel=1e-9)
    assert outcome["at_floor"]["rho"] == RHO_MIN and outcome["at_full"]["power_w"] == pytest.approx(power_w)
    assert outcome["at_full"]["saving_pct"] == pytest.approx(100 * (full_g - actual_g) / full_g, rel=1e-9)
    assert outcome["at_floor"]["saving_pct"] == pytest.approx(100 * (floor_g - actual_g) / floor_g, rel=1e-9)
    # Run at once, the job would have started in the dirty hours; planned, it ran in the clean ones.
    assert outcome["at_floor"]["saving_pct"] > 80
    # The first plan: made at the start, before any power was measured, so priced per W, all in the
    # clean hours; the report prices it at the measured running power.
    assert start_s <= planned["planned_at"] <= pauses[0]["started_at"] and planned["expected_carbon_g"] is None
    assert planned["mean_rho"] == RHO_MIN and planned["epochs_left"] == 2
    assert planned["expected_g_per_w"] == pytest.approx(planned["running_s"] * CLEAN_G / J_PER_KWH, rel=1e-6)
    assert outcome["expected_carbon_g"] == pytest.approx(planned["expected_g_per_w"] * power_w, rel=1e-9)
    assert outcome["plan_finish_at_s"] == planned["finish_at"] and outcome["plan_mean_rho"] == RHO_MIN
    lines = table.output.splitlines()
    assert any(line.strip().startswith("actual") and f"{actual_g:.4f} gCO2e" in line for line in lines)
    assert any("ρ 1 from start, no pause" in line and f"saved {outcome['at_full']['saving_pct']:.1f}%" in line
               for line in lines)
    assert any("ρ 0.50 (floor), no pause" in line and f"{floor_g:.4f} gCO2e" in line for line in lines)
    assert any(line.strip().startswith("expected (first plan)") and f"{outcome['expected_carbon_g']:.4f} gCO2e" in line
               for line in lines)
    assert outcome["last_reading_assumed"] is False and "assumed to hold" not in table.output  # clean readings follow


def test_a_job_without_a_deadline_gets_one_line_and_a_listing_none(tmp_path):
    with Store(tmp_path / "carbonsched.sqlite3") as store:
        store.start_job("plain", model="m", scheme="green", pid=1, uid=0, started_at=1_750_000_000.0)
    one = CliRunner().invoke(app, ["report", "--state-dir", str(tmp_path), "--job", "plain"])
    listing = CliRunner().invoke(app, ["report", "--state-dir", str(tmp_path)])
    assert one.exit_code == 0 and listing.exit_code == 0, one.output + listing.output
    assert "planning: not planned: the job declared no deadline" in one.output.splitlines()
    assert "planning" not in listing.output


def test_a_store_of_the_previous_schema_gains_the_plan_records(tmp_path):
    path = tmp_path / "carbonsched.sqlite3"
    db = sqlite3.connect(path)
    before = next(i for i, migration in enumerate(MIGRATIONS) if "CREATE TABLE job_plans" in migration)
    db.executescript("".join(MIGRATIONS[:before]) + f"PRAGMA user_version = {before};")
    db.execute("INSERT INTO jobs (job_id, model, scheme, started_at, deadline, epochs, may_pause) "
               "VALUES ('old', 'm', 'green', 1750000000.0, 1750003600.0, 2, 1)")
    db.commit()
    db.close()
    with Store(path, read_only=True) as old:  # a report reads it as it is
        assert old.schema_version == before and old.first_plan("old") is None
    report = CliRunner().invoke(app, ["report", "--state-dir", str(tmp_path), "--job", "old"])
    assert report.exit_code == 0, report.output
    assert "no plan was stored for it" in report.output and "no counterfactual" in report.output
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION and store.job("old")["deadline"] == 1750003600.0
        plan = dict(provider="trace", zone=None, epochs_left=2.0, mean_rho=0.5, running_s=60.0, finish_at=1750001000.0,
                    expected_carbon_g=None, expected_g_per_w=0.002, power_w=None)
        assert store.record_first_plan("old", 1750000001.0, **plan)
        assert not store.record_first_plan("old", 1750000500.0, **{**plan, "mean_rho": 1.0})  # the first stays
        assert store.first_plan("old") == {"job_id": "old", "planned_at": 1750000001.0, **plan}


def test_epochs_that_give_no_usable_cost_model_are_named_not_a_crash(tmp_path):
    with Store(tmp_path / "carbonsched.sqlite3") as store:
        store.start_job("bad", model="m", scheme="green", pid=1, uid=0, started_at=1_750_000_000.0)
        store.declare_job("bad", deadline=1_750_003_600.0, epochs=2, epoch_seconds=None, rho_min=0.5, mean_rho=None,
                          may_pause=True)
        store.start_epoch("bad", 0, rho_asked=0.5, rho_effective=0.5, started_at=1_750_000_000.0)
        store.end_epoch("bad", 0, ended_at=1_750_000_010.0, rho_effective=0.5, energy_j=-50.0)  # a broken meter
    report = CliRunner().invoke(app, ["report", "--state-dir", str(tmp_path), "--job", "bad"])
    assert report.exit_code == 0, report.output
    assert "no counterfactual: the job's epochs give no usable cost model (running power must be positive W" in report.output


def test_past_the_last_reading_it_holds_and_only_the_provider_in_force_at_the_start_counts(tmp_path):
    start_s = 1_750_000_000.0

    def reading(provider: str, at_s: float, value: float) -> IntensityReading:
        at = datetime.fromtimestamp(at_s, timezone.utc)
        return IntensityReading(value, at, provider, "average", at)

    with Store(tmp_path / "carbonsched.sqlite3") as store:
        store.add_intensity(reading("grid", start_s - 10, 300.0))
        store.add_intensity(reading("grid", start_s + 5, 100.0))  # the last reading of the provider in force
        store.add_intensity(reading("other", start_s + 2, 900.0))  # another provider: not the daemon's then
        store.start_job("k", model="m", scheme="green", pid=1, uid=0, started_at=start_s)
        store.declare_job("k", deadline=start_s + 3600, epochs=1, epoch_seconds=None, rho_min=0.5, mean_rho=None,
                          may_pause=True)
        store.start_epoch("k", 0, rho_asked=0.5, rho_effective=0.5, started_at=start_s)
        store.end_epoch("k", 0, ended_at=start_s + 10, rho_effective=0.5, energy_j=2000.0, carbon_g=0.1)
    report = CliRunner().invoke(app, ["report", "--state-dir", str(tmp_path), "--job", "k", "--format", "json"])
    assert report.exit_code == 0, report.output
    outcome = json.loads(report.output)["jobs"][0]["planning"]
    # 200 W; at ρ 1 one epoch takes 20 s: 5 s at 300, then 15 s at 100 (the last reading, assumed to hold).
    assert outcome["at_full"]["carbon_g"] == pytest.approx(200 * (300 * 5 + 100 * 15) / J_PER_KWH, rel=1e-9)
    assert outcome["at_floor"]["carbon_g"] == pytest.approx(200 * (300 * 5 + 100 * 5) / J_PER_KWH, rel=1e-9)
    assert outcome["provider"] == "grid" and outcome["last_reading_assumed"] is True
    assert outcome["last_reading_at_s"] == start_s + 5 and outcome["last_reading_g_per_kwh"] == 100.0
    assert outcome["at_floor"]["saving_pct"] == pytest.approx(100 * (1 - 0.1 / (200 * 2000 / J_PER_KWH)), rel=1e-9)
