"""A trainer in its own pid namespace (as in a container) sends pids NVML never lists: the
daemon sees through SO_PEERCRED that the sender lives in another pid namespace and attributes
the job's GPU energy per device, saying so in the epoch's record. A real client process under
`unshare --pid --fork` against a real daemon in this process over a fake NVML."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from carbonsched.reporting.accounting import FOREIGN_PIDS_ATTRIBUTION
from carbonsched.daemon.pid_namespace import pid_namespace, sent_pids_are_ours
from daemon_helpers import wait_until
from fake_pynvml import FakeProcess
from inprocess_daemon import inprocess_daemon

CONTAINED_TRAINER = textwrap.dedent(
    """
    import json, os, socket, sys
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    f = s.makefile("rw")
    def ask(**msg):
        f.write(json.dumps(msg) + "\\n"); f.flush()
        reply = json.loads(f.readline())
        assert reply["ok"], reply
        return reply
    ask(op="job.start", job_id="contained", model="m", scheme="green", pid=os.getpid(), devices=["0"])
    ask(op="epoch.start", job_id="contained", epoch=0, rho_asked=0.5)
    print("registered", os.getpid(), flush=True)
    sys.stdin.readline()
    print(json.dumps(ask(op="epoch.end", job_id="contained", epoch=0, rho_asked=0.5, rho_effective=0.5)), flush=True)
    """
)


def _can_unshare_pid() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True)
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(not _can_unshare_pid(), reason="unshare --pid needs root (or user namespaces)")


def _child_pid(parent: int) -> int | None:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return int(children[0]) if children else None


def test_a_process_in_our_namespace_is_ours_and_unknown_namespaces_fall_back_to_the_pid():
    assert pid_namespace("self") is not None
    assert sent_pids_are_ours(os.getpid(), os.getpid())
    assert sent_pids_are_ours(os.getpid(), 4242)  # same namespace: any pid it sends is in our view
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert pid_namespace(gone.pid) is None
    assert not sent_pids_are_ours(gone.pid, 1)  # namespace unknown: a pid that is not the sender's is foreign
    assert sent_pids_are_ours(gone.pid, gone.pid)


@needs_unshare
def test_a_trainer_in_its_own_pid_namespace_gets_its_gpus_energy_per_device():
    with inprocess_daemon() as running:
        daemon, (gpu0, gpu1) = running.daemon, running.gpus
        trainer = subprocess.Popen(
            ["unshare", "--pid", "--fork", sys.executable, "-c", CONTAINED_TRAINER, str(daemon.config.socket)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            line = trainer.stdout.readline().split()
            assert line == ["registered", "1"]  # the first process of a fresh pid namespace
            assert wait_until(lambda: _child_pid(trainer.pid) is not None, 10)
            host_pid = _child_pid(trainer.pid)
            daemon.work.sample_power()  # opens the meter's windows
            gpu0.processes = [FakeProcess(pid=host_pid)]  # NVML lists host pids only
            gpu1.processes = [FakeProcess(pid=host_pid + 1)]  # someone else's GPU
            gpu0.energy_mJ += 500_000
            gpu1.energy_mJ += 300_000
            daemon.work.sample_power()
            trainer.stdin.write("\n")
            trainer.stdin.flush()
            reply = json.loads(trainer.stdout.readline())
            assert trainer.wait(30) == 0
        finally:
            trainer.kill()
        with running.store() as store:
            job, (epoch,) = store.job("contained"), store.epochs("contained")
    assert job["pid"] == 1 and job["pids_foreign"] == 1 and job["devices"] == ["gpu:0"]
    assert reply["accounting"]["gpu_j"] == pytest.approx(500.0)
    assert reply["accounting"]["gpu_attribution"] == FOREIGN_PIDS_ATTRIBUTION
    assert epoch["gpu_attribution"] == FOREIGN_PIDS_ATTRIBUTION and epoch["gpu_j"] == pytest.approx(500.0)
