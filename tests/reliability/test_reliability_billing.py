"""Billing after faults: a real `greentrainer train --tiny opt --rho-from daemon` against a real
`carbonsched run`, with the daemon stopped (SIGTERM) or killed (SIGKILL) during an epoch and
started again epochs later, or the trainer killed during an epoch. After each fault the store
keeps its invariants (per job, epochs do not overlap; per node, energy attributed to jobs never
exceeds the energy measured), and the report's totals fit the job's wall time and the energy the
node measured over its epochs.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carbonsched.reporting.accounting import node_energy_j
from carbonsched.cli import app as carbonsched_app
from carbonsched.store import J_PER_KWH, Store
from carbonsched.reporting.store_invariants import store_violations
from daemon_helpers import DaemonProcess, short_dir, wait_until, write_policy

pytestmark = pytest.mark.slow

GREENTRAINER_BIN = os.path.join(os.path.dirname(sys.executable), "greentrainer")
EPOCHS = 6
JOB_ID = "billing-fault"


class Trainer:
    """`greentrainer train` as a subprocess whose stdout lines are collected as they come."""

    def __init__(self, socket: Path, output_dir: Path, epochs: int = EPOCHS, limit: int = 240):
        self.proc = subprocess.Popen(
            [GREENTRAINER_BIN, "train", "--tiny", "opt", "--limit", str(limit), "--epochs", str(epochs),
             "--batch-size", "4", "--max-input-length", "48", "--max-target-length", "12", "--importance-batches", "1",
             "--lr", "1e-3", "--rho-from", f"daemon:{socket}", "--job-id", JOB_ID, "--output-dir", str(output_dir),
             "--no-progress"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))

    def printed(self, prefix: str) -> bool:
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return any(line.startswith(prefix) for line in self.lines)

    def output(self) -> str:
        self.printed("")
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


def _epoch_started(db: Path, epoch: int) -> bool:
    if not db.exists():
        return False
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT started_at FROM epochs WHERE job_id = ? AND epoch = ?", (JOB_ID, epoch)).fetchone()
    except sqlite3.OperationalError:  # the schema is not there yet
        return False
    finally:
        conn.close()
    return row is not None and row[0] is not None


def _assert_store_consistent(db: Path) -> None:
    with Store(db, read_only=True) as store:
        assert store_violations(store) == []


def _stop_in_epoch_and_restart_later(tmp_path: Path, stop_signal: int) -> tuple[Path, str]:
    """Train EPOCHS epochs; the daemon gets ``stop_signal`` during epoch 1 (the trainer is held
    still meanwhile, so epoch 1 is surely in progress) and starts again once epoch 2 is over."""
    with short_dir() as d:
        policy = write_policy(d)
        daemons = [DaemonProcess(d, "--policy", str(policy), "--check-jobs-s", "0.5").wait_ready()]
        db = daemons[0].state_dir / "carbonsched.sqlite3"
        trainer = Trainer(daemons[0].socket, tmp_path / "run")
        try:
            assert wait_until(lambda: _epoch_started(db, 1) or trainer.proc.poll() is not None, 120), trainer.output()
            assert trainer.proc.poll() is None, trainer.output()
            trainer.proc.send_signal(signal.SIGSTOP)
            try:
                daemons[0].signal(stop_signal)
                daemons[0].proc.wait(30)
            finally:
                trainer.proc.send_signal(signal.SIGCONT)
            _assert_store_consistent(db)
            assert wait_until(lambda: trainer.printed("epoch 2:") or trainer.proc.poll() is not None, 120), trainer.output()
            daemons.append(DaemonProcess(d, "--policy", str(policy), "--check-jobs-s", "0.5").wait_ready())
            assert trainer.proc.wait(120) == 0, trainer.output()
        finally:
            trainer.kill()
            for daemon in daemons:
                daemon.stop()
        _assert_store_consistent(db)
        result = CliRunner().invoke(carbonsched_app, ["report", "--state-dir", str(daemons[0].state_dir),
                                                      "--format", "json", "--job", JOB_ID])
        assert result.exit_code == 0, result.output
        table = CliRunner().invoke(carbonsched_app, ["report", "--state-dir", str(daemons[0].state_dir), "--job", JOB_ID])
        with Store(db, read_only=True) as store:
            job = store.job(JOB_ID)
            windows = [(e["started_at"], e["ended_at"]) for e in store.epochs(JOB_ID)]
            measured_j = node_energy_j(store, windows)
            job_span_j = node_energy_j(store, [(job["started_at"], job["ended_at"])])
    (report,) = json.loads(result.output)["jobs"]
    assert report["status"] == "completed"
    wall_s = job["ended_at"] - job["started_at"]
    totals = report["totals"]
    # Every interval is billed once: the epochs fit in the job's wall time and their energy is at
    # most the node's over their union (the only job on the node: all of it, but for the moments
    # between an epoch's last power sample and its end, metered after the epoch was billed).
    assert totals["duration_s"] <= wall_s, (totals, wall_s)
    billed_j = totals["energy_kwh"] * J_PER_KWH
    assert 0.9 * measured_j <= billed_j <= measured_j * (1 + 1e-9) + 1e-6, (totals, measured_j)
    assert billed_j <= job_span_j * (1 + 1e-9) + 1e-6
    print(f"\n{signal.Signals(stop_signal).name} to the daemon in epoch 1, back after epoch 2: epochs "
          f"{sorted(e['epoch'] for e in report['epochs'])}, {totals['duration_s']:.1f} s billed of {wall_s:.1f} s wall, "
          f"{billed_j:.1f} J billed of {measured_j:.1f} J measured over the epochs ({job_span_j:.1f} J over the job)")
    by_epoch = {e["epoch"]: e for e in report["epochs"]}
    # Epoch 2 ran while no daemon listened; epoch 3 is recorded if the daemon was ready for it.
    assert {0, 1, 4, 5} <= set(by_epoch) <= {0, 1, 3, 4, 5}, by_epoch.keys()
    assert by_epoch[1]["end_inferred"] == "daemon stopped"
    assert all(e["end_inferred"] is None for n, e in by_epoch.items() if n != 1)
    return db, table.output


def test_daemon_stopped_during_an_epoch_and_back_epochs_later_bills_each_interval_once(tmp_path):
    _db, table = _stop_in_epoch_and_restart_later(tmp_path, signal.SIGTERM)
    assert "end inferred (daemon stopped)" in table


def test_daemon_killed_during_an_epoch_and_back_epochs_later_bills_each_interval_once(tmp_path):
    _stop_in_epoch_and_restart_later(tmp_path, signal.SIGKILL)


def test_trainer_killed_during_an_epoch_leaves_a_consistent_store(tmp_path):
    with short_dir() as d:
        daemon = DaemonProcess(d, "--policy", str(write_policy(d)), "--check-jobs-s", "0.2").wait_ready()
        db = daemon.state_dir / "carbonsched.sqlite3"
        trainer = Trainer(daemon.socket, tmp_path / "run", epochs=3)
        try:
            assert wait_until(lambda: _epoch_started(db, 1) or trainer.proc.poll() is not None, 120), trainer.output()
            trainer.kill()

            def reaped() -> bool:
                with Store(db, read_only=True) as store:
                    return store.job(JOB_ID)["status"] == "failed"

            assert wait_until(reaped, 30), daemon.log()
        finally:
            trainer.kill()
            daemon.stop()
        _assert_store_consistent(db)
        with Store(db, read_only=True) as store:
            epochs = store.epochs(JOB_ID)
        assert [e["epoch"] for e in epochs] == [0, 1]
        assert epochs[1]["extra"]["end_inferred"] == "check_jobs" and epochs[1]["ended_at"] is not None


def test_an_epoch_run_again_without_its_start_is_billed_from_its_wall_time_not_its_old_start():
    with short_dir() as d:
        daemon = DaemonProcess(d).wait_ready()
        db = daemon.state_dir / "carbonsched.sqlite3"
        try:
            conn = daemon.conn()
            job = {"job_id": "again"}
            assert conn.ask(op="job.start", model="m", scheme="green", pid=os.getpid(), **job)["ok"]
            for epoch in (0, 1, 2):
                assert conn.ask(op="epoch.start", epoch=epoch, rho_asked=0.5, **job)["ok"]
                assert conn.ask(op="epoch.end", epoch=epoch, rho_asked=0.5, rho_effective=0.5, wall_s=0.01, **job)["ok"]
            # The trainer resumes from the checkpoint after epoch 0 and runs epoch 1 again; its
            # epoch.start is lost (the daemon was away), its end arrives with the epoch's wall time.
            assert conn.ask(op="job.start", model="m", scheme="green", pid=os.getpid(), **job)["ok"]
            reply = conn.ask(op="epoch.end", epoch=1, rho_asked=0.5, rho_effective=0.5, wall_s=0.02, **job)
            assert reply["ok"], reply
            conn.close()
        finally:
            daemon.stop()
        _assert_store_consistent(db)
        with Store(db, read_only=True) as store:
            _first, again, third = store.epochs("again")
        assert again["ended_at"] - again["started_at"] <= 0.02 + 1e-6 and again["started_at"] >= third["ended_at"]
