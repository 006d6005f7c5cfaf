"""A real one-node Slurm cluster for tests: munged, slurmctld and slurmd from Debian's
``slurm-wlm`` and ``munge`` packages, started in a temporary directory and stopped on every path.

Nothing is installed here (``make venv`` installs the packages). The cluster has its own munge key
and socket (``AuthInfo=socket=``), free ports and its own state, so it never meets a real
cluster's daemons. Its node has ``CPUS`` CPUs and ``GPUS`` GPUs: the GPUs are character devices
(copies of /dev/null) declared as GRES, so Slurm hands jobs ``SLURM_JOB_GPUS`` and
``CUDA_VISIBLE_DEVICES`` as it would on a GPU node; nothing reads them as GPUs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from daemon_helpers import wait_until

CPUS = 2
GPUS = 2
TOOLS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "sinfo", "scancel")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def slurm_skip_reason() -> str | None:
    """Why a real Slurm cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to run slurmd and munged"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} missing (apt-get install -y slurm-wlm munge)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SlurmCluster:
    """One node (this host), one partition ``debug``; :meth:`env` is the environment for the
    Slurm commands (``SLURM_CONF``); :meth:`stop` cancels every job and ends the daemons."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.dir / "slurm.conf"
        self._daemons: list[subprocess.Popen] = []

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}

    def run(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=env or self.env(), capture_output=True, text=True, check=check, timeout=30)

    def start(self) -> "SlurmCluster":
        try:
            self._start_munge()
            self._write_config()
            for daemon, log in (("slurmctld", "ctl"), ("slurmd", "d")):
                out = open(self.dir / "log" / f"{log}.out", "wb")
                self._daemons.append(subprocess.Popen([daemon, "-D", "-f", str(self.conf)], env=self.env(),
                                                      stdout=out, stderr=subprocess.STDOUT))
                out.close()
            if not wait_until(self._node_idle, timeout_s=START_TIMEOUT_S, interval_s=0.5):
                raise RuntimeError(f"the Slurm node did not come up idle:\n{self.logs()}")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self) -> None:
        munge = self.dir / "munge"
        munge.mkdir(mode=0o700)
        subprocess.run(["mungekey", "--create", "--keyfile", str(munge / "munge.key")], check=True,
                       capture_output=True, timeout=30)
        self.munge_socket = munge / "sock"
        out = open(munge / "out", "wb")
        self._daemons.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
             f"--key-file={munge / 'munge.key'}", f"--log-file={munge / 'log'}",
             f"--pid-file={munge / 'pid'}", f"--seed-file={munge / 'seed'}"],
            stdout=out, stderr=subprocess.STDOUT))
        out.close()
        if not wait_until(self.munge_socket.exists, timeout_s=START_TIMEOUT_S):
            raise RuntimeError(f"munged did not create {self.munge_socket}")

    def _write_config(self) -> None:
        for sub in ("state", "spool", "run", "log", "gpu"):
            (self.dir / sub).mkdir()
        null = os.stat("/dev/null").st_rdev
        for index in range(GPUS):
            os.mknod(self.dir / "gpu" / f"nvidia{index}", 0o666 | 0o020000, null)
        (self.dir / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={self.node} Name=gpu File={self.dir}/gpu/nvidia[0-{GPUS - 1}]\n")
        d = self.dir
        self.conf.write_text(f"""\
ClusterName=cstest
SlurmctldHost={self.node}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthInfo=socket={self.munge_socket}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
MinJobAge=600
SlurmctldLogFile={d}/log/ctl.log
SlurmdLogFile={d}/log/d.log
NodeName={self.node} CPUs={CPUS} Gres=gpu:{GPUS} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def _node_idle(self) -> bool:
        done = self.run("sinfo", "-h", "-o", "%t", check=False)
        return done.returncode == 0 and done.stdout.strip() == "idle"

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (fields split at whitespace; values with spaces are cut)."""
        text = self.run("scontrol", "show", "job", "-o", job_id).stdout
        fields = {}
        for token in text.split():
            key, sep, value = token.partition("=")
            if sep:
                fields[key] = value
        return fields

    def job_state(self, job_id: str) -> str:
        done = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        for token in done.stdout.split():
            if token.startswith("JobState="):
                return token.split("=", 1)[1]
        return "UNKNOWN"

    def wait_state(self, job_id: str, states: tuple[str, ...], timeout_s: float = 90.0) -> str:
        if not wait_until(lambda: self.job_state(job_id) in states, timeout_s=timeout_s, interval_s=0.3):
            raise AssertionError(f"job {job_id} not in {states} after {timeout_s} s: {self.job(job_id)}\n{self.logs()}")
        return self.job_state(job_id)

    def logs(self) -> str:
        parts = []
        for path in sorted((self.dir / "log").glob("*")):
            text = path.read_text(errors="replace").splitlines()[-20:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job (and wait for them to end), then stop slurmd, slurmctld and munged."""
        if self.conf.exists() and any(p.poll() is None for p in self._daemons[1:]):
            self.run("scancel", "--user=root", check=False)
            wait_until(lambda: not self.run("squeue", "-h", check=False).stdout.strip(), timeout_s=STOP_TIMEOUT_S,
                       interval_s=0.3)
        for process in reversed(self._daemons):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self._daemons):
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._daemons.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
