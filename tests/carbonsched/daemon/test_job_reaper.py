"""Jobs that die without job.end: the daemon notices their processes are gone, marks them failed
and closes their open epoch with the energy used so far (real daemon, real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from carbonsched.daemon.processes import process_alive
from carbonsched.store import Store
from daemon_helpers import DaemonProcess, short_dir, wait_until

pytestmark = pytest.mark.slow

TRAINER = textwrap.dedent(
    """
    import json, os, socket, sys, time
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    f = s.makefile("rw")
    job_id = sys.argv[2]
    for msg in ({"op": "job.start", "job_id": job_id, "model": "m", "scheme": "green", "pid": os.getpid()},
                {"op": "epoch.start", "job_id": job_id, "epoch": 0, "rho_asked": 0.5}):
        f.write(json.dumps(msg) + "\\n"); f.flush()
        assert json.loads(f.readline())["ok"]
    print("registered", flush=True)
    if sys.argv[3] == "stay":
        time.sleep(600)
    """
)


def _register(socket_path, job_id: str, stay: bool) -> subprocess.Popen:
    """A process that starts ``job_id`` and an epoch under its own pid, then stays or exits."""
    return subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(socket_path), job_id, "stay" if stay else "exit"], stdout=subprocess.PIPE, text=True
    )


def test_process_alive_sees_running_exited_and_zombie_processes():
    assert process_alive(os.getpid())
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    assert not process_alive(done.pid)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_until(lambda: not process_alive(zombie.pid), 10)  # exited, not yet reaped: a zombie
    zombie.wait()
    assert not process_alive(2**40)


def test_a_killed_job_is_marked_failed_and_its_open_epoch_closed_with_its_energy():
    with short_dir() as d:
        daemon = DaemonProcess(d, "--check-jobs-s", "0.2").wait_ready()
        trainer = _register(daemon.socket, "crashes", stay=True)
        try:
            assert trainer.stdout.readline().strip() == "registered"
            conn = daemon.conn()
            # Alive and ours: never touched. Foreign pid namespace (the pid sent is not the
            # sender's): cannot be checked, so never touched either.
            assert conn.ask(op="job.start", job_id="alive", model="m", scheme="green", pid=os.getpid())["ok"]
            assert conn.ask(op="job.start", job_id="elsewhere", model="m", scheme="green", pid=1)["ok"]
            status = lambda job_id: {j["job_id"]: j["status"] for j in conn.ask(op="jobs")["jobs"]}[job_id]  # noqa: E731
            # A job whose process is already gone: once it is marked failed, a check round has seen
            # the trainer alive.
            canary = _register(daemon.socket, "canary", stay=False)
            assert canary.stdout.readline().strip() == "registered"
            canary.wait(10)
            assert wait_until(lambda: status("canary") == "failed", 15), daemon.log()
            assert status("crashes") == "running"
            trainer.send_signal(signal.SIGKILL)
            trainer.wait()
            assert wait_until(lambda: status("crashes") == "failed", 15), daemon.log()
            assert status("alive") == "running" and status("elsewhere") == "running"
            conn.close()
        finally:
            trainer.kill()
            daemon.stop()
        log = daemon.log_path.read_text()
        assert "job crashes: its processes" in log and "marked failed" in log
        with Store(daemon.state_dir / "carbonsched.sqlite3", read_only=True) as store:
            (epoch,) = store.epochs("crashes")
            assert epoch["ended_at"] is not None and epoch["energy_j"] is not None and epoch["energy_j"] > 0
            assert epoch["extra"]["closed_by"] == "check_jobs"
