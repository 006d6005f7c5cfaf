"""A real daemon pausing and resuming a real `greentrainer train`: the daemon replays a trace that is
dirty for its first 23 hours and clean for the next 25, sped up so that a day passes in one or two
minutes; a pausable job with a deadline waits for the clean hours at a step boundary, the daemon
records the pause, and training finishes with every epoch. A daemon killed while the trainer is
paused: the trainer resumes on its own after its bounded wait. A daemon that says run (an admin
override): the paused job resumes at once."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from carbonsched.cli import app as carbonsched_app
from carbonsched.store import Store
from daemon_helpers import DaemonProcess, short_dir, wait_until
from gt_core.rho.pausing import wait_while_paused
from gt_core.rho.daemon_source import DaemonRhoSource
from pause_helpers import paused_job, wait_for_reading, write_trace

pytestmark = pytest.mark.slow

GREENTRAINER_BIN = os.path.join(os.path.dirname(sys.executable), "greentrainer")


def start_trainer(daemon, output_dir, *extra):
    deadline = time.time() + 900
    return subprocess.Popen(
        [GREENTRAINER_BIN, "train", "--tiny", "opt", "--limit", "16", "--epochs", "2", "--batch-size", "8",
         "--max-input-length", "48", "--max-target-length", "12", "--importance-batches", "1", "--lr", "1e-3",
         "--rho-from", f"daemon:{daemon.socket}", "--output-dir", str(output_dir), "--no-progress",
         "--deadline", f"{deadline:.0f}", "--may-pause", "--rho-min", "0.5", "--epoch-seconds", "2",
         "--pause-poll-s", "0.2", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_daemon_pauses_a_training_job_until_the_clean_hours_and_it_finishes_every_epoch(tmp_path):
    with short_dir() as d:
        # 720x: the 23 dirty hours last 115 s (the trainer must register within them: a fresh process
        # importing torch took 60 s on a loaded machine), the forecast (24 h) reaches the clean ones from the start.
        daemon = DaemonProcess(d, "--provider", f"trace:{write_trace(d)}?speedup=720").wait_ready()
        trainer = None
        try:
            trainer = start_trainer(daemon, tmp_path / "run")
            seen = {}
            assert wait_until(lambda: seen.setdefault("job", paused_job(daemon)) or seen.pop("job"), 120, 0.2), (
                f"no paused job:\n{daemon.log()}")
            job = seen["job"]
            assert job["plan"]["pause_until_s"] > time.time() and job["plan"]["rho"] == 0.5
            listing = CliRunner().invoke(carbonsched_app, ["jobs", "--socket", str(daemon.socket)])
            assert listing.exit_code == 0 and " paused " in listing.output and "paused until" in listing.output
            out, err = trainer.communicate(timeout=360)
            assert trainer.returncode == 0, err
            assert "done: 2 epochs" in out
        finally:
            if trainer is not None and trainer.poll() is None:
                trainer.kill()
                trainer.wait()
            assert daemon.stop() == 0
        with Store(daemon.state_dir / "carbonsched.sqlite3") as store:
            (stored,) = store.jobs()
            epochs = store.epochs(stored["job_id"])
            pauses = store.pauses(stored["job_id"])
        assert stored["status"] == "completed" and stored["may_pause"] and stored["epochs"] == 2
        assert [e["epoch"] for e in epochs] == [0, 1] and all(e["ended_at"] for e in epochs)
        assert epochs[0]["extra"]["steps"] == epochs[1]["extra"]["steps"] > 0  # no step lost or run twice
        assert pauses and all(p["ended_at"] is not None and p["ended_at"] > p["started_at"] for p in pauses)
        first = pauses[0]
        assert first["planned_until"] is not None and first["ended_at"] <= epochs[0]["started_at"]
        assert err.count("paused before step 0 (epoch 0)") == 1 and "resuming at step 0 (epoch 0)" in err
        assert err.count("paused before step") == len(pauses)
        lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [line["epoch"] for line in lines] == [0, 1]
        # The daemon's pause record opens when it plans the pause, the trainer's when it first steps.
        paused_total = sum(p["ended_at"] - p["started_at"] for p in pauses)
        assert lines[0]["paused_s"] > 0 and sum(line["paused_s"] for line in lines) <= paused_total + 1.0
        # Not training time: epoch 0 (paused) takes about as long as epoch 1 (same steps, no pause).
        assert lines[0]["wall_s"] < lines[1]["wall_s"] + lines[0]["paused_s"] / 2
        report = CliRunner().invoke(carbonsched_app, ["report", "--state-dir", str(daemon.state_dir), "--format", "json"])
        assert report.exit_code == 0, report.output
        (reported,) = json.loads(report.output)["jobs"]
        assert reported["paused_s"] == sum(p["ended_at"] - p["started_at"] for p in pauses)


def test_a_paused_trainer_resumes_on_its_own_when_the_daemon_dies(tmp_path):
    with short_dir() as d:
        # 1000x: the dirty hours last 83 s, far longer than the bounded wait.
        daemon = DaemonProcess(d, "--provider", f"trace:{write_trace(d)}?speedup=1000").wait_ready()
        trainer = None
        try:
            trainer = start_trainer(daemon, tmp_path / "run", "--pause-max-wait-s", "2")
            seen = {}
            assert wait_until(lambda: seen.setdefault("job", paused_job(daemon)) or seen.pop("job"), 120, 0.2), (
                f"no paused job:\n{daemon.log()}")
            assert seen["job"]["plan"]["pause_until_s"] > time.time() + 20
            daemon.signal(signal.SIGKILL)
            daemon.proc.wait(10)
            out, err = trainer.communicate(timeout=120)
            assert trainer.returncode == 0, err
            assert "done: 2 epochs" in out
        finally:
            if trainer is not None and trainer.poll() is None:
                trainer.kill()
                trainer.wait()
            daemon.stop()
        assert "no answer from the daemon for 2 s while paused" in err
        lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [line["epoch"] for line in lines] == [0, 1]


def test_a_paused_job_resumes_as_soon_as_the_daemon_says_run(caplog):
    with short_dir() as d:
        daemon = DaemonProcess(d, "--provider", f"trace:{write_trace(d)}?speedup=1000").wait_ready()
        try:
            assert wait_for_reading(daemon)  # so that the job is planned as it registers
            source = DaemonRhoSource(daemon.socket, model_name="m", scheme="green", deadline_s=time.time() + 900,
                                     epochs=2, epoch_seconds=2, rho_min=0.5, may_pause=True, pause_poll_s=0.2)
            assert source.start_job()
            result = {}
            waiter = threading.Thread(target=lambda: result.update(reading=wait_while_paused(source, 0, 0)))
            with caplog.at_level(logging.WARNING, logger="gt_core.pausing"):
                waiter.start()
                assert wait_until(lambda: paused_job(daemon) is not None, 30, 0.1), daemon.log()
                pause_until_s = paused_job(daemon)["plan"]["pause_until_s"]
                assert pause_until_s > time.time() + 30
                conn = daemon.conn()
                assert conn.ask(op="override", rho=0.8)["ok"]  # an admin's ρ runs the job now
                conn.close()
                waiter.join(30)
                assert not waiter.is_alive()
            assert result["reading"].pause_until_s is None and result["reading"].rho == 0.8
            assert time.time() < pause_until_s  # resumed on the daemon's word, not at the planned end
            assert "after" in caplog.text and "paused: told to run" in caplog.text
            source.end_job("completed")
        finally:
            assert daemon.stop() == 0
        with Store(daemon.state_dir / "carbonsched.sqlite3") as store:
            (pause,) = store.pauses(source.job_id)
        assert pause["ended_at"] is not None and pause["ended_at"] < pause_until_s
