"""Each running job's live carbon is its own share of the node's energy, split as the epoch
accounting splits it, and a per-job budget policy decides each job's ρ from that share
(a real daemon in this process over a fake NVML with two GPUs)."""

from __future__ import annotations

import os

import pytest

from carbonsched.daemon.periodic import PeriodicWork
from carbonsched.reporting.energy_report import build_report
from carbonsched.daemon.runtime_state import RuntimeState, Settings
from carbonsched.store import Store
from carbonsched.types import utcnow
from daemon_helpers import LineConn
from inprocess_daemon import inprocess_daemon

BUDGET = 'kind = "budget"\nrho_min = 0.2\nbudget_g_per_job = 1.0\n'


def _start(conn: LineConn, job_id: str, devices: list[str]) -> None:
    assert conn.ask(op="job.start", job_id=job_id, model="m", scheme="green", pid=os.getpid(), devices=devices)["ok"]
    assert conn.ask(op="epoch.start", job_id=job_id, epoch=0, rho_asked=1.0)["ok"]


def test_two_concurrent_jobs_each_get_their_own_carbon_share_and_budget_rho():
    with inprocess_daemon(BUDGET) as running:
        daemon, (gpu0, gpu1) = running.daemon, running.gpus
        conn = LineConn(daemon.config.socket)
        _start(conn, "heavy", ["0"])
        _start(conn, "light", ["1"])
        daemon.work.sample_power()  # opens the meter's windows (or takes an empty-GPU sample)
        for _ in range(3):
            gpu0.energy_mJ += 400_000  # 400 J on the heavy job's GPU per sample
            gpu1.energy_mJ += 40_000
            running.add_rapl_energy_j("cpu", 100.0)  # node-wide: shared by both jobs' epochs
            running.add_rapl_energy_j("ram", 20.0)
            daemon.work.sample_power()
        daemon.work.decide()
        rho = {job_id: conn.ask(op="rho", job_id=job_id)["rho"] for job_id in ("heavy", "light")}
        ended = {job_id: conn.ask(op="job.end", job_id=job_id, status="completed") for job_id in ("heavy", "light")}
        assert all(reply["ok"] for reply in ended.values()), ended
        conn.close()
        with running.store() as store:
            epoch_carbon_g = {job_id: store.epochs(job_id)[0]["carbon_g"] for job_id in ("heavy", "light")}
    assert 0.2 < rho["heavy"] < rho["light"] < 1.0
    for job_id in ("heavy", "light"):
        live_g = ended[job_id]["carbon_g"]
        assert live_g > 0 and live_g == pytest.approx(epoch_carbon_g[job_id], rel=1e-6)
    # heavy: 1200 J GPU + half of 360 J CPU/RAM; light: 120 J + the other half
    assert ended["heavy"]["carbon_g"] / ended["light"]["carbon_g"] == pytest.approx(1380 / 300, rel=1e-6)


def test_a_restarted_daemon_restores_each_running_jobs_counters_from_the_store():
    with inprocess_daemon() as running:
        daemon, gpu0 = running.daemon, running.gpus[0]
        conn = LineConn(daemon.config.socket)
        _start(conn, "j", ["0"])
        daemon.work.sample_power()
        for epoch in (0, 1):
            gpu0.energy_mJ += 300_000
            running.add_rapl_energy_j("cpu", 50.0)
            daemon.work.sample_power()
            if epoch == 0:
                assert conn.ask(op="epoch.end", job_id="j", epoch=0, rho_asked=1.0, rho_effective=0.8,
                                flops_forward=1e12, flops_backward=1e12, flops_full=3e12)["ok"]
                assert conn.ask(op="epoch.start", job_id="j", epoch=1, rho_asked=0.6)["ok"]
                # an empty sample across the milliseconds between the epoch's last sample and its
                # end (in no stored epoch, while the live count would take their share)
                daemon.work.sample_power()
        conn.close()
        live = daemon.state.view(utcnow()).jobs["j"]
        daemon.stop()
        with Store(daemon.config.state_dir / "carbonsched.sqlite3") as store:
            state = RuntimeState(Settings(config=daemon.config, policy=None, provider=None))
            PeriodicWork(state, store, meter=None).start_carbon_counters()
            saved_g = build_report(store, job_id="j")[0].epochs[0].saved_g
        restored = state.view(utcnow()).jobs["j"]
    assert live.energy_j == pytest.approx(700.0) and restored.energy_j == pytest.approx(live.energy_j, rel=1e-6)
    assert live.carbon_g > 0 and restored.carbon_g == pytest.approx(live.carbon_g, rel=1e-6)
    assert saved_g > 0 and restored.carbon_avoided_g == pytest.approx(live.carbon_avoided_g) == pytest.approx(saved_g)
    assert (restored.model, restored.scheme, restored.rho_asked, restored.rho_effective) == ("m", "green", 0.6, None)
